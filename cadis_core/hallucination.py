"""Hallucinations: denoised draws that lose their class, and the classifier's confidence as a detector.

A draw is hallucinated when the classifier's top-1 class on it differs from the image's label (or, for
an unlabelled image, from the majority vote of the draws). Several classifiers are scored on the same
draws, so an off-the-shelf and a fine-tuned classifier compare paired. The ROC curve is computed here
(ties as one step) rather than with scikit-learn, to keep that dependency out of the apps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import CadisError
from .smoothing import DenoisedSmoothing


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
                 classifiers: dict[str, torch.nn.Module], seed: int = 0) -> list[ImageDraws]:
    """Denoise `draws` noisy copies of each image once (with `smooth`'s denoiser and σ) and score them
    with every classifier; image k uses seed + k."""
    if draws < 1:
        raise CadisError(f"The number of draws must be >= 1 (got {draws}).")
    out = []
    for k, (name, x, label) in enumerate(images):
        first = None
        scores = {}
        for cname, clf in classifiers.items():
            if first is None:
                first = smooth.score_draws(x, label, draws, seed=seed + k, classifier=clf)
                s = first
            else:  # the same draws: reuse the denoised images, only the classifier changes
                with torch.inference_mode():
                    probs = torch.cat([clf(b).softmax(1) for b in first.denoised.split(256)])
                conf, top1 = probs.max(1)
                ref = label if label is not None else int(torch.bincount(top1, minlength=probs.shape[1]).argmax())
                s = type(first)(first.noisy, first.denoised, probs, top1, conf, top1 != ref, ref)
            scores[cname] = {"top1": s.top1.tolist(), "confidence": s.confidence.tolist(),
                             "hallucinated": s.hallucinated.tolist(), "reference": s.reference_label}
        out.append(ImageDraws(name, x, label, first.noisy, first.denoised, scores))
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
