"""Certify a dataset image by image into a Cohen-compatible TSV that resumes where it stopped.

Columns: idx label predict radius correct time count_a n p_a_lower sigma alpha.
The configuration goes in a sidecar JSON (FILE.json). Each row is flushed as soon as it is
computed; re-running the same command skips the indices already in the file. Each image has
its own seed (seed, idx), so rows do not depend on order, shards or interruptions.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import ImageDataset
from .errors import CadisError
from .seeds import derive_seed
from .smoothing import Certificate, DenoisedSmoothing, Smooth

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "count_a", "n", "p_a_lower", "sigma", "alpha"]
# Keys that change the rows; anything else (shard, versions, timestamps) may differ between runs of one file.
IDENTITY_KEYS = ["denoiser", "classifier", "dataset", "split", "sigma", "n0", "n", "alpha", "seed", "batch_size",
                 "mode", "steps", "sampler", "skip", "method", "acceleration", "adaptive"]


def select_indices(size: int, skip: int = 1, max_index: int | None = None,
                   shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Cohen's selection (every `skip`-th index below `max_index`), then every K-th of those from I."""
    if skip < 1:
        raise CadisError(f"--skip must be >= 1 (got {skip}).")
    i, k = shard
    if not 0 <= i < k:
        raise CadisError(f"--shard I/K needs 0 <= I < K (got {i}/{k}).")
    stop = size if max_index is None else min(size, max_index)
    return list(range(0, stop, skip))[i::k]


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def versions() -> dict[str, str]:
    import diffusers
    import scipy
    import timm

    from . import __version__

    return {"cadis": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "timm": timm.__version__, "scipy": scipy.__version__, "python": platform.python_version()}


def _done_indices(out: Path) -> set[int]:
    """Indices already certified; a partial last line (killed mid-write) is cut off."""
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        out.write_bytes(raw)
    lines = raw.decode().splitlines()
    if not lines or lines[0].split("\t") != COLUMNS:
        raise CadisError(f"{out} is not a cadis result file; choose another --out or pass --fresh.")
    return {int(line.split("\t", 1)[0]) for line in lines[1:] if line}


def prepare_output(out: Path, config: dict[str, Any], fresh: bool) -> set[int]:
    """Create or reopen `out`. Returns the indices already done. Refuses a changed configuration."""
    side = sidecar_path(out)
    if out.exists() and not fresh:
        old = json.loads(side.read_text()) if side.exists() else {}
        changed = [k for k in IDENTITY_KEYS if old.get(k) != config.get(k)]
        if changed:
            raise CadisError(f"{out} was made with another configuration ({', '.join(changed)} differ). "
                             "Pass --fresh to start over, or choose another --out.")
        return _done_indices(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\t".join(COLUMNS) + "\n")
    side.write_text(json.dumps({**config, "versions": versions()}, indent=2))
    return set()


def certify_dataset(smooth: Smooth, dataset: ImageDataset, out: str | Path, config: dict[str, Any],
                    indices: list[int], n0: int, n: int, alpha: float, seed: int = 0,
                    fresh: bool = False, device: str | torch.device = "cpu",
                    certify: Callable[[torch.Tensor, int], Certificate] | None = None) -> Path:
    """CERTIFY each selected image and append one flushed row per image to `out`.
    `certify(x, seed)` replaces the fixed-budget CERTIFY, e.g. with the adaptive one; `n` is then
    the number of estimation draws each image used."""
    certify = certify or (lambda x, s: smooth.certify(x, n0, n, alpha, seed=s))
    _certify_loop(lambda x, s, _: [certify(x, s)], smooth.sigma, dataset, [(Path(out), config)], indices,
                  n0, alpha, seed, fresh, device)
    return Path(out)


def certify_classifiers(smooth: DenoisedSmoothing, classifiers: Sequence[torch.nn.Module], dataset: ImageDataset,
                        outs: Sequence[tuple[str | Path, dict[str, Any]]], indices: list[int], n0: int, n: int,
                        alpha: float, seed: int = 0, fresh: bool = False, device: str | torch.device = "cpu"
                        ) -> list[Path]:
    """Certify several classifiers behind one denoiser on the same draws, one TSV (and sidecar) each.
    Each file's rows equal what `certify_dataset` writes for that classifier alone; the denoiser runs once."""
    _certify_loop(lambda x, s, wanted: smooth.certify_classifiers(x, [classifiers[k] for k in wanted], n0, n,
                                                                  alpha, seed=s),
                  smooth.sigma, dataset, [(Path(o), c) for o, c in outs], indices, n0, alpha, seed, fresh, device)
    return [Path(o) for o, _ in outs]


def _certify_loop(certify: Callable[[torch.Tensor, int, list[int]], list[Certificate]], sigma: float,
                  dataset: ImageDataset, outs: list[tuple[Path, dict[str, Any]]], indices: list[int],
                  n0: int, alpha: float, seed: int, fresh: bool, device: str | torch.device) -> None:
    """The resumable loop: certify each image for the files that still lack it (`certify(x, seed, wanted)`
    gives one certificate per wanted file position) and append a flushed row to each of them.
    The time column is the image's wall time shared equally among those files."""
    done = [prepare_output(out, config, fresh) for out, config in outs]
    todo = [i for i in indices if any(i not in d for d in done)]
    bar = tqdm(todo, desc=f"certify σ={sigma}", unit="img", initial=len(indices) - len(todo), total=len(indices))
    files = [out.open("a") for out, _ in outs]
    try:
        for idx in bar:
            x, label = dataset[idx]
            wanted = [k for k, d in enumerate(done) if idx not in d]
            start = time.time()
            certs = certify(x.to(device), derive_seed(seed, idx), wanted)
            elapsed = time.time() - start
            for k, cert in zip(wanted, certs):
                row = [idx, label, cert.prediction, f"{cert.radius:.4f}", int(cert.prediction == label),
                       f"{elapsed / len(wanted):.3f}", cert.count_a, cert.n, f"{cert.p_a_lower:.6f}", sigma, alpha]
                files[k].write("\t".join(map(str, row)) + "\n")
                files[k].flush()
            bar.set_postfix(samples_per_s=f"{len(wanted) * (n0 + certs[0].n) / elapsed:.0f}")
    finally:
        for f in files:
            f.close()


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    return out if shard == (0, 1) else out.with_name(f"{out.stem}.shard{shard[0]}of{shard[1]}{out.suffix}")


def merge_shards(out: Path, num_shards: int) -> Path:
    """Merge FILE.shard{i}of{K}.tsv into FILE.tsv (rows sorted by idx) with one sidecar for the whole run."""
    parts = [shard_path(out, (i, num_shards)) for i in range(num_shards)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise CadisError(f"Cannot merge: {', '.join(missing)} missing; run those shards first.")
    rows = {}
    for p in parts:
        for line in p.read_text().splitlines()[1:]:
            rows.setdefault(int(line.split("\t", 1)[0]), line)
    out.write_text("\t".join(COLUMNS) + "\n" + "".join(rows[i] + "\n" for i in sorted(rows)))
    config = json.loads(sidecar_path(parts[0]).read_text())
    sidecar_path(out).write_text(json.dumps({**config, "shard": f"merged from {num_shards}"}, indent=2))
    return out
