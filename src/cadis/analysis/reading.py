"""Reading certification TSVs (ours or Cohen et al.'s) into checked tables; `tables` summarizes them.

A file's σ, N and α come from its sidecar (or, for a file without one, from what the caller is told), and every
row must agree with them: a row is refused, with its file and line, when it claims another σ or α, more
draws than N, impossible counts, or (Cohen's format, without counts) a radius beyond what N draws can certify.
`correct` is always recomputed from predict == label, because some older tools wrote a running total there.
Where a file keeps the counts (count_a, n), p_A's lower bound and the radius are recomputed from them at full
precision, so no rounding in the file can lift an image over a radius; `alpha=` re-certifies the counts
offline at another level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta, norm

from cadis.certification.output import find_sidecar, read_sidecar, sidecar_path
from cadis.certification.parameters import MAX_DRAWS, parameter_problem
from cadis.errors import CadisError, quote

# Sidecar keys that may differ between the shards of one run: where and when each ran, and each process' own
# timings behind `auto` (the choice itself is in "acceleration", which must agree).
_SHARD_KEYS = {"shard", "versions", "created", "precision_auto", "compile_auto"}
REQUIRED = ("idx", "label", "predict", "radius")
# Columns that must hold numbers (where present): whole numbers, and finite reals.
_INTEGER_COLUMNS = ("idx", "label", "predict", "count_a", "n")
_REAL_COLUMNS = ("radius", "p_a_lower", "sigma", "alpha")
SETTINGS = ("sigma", "n", "alpha")
# How a caller names each setting for files without a sidecar (`cadis analyze`'s flags).
FLAGS = {"sigma": "--sigma", "n": "--n", "alpha": "--file-alpha"}
COHEN_ROUNDING = 5e-3  # Cohen's format writes radii to 3 significant digits, rounded to nearest


def read_results(path: str | Path, alpha: float | None = None, settings: dict[str, Any] | None = None,
                 need_settings: bool = False) -> pd.DataFrame:
    """One result file as a DataFrame; its sidecar configuration (if any) is in `df.attrs['config']`.

    Anything that is not a result file, and any row that cannot be read or disagrees with the run's σ, N and
    α, is a CadisError naming it. Those come from the sidecar; `settings` ({"sigma", "n", "alpha"}) stands in
    for a missing one (and must agree with one that is there). With `need_settings`, a file whose σ, N and α
    are not all known is refused. With count columns, p_a_lower and radius are recomputed (see `recertify`);
    `alpha` re-certifies at that level instead of the file's."""
    path = Path(path)
    df = _deduplicated(_typed(_read_table(path), path))
    side = find_sidecar(path)
    config = {} if side is None else read_sidecar(
        side, path, "restore it, or move it away and give the run's settings (--sigma, --n, --file-alpha)")
    known, sources = _settings(path, side, config, settings or {}, need_settings)
    df.attrs["config"] = config if side is not None else {k: known[k] for k in known}
    _check_rows(df, path, known, sources, bool(config.get("adaptive")))
    df["correct"] = (df["predict"] == df["label"]).astype(int)
    df.attrs["label"] = config.get("label") or path.stem.split(".shard")[0]
    df = recertify(df, alpha, path)
    if "count_a" not in df and len(known) == len(SETTINGS):
        _cap_radii(df, path, known)
    return df


def _settings(path: Path, side: Path | None, config: dict[str, Any], given: dict[str, Any],
              need: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's σ, N and α as far as they are known (the sidecar's, else `given`), and where each came from."""
    known, sources = {}, {}
    for key in SETTINGS:
        value, source, flag = config.get(key), side.name if side else "", given.get(key)
        if value is None:
            value, source = flag, FLAGS[key]
        elif flag is not None and flag != value:
            shown = value if isinstance(value, (int, float)) else quote(value)
            raise CadisError(f"{FLAGS[key]} {flag} disagrees with {side}, which gives {key}={shown}; leave the flag "
                             "out: the sidecar records the run.")
        if value is None:
            continue
        problem = parameter_problem(key, value)
        if problem:
            raise CadisError(f"{path}: the {key} that {source} gives {problem}; restore the sidecar.")
        known[key], sources[key] = value, source
    if need and len(known) < len(SETTINGS):
        where = f"its sidecar {side.name} does not give" if side else f"it has no sidecar ({sidecar_path(path).name})"
        lacking = " ".join(f"{FLAGS[k]} {k.upper()}" for k in SETTINGS if k not in known)
        raise CadisError(f"{path}: {where} the run's σ, N and α, so its rows cannot be checked; restore the "
                         f"sidecar, or give them: {lacking}.")
    return known, sources


def _refuse_first(df: pd.DataFrame, path: Path, bad: np.ndarray, why) -> None:
    """A CadisError naming the first row where `bad` holds, with `why(i)` saying what is wrong with it."""
    if bad.any():
        i = int(np.argmax(bad))
        raise CadisError(f"{path} line {df.attrs['lines'][i]}: {why(i)}; delete or repair that row.")


def _check_rows(df: pd.DataFrame, path: Path, known: dict[str, Any], sources: dict[str, str],
                adaptive: bool) -> None:
    """Refuse rows that disagree with the run's settings (or, where none is known, with each other) and rows
    no certification can write: a negative radius, p_A outside [0, 1], a label below 0, a prediction below -1."""
    for key in ("sigma", "alpha"):
        if key not in df:
            continue
        values = df[key].to_numpy(float)
        if key in known:
            _refuse_first(df, path, values != known[key], lambda i, k=key, v=values: (
                f"{k} {v[i]:g} differs from the run's {k}={known[k]:g} ({sources[k]})"))
            continue
        _refuse_first(df, path, values != values[0], lambda i, k=key, v=values: (
            f"{k} {v[i]:g} differs from line {df.attrs['lines'][0]}'s {v[0]:g}: a file holds one run"))
        problem = parameter_problem(key, float(values[0]))
        _refuse_first(df, path, np.full(len(df), problem is not None), lambda i, k=key, why=problem: f"{k} {why}")
    if "n" in df:
        n = df["n"].to_numpy()
        if "n" in known:
            cap = int(known["n"])
            bad, rule = ((n > cap), "at most") if adaptive else ((n != cap), "exactly")
            _refuse_first(df, path, bad, lambda i: f"n={n[i]} but the run draws {rule} N={cap} ({sources['n']})")
        else:
            _refuse_first(df, path, (n < 1) | (n > MAX_DRAWS), lambda i: f"n={n[i]} is not a possible number of draws")
    radius = df["radius"].to_numpy(float)
    _refuse_first(df, path, radius < 0, lambda i: f"radius {radius[i]:g} is negative")
    if "p_a_lower" in df:
        p = df["p_a_lower"].to_numpy(float)
        _refuse_first(df, path, (p < 0) | (p > 1), lambda i: f"p_a_lower {p[i]:g} is not a probability")
    label, predict = df["label"].to_numpy(), df["predict"].to_numpy()
    _refuse_first(df, path, label < 0, lambda i: f"label {label[i]} is not a class (>= 0)")
    _refuse_first(df, path, predict < -1, lambda i: f"predict {predict[i]} is neither a class nor -1 (abstain)")


def _cap_radii(df: pd.DataFrame, path: Path, known: dict[str, Any]) -> None:
    """Cohen's format (radii without counts): refuse a radius beyond what N draws can certify at σ and α, and
    cut one above it by no more than the format's rounding down to it."""
    from cadis.certification.smoothing import max_radius

    cap = max_radius(known["sigma"], int(known["n"]), known["alpha"])
    radius = df["radius"].to_numpy(float)
    _refuse_first(df, path, radius > cap * (1 + COHEN_ROUNDING), lambda i: (
        f"radius {radius[i]:g} is beyond {cap:.4f}, the largest that N={known['n']} draws certify at "
        f"σ={known['sigma']:g} and α={known['alpha']:g}"))
    df["radius"] = np.minimum(radius, cap)


def _deduplicated(df: pd.DataFrame, where: list[str] | None = None) -> pd.DataFrame:
    """`df` with each image once: rows of one image that agree (the time column aside) are kept once, rows that
    disagree are refused, naming both (`where[i]` says where row i comes from; default: its file and line)."""
    where = where or [f"{df.attrs['source']} line {line}" for line in df.attrs["lines"]]
    repeated = df.duplicated("idx", keep=False).to_numpy()
    if not repeated.any():
        return df
    columns = [c for c in df.columns if c not in ("time", "correct")]
    first: dict[int, tuple[int, tuple]] = {}
    keep = np.ones(len(df), bool)
    for i in np.flatnonzero(repeated):
        image, row = int(df["idx"].iat[i]), tuple(df[columns].iloc[i])
        j, earlier = first.setdefault(image, (i, row))
        if earlier != row:
            raise CadisError(f"{where[j]} and {where[i]} give image {image} different rows; a run certifies each "
                             "image once: delete the wrong row (or leave out the file it comes from).")
        keep[i] = j == i
    kept = df[keep].reset_index(drop=True)
    kept.attrs = {**df.attrs, "lines": [line for line, k in zip(df.attrs.get("lines", []), keep) if k]}
    return kept


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
                             f"({quote(line, 40)}): {what}.")
    table = pd.DataFrame([line.split("\t") for _, line in body], columns=header, dtype=str)
    table.attrs["lines"] = [number for number, _ in body]
    table.attrs["source"] = str(path)
    return table


def _typed(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The numeric columns as numbers; the first cell that is not one is named with its line."""
    df = table.copy()
    for column in [*_INTEGER_COLUMNS, *_REAL_COLUMNS]:
        if column not in df:
            continue
        values = pd.to_numeric(df[column].str.strip(), errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float))
        if column in _INTEGER_COLUMNS:  # whole, and small enough to be one exactly (counts of 1e30 are not)
            bad |= ~bad & ((values.fillna(0) % 1 != 0) | (values.abs() > 2**53)).to_numpy()
        if bad.any():
            k = int(np.argmax(bad))
            kind = "a whole number" if column in _INTEGER_COLUMNS else "a finite number"
            raise CadisError(f"{path} line {table.attrs['lines'][k]}: {column} {quote(table[column].iloc[k])} is not "
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
        raise CadisError(f"{path}: its sidecar {sidecar_path(path).name} is missing (or names an adaptive "
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


def _shards(config: dict[str, Any]) -> int | None:
    """How many shards the run of a sidecar was split into (1: not split), or None when it does not say."""
    shard = config.get("shard")
    if shard is None:
        return 1 if config.get("n") is not None else None  # sidecars of unsharded runs wrote null
    text = str(shard).removeprefix("merged from ")
    count = text.rpartition("/")[2]
    return int(count) if count.isdigit() else None


def merge_results(paths: list[str | Path], alpha: float | None = None, settings: dict[str, Any] | None = None,
                  need_settings: bool = False) -> dict[str, pd.DataFrame]:
    """Read files (see `read_results`) and merge those of one run into one table per label: shards whose
    configurations agree, of a run split into the same number of shards. Rows of one image in two files must
    agree; files of one label with another configuration stay apart, as runs of their own."""
    groups: dict[str, list[tuple[Path, pd.DataFrame]]] = {}
    keys: dict[str, str] = {}
    for p in paths:
        df = read_results(p, alpha, settings, need_settings)
        identity = json.dumps({k: v for k, v in df.attrs["config"].items() if k not in _SHARD_KEYS}, sort_keys=True)
        label = df.attrs["label"]
        if label in keys and keys[label] != identity:
            label = f"{label} ({Path(p).stem})"
        keys[label] = identity
        groups.setdefault(label, []).append((Path(p), df))
    merged = {}
    for label, files in groups.items():
        counts = {p: _shards(df.attrs["config"]) for p, df in files}
        if len(set(counts.values()) - {None}) > 1:
            shown = ", ".join(f"{p.name}: {k}" for p, k in counts.items() if k is not None)
            raise CadisError(f"The files of {label!r} come from runs split into different numbers of shards "
                             f"({shown}); shards merge only within one run. Give the shards of one run.")
        dfs = [df for _, df in files]
        where = [f"{df.attrs['source']} line {line}" for df in dfs for line in df.attrs["lines"]]
        df = _deduplicated(pd.concat(dfs, ignore_index=True), where).sort_values("idx").reset_index(drop=True)
        df.attrs = {**dfs[0].attrs, "label": label, "unknown_class": sum(d.attrs["unknown_class"] for d in dfs)}
        df.attrs.pop("lines", None)
        merged[label] = df
    return merged
