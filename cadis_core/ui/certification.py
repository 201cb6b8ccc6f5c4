"""Certification in the apps: CERTIFY one image under the shared lock, its table row, the session's runs as
result tables, and the result files shipped in assets/results or written under the runs directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data import ASSETS
from ..errors import CadisError
from ..smoothing import ABSTAIN, Certificate
from .models import ModelBundle, runs_dir
from .uploads import check_run_parameters


def certify_one(bundle: ModelBundle, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, seed: int = 0,
                mode: str = "one-shot", steps: int = 10, progress=None, batch_size: int | None = None,
                on_wait=None) -> tuple[Certificate, np.ndarray]:
    """CERTIFY one image under the bundle's lock; also returns the class counts of the N draws.

    `progress(done, total)` is called after each batch; `on_wait()` once if another session holds the lock."""
    check_run_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    smooth = bundle.smoothing(sigma, mode, steps, batch_size)
    total, done = n0 + n, 0

    def step(b: int) -> None:
        nonlocal done
        done += b
        if progress is not None:
            progress(done, total)

    if not bundle.lock.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
        bundle.lock.acquire()
    try:
        cert = smooth.certify(x, n0, n, alpha, seed=seed, progress=step)
    finally:
        bundle.lock.release()
    return cert, cert.counts


def top_counts(counts: np.ndarray, classes: list[str], k: int = 3) -> dict[str, int]:
    order = np.argsort(-counts, kind="stable")[:k]
    return {classes[i]: int(counts[i]) for i in order if counts[i] > 0}


def certificate_row(name: str, label: int | None, cert: Certificate, counts: np.ndarray, classes: list[str],
                    sigma: float) -> dict[str, Any]:
    """One table row for a certified image; `predict`/`label`/`radius` as in Cohen's TSV."""
    return {"image": name, "label": -1 if label is None else label,
            "true class": "?" if label is None else classes[label], "predict": cert.prediction,
            "prediction": "abstain" if cert.prediction == ABSTAIN else classes[cert.prediction],
            "radius": round(cert.radius, 4), "p_A (lower)": round(cert.p_a_lower, 4),
            "count_A": cert.count_a, "n": cert.n, "sigma": sigma,
            "top counts": ", ".join(f"{c}: {v}" for c, v in top_counts(counts, classes).items())}


def session_results(rows: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The session's labelled certifications as Cohen-style tables (one per σ) for the analysis plots."""
    frame = pd.DataFrame([r for r in rows if r["label"] >= 0])
    out = {}
    if frame.empty:
        return out
    for sigma, g in frame.groupby("sigma"):
        df = pd.DataFrame({"idx": range(len(g)), "label": g["label"].to_numpy(), "predict": g["predict"].to_numpy(),
                           "radius": g["radius"].to_numpy(float)})
        df["correct"] = (df["predict"] == df["label"]).astype(int)
        df.attrs["config"] = {"sigma": float(sigma)}
        out[f"this session σ={sigma:g} ({len(g)} images)"] = df
    return out


def result_files(roots: list[Path] | None = None) -> list[Path]:
    """Certification TSVs shipped in assets/results and written under the runs directory."""
    files: list[Path] = []
    for root in roots or [ASSETS / "results", runs_dir()]:
        if root.is_dir():
            files += sorted(p for p in root.rglob("*.tsv") if p.is_file())
    return files


def load_results(paths: list[Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Read result files, skipping (and reporting) the ones that are not certification tables."""
    from ..analysis import merge_results, read_results

    good, problems = [], []
    for p in paths:
        try:
            read_results(p)
            good.append(p)
        except (CadisError, ValueError, pd.errors.ParserError) as e:
            problems.append(f"{p.name}: {e}")
    return (merge_results(good) if good else {}), problems
