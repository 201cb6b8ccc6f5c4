"""Certification in the apps: CERTIFY one image (with one or several classifiers on the same draws) under the
shared lock, its table row, the session's runs as result tables, which runs to compare by default, and the result
files shipped in experiments/results or written under the runs directory. Also the words both apps use for the
symbols (σ, N, N0, α) and for what a certificate means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from apps.ui.hosting import SHIPPED_RESULTS
from apps.ui.models import OFF_THE_SHELF, ModelBundle, runs_dir
from apps.ui.uploads import check_run_parameters
from cadis.certification.smoothing import ABSTAIN, Certificate, max_radius
from cadis.errors import CadisError

# (label, one line of help) for each symbol, the same in both apps; the formulas wait in FORMULAS
WORDS = {
    "sigma": ("Noise level σ", "How much random noise is added to each copy of the image. More noise allows "
              "larger radii, but the copies get harder to recognise."),
    "n": ("Number of noisy copies N", "How many noisy copies vote on the class. More copies allow a larger radius "
          "and take longer."),
    "n0": ("Copies used to pick the class N0", "A separate, smaller set of noisy copies that picks the class the N "
           "copies then vote on."),
    "alpha": ("Error probability α", "The chance that a certificate is wrong only because the noisy copies were "
              "unlucky: 0.001 is 1 in 1000."),
}
FORMULAS = (
    "Each noisy copy is the image plus Gaussian noise of standard deviation σ, denoised and classified. The N0 "
    "copies pick the top class A. Of the N copies, count_A vote for A; the Clopper–Pearson interval turns this into "
    "**p_A**, a lower bound on the probability of A that holds with probability at least 1 − α. If p_A > ½, the "
    "certified ℓ2 radius is **R = σ·Φ⁻¹(p_A)** (Φ⁻¹: the inverse of the standard normal distribution function); "
    "otherwise the smoothed classifier abstains. When all N copies agree, p_A = α^(1/N), so no radius exceeds "
    "σ·Φ⁻¹(α^(1/N)). This is CERTIFY (Cohen et al., 2019).")
MEANING = ("A certificate means that the vote of the noisy copies cannot change for any change to the image "
           "smaller than the radius (ℓ2 distance, with probability 1 − α); it does not mean the vote is right.")
DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def certificate_verdict(cert: Certificate, label: int | None, classes: list[str]) -> str:
    """What one certificate says, in words; a certified answer that differs from a known true class says so, so a
    confident wrong answer never reads like a success (`label` None or negative: unknown)."""
    if cert.prediction == ABSTAIN:
        return "abstained: no certificate"
    if label is None or label < 0:
        return "certified (true class unknown, so it may be wrong)"
    if cert.prediction == label:
        return "certified and correct"
    return f"⚠ certified, but WRONG: the true class is {classes[label]}"


def known_classes_note(classes: list[str], dataset: str) -> str:
    """What an upload is up against: the model answers with one of its classes, whatever the picture shows."""
    name = DATASET_NAMES.get(dataset, dataset)
    return (f"The model knows only the {len(classes)} {name} classes ({', '.join(classes)}). Whatever you upload, "
            "it answers with one of them or abstains, so a picture of anything else gets a wrong answer, possibly "
            "a certified one.")


def _counter(total: int, progress):
    done = 0

    def step(b: int) -> None:
        nonlocal done
        done += b
        if progress is not None:
            progress(done, total)
    return step


def certify_one(bundle: ModelBundle, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, seed: int = 0,
                mode: str = "one-shot", steps: int = 10, progress=None, batch_size: int | None = None,
                on_wait=None, on_position=None) -> tuple[Certificate, np.ndarray]:
    """CERTIFY one image under the bundle's lock; also returns the class counts of the N draws.

    `progress(done, total)` is called after each batch; `on_wait()` once if another session holds the lock, and
    `on_position(ahead)` whenever the number of jobs ahead changes."""
    check_run_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    smooth = bundle.smoothing(sigma, mode, steps, batch_size)
    with bundle.lock.turn(on_wait, on_position):
        cert = smooth.certify(x, n0, n, alpha, seed=seed, progress=_counter(n0 + n, progress))
    return cert, cert.counts


def certify_many(bundle: ModelBundle, x: torch.Tensor, classifiers: list[torch.nn.Module], sigma: float, n0: int,
                 n: int, alpha: float, seed: int = 0, progress=None, batch_size: int | None = None,
                 on_wait=None, on_position=None) -> list[Certificate]:
    """CERTIFY one image with several classifiers behind the bundle's denoiser on the same draws (each draw
    denoised once): certificate k is what `certify_one` gives with classifier k, and the comparison is paired."""
    check_run_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    if len(classifiers) == 1:
        smooth = bundle.smoothing(sigma, batch_size=batch_size, classifier=classifiers[0])
        with bundle.lock.turn(on_wait, on_position):
            return [smooth.certify(x, n0, n, alpha, seed=seed, progress=_counter(n0 + n, progress))]
    smooth = bundle.smoothing(sigma, batch_size=batch_size)
    with bundle.lock.turn(on_wait, on_position):
        return smooth.certify_classifiers(x, classifiers, n0, n, alpha, seed=seed,
                                          progress=_counter(n0 + n, progress))


def top_counts(counts: np.ndarray, classes: list[str], k: int = 3) -> dict[str, int]:
    order = np.argsort(-counts, kind="stable")[:k]
    return {classes[i]: int(counts[i]) for i in order if counts[i] > 0}


def certificate_row(name: str, label: int | None, cert: Certificate, counts: np.ndarray, classes: list[str],
                    sigma: float, *, classifier: str = OFF_THE_SHELF, n0: int | None = None,
                    alpha: float | None = None, idx: int | None = None, seed: int | None = None,
                    precision: str | None = None) -> dict[str, Any]:
    """One table row for a certified image; `predict`/`label`/`radius` as in Cohen's TSV, and what produced it:
    the classifier, σ, N0, N, α and the precision the models ran at (`idx`: the test-set index, None for an
    upload; `seed`: its draws' seed)."""
    return {"image": name, "classifier": classifier, "label": -1 if label is None else label,
            "true class": "?" if label is None else classes[label], "predict": cert.prediction,
            "prediction": "abstain" if cert.prediction == ABSTAIN else classes[cert.prediction],
            "certificate": certificate_verdict(cert, label, classes),
            "radius": round(cert.radius, 4), "p_A (lower)": round(cert.p_a_lower, 4),
            "count_A": cert.count_a, "n": cert.n, "sigma": sigma, "N0": n0, "alpha": alpha,
            "idx": -1 if idx is None else idx, "seed": seed, "precision": precision,
            "top counts": ", ".join(f"{c}: {v}" for c, v in top_counts(counts, classes).items())}


SESSION_KEYS = ["classifier", "sigma", "n", "alpha"]


def session_label(classifier: str, sigma: float, n: int, alpha: float | None, images: int) -> str:
    return (f"this session: {classifier}, σ={sigma:g}, N={n}"
            f"{'' if alpha is None else f', α={alpha:g}'} ({images} image{'s' * (images != 1)})")


def session_results(rows: list[dict[str, Any]], methods: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """The session's labelled certifications as Cohen-style tables for the analysis plots: one per classifier, σ,
    N and α, labelled with all four. `idx` is the test-set index where every image of a run has one (such a run
    pairs image by image with result files); `methods` maps classifier names to their method (off-the-shelf:
    none)."""
    frame = pd.DataFrame([r for r in rows if r["label"] >= 0])
    out: dict[str, pd.DataFrame] = {}
    if frame.empty:
        return out
    for key in ("classifier", "alpha", "idx", "seed", "N0"):
        if key not in frame:
            frame[key] = {"classifier": OFF_THE_SHELF, "idx": -1}.get(key)
    frame["alpha"] = frame["alpha"].astype(object).where(frame["alpha"].notna(), None)
    for (classifier, sigma, n, alpha), g in frame.groupby(SESSION_KEYS, sort=False, dropna=False):
        g = g.drop_duplicates("idx", keep="last") if (g["idx"] >= 0).all() else g
        indexed = bool((g["idx"] >= 0).all())
        df = pd.DataFrame({"idx": g["idx"].to_numpy() if indexed else np.arange(len(g)),
                           "label": g["label"].to_numpy(), "predict": g["predict"].to_numpy(),
                           "radius": g["radius"].to_numpy(float)})
        df["correct"] = (df["predict"] == df["label"]).astype(int)
        alpha = None if alpha is None or pd.isna(alpha) else float(alpha)
        label = session_label(classifier, float(sigma), int(n), alpha, len(g))
        method = "none" if classifier == OFF_THE_SHELF else (methods or {}).get(classifier)
        df.attrs["config"] = {"sigma": float(sigma), "n": int(n), "alpha": alpha, "classifier": classifier,
                              "method": method, "session": True, "indexed": indexed, "label": label,
                              "seeds": {int(i): f"{seed}/{n0}" for i, seed, n0 in zip(g["idx"], g["seed"], g["N0"])}
                              if indexed else {}}
        df.attrs["label"] = label
        out[label] = df
    return out


def _config(df: pd.DataFrame) -> dict[str, Any]:
    return df.attrs.get("config", {})


def is_baseline(df: pd.DataFrame) -> bool:
    """Whether a run certifies the off-the-shelf classifier (method `none`)."""
    return _config(df).get("method") == "none"


def baselines_for(name: str, runs: dict[str, pd.DataFrame]) -> list[str]:
    """The `none` runs that match run `name`: the same σ; the session's own (same N and α, so the same draws)
    first, then the shipped ones."""
    cfg = _config(runs[name])
    same = [k for k, df in runs.items()
            if k != name and is_baseline(df) and _config(df).get("sigma") == cfg.get("sigma")]
    return sorted(same, key=lambda k: (not _config(runs[k]).get("session"),
                                        (_config(runs[k]).get("n"), _config(runs[k]).get("alpha"))
                                        != (cfg.get("n"), cfg.get("alpha"))))


def default_runs(session: dict[str, pd.DataFrame], shipped: dict[str, pd.DataFrame], sigma: float) -> list[str]:
    """What the comparison shows first: the session's runs, each with its matching `none` baseline; with no
    session run, the shipped runs at the preset's σ (the `none` baseline first)."""
    runs = {**session, **shipped}
    if session:
        chosen = []
        for k in session:
            chosen += [k, *baselines_for(k, runs)]
        return list(dict.fromkeys(chosen))
    at_sigma = [k for k, df in shipped.items() if _config(df).get("sigma") == sigma] or list(shipped)[:6]
    return sorted(at_sigma, key=lambda k: not is_baseline(shipped[k]))


def is_pairable(df: pd.DataFrame) -> bool:
    """Whether a run knows its images' test-set indices (result files, and session runs of test images)."""
    cfg = _config(df)
    return not cfg.get("session") or bool(cfg.get("indexed"))


DRAW_KEYS = ("seed", "sigma", "n0", "n", "batch_size", "mode", "dataset", "split")


def shared_draws(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two runs were certified on the same noise draws, so that only their classifiers differ: session runs
    with the same σ and N and the same seed and N0 for each common image, or result files whose sidecars agree on
    everything that draws the noise (seed, σ, N0, N, batch size, mode, data)."""
    ca, cb = _config(a), _config(b)
    if ca.get("session") and cb.get("session"):
        common = set(ca.get("seeds", {})) & set(cb.get("seeds", {}))
        return (bool(common) and (ca.get("sigma"), ca.get("n")) == (cb.get("sigma"), cb.get("n"))
                and all(ca["seeds"][i] == cb["seeds"][i] for i in common))
    if ca.get("session") or cb.get("session"):
        return False
    return all(k in ca and k in cb and ca[k] == cb[k] for k in DRAW_KEYS)


def default_pair(chosen: list[str], runs: dict[str, pd.DataFrame]) -> tuple[str, str] | None:
    """Two runs to compare image by image that differ in the classifier only: a run and its `none` baseline at the
    same σ, N and α, preferring ones on the same draws; else the first two pairable runs."""
    pairable = [k for k in chosen if is_pairable(runs[k])]
    if len(pairable) < 2:
        return None
    candidates = []
    for a in pairable:
        if is_baseline(runs[a]):
            continue
        ca = _config(runs[a])
        for b in pairable:
            cb = _config(runs[b])
            if is_baseline(runs[b]) and (cb.get("sigma"), cb.get("n"), cb.get("alpha")) == (
                    ca.get("sigma"), ca.get("n"), ca.get("alpha")):
                candidates.append((not shared_draws(runs[a], runs[b]), not ca.get("session"), a, b))
    if candidates:
        return min(candidates, key=lambda c: c[:2])[2:]
    return pairable[0], pairable[1]


def radius_cap(sigma: float, n: int, alpha: float) -> str:
    """One sentence on the largest radius N draws allow (smoothing.max_radius)."""
    cap = max_radius(sigma, n, alpha)
    return (f"With N = {n} draws and α = {alpha:g}, no image can be certified beyond a radius of **{cap:.3f}** at "
            f"σ = {sigma:g}: even when all {n} draws agree, p_A is only known to be at least α^(1/N) = "
            f"{alpha ** (1 / n):.4f}, and σ·Φ⁻¹({alpha ** (1 / n):.4f}) = {cap:.3f}. More draws raise this cap.")


def result_files(roots: list[Path] | None = None) -> list[Path]:
    """Certification TSVs shipped in experiments/results and written under the runs directory (or under `roots`, e.g.
    `hosting.result_roots(visitor)`)."""
    files: list[Path] = []
    for root in roots or [SHIPPED_RESULTS, runs_dir()]:
        if root.is_dir():
            files += sorted(p for p in root.rglob("*.tsv") if p.is_file())
    return files


def load_results(paths: list[Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Read result files, skipping (and reporting) the ones that are not certification tables."""
    from cadis.analysis.tables import merge_results, read_results

    good, problems = [], []
    for p in paths:
        try:
            read_results(p)
            good.append(p)
        except (CadisError, ValueError, pd.errors.ParserError) as e:
            problems.append(f"{p.name}: {e}")
    return (merge_results(good) if good else {}), problems


def shipped_verdict(results: Path = SHIPPED_RESULTS) -> tuple[pd.DataFrame, str] | None:
    """The embedded benchmark's verdict on the paper's ordering (`results --stage report` writes it), and a caption
    naming the runs, σ, N and α it stands on; None when it was never written."""
    table, side = results / "verdict.csv", results / "verdict.json"
    if not (table.is_file() and side.is_file()):
        return None
    import json

    info = json.loads(side.read_text())
    runs = [r for r in info["runs"] if r.get("run")]  # a run without a name cannot be captioned
    settings = sorted({(r["n0"], r["n"], r["alpha"], r["images"]) for r in runs})
    caption = (f"Paired on the same draws (exact McNemar) per σ, under the `{info['recipe']}` recipe: "
               + ", ".join(sorted({r["run"] for r in runs})) + " at σ = "
               + ", ".join(f"{s:g}" for s in sorted({r["sigma"] for r in runs})) + "; "
               + "; ".join(f"n0 = {n0}, N = {n}, α = {a:g}, {k} test images" for n0, n, a, k in settings)
               + f". Target: ft-cadis at most {100 * info['tolerance']:g} point below either baseline at any radius, "
               f"and ahead of none at r = σ (p < {info['level']:g}). "
               "From `python -m experiments results --stage report`.")
    return pd.read_csv(table, index_col=0, dtype=str, keep_default_na=False), caption
