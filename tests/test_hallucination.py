"""Hallucinated draws scored by several classifiers on the same draws, and confidence as a detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadis.analysis.hallucination import (
    DrawScores,
    auroc,
    class_aurocs,
    detector_summary,
    draws_frame,
    roc_curve,
    score_draws,
    score_draws_batched,
    score_images,
)
from cadis.certification.smoothing import DenoisedSmoothing
from cadis.data import load_dataset
from cadis.errors import CadisError
from cadis.models.classifier import ImageClassifier
from cadis.models.denoiser import DiffusionDenoiser


def test_classifiers_are_scored_on_the_same_draws(tiny_denoiser_dir):
    from conftest import make_tiny_vit

    torch.manual_seed(0)
    clf = ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,))
    smooth = DenoisedSmoothing(DiffusionDenoiser.from_pretrained(tiny_denoiser_dir), clf, 0.5, batch_size=16)
    test = load_dataset("fashion-mnist", "test")
    images = [("#0", *test[0]), ("upload", test[1][0], None)]
    results = score_images(smooth, images, 6, {"a": clf, "same": clf}, seed=3)
    for r in results:  # an identical classifier on the same draws gives identical scores
        assert r.scores["a"] == r.scores["same"] and r.denoised.shape == (6, 1, 28, 28)
    a = results[0].scores["a"]
    assert a["hallucinated"] == [t != test[0][1] for t in a["top1"]]  # labelled: against the label
    votes = np.bincount(results[1].scores["a"]["top1"], minlength=10)
    assert results[1].scores["a"]["reference"] == int(votes.argmax())  # unlabelled: the majority vote
    frame = draws_frame(results, test.classes)
    assert len(frame) == 2 * 2 * 6
    assert detector_summary(frame).loc["a", "draws"] == 12
    with pytest.raises(CadisError, match="draws must be >= 1"):
        score_images(smooth, images, 0, {"a": clf})


def test_images_scored_in_shared_batches_get_their_own_draws(tiny_denoiser_dir):
    from conftest import make_tiny_vit

    torch.manual_seed(0)
    clf = ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,))
    # batch_size 8 with 3 draws: two images per denoiser call, so the 5 images span three calls
    smooth = DenoisedSmoothing(DiffusionDenoiser.from_pretrained(tiny_denoiser_dir), clf, 0.5, batch_size=8)
    test = load_dataset("fashion-mnist", "test")
    images = [(f"#{i}", *test[i]) for i in range(5)]
    batched = score_images(smooth, images, 3, {"a": clf}, seed=7)
    for k, (_, x, label) in enumerate(images):
        [alone] = score_draws(smooth, x, label, 3, seed=7 + k)
        assert torch.equal(batched[k].noisy, alone.noisy)  # image k's own seed
        torch.testing.assert_close(batched[k].denoised, alone.denoised, atol=1e-5, rtol=1e-5)
        assert batched[k].scores["a"]["top1"] == alone.top1.tolist()
    assert len({r.denoised.sum().item() for r in batched}) == 5  # no image got another's draws


def assert_same_scores(batched: list[DrawScores], alone: list[DrawScores]) -> None:
    """Same draws, same decisions; the floats agree to rounding (a row's result may depend on its batch)."""
    for b, a in zip(batched, alone, strict=True):
        assert torch.equal(b.noisy, a.noisy) and b.reference_label == a.reference_label
        assert torch.equal(b.top1, a.top1) and torch.equal(b.hallucinated, a.hallucinated)
        for name in ("denoised", "probs", "confidence"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["one-shot", "multistep"])
def test_batched_scoring_returns_what_each_image_gets_alone(tiny_denoiser_dir, mode):
    from conftest import make_tiny_vit

    clf = ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,))
    other = ImageClassifier(make_tiny_vit().eval(), (1, 28, 28), (0.5,), (0.5,))
    other.model.head.weight.data.normal_(generator=torch.Generator().manual_seed(1))
    smooth = DenoisedSmoothing(DiffusionDenoiser.from_pretrained(tiny_denoiser_dir), clf, 0.5, batch_size=16,
                               mode=mode, steps=2)
    test = load_dataset("fashion-mnist", "test")
    images = [test[i][0] for i in range(5)]
    images.insert(2, torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(2)))  # another shape, in between
    labels = [int(test[0][1]), None, None, *[int(test[i][1]) for i in range(1, 4)]]
    seeds = [11, 3, 5, 7, 3, 0]  # seeds need not be distinct or ordered
    # 4 draws in batches of 7: batches cut across images, and a short last batch
    batched = score_draws_batched(smooth, images, labels, 4, seeds, [clf, other], batch_size=7)
    for x, label, seed, scores in zip(images, labels, seeds, batched):
        assert_same_scores(scores, score_draws(smooth, x, label, 4, seed, [clf, other]))
    assert not torch.equal(batched[1][0].noisy, batched[4][0].noisy)  # same seed, different images
    assert len({s[0].denoised.sum().item() for s in batched}) == 6  # no image got another's draws
    with pytest.raises(CadisError, match="one label and one seed per image"):
        score_draws_batched(smooth, images, labels[:2], 4, seeds)


def test_roc_and_auroc_match_the_rank_statistic():
    assert auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert auroc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5  # ties count half
    assert np.isnan(auroc([0.1, 0.2], [0, 0]))
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=300).round(1), rng.random(300) < 0.3
    pos, neg = s[y], s[~y]
    mann_whitney = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auroc(s, y) == pytest.approx(mann_whitney)
    fpr, tpr, thr = roc_curve(s, y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.all(np.diff(fpr) >= 0) and np.all(np.diff(thr) < 0)




def test_class_aurocs_score_each_class_on_its_own_draws():
    import pandas as pd

    rows = [("Shirt", "a", c, h) for c, h in ((0.9, True), (0.8, True), (0.3, False), (0.2, False))]  # inverted
    rows += [("Bag", "a", c, h) for c, h in ((0.2, True), (0.9, False), (0.8, False))]  # perfect
    rows += [("Coat", "a", c, False) for c in (0.5, 0.6)]  # nothing hallucinated
    frame = pd.DataFrame(rows, columns=["reference", "classifier", "confidence", "hallucinated"])
    table = class_aurocs(frame)
    assert table.loc["Shirt", "a"] == 0.0 and table.loc["Bag", "a"] == 1.0 and np.isnan(table.loc["Coat", "a"])
