"""Static compiled shapes: short batches are padded to a few buckets, and the padding never changes a count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_statistics import KnownProbabilities

from cadis.acceleration import Acceleration
from cadis.certification.adaptive import certify_adaptive, certify_adaptive_classifiers
from cadis.certification.smoothing import CPU_FORWARD_ROWS, DenoisedSmoothing, Smooth, bucket
from cadis.models.classifier import ImageClassifier
from cadis.models.denoiser import DiffusionDenoiser


class RecordingBase(KnownProbabilities):
    """KnownProbabilities that records the batch sizes it is called with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes: list[int] = []

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        self.shapes.append(len(noisy))
        return super().__call__(noisy)


def recording_smooth(static_shapes: bool, probs=(0.9, 0.07, 0.03), batch_size: int = 256,
                     rows: int | None = CPU_FORWARD_ROWS):
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    base = RecordingBase(x, 0.5, list(probs))
    smooth = Smooth(base, len(probs), 0.5, batch_size=batch_size)
    smooth.static_shapes = static_shapes  # as compile=True sets it, without compiling the fake
    smooth.cpu_forward_rows = rows
    return smooth, base, x


def test_buckets_are_quarters_of_the_batch_size():
    assert [bucket(s, 256) for s in (1, 57, 64, 65, 156, 196, 256)] == [64, 64, 64, 128, 192, 256, 256]
    assert {bucket(s, 500) for s in range(1, 501)} == {125, 250, 375, 500}
    assert {bucket(s, 10) for s in range(1, 11)} == {3, 6, 9, 10} and bucket(1, 1) == 1


def test_compile_turns_bucketing_on_except_where_padding_would_draw_noise():
    assert not Smooth(lambda b: b, 2, 0.5).static_shapes
    assert Smooth(lambda b: b, 2, 0.5, acceleration=Acceleration(compile=True)).static_shapes


def test_an_adaptive_run_at_n_10000_sees_at_most_four_batch_shapes():
    # tolerance 0 and no radii: every look is taken, so every remainder (100, 156, 57, 113, 226, 196, 136) occurs
    for static, rows, most in ((True, None, 4), (False, None, 8), (True, CPU_FORWARD_ROWS, 4)):
        smooth, base, x = recording_smooth(static, rows=rows)
        cert = certify_adaptive(smooth, x, n0=100, n=10000, alpha=0.001, seed=1, tolerance=0.0)
        assert cert.n == 10000 and cert.counts.sum() == 10000
        assert len(set(base.shapes)) <= most  # without buckets: one shape per remainder, past dynamo's limit
        if (static, rows) == (False, None):
            assert set(base.shapes) == {100, 156, 57, 113, 226, 196, 136, 256}
    assert set(base.shapes) <= {25, 50, 75, 100}  # on a CPU: slices of 100 draws, padded to quarters of them


def test_a_cpu_runs_a_batch_in_slices_of_the_same_draws():
    smooth, base, x = recording_smooth(False, batch_size=256)
    smooth.sample_counts(x, 300, smooth.generator(x, 0))
    assert base.shapes == [100, 100, 56, 44]  # noise drawn per batch of 256, run 100 rows at a time
    smooth.cpu_forward_rows = None
    base.shapes.clear()
    smooth.sample_counts(x, 300, smooth.generator(x, 0))
    assert base.shapes == [256, 44]


@pytest.mark.parametrize("probs", [(0.9, 0.07, 0.03), (0.45, 0.35, 0.2), (0.999, 0.001)])
def test_padding_leaves_counts_and_certificates_exactly_unchanged(probs):
    runs = []
    for static, rows in ((False, None), (False, CPU_FORWARD_ROWS), (True, CPU_FORWARD_ROWS)):
        smooth, base, x = recording_smooth(static, probs, rows=rows)
        fixed = smooth.certify(x, n0=100, n=1000, alpha=0.001, seed=4)
        adaptive = certify_adaptive(smooth, x, n0=100, n=10000, alpha=0.001, seed=4, radii=[0.25, 0.5, 1.0])
        counts = smooth.sample_counts(x, 300, smooth.generator(x, 9))
        prediction = smooth.predict(x, n=700, alpha=0.001, seed=2)
        runs.append((fixed, adaptive, counts, prediction, base.shapes))
    (f0, a0, c0, p0, shapes0) = runs[0]
    assert len({tuple(r[4]) for r in runs}) == 3  # each run sliced or padded its own way
    for f1, a1, c1, p1, _ in runs[1:]:  # whole, sliced, sliced and padded: the same draws, the same counts
        assert f0 == f1 and np.array_equal(f0.counts, f1.counts)  # dataclass equality: prediction, radius, n_A, p_A
        assert a0 == a1 and np.array_equal(a0.counts, a1.counts) and a1.counts.sum() == a1.n
        assert np.array_equal(c0, c1) and c1.sum() == 300 and p0 == p1


def test_padding_leaves_shared_draw_counts_of_real_models_unchanged(tiny_denoiser_dir):
    from conftest import make_tiny_vit

    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    heads = [ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,)) for _ in range(2)]
    heads[1].model.head.weight.data.normal_(generator=torch.Generator().manual_seed(1))  # another classifier
    seen: list[int] = []
    denoiser.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    runs, shapes = [], []
    for static in (False, True):
        smooth = DenoisedSmoothing(denoiser, heads[0], 0.5, batch_size=64)
        smooth.static_shapes = static
        seen.clear()
        runs.append(certify_adaptive_classifiers(smooth, x, heads, n0=20, n=300, alpha=0.001, seed=3, tolerance=0.0,
                                                 first_look=30))
        shapes.append(set(seen))
    for unpadded, padded in zip(*runs):  # denoised once per draw for both heads, padded or not
        assert unpadded == padded and np.array_equal(unpadded.counts, padded.counts) and padded.n == 300
    assert shapes == [{20, 37, 38, 64, 11, 22}, {32, 48, 64, 16}]  # requests 20, 37, 38, 75, 150 cut at 64
    multistep = DenoisedSmoothing(denoiser, heads[0], 0.5, mode="multistep", acceleration=Acceleration(compile=True))
    assert not multistep.static_shapes and multistep.cpu_forward_rows is None  # its denoiser draws noise per row


def test_slices_of_a_real_batch_count_the_same_votes(tiny_denoiser_dir):
    from conftest import make_tiny_vit

    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    heads = [ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,)) for _ in range(2)]
    heads[1].model.head.weight.data.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    runs = []
    for rows in (None, CPU_FORWARD_ROWS, 7):  # whole batches of 256, the CPU default, an odd slice
        smooth = DenoisedSmoothing(denoiser, heads[0], 0.5, batch_size=256)
        smooth.cpu_forward_rows = rows
        runs.append((smooth.certify(x, 50, 600, 0.001, seed=5),
                     smooth.certify_classifiers(x, heads, 50, 600, 0.001, seed=5)))
    for single, shared in runs[1:]:
        assert single == runs[0][0] and np.array_equal(single.counts, runs[0][0].counts)
        assert all(a == b and np.array_equal(a.counts, b.counts) for a, b in zip(shared, runs[0][1]))
