"""Certify a dataset image by image into a Cohen-compatible TSV that resumes where it stopped.

Columns: idx label predict radius correct time count_a n p_a_lower sigma alpha.
A run is described by a `CertifyConfig`, written to a sidecar JSON (FILE.json). Each row is flushed
as soon as it is computed; re-running the same command skips the indices already in the file. Each
image has its own seed (seed, idx), so rows do not depend on order, shards or interruptions.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .acceleration import Acceleration
from .adaptive import AdaptiveSettings, certify_adaptive
from .data import ImageDataset
from .errors import CadisError
from .seeds import derive_seed
from .smoothing import Certificate, DenoisedSmoothing, Smooth, check_parameters

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "count_a", "n", "p_a_lower", "sigma", "alpha"]
# Keys that change the rows; anything else (shard, versions, timestamps) may differ between runs of one file.
IDENTITY_KEYS = ["denoiser", "classifier", "dataset", "split", "sigma", "n0", "n", "alpha", "seed", "batch_size",
                 "mode", "steps", "sampler", "skip", "method", "acceleration", "adaptive"]


def check_selection(skip: int, shard: tuple[int, int]) -> None:
    """Raise a CadisError for a selection of images that selects nothing sensible."""
    if skip < 1:
        raise CadisError(f"--skip must be >= 1 (got {skip}).")
    i, k = shard
    if not 0 <= i < k:
        raise CadisError(f"--shard I/K needs 0 <= I < K (got {i}/{k}).")


def select_indices(size: int, skip: int = 1, max_index: int | None = None,
                   shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Cohen's selection (every `skip`-th index below `max_index`), then every K-th of those from I."""
    check_selection(skip, shard)
    stop = size if max_index is None else min(size, max_index)
    return list(range(0, stop, skip))[shard[0]::shard[1]]


@dataclass(frozen=True)
class CertifyConfig:
    """One certification run: the parameters that make its rows, which images it takes, and labels.

    `to_json()` is the sidecar (the keys analysis.read_results and earlier files use); a file resumes
    only under a config whose `identity()` equals the one its sidecar records."""

    denoiser: str
    classifier: str
    dataset: str
    sigma: float
    n0: int = 100
    n: int = 10000
    alpha: float = 0.001
    seed: int = 0
    split: str = "test"
    batch_size: int = 256
    mode: str = "one-shot"
    steps: int = 10  # reverse steps and sampler: multistep mode only
    sampler: str = "ddpm"
    acceleration: Acceleration = field(default_factory=Acceleration)
    adaptive: AdaptiveSettings | None = None  # None: CERTIFY with all n estimation draws
    method: str | None = None  # the classifier's fine-tuning objective, where known
    # The images: every `skip`-th index below `max_index`, then every K-th of those from I (shard I/K).
    skip: int = 1
    max_index: int | None = None
    shard: tuple[int, int] = (0, 1)
    # Labels only: they do not change the rows.
    preset: str | None = None
    label: str | None = None
    device: str | None = None  # where images go; None: the CPU
    notes: dict[str, Any] = field(default_factory=dict)  # more keys for the sidecar, written as they are

    def __post_init__(self) -> None:
        check_parameters(sigma=self.sigma, alpha=self.alpha, n0=self.n0, n=self.n)
        check_selection(self.skip, self.shard)

    def indices(self, size: int) -> list[int]:
        """The indices this run certifies in a dataset of `size` images."""
        return select_indices(size, self.skip, self.max_index, self.shard)

    def to_json(self) -> dict[str, Any]:
        """The sidecar's content (without `versions`, which the runner adds). As in earlier files, `method`,
        `device`, and `steps`/`sampler` outside multistep mode are left out rather than written as null."""
        config = {"preset": self.preset, "denoiser": self.denoiser, "classifier": self.classifier,
                  "dataset": self.dataset, "split": self.split, "sigma": self.sigma, "n0": self.n0, "n": self.n,
                  "alpha": self.alpha, "seed": self.seed, "batch_size": self.batch_size, "mode": self.mode,
                  "skip": self.skip, "max": self.max_index, "shard": f"{self.shard[0]}/{self.shard[1]}"}
        if self.method is not None:
            config["method"] = self.method
        config["label"] = self.label
        if self.device is not None:
            config["device"] = self.device
        config["acceleration"] = self.acceleration.describe()
        config["adaptive"] = None if self.adaptive is None else self.adaptive.to_json()
        if self.mode == "multistep":
            config.update(steps=self.steps, sampler=self.sampler)
        return {**config, **self.notes}

    def identity(self) -> dict[str, Any]:
        """What must match to resume a file: the sidecar keys that change the rows."""
        config = self.to_json()
        return {k: config.get(k) for k in IDENTITY_KEYS}

    def draws(self) -> tuple[Any, ...]:
        """What fixes the images and their noise draws: runs equal in it can share draws."""
        return self.sigma, self.n0, self.n, self.alpha, self.seed, self.skip, self.max_index, self.shard


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


def prepare_output(out: Path, config: CertifyConfig, fresh: bool) -> set[int]:
    """Create or reopen `out`. Returns the indices already done. Refuses a changed configuration."""
    side = sidecar_path(out)
    if out.exists() and not fresh:
        old = json.loads(side.read_text()) if side.exists() else {}
        changed = [k for k, v in config.identity().items() if old.get(k) != v]
        if changed:
            raise CadisError(f"{out} was made with another configuration ({', '.join(changed)} differ). "
                             "Pass --fresh to start over, or choose another --out.")
        return _done_indices(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\t".join(COLUMNS) + "\n")
    side.write_text(json.dumps({**config.to_json(), "versions": versions()}, indent=2))
    return set()


def certify_dataset(smooth: Smooth, dataset: ImageDataset, out: str | Path, config: CertifyConfig,
                    fresh: bool = False) -> Path:
    """CERTIFY each image `config` selects and append one flushed row per image to `out`. With
    `config.adaptive`, adaptive CERTIFY: `n` is then the number of estimation draws each image used."""
    c, a = config, config.adaptive
    if a is None:
        def certify(x: torch.Tensor, seed: int) -> Certificate:
            return smooth.certify(x, c.n0, c.n, c.alpha, seed=seed)
    else:
        def certify(x: torch.Tensor, seed: int) -> Certificate:
            return certify_adaptive(smooth, x, c.n0, c.n, c.alpha, seed, a.tolerance, a.radii, a.first_look)
    _certify_loop(lambda x, s, _: [certify(x, s)], smooth, dataset, [(Path(out), config)], fresh)
    return Path(out)


def certify_classifiers(smooth: DenoisedSmoothing, classifiers: Sequence[torch.nn.Module], dataset: ImageDataset,
                        outs: Sequence[tuple[str | Path, CertifyConfig]], fresh: bool = False) -> list[Path]:
    """Certify several classifiers behind one denoiser on the same draws, one TSV (and sidecar) each.
    Each file's rows equal what `certify_dataset` writes for that classifier alone; the denoiser runs once."""
    configs = [c for _, c in outs]
    if any(c.draws() != configs[0].draws() for c in configs) or any(c.adaptive for c in configs):
        raise CadisError("Shared draws need the same sigma, n0, n, alpha, seed and images in every "
                         "configuration, and no adaptive one.")
    c = configs[0]
    _certify_loop(lambda x, s, wanted: smooth.certify_classifiers(x, [classifiers[k] for k in wanted], c.n0, c.n,
                                                                  c.alpha, seed=s),
                  smooth, dataset, [(Path(o), config) for o, config in outs], fresh)
    return [Path(o) for o, _ in outs]


def _certify_loop(certify: Callable[[torch.Tensor, int, list[int]], list[Certificate]], smooth: Smooth,
                  dataset: ImageDataset, outs: list[tuple[Path, CertifyConfig]], fresh: bool) -> None:
    """The resumable loop: certify each image for the files that still lack it (`certify(x, seed, wanted)`
    gives one certificate per wanted file position) and append a flushed row to each of them.
    The time column is the image's wall time shared equally among those files."""
    config = outs[0][1]  # the files share their draws (sigma, n0, n, alpha, seed, images)
    sigma, alpha, device = config.sigma, config.alpha, config.device or "cpu"
    if sigma != smooth.sigma:
        raise CadisError(f"The configuration's sigma ({sigma}) is not the smoothing's ({smooth.sigma}).")
    indices = config.indices(len(dataset))
    dataset, outs = dataset.fit_for_run(smooth, outs)  # to the denoiser's input shape; the sidecars say how
    done = [prepare_output(out, c, fresh) for out, c in outs]
    todo = [i for i in indices if any(i not in d for d in done)]
    bar = tqdm(todo, desc=f"certify σ={sigma}", unit="img", initial=len(indices) - len(todo), total=len(indices))
    files = [out.open("a") for out, _ in outs]
    try:
        for idx in bar:
            x, label = dataset[idx]
            wanted = [k for k, d in enumerate(done) if idx not in d]
            start = time.time()
            certs = certify(x.to(device), derive_seed(config.seed, idx), wanted)
            elapsed = time.time() - start
            for k, cert in zip(wanted, certs):
                row = [idx, label, cert.prediction, f"{cert.radius:.4f}", int(cert.prediction == label),
                       f"{elapsed / len(wanted):.3f}", cert.count_a, cert.n, f"{cert.p_a_lower:.6f}", sigma, alpha]
                files[k].write("\t".join(map(str, row)) + "\n")
                files[k].flush()
            bar.set_postfix(samples_per_s=f"{len(wanted) * (config.n0 + certs[0].n) / elapsed:.0f}")
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
