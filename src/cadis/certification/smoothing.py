"""Randomized smoothing (Cohen et al., 2019) around a base classifier, e.g. classifier ∘ denoiser.

The smoothed classifier is g(x) = argmax_c P[f(x + δ) = c], δ ~ N(0, σ²I).
`certify` and `predict` follow the paper's CERTIFY and PREDICT line by line.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from cadis.acceleration import Acceleration
from cadis.errors import CadisError

ABSTAIN = -1
SHAPE_BUCKETS = 4  # compiled batch shapes per run: a quarter, a half, three quarters and all of batch_size
# Draws per forward pass on a CPU: a batch's noise is drawn whole, then run in slices whose activations stay in the
# caches (fp32 1.25-1.4x faster than slices of 500 for the embedded models, bf16 the same; benchmarks/RESULTS.md).
CPU_FORWARD_ROWS = 100


def bucket(size: int, batch_size: int, buckets: int = SHAPE_BUCKETS) -> int:
    """The batch shape a batch of `size` <= batch_size draws runs at with static compiled shapes: the next multiple of
    batch_size / buckets, so any N and any adaptive look schedule take at most `buckets` compiled graphs."""
    step = -(-batch_size // buckets)
    return min(batch_size, -(-size // step) * step)


def check_finite(logits: torch.Tensor, acceleration: Acceleration) -> None:
    """Refuse NaN or infinite logits: every argmax of NaN is class 0, which would count as a unanimous vote."""
    if not bool(torch.isfinite(logits).all()):
        raise CadisError(f"The classifier returned NaN or infinite logits ({acceleration.precision}"
                         f"{', compiled' if acceleration.compile else ''}), so no vote can be counted. Certify again "
                         "with --precision fp32 and --compile off; if compiled graphs were copied from another "
                         "machine, delete the compiled-graph cache (cadis.acceleration.compile_cache_dir()).")


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - α) Clopper-Pearson lower bound on p from k successes in n trials:
    the α quantile of Beta(k, n - k + 1)."""
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def upper_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - α) Clopper-Pearson upper bound on p from k successes in n trials:
    the 1 - α quantile of Beta(k + 1, n - k)."""
    return 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))


def check_parameters(sigma: float | None = None, alpha: float | None = None,
                     n0: int | None = None, n: int | None = None) -> None:
    """Raise a CadisError that says what to change for parameters outside their range (nan and inf included)."""
    if sigma is not None and not (0 < sigma < math.inf):
        raise CadisError(f"sigma must be a finite number > 0 (got {sigma}); try 0.25 or 0.5.")
    if alpha is not None and not 0 < alpha < 0.5:
        raise CadisError(f"alpha must be in (0, 0.5) (got {alpha}); 0.001 is usual.")
    if n0 is not None and not (n0 >= 1 and float(n0).is_integer()):
        raise CadisError(f"n0 must be a whole number >= 1 (got {n0}); 100 is usual.")
    if n is not None and not (n >= 1 and float(n).is_integer()):
        raise CadisError(f"n must be a whole number >= 1 (got {n}); 10000 or more is usual.")


@dataclass
class Certificate:
    prediction: int  # ABSTAIN (-1) when p_A < 1/2
    radius: float
    count_a: int
    n: int
    p_a_lower: float
    counts: np.ndarray = field(repr=False, compare=False, default=None)  # class counts of the n estimation draws


def radius(sigma: float, p_a: float) -> float:
    """The certified ℓ2 radius σ·Φ⁻¹(p_A) (Cohen et al., Theorem 1)."""
    return sigma * float(norm.ppf(p_a))


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius N draws can certify: all N agree, so p_A = α^(1/N) and R = σ·Φ⁻¹(α^(1/N))."""
    return radius(sigma, lower_confidence_bound(n, n, alpha))


def decide(counts_selection: np.ndarray, counts_estimation: np.ndarray, alpha: float, sigma: float) -> Certificate:
    """CERTIFY's decision: guess c_A from the selection draws, bound p_A from the estimation draws."""
    c_a = int(counts_selection.argmax())
    n, n_a = int(counts_estimation.sum()), int(counts_estimation[c_a])
    p_a = lower_confidence_bound(n_a, n, alpha)
    if p_a < 0.5:
        return Certificate(ABSTAIN, 0.0, n_a, n, p_a, counts_estimation)
    return Certificate(c_a, radius(sigma, p_a), n_a, n, p_a, counts_estimation)


@dataclass
class Prediction:
    prediction: int  # ABSTAIN (-1) unless the binomial test rejects at level α
    count_a: int
    count_b: int
    p_value: float


class Smooth:
    """A smoothed classifier around `base`, which maps a batch of noisy images to logits.
    `acceleration` picks the precision and compilation `base` runs with (default: exact fp32, eager)."""

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor], num_classes: int, sigma: float,
                 batch_size: int = 256, acceleration: Acceleration | None = None,
                 modules: tuple[torch.nn.Module, ...] = ()):
        check_parameters(sigma=sigma)
        self.base, self.num_classes, self.sigma, self.batch_size = base, num_classes, sigma, batch_size
        self.acceleration = acceleration or Acceleration()
        self._forward = self.acceleration.prepare(base, modules)
        # Compiled graphs have static shapes: pad short batches to a few buckets rather than recompile per size.
        self.static_shapes = self.acceleration.compile
        self.cpu_forward_rows: int | None = CPU_FORWARD_ROWS  # None: a whole batch per forward pass

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> Certificate:
        """With probability at least 1 - α over the noise, if a class is returned, g(x') equals it
        for every ‖x' - x‖₂ < radius. Abstains (prediction -1) when p_A's lower bound is below 1/2.
        `progress`, if given, is called with the number of draws done in each batch."""
        check_parameters(alpha=alpha, n0=n0, n=n)
        gen = self.generator(x, seed)
        counts_selection = self.sample_counts(x, n0, gen, progress)
        counts_estimation = self.sample_counts(x, n, gen, progress)
        return decide(counts_selection, counts_estimation, alpha, self.sigma)

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int = 0) -> Prediction:
        """With probability at least 1 - α, the returned class (if not -1) is g(x)."""
        check_parameters(alpha=alpha, n=n)
        counts = self.sample_counts(x, n, self.generator(x, seed))
        top2 = counts.argsort()[::-1][:2]
        n_a = int(counts[top2[0]])
        n_b = int(counts[top2[1]]) if len(top2) > 1 else 0  # one class: its runner-up has no votes
        p_value = float(binomtest(n_a, n_a + n_b, 0.5).pvalue) if n_a + n_b else 1.0
        return Prediction(int(top2[0]) if p_value <= alpha else ABSTAIN, n_a, n_b, p_value)

    def sample_counts(self, x: torch.Tensor, num: int, generator: torch.Generator,
                      progress: Callable[[int], None] | None = None,
                      heads: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None) -> np.ndarray:
        """Class counts over `num` draws of x + δ (x is one CHW image): shape [classes] for the base
        classifier, or [heads × classes] when each of `heads` classifies `self.shared(batch)` of the same draws."""
        counts = torch.zeros(1 if heads is None else len(heads), self.num_classes, dtype=torch.long, device=x.device)
        with torch.inference_mode(), self.acceleration.autocast(x.device):
            for batch in self.noisy_batches(x, num, generator):
                for part in self.slices(batch):
                    for k, logits in enumerate(self.logits(self.padded(part), generator, heads)):
                        check_finite(logits, self.acceleration)
                        counts[k] += torch.bincount(logits[:len(part)].argmax(1), minlength=self.num_classes)
                if progress is not None:
                    progress(len(batch))
        counts = counts.cpu().numpy()
        return counts[0] if heads is None else counts

    def logits(self, noisy: torch.Tensor, generator: torch.Generator,
               heads: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None) -> list[torch.Tensor]:
        """Logits of one batch of draws: of the whole base (one entry), or of each head over `shared(noisy)`,
        computed once for all. `generator` is the image's stream, for a base that draws noise of its own."""
        if heads is None:
            return [self._forward(noisy)]  # one head: the whole base, prepared as one function
        features = self.shared(noisy)
        return [head(features) for head in heads]

    def shared(self, noisy: torch.Tensor) -> torch.Tensor:
        """The part of the base that several heads share (none here: they classify the noisy batch)."""
        return noisy

    def noisy_batches(self, x: torch.Tensor, num: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """`num` draws of x + δ in batches of at most `batch_size`."""
        for start in range(0, num, self.batch_size):
            b = min(self.batch_size, num - start)
            batch = torch.randn((b, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
            yield batch.mul_(self.sigma).add_(x)

    def forward_rows(self, device: torch.device) -> int:
        """Draws per forward pass: `cpu_forward_rows` on a CPU (at most the batch size), the whole batch elsewhere."""
        if device.type == "cpu" and self.cpu_forward_rows:
            return min(self.cpu_forward_rows, self.batch_size)
        return self.batch_size

    def slices(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A batch of draws as the forward passes that run it (the draws themselves do not change)."""
        return batch.split(self.forward_rows(batch.device))

    def padded(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch`, with static shapes padded up to its `bucket` with copies of its first draw (`sample_counts` drops
        their logits). The generator is not touched, so the real rows are the draws an unpadded run makes."""
        size = bucket(len(batch), self.forward_rows(batch.device)) if self.static_shapes else len(batch)
        if size == len(batch):
            return batch
        return torch.cat([batch, batch[:1].expand(size - len(batch), *batch.shape[1:])])

    @staticmethod
    def generator(x: torch.Tensor, seed: int) -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(seed)


class DenoisedSmoothing(Smooth):
    """Smoothing around f = classifier ∘ denoiser (Salman et al. 2020; Carlini et al. 2023)."""

    def __init__(self, denoiser: torch.nn.Module, classifier: torch.nn.Module, sigma: float,
                 batch_size: int = 256, mode: str = "one-shot", acceleration: Acceleration | None = None,
                 **denoise_kwargs):
        self.denoiser, self.classifier = denoiser, classifier
        self.mode, self.denoise_kwargs = mode, denoise_kwargs
        self._prepared_fns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        super().__init__(self.classify_noisy, classifier.num_classes, sigma, batch_size, acceleration,
                         (denoiser, classifier))
        if mode == "multistep":  # padded or sliced rows would change what denoising draws from the image's stream
            self.static_shapes, self.cpu_forward_rows = False, None
        denoiser.timestep(sigma)  # fail now if σ is beyond the scheduler's range

    def denoise(self, noisy: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x̂ from x + δ. Multistep denoising draws noise of its own: from `generator` if given, else from
        torch's global generator."""
        kwargs = self.denoise_kwargs
        if self.mode == "multistep":
            kwargs = {**kwargs, "generator": generator}
        return self.denoiser(noisy, self.sigma, mode=self.mode, **kwargs)

    def logits(self, noisy: torch.Tensor, generator: torch.Generator,
               heads: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None) -> list[torch.Tensor]:
        """As `Smooth.logits`; multistep denoising draws from the image's stream, after each batch's noise, so
        a run repeats row for row."""
        if self.mode != "multistep":
            return super().logits(noisy, generator, heads)
        denoised = self.denoise(noisy, generator)
        return [head(denoised) for head in heads or [self._prepared(self.classifier, (self.classifier,))]]

    def classify_noisy(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoise(noisy))

    def certify_classifiers(self, x: torch.Tensor, classifiers: Sequence[torch.nn.Module], n0: int, n: int,
                            alpha: float, seed: int = 0, progress: Callable[[int], None] | None = None
                            ) -> list[Certificate]:
        """CERTIFY classifier_k ∘ denoiser for every k on the same draws, denoising each draw once.
        Certificate k is the one `certify` gives with classifier_k and this seed (common random
        numbers, so methods compare paired), at the cost of one denoising for all of them."""
        check_parameters(alpha=alpha, n0=n0, n=n)
        heads = self.heads(classifiers)
        gen = self.generator(x, seed)
        selection = self.sample_counts(x, n0, gen, progress, heads)
        estimation = self.sample_counts(x, n, gen, progress, heads)
        return [decide(s, e, alpha, self.sigma) for s, e in zip(selection, estimation)]

    def heads(self, classifiers: Sequence[torch.nn.Module]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The classifiers as heads over `shared` (the denoised batch), each prepared once."""
        return [self._prepared(c, (c,)) for c in classifiers]

    def shared(self, noisy: torch.Tensor) -> torch.Tensor:
        """The denoised batch: classifiers behind this denoiser share it."""
        return self._prepared(self.denoiser, (self.denoiser,), self.denoise)(noisy)

    def _prepared(self, key: torch.nn.Module, modules: tuple[torch.nn.Module, ...],
                  fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """`fn` (default: `key` itself) with the acceleration levers, prepared once per module."""
        if key not in self._prepared_fns:
            self._prepared_fns[key] = self.acceleration.prepare(fn or key, modules)
        return self._prepared_fns[key]
