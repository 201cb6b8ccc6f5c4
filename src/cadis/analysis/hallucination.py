"""Hallucinations: denoised draws that lose their class, and the classifier's confidence as a detector.

A draw is hallucinated when the classifier's top-1 class on it differs from the image's label (or, for
an unlabelled image, from the majority vote of the draws). Several classifiers are scored on the same
draws, so an off-the-shelf and a fine-tuned classifier compare paired. The ROC curve is computed here
(ties as one step) rather than with scikit-learn, to keep that dependency out of the apps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from cadis.certification.smoothing import DenoisedSmoothing
from cadis.errors import CadisError


@dataclass
class DrawScores:
    """One classifier's scores of denoised draws: noisy inputs, denoised images, softmax, top-1,
    confidence, hallucinated (top-1 differs from the reference label)."""

    noisy: torch.Tensor
    denoised: torch.Tensor
    probs: torch.Tensor
    top1: torch.Tensor
    confidence: torch.Tensor
    hallucinated: torch.Tensor
    reference_label: int


def score_draws(smooth: DenoisedSmoothing, x: torch.Tensor, label: int | None, num: int, seed: int = 0,
                classifiers: Sequence[torch.nn.Module] | None = None) -> list[DrawScores]:
    """Denoise `num` draws of x + δ once (with `smooth`'s denoiser and σ) and score them with each of
    `classifiers` (default: `smooth.classifier`), one DrawScores each on the same draws. A draw is
    hallucinated when its top-1 class differs from `label` (or, with no label, from the majority vote
    of that classifier's draws)."""
    return _score_stack(smooth, [x], [label], num, [seed], classifiers)[0]


def score_draws_batched(smooth: DenoisedSmoothing, xs: Sequence[torch.Tensor], labels: Sequence[int | None], num: int,
                        seeds: Sequence[int], classifiers: Sequence[torch.nn.Module] | None = None,
                        batch_size: int | None = None) -> list[list[DrawScores]]:
    """`score_draws` of many images in shared batches: the draws of all images of one shape go through the denoiser
    and each classifier in batches of `batch_size` rows (default: `smooth.batch_size`), across image boundaries.
    Element k is `score_draws(smooth, xs[k], labels[k], num, seeds[k], classifiers)`: image k's noise comes from
    its own seed. Multistep denoising draws noise from the image's stream too, so there each image has its calls."""
    if not len(xs) == len(labels) == len(seeds):
        raise CadisError(f"Give one label and one seed per image (got {len(xs)} images, {len(labels)} labels, "
                         f"{len(seeds)} seeds).")
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, x in enumerate(xs):  # one-shot: every image of a shape in one stack; multistep: each image alone
        groups.setdefault(tuple(x.shape) if smooth.mode == "one-shot" else (k,), []).append(k)
    out: list[list[DrawScores]] = [[] for _ in xs]
    for members in groups.values():
        scored = _score_stack(smooth, [xs[k] for k in members], [labels[k] for k in members], num,
                              [seeds[k] for k in members], classifiers, batch_size)
        for k, s in zip(members, scored):
            out[k] = s
    return out


def _score_stack(smooth: DenoisedSmoothing, xs: Sequence[torch.Tensor], labels: Sequence[int | None], num: int,
                 seeds: Sequence[int], classifiers: Sequence[torch.nn.Module] | None = None,
                 batch_size: int | None = None) -> list[list[DrawScores]]:
    """`score_draws` for several images of one shape in shared denoiser and classifier batches; image k's
    noise comes from its own seed, so its draws are those `score_draws` gives it alone."""
    classifiers = [smooth.classifier] if classifiers is None else classifiers
    batch_size = batch_size or smooth.batch_size
    gens = [smooth.generator(x, seed) for x, seed in zip(xs, seeds)]
    with torch.inference_mode(), smooth.acceleration.autocast(xs[0].device):
        noisy = torch.stack([torch.randn((num, *x.shape), generator=gen, device=x.device).mul_(smooth.sigma).add_(x)
                             for x, gen in zip(xs, gens)])
        # multistep denoising draws from the generator too: callers stack one image at a time then
        batches = noisy.flatten(0, 1).split(batch_size)
        denoised = torch.cat([smooth.denoise(b, generator=gens[0]) for b in batches]).view(noisy.shape)
        scores = []
        for classifier in classifiers:
            batches = denoised.flatten(0, 1).split(batch_size)
            probs = torch.cat([classifier(b).float().softmax(1) for b in batches])
            scores.append(probs.view(len(xs), num, -1))
    out = []
    for k, label in enumerate(labels):
        per_classifier = []
        for probs in scores:
            confidence, top1 = probs[k].max(1)
            reference = int(torch.bincount(top1, minlength=probs.shape[-1]).argmax()) if label is None else label
            per_classifier.append(DrawScores(noisy[k], denoised[k], probs[k], top1, confidence, top1 != reference,
                                             reference))
        out.append(per_classifier)
    return out


@dataclass
class ImageDraws:
    """One input image and its denoised draws, scored by one or more classifiers on the same draws."""

    name: str
    image: torch.Tensor
    label: int | None  # None: an upload without a label (the majority vote is the reference)
    noisy: torch.Tensor
    denoised: torch.Tensor
    scores: dict[str, dict[str, Any]]  # classifier name → {top1, confidence, hallucinated, reference}


def score_images(smooth: DenoisedSmoothing, images: list[tuple[str, torch.Tensor, int | None]], draws: int,
                 classifiers: dict[str, torch.nn.Module], seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> list[ImageDraws]:
    """Denoise `draws` noisy copies of each image once (with `smooth`'s denoiser and σ) and score them
    with every classifier; image k uses seed + k. `progress(done, total)` is called after each image."""
    if draws < 1:
        raise CadisError(f"The number of draws must be >= 1 (got {draws}).")
    if not classifiers:
        raise CadisError("Choose at least one classifier to score the draws with.")
    # One-shot draws of a batch's worth of images share the denoiser's batches (progress is reported per call);
    # multistep ones go one image at a time.
    per_call = max(1, smooth.batch_size // draws) if smooth.mode == "one-shot" else 1
    out = []
    k = 0
    for start in range(0, len(images), per_call):
        chunk = images[start:start + per_call]
        stacked = score_draws_batched(smooth, [x for _, x, _ in chunk], [label for _, _, label in chunk], draws,
                                      [seed + start + j for j in range(len(chunk))], list(classifiers.values()))
        for (name, x, label), scored in zip(chunk, stacked):
            scores = {cname: {"top1": s.top1.tolist(), "confidence": s.confidence.tolist(),
                              "hallucinated": s.hallucinated.tolist(), "reference": s.reference_label}
                      for cname, s in zip(classifiers, scored)}
            out.append(ImageDraws(name, x, label, scored[0].noisy, scored[0].denoised, scores))
            k += 1
            if progress is not None:
                progress(k, len(images))
    return out


def draws_frame(results: list[ImageDraws], classes: list[str]) -> pd.DataFrame:
    """One row per (image, classifier, draw): reference class, prediction, confidence, hallucinated."""
    rows = []
    for r in results:
        for cname, s in r.scores.items():
            for d, (p, c, h) in enumerate(zip(s["top1"], s["confidence"], s["hallucinated"])):
                rows.append({"image": r.name, "classifier": cname, "draw": d, "reference": classes[s["reference"]],
                             "labelled": r.label is not None, "prediction": classes[p], "confidence": c,
                             "hallucinated": bool(h)})
    return pd.DataFrame(rows)


def class_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Hallucination rate per reference class and classifier (rows: class, columns: classifier)."""
    return frame.pivot_table(index="reference", columns="classifier", values="hallucinated", aggfunc="mean")


def class_aurocs(frame: pd.DataFrame) -> pd.DataFrame:
    """AUROC of low confidence as a hallucination detector per reference class and classifier (rows: class,
    columns: classifier); NaN where a class's draws are all kept or all hallucinated."""
    return (frame.groupby(["reference", "classifier"], sort=False)
            .apply(lambda g: auroc(-g["confidence"].to_numpy(), g["hallucinated"].to_numpy()), include_groups=False)
            .unstack())


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of the detector `score >= threshold`, with ties handled as one step."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0, fps / n], np.r_[0, tps / p], np.r_[np.inf, s[last]]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present (the area is undefined)."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(scores, positive)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def detector_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per classifier: draws, hallucination rate, and AUROC of low confidence as a hallucination detector."""
    rows = {}
    for cname, g in frame.groupby("classifier", sort=False):
        rows[cname] = {"draws": len(g), "hallucination rate": g["hallucinated"].mean(),
                       "mean confidence (kept)": g.loc[~g["hallucinated"], "confidence"].mean(),
                       "mean confidence (hallucinated)": g.loc[g["hallucinated"], "confidence"].mean(),
                       "AUROC (1 − confidence)": auroc(-g["confidence"].to_numpy(), g["hallucinated"].to_numpy())}
    return pd.DataFrame(rows).T.astype(float)
