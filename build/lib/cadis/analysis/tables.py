"""Certified accuracy, ACR and abstain rate from certification TSVs (ours or Cohen et al.'s).

Certified accuracy at r is the share of images that are correct with radius >= r; an abstain
counts as wrong. `correct` is always recomputed from predict == label, because some older
tools wrote a running total there. Where a file keeps the counts (count_a, n), p_A's lower bound and
the radius are recomputed from them at full precision, so no rounding in the file can lift an image
over a radius; `alpha=` re-certifies the counts offline at another level.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import beta, binomtest, norm

from cadis.errors import CadisError

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
_SHARD_KEYS = {"shard", "versions", "created"}
REQUIRED = ("idx", "label", "predict", "radius")
# Columns that must hold numbers (where present): whole numbers, and finite reals.
_INTEGER_COLUMNS = ("idx", "label", "predict", "count_a", "n")
_REAL_COLUMNS = ("radius", "p_a_lower", "sigma", "alpha")


def read_results(path: str | Path, alpha: float | None = None) -> pd.DataFrame:
    """One result file as a DataFrame; its sidecar configuration (if any) is in `df.attrs['config']`.

    Anything that is not a result file, and any row that cannot be read, is a CadisError naming it.
    With count columns, p_a_lower and radius are recomputed (see `recertify`); `alpha` re-certifies at that
    level instead of the file's."""
    path = Path(path)
    rows = _read_table(path)
    df = _typed(rows, path)
    df["correct"] = (df["predict"] == df["label"]).astype(int)
    side = path.with_suffix(".json")
    config = {}
    if side.is_file():
        try:
            config = json.loads(side.read_text())
        except (ValueError, UnicodeDecodeError):
            raise CadisError(f"{side} (the sidecar of {path.name}) is not valid JSON; restore it or move it "
                             "away to read the TSV alone.") from None
        if not isinstance(config, dict):
            raise CadisError(f"{side} (the sidecar of {path.name}) is not a configuration; restore it or move it "
                             "away to read the TSV alone.")
    df.attrs["config"] = config
    df.attrs["label"] = config.get("label") or path.stem.split(".shard")[0]
    return recertify(df, alpha, path)


def _read_table(path: Path) -> pd.DataFrame:
    """The TSV's cells as strings, after checking that it is a table with our columns and whole rows."""
    if path.is_dir():
        raise CadisError(f"{path} is a directory; give result files, e.g. {path}/*.tsv.")
    if not path.is_file():
        raise CadisError(f"Result file {path} does not exist.")
    raw = path.read_bytes()
    hint = "is it a certification TSV (certify --out)?"
    if not raw.strip():
        raise CadisError(f"{path} is empty; {hint}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or "\0" in text:
        raise CadisError(f"{path} is not a text file; {hint}")
    lines = text.splitlines()
    header = lines[0].split("\t")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CadisError(f"{path} lacks the columns {missing}; {hint}")
    body = [(number, line) for number, line in enumerate(lines[1:], start=2) if line.strip()]
    if not body:
        raise CadisError(f"{path} has a header but no rows yet; certify some images first.")
    for number, line in body:
        if line.count("\t") != len(header) - 1:
            torn = number == len(lines) and not text.endswith("\n")
            what = ("its last row is torn (a run killed mid-write?); re-run the same certify command to repair it"
                    if torn else "delete or repair that row")
            raise CadisError(f"{path} line {number} has {line.count(chr(9)) + 1} of {len(header)} fields "
                             f"({line[:40]!r}): {what}.")
    table = pd.DataFrame([line.split("\t") for _, line in body], columns=header, dtype=str)
    table.attrs["lines"] = [number for number, _ in body]
    return table


def _typed(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The numeric columns as numbers; the first cell that is not one is named with its line."""
    df = table.copy()
    for column in [*_INTEGER_COLUMNS, *_REAL_COLUMNS]:
        if column not in df:
            continue
        values = pd.to_numeric(df[column].str.strip(), errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float))
        if column in _INTEGER_COLUMNS:
            bad |= ~bad & (values.fillna(0) % 1 != 0).to_numpy()
        if bad.any():
            k = int(np.argmax(bad))
            kind = "a whole number" if column in _INTEGER_COLUMNS else "a finite number"
            raise CadisError(f"{path} line {table.attrs['lines'][k]}: {column} {table[column].iloc[k]!r} is not "
                             f"{kind}; delete or repair that row.")
        df[column] = values.astype(int) if column in _INTEGER_COLUMNS else values.astype(float)
    return df


def _lower_bounds(k: np.ndarray, n: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Clopper-Pearson lower bounds, as `smoothing.lower_confidence_bound` computes them, row by row."""
    with np.errstate(all="ignore"):
        p = beta.ppf(level, np.maximum(k, 1), n - k + 1)
    return np.where(k == 0, 0.0, p)


def _levels(df: pd.DataFrame, alpha: float | None, path: Path) -> np.ndarray | None:
    """The level each row's bound is at: α for CERTIFY, the level of the look it stopped at for adaptive
    CERTIFY (from the sidecar). With `alpha`, the same rule at that α. None when the sidecar cannot tell."""
    config = df.attrs["config"]
    target = df["alpha"].to_numpy(float) if alpha is None else np.full(len(df), alpha)
    if not config:
        return None
    adaptive = config.get("adaptive")
    if not adaptive:
        return target
    from cadis.certification.adaptive import RULE, look_levels, look_schedule

    if adaptive.get("rule") != RULE or "n" not in config:
        return None
    looks = look_schedule(int(config["n"]), int(adaptive.get("first_look", 100)))
    position = {look: k for k, look in enumerate(looks)}
    levels = np.empty(len(df))
    for i, (n, a) in enumerate(zip(df["n"], target)):
        if n not in position:
            raise CadisError(f"{path} line {df.attrs['lines'][i]}: n={n} is not a look of the adaptive schedule "
                             f"{looks}; delete or repair that row.")
        levels[i] = look_levels(float(a), len(looks))[position[n]]
    return levels


def recertify(df: pd.DataFrame, alpha: float | None = None, path: str | Path = "results") -> pd.DataFrame:
    """p_a_lower and radius recomputed from count_a and n where the file has them, at the level each row was
    certified at (α, or an adaptive look's level), or at `alpha` instead of the file's.

    A row that claimed a class keeps it if the bound is still >= 1/2 and abstains otherwise. A row that
    abstained stays an abstain: its top class was not written. When re-certifying at a larger α, the number
    of abstains whose bound would now reach 1/2 is in `df.attrs['unknown_class']`. Without a sidecar the
    level of adaptive rows is unknown, so the radius is the smaller of the file's and the one at the file's
    α (a bound at a smaller level is lower); `alpha` then needs the sidecar."""
    path = Path(path)
    df.attrs.setdefault("unknown_class", 0)
    if not {"count_a", "n"} <= set(df.columns) or "sigma" not in df or "alpha" not in df:
        if alpha is not None:
            raise CadisError(f"{path} keeps no counts (count_a, n, sigma, alpha columns; Cohen's format has none), "
                             "so --alpha cannot re-certify it.")
        return df
    k, n = df["count_a"].to_numpy(), df["n"].to_numpy()
    if ((k < 0) | (n < 1) | (k > n)).any():
        i = int(np.argmax((k < 0) | (n < 1) | (k > n)))
        raise CadisError(f"{path} line {df.attrs['lines'][i]}: count_a={k[i]} of n={n[i]} draws is impossible; "
                         "delete or repair that row.")
    levels = _levels(df, alpha, path)
    if levels is None and alpha is not None:
        raise CadisError(f"{path}: its sidecar {path.with_suffix('.json').name} is missing (or names an adaptive "
                         "rule this version does not know), so the level of each row is unknown and --alpha "
                         "cannot re-certify it; restore the sidecar.")
    p = _lower_bounds(k, n, df["alpha"].to_numpy(float) if levels is None else levels)
    sigma = df["sigma"].to_numpy(float)
    claimed = df["predict"].to_numpy() != -1
    certifies = p >= 0.5
    with np.errstate(divide="ignore"):
        radius = np.where(claimed & certifies, sigma * norm.ppf(np.where(certifies, p, 0.5)), 0.0)
    if levels is None:
        radius = np.minimum(radius, df["radius"].to_numpy(float))
        p = np.minimum(p, df["p_a_lower"].to_numpy(float)) if "p_a_lower" in df else p
    df["p_a_lower"], df["radius"] = p, radius
    df["predict"] = np.where(claimed & ~certifies, -1, df["predict"])
    df["correct"] = (df["predict"] == df["label"]).astype(int)
    if alpha is not None:
        df.attrs["unknown_class"] = int((~claimed & certifies).sum())
        df.attrs["alpha"] = alpha
    return df


def merge_results(paths: list[str | Path], alpha: float | None = None) -> dict[str, pd.DataFrame]:
    """Read files and merge those of one run (shards, same configuration) into one table per label."""
    groups: dict[str, list[pd.DataFrame]] = {}
    keys: dict[str, str] = {}
    for p in paths:
        df = read_results(p, alpha)
        identity = json.dumps({k: v for k, v in df.attrs["config"].items() if k not in _SHARD_KEYS}, sort_keys=True)
        label = df.attrs["label"]
        if label in keys and keys[label] != identity:
            label = f"{label} ({Path(p).stem})"
        keys[label] = identity
        groups.setdefault(label, []).append(df)
    merged = {}
    for label, dfs in groups.items():
        df = pd.concat(dfs).drop_duplicates("idx").sort_values("idx").reset_index(drop=True)
        df.attrs = {**dfs[0].attrs, "label": label, "unknown_class": sum(d.attrs["unknown_class"] for d in dfs)}
        merged[label] = df
    return merged


def certified(df: pd.DataFrame, r: float, suffix: str = "") -> pd.Series:
    """Per image: correct and certified at radius r (columns `correct{suffix}`, `radius{suffix}`)."""
    return df[f"correct{suffix}"].astype(bool) & (df[f"radius{suffix}"] >= r)


def certified_accuracy(df: pd.DataFrame, radii) -> np.ndarray:
    """Share of images with correct prediction and radius >= r, for each r."""
    correct, radius = df["correct"].to_numpy(bool), df["radius"].to_numpy(float)
    return np.array([(correct & (radius >= r)).mean() for r in radii])


def summarize(df: pd.DataFrame, radii=DEFAULT_RADII) -> dict[str, float]:
    """Certified accuracy at each radius, ACR, abstain rate and (smoothed) clean accuracy."""
    acc = certified_accuracy(df, radii)
    sigma = df.attrs.get("config", {}).get("sigma") or (df["sigma"].iloc[0] if "sigma" in df else np.nan)
    row = {"images": len(df), "sigma": sigma}
    row.update({f"r={r:g}": float(a) for r, a in zip(radii, acc)})
    row["ACR"] = float((df["radius"] * df["correct"]).mean())
    row["abstain"] = float((df["predict"] == -1).mean())
    row["clean_acc"] = float(df["correct"].mean())
    return row


def summary_table(results: dict[str, pd.DataFrame], radii=DEFAULT_RADII, envelope: bool = False) -> pd.DataFrame:
    """One row per run; with `envelope`, a last row with the best value over runs at each radius."""
    table = pd.DataFrame({label: summarize(df, radii) for label, df in results.items()}).T
    if envelope and len(results) > 1:
        cols = [f"r={r:g}" for r in radii]
        table.loc["best-σ envelope", cols] = table[cols].max()
    table.index.name = "run"
    return table


def envelope_table(results: dict[str, pd.DataFrame], radii=DEFAULT_RADII,
                   group: Callable[[str], str] | None = None) -> pd.DataFrame:
    """The best-σ envelope per method: at each radius, the best certified accuracy over a run's noise levels,
    and the σ that gives it (as the paper and Carlini et al. tabulate). Runs are grouped by their sidecar's
    `run` (else `method`), mapped through `group` if given (e.g. to pool a method's recipes); a group needs the
    same images at every σ to be comparable. attrs["sigma"] and attrs["run"] say where each cell comes from."""
    groups: dict[str, list[pd.DataFrame]] = {}
    names: dict[str, list[str]] = {}
    for label, df in results.items():
        config = df.attrs.get("config", {})
        run = config.get("run") or config.get("method") or label
        key = group(run) if group else run
        groups.setdefault(key, []).append(df)
        names.setdefault(key, []).append(run)
    acc, best_sigma, best_run = {}, {}, {}
    for name, frames in groups.items():
        if len({tuple(sorted(df["idx"])) for df in frames}) > 1:
            raise CadisError(f"The runs of {name!r} certify different images at different σ; an envelope over "
                             "them would mix test sets. Certify the same indices at every σ.")
        curves = np.array([certified_accuracy(df, radii) for df in frames])  # [σ, radius]
        sigmas = [df.attrs.get("config", {}).get("sigma", np.nan) for df in frames]
        best = curves.argmax(0)
        acc[name] = {f"r={r:g}": curves[b, i] for i, (r, b) in enumerate(zip(radii, best))}
        best_sigma[name] = {f"r={r:g}": sigmas[b] for r, b in zip(radii, best)}
        best_run[name] = {f"r={r:g}": names[name][b] for r, b in zip(radii, best)}
    table = pd.DataFrame(acc).T
    table.index.name = "run"
    table.attrs["sigma"] = pd.DataFrame(best_sigma).T
    table.attrs["run"] = pd.DataFrame(best_run).T
    return table


def per_class_accuracy(results: dict[str, pd.DataFrame], radius: float = 0.0,
                       classes: list[str] | None = None) -> pd.DataFrame:
    """Certified accuracy at `radius` per true class (columns; names from `classes`), one row per run.
    An average can hide a class that a method gives up; this table shows it."""
    rows = {}
    for label, df in results.items():
        hit = certified(df, radius)
        rows[label] = hit.groupby(df["label"]).mean()
    table = pd.DataFrame(rows).T.sort_index(axis=1)
    if classes is not None:
        table.columns = [classes[int(c)] if 0 <= int(c) < len(classes) else str(c) for c in table.columns]
    table.index.name = "run"
    return table


def summary_markdown(table: pd.DataFrame) -> str:
    """`summary_table` as markdown: image counts as integers, σ with 2 decimals, rates with 3."""
    return table.to_markdown(floatfmt=["", ".0f", ".2f", *[".3f"] * (len(table.columns) - 2)])


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, radii=DEFAULT_RADII) -> pd.DataFrame:
    """Run `a` against run `b` on the images both certified, radius by radius.

    `a_only` / `b_only` count the images certified at r by one run and not the other; `p_value` is the
    exact two-sided McNemar test (a binomial test on the discordant images at p = 1/2). Runs certified
    on shared draws share the noise, so the test sees only what the classifiers changed.
    """
    config_a, config_b = a.attrs.get("config", {}), b.attrs.get("config", {})
    for key in ("dataset", "split"):
        if key in config_a and key in config_b and config_a[key] != config_b[key]:
            raise CadisError(f"The runs certified different data ({key} {config_a[key]!r} vs {config_b[key]!r}); "
                             "a paired comparison needs the same images.")
    joined = a.merge(b, on="idx", suffixes=("_a", "_b"))
    if joined.empty:
        raise CadisError("The two runs have no image in common; a paired comparison needs the same images.")
    rows = {}
    for r in radii:
        hit_a, hit_b = certified(joined, r, "_a"), certified(joined, r, "_b")
        a_only, b_only = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
        p_value = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        rows[f"r={r:g}"] = {"images": len(joined), "a_only": a_only, "b_only": b_only,
                            "difference": (a_only - b_only) / len(joined), "p_value": float(p_value)}
    return pd.DataFrame.from_dict(rows, orient="index")


def certified_accuracy_figure(results: dict[str, pd.DataFrame], max_radius: float | None = None,
                              envelope: bool = False):
    """Plotly figure: certified accuracy vs radius, one line per run (and the best-σ envelope)."""
    import plotly.graph_objects as go

    top = max_radius or max(float(df["radius"].max()) for df in results.values()) * 1.05 + 1e-3
    grid = np.linspace(0, top, 200)
    fig = go.Figure()
    curves = []
    for label, df in results.items():
        curves.append(certified_accuracy(df, grid))
        fig.add_trace(go.Scatter(x=grid, y=curves[-1], mode="lines", name=label, line_shape="hv"))
    if envelope and len(curves) > 1:
        fig.add_trace(go.Scatter(x=grid, y=np.max(curves, 0), mode="lines", name="best-σ envelope",
                                 line=dict(dash="dash", color="black"), line_shape="hv"))
    fig.update_layout(xaxis_title="ℓ2 radius", yaxis_title="certified accuracy", yaxis_range=[0, 1],
                      template="plotly_white", legend_title="run")
    return fig
