"""Certify a dataset image by image into a Cohen-compatible TSV that resumes where it stopped.

Columns: idx label predict radius correct time count_a n p_a_lower sigma alpha. p_a_lower and radius are
rounded down (6 and 4 decimals), so a file never claims more than was certified; `analysis` recomputes
both from count_a and n.
A run is described by a `CertifyConfig`, written to a sidecar JSON (FILE.json beside FILE; see output.py for
the file, its lock and what survives a kill). Each row is flushed as soon as it is computed; re-running the
same command skips the indices already in the file. Each image has its own seed (seed, idx), so rows do not
depend on order, shards or interruptions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm

from cadis.acceleration import Acceleration
from cadis.certification.adaptive import AdaptiveSettings, certify_adaptive, certify_adaptive_classifiers
from cadis.certification.output import (  # noqa: F401  re-exported: the runner's file API
    COLUMNS,
    IDENTITY_KEYS,
    check_output,
    device_type,
    file_problem,
    find_sidecar,
    identity,
    open_output,
    prepare_output,
    read_sidecar,
    sidecar_path,
)
from cadis.certification.parameters import check_run_parameters
from cadis.certification.smoothing import Certificate, DenoisedSmoothing, Smooth
from cadis.data import ImageDataset
from cadis.errors import CadisError, quote
from cadis.files import write_atomic
from cadis.seeds import derive_seed


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
        check_run_parameters(sigma=self.sigma, alpha=self.alpha, n0=self.n0, n=self.n)  # the one check on this path
        check_selection(self.skip, self.shard)
        if self.max_index is not None and self.max_index < 1:
            raise CadisError(f"--max must be >= 1 (got {self.max_index}).")
        device_type(self.device)

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
        config["device_type"] = device_type(self.device)
        config["acceleration"] = self.acceleration.describe()
        config["adaptive"] = None if self.adaptive is None else self.adaptive.to_json()
        if self.mode == "multistep":
            config.update(steps=self.steps, sampler=self.sampler)
        return {**config, **self.notes}

    def identity(self) -> dict[str, Any]:
        """What must match to resume a file: the sidecar keys that change the rows."""
        return identity(self.to_json())

    def draws(self) -> tuple[Any, ...]:
        """What fixes the images and their noise draws: runs equal in it can share draws."""
        return self.sigma, self.n0, self.n, self.alpha, self.seed, self.skip, self.max_index, self.shard


def floor_decimals(value: float, places: int) -> str:
    """`value` rounded down to `places` decimals, exactly (no float rounding can push it up)."""
    return format(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_FLOOR), f".{places}f")


def format_row(idx: int, label: int, cert: Certificate, seconds: float, sigma: float, alpha: float) -> str:
    """One TSV line. p_A and the radius are rounded down: the file never claims more than was certified."""
    row = [idx, label, cert.prediction, floor_decimals(cert.radius, 4), int(cert.prediction == label),
           f"{seconds:.3f}", cert.count_a, cert.n, floor_decimals(cert.p_a_lower, 6), sigma, alpha]
    return "\t".join(map(str, row)) + "\n"


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
    _certify_loop(lambda x, s, _: [certify(x, s)], smooth, dataset, [(Path(out), config)], fresh,
                  [smooth.num_classes])
    return Path(out)


def certify_classifiers(smooth: DenoisedSmoothing, classifiers: Sequence[torch.nn.Module], dataset: ImageDataset,
                        outs: Sequence[tuple[str | Path, CertifyConfig]], fresh: bool = False) -> list[Path]:
    """Certify several classifiers behind one denoiser on the same draws, one TSV (and sidecar) each.
    Each file's rows equal what `certify_dataset` writes for that classifier alone; the denoiser runs once."""
    configs = [c for _, c in outs]
    if any(c.draws() != configs[0].draws() or c.adaptive != configs[0].adaptive for c in configs):
        raise CadisError("Shared draws need the same sigma, n0, n, alpha, seed, images and adaptive settings in "
                         "every configuration.")
    c, a = configs[0], configs[0].adaptive

    def certify(x: torch.Tensor, seed: int, wanted: list[int]) -> list[Certificate]:
        picked = [classifiers[k] for k in wanted]
        if a is None:
            return smooth.certify_classifiers(x, picked, c.n0, c.n, c.alpha, seed=seed)
        return certify_adaptive_classifiers(smooth, x, picked, c.n0, c.n, c.alpha, seed, a.tolerance, a.radii,
                                            a.first_look)
    _certify_loop(certify, smooth, dataset, [(Path(o), config) for o, config in outs], fresh,
                  [getattr(c, "num_classes", smooth.num_classes) for c in classifiers])
    return [Path(o) for o, _ in outs]


def _certify_loop(certify: Callable[[torch.Tensor, int, list[int]], list[Certificate]], smooth: Smooth,
                  dataset: ImageDataset, outs: list[tuple[Path, CertifyConfig]], fresh: bool,
                  num_classes: list[int]) -> None:
    """The resumable loop: certify each image for the files that still lack it (`certify(x, seed, wanted)`
    gives one certificate per wanted file position) and append a flushed row to each of them.
    The time column is the image's wall time shared equally among those files."""
    config = outs[0][1]  # the files share their draws (sigma, n0, n, alpha, seed, images)
    sigma, alpha, device = config.sigma, config.alpha, config.device or "cpu"
    if sigma != smooth.sigma:
        raise CadisError(f"The configuration's sigma ({sigma}) is not the smoothing's ({smooth.sigma}).")
    for count in num_classes:
        check_classes(count, dataset)
    indices = config.indices(len(dataset))
    if not indices:
        raise CadisError(f"The selection (--skip {config.skip}, --max {config.max_index}, shard "
                         f"{config.shard[0]}/{config.shard[1]}) takes no image of the {len(dataset)}; widen it.")
    files: list[IO[bytes]] = []
    dataset, outs = dataset.fit_for_run(smooth, outs)  # to the denoiser's input shape; the sidecars say how
    try:
        done = []
        for out, c in outs:
            f, d = open_output(out, c, fresh)
            files.append(f)
            done.append(d)
        todo = [i for i in indices if any(i not in d for d in done)]
        bar = tqdm(todo, desc=f"certify σ={sigma}", unit="img", initial=len(indices) - len(todo),
                   total=len(indices))
        for idx in bar:
            x, label = dataset[idx]
            wanted = [k for k, d in enumerate(done) if idx not in d]
            start = time.time()
            certs = certify(x.to(device), derive_seed(config.seed, idx), wanted)
            elapsed = time.time() - start
            for k, cert in zip(wanted, certs):
                try:
                    files[k].write(format_row(idx, label, cert, elapsed / len(wanted), sigma, alpha).encode())
                    files[k].flush()  # one write per row
                except OSError as e:  # a full disk: the complete rows stay, and a resume cuts a torn one
                    raise CadisError(f"Cannot write to {outs[k][0]}: {e.strerror or e}; the rows written so far "
                                     "are kept. Free some space, then re-run the same command to resume.") from e
            bar.set_postfix(samples_per_s=f"{len(wanted) * (config.n0 + certs[0].n) / elapsed:.0f}")
    finally:
        for f in files:
            with suppress(OSError):  # after a failed flush, close retries the torn row; a resume cuts it anyway
                f.close()


def check_classes(num_classes: int, dataset: ImageDataset) -> None:
    """Refuse a dataset with labels the classifier can never predict: more classes than the classifier has.
    (Fewer is allowed: a folder may hold some of the classifier's classes, in its order.)"""
    labels = int(dataset.labels.max()) + 1 if len(dataset) else 0
    have = max(len(dataset.classes), labels)
    if have > num_classes:
        raise CadisError(f"The classifier predicts {num_classes} classes but the dataset {dataset.name} has {have} "
                         f"({quote(', '.join(dataset.classes))}): labels from {num_classes} on could never be "
                         "predicted. Use a classifier trained on this dataset's classes (or the matching dataset).")


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    return out if shard == (0, 1) else out.with_name(f"{out.stem}.shard{shard[0]}of{shard[1]}{out.suffix}")


def merge_shards(out: Path, num_shards: int) -> Path:
    """Merge FILE.shard{i}of{K}.tsv into FILE.tsv (rows sorted by idx) with one sidecar for the whole run.
    Refuses shards whose sidecars are missing, name another shard, or differ in what makes the rows."""
    parts = [shard_path(out, (i, num_shards)) for i in range(num_shards)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise CadisError(f"Cannot merge: {', '.join(missing)} missing; run those shards first.")
    configs = []
    for i, p in enumerate(parts):
        side = find_sidecar(p)
        if side is None:
            raise CadisError(f"Cannot merge: {p}'s sidecar {sidecar_path(p).name} is missing; re-run that shard.")
        configs.append(read_sidecar(side, p, "re-run that shard"))
        if configs[-1].get("shard") != f"{i}/{num_shards}":
            raise CadisError(f"Cannot merge: {side} is the sidecar of shard {quote(configs[-1].get('shard'))}, not "
                             f"{i}/{num_shards}; re-run that shard.")
    changed = sorted({k for c in configs for k, v in identity(c).items() if identity(configs[0])[k] != v})
    if changed:
        raise CadisError(f"Cannot merge: the shards were made with different configurations ({', '.join(changed)} "
                         "differ); re-run them with one command.")
    rows: dict[int, tuple[str, list[str], str]] = {}
    for p in parts:
        for number, line in enumerate(p.read_text().splitlines()[1:], start=2):
            fields = line.split("\t")
            if len(fields) != len(COLUMNS):
                continue  # a torn last row is left out
            if not fields[0].isdigit():
                raise CadisError(f"Cannot merge: {p} line {number} is not a result row ({quote(line, 40)}).")
            del fields[COLUMNS.index("time")]  # the only column two runs of one image may differ in
            _, earlier, where = rows.setdefault(int(fields[0]), (line, fields, f"{p} line {number}"))
            if earlier != fields:
                raise CadisError(f"Cannot merge: {where} and {p} line {number} give image {fields[0]} different "
                                 "rows; re-run those shards.")
    config = configs[0]
    # Sidecar first: a kill between the two leaves the previous merge's TSV, which the shards can redo.
    write_atomic(sidecar_path(out), json.dumps({**config, "shard": f"merged from {num_shards}"}, indent=2))
    write_atomic(out, "\t".join(COLUMNS) + "\n" + "".join(rows[i][0] + "\n" for i in sorted(rows)))
    return out
