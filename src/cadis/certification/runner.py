"""Certify a dataset image by image into a Cohen-compatible TSV that resumes where it stopped.

Columns: idx label predict radius correct time count_a n p_a_lower sigma alpha. p_a_lower and radius are
rounded down (6 and 4 decimals), so a file never claims more than was certified; `analysis` recomputes
both from count_a and n.
A run is described by a `CertifyConfig`, written to a sidecar JSON (FILE.json). Each row is flushed
as soon as it is computed; re-running the same command skips the indices already in the file. Each
image has its own seed (seed, idx), so rows do not depend on order, shards or interruptions.

A writer holds an exclusive lock (fcntl) on the TSV, so a second writer is refused. What a resume reads
survives a kill at any point: the sidecar is replaced atomically (temp file + rename) before the TSV
gets its header, a torn last row is cut off in place (one truncate), and an empty TSV means "nothing
done yet" whatever its sidecar says.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm

from cadis.acceleration import Acceleration
from cadis.certification.adaptive import AdaptiveSettings, certify_adaptive, certify_adaptive_classifiers
from cadis.certification.smoothing import Certificate, DenoisedSmoothing, Smooth, check_parameters
from cadis.data import ImageDataset
from cadis.errors import CadisError
from cadis.files import write_atomic
from cadis.seeds import derive_seed

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "count_a", "n", "p_a_lower", "sigma", "alpha"]
# Keys that change the rows; anything else (shard, versions, timestamps) may differ between runs of one file.
# The device type is among them: the noise streams of CPU and CUDA generators differ.
IDENTITY_KEYS = ["denoiser", "classifier", "dataset", "split", "sigma", "n0", "n", "alpha", "seed", "batch_size",
                 "mode", "steps", "sampler", "skip", "method", "acceleration", "adaptive", "device_type"]


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


def device_type(device: str | None) -> str:
    """cpu, cuda or mps: what fixes a generator's stream (cuda:0 and cuda:1 draw the same numbers)."""
    try:
        return torch.device(device or "cpu").type
    except (RuntimeError, ValueError):
        raise CadisError(f"{device!r} is not a device; use cpu, cuda, cuda:1 or mps.") from None


def identity(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The identity keys of a sidecar; sidecars written before `device_type` was recorded give it from `device`."""
    found = {k: sidecar.get(k) for k in IDENTITY_KEYS}
    if found["device_type"] is None:
        found["device_type"] = device_type(sidecar.get("device"))
    return found


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def floor_decimals(value: float, places: int) -> str:
    """`value` rounded down to `places` decimals, exactly (no float rounding can push it up)."""
    return format(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_FLOOR), f".{places}f")


def format_row(idx: int, label: int, cert: Certificate, seconds: float, sigma: float, alpha: float) -> str:
    """One TSV line. p_A and the radius are rounded down: the file never claims more than was certified."""
    row = [idx, label, cert.prediction, floor_decimals(cert.radius, 4), int(cert.prediction == label),
           f"{seconds:.3f}", cert.count_a, cert.n, floor_decimals(cert.p_a_lower, 6), sigma, alpha]
    return "\t".join(map(str, row)) + "\n"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be created or overwritten as a file (a directory, an ancestor that is a file, a
    folder without write permission), or None. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory; give a file name inside it, e.g. {path / 'results.tsv'}"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path}: {parent} is a file, not a folder; choose another path"
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path}: no permission to write in {parent}; choose a folder you can write to"
    return None


def check_output(out: Path) -> None:
    """Raise a CadisError for an --out that cannot be a result file: one ending in .json (its own sidecar),
    a directory, or a path under a file or an unwritable folder. Creates nothing."""
    if out.suffix.lower() == ".json":
        raise CadisError(f"--out {out} ends in .json, the name of its sidecar; use {out.with_suffix('.tsv')}.")
    problem = file_problem(out) or file_problem(sidecar_path(out))
    if problem:
        raise CadisError(f"--out {problem}.")


def versions() -> dict[str, str]:
    import diffusers
    import scipy
    import timm

    from cadis import __version__

    return {"cadis": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "timm": timm.__version__, "scipy": scipy.__version__, "python": platform.python_version()}


def _truncate(f: IO[bytes], size: int) -> None:
    """Cut the TSV to `size` bytes in one call (the kill tests stop the process right after it)."""
    f.truncate(size)


def _start(f: IO[bytes], out: Path, config: CertifyConfig) -> set[int]:
    """A new run: empty the TSV, then write the sidecar, then the header. A kill anywhere in between
    leaves an empty TSV, which the next run starts afresh whatever sidecar it finds."""
    _truncate(f, 0)
    write_atomic(sidecar_path(out), json.dumps({**config.to_json(), "versions": versions()}, indent=2))
    f.write(("\t".join(COLUMNS) + "\n").encode())
    f.flush()
    return set()


def _resume(f: IO[bytes], out: Path, config: CertifyConfig) -> set[int] | None:
    """The indices already in `out`, or None if it holds nothing yet. Refuses (and leaves the files as they
    are) a TSV that is not ours, one without its sidecar, and another configuration. Cuts a torn last row."""
    f.seek(0)
    raw = f.read()
    complete = raw[: raw.rfind(b"\n") + 1]  # a partial last line (killed mid-write) is dropped below
    header = ("\t".join(COLUMNS) + "\n").encode()
    if not complete and header.startswith(raw):
        return None  # empty, or a torn header: nothing done yet
    lines = complete.decode(errors="replace").splitlines()
    if not lines or lines[0].split("\t") != COLUMNS:
        raise CadisError(f"{out} is not a cadis result file; choose another --out, or pass --fresh to overwrite it.")
    side = sidecar_path(out)
    if not side.is_file():
        raise CadisError(f"{out} exists but its sidecar {side.name} (the run's configuration) is missing; "
                         "restore it, pass --fresh to start over, or choose another --out.")
    try:
        old = json.loads(side.read_text())
        assert isinstance(old, dict)
    except (ValueError, AssertionError):
        raise CadisError(f"{out}'s sidecar {side.name} is not a configuration (not valid JSON); restore it, "
                         "pass --fresh to start over, or choose another --out.") from None
    changed = [k for k, v in config.identity().items() if identity(old).get(k) != v]
    if changed:
        raise CadisError(f"{out} was made with another configuration ({', '.join(changed)} differ). "
                         "Pass --fresh to start over, or choose another --out.")
    done = set()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if line and (len(fields) != len(COLUMNS) or not fields[0].isdigit()):
            raise CadisError(f"{out} line {number} is not a result row ({line[:40]!r}); delete that line "
                             "to resume, or pass --fresh to start over.")
        if line:
            done.add(int(fields[0]))
    if len(complete) < len(raw):
        _truncate(f, len(complete))  # one call: the complete rows stay whatever happens
    return done


def open_output(out: Path, config: CertifyConfig, fresh: bool) -> tuple[IO[bytes], set[int]]:
    """Open `out` for appending under an exclusive lock, after creating it (with its sidecar) or checking
    that it resumes under `config`. Returns the locked file and the indices already done. A refusal leaves
    an existing file byte for byte as it was."""
    check_output(out)
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(out, "a+b")  # creates, never truncates
    except OSError as e:
        raise CadisError(f"Cannot write {out}: {e.strerror or e}; choose another --out.") from e
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CadisError(f"{out} is being written by another certify process; wait for it to finish, "
                             "or choose another --out.") from None
        done = None if fresh else _resume(f, out, config)
        return f, _start(f, out, config) if done is None else done
    except BaseException:
        f.close()
        if not existed and out.exists() and out.stat().st_size == 0:
            out.unlink()
        raise


def prepare_output(out: Path, config: CertifyConfig, fresh: bool) -> set[int]:
    """Create or check `out` (see `open_output`) and release it. Returns the indices already done."""
    f, done = open_output(out, config, fresh)
    f.close()
    return done


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
    _certify_loop(certify, smooth, dataset, [(Path(o), config) for o, config in outs], fresh)
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
                files[k].write(format_row(idx, label, cert, elapsed / len(wanted), sigma, alpha).encode())
                files[k].flush()  # one write per row
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
            if line.count("\t") == len(COLUMNS) - 1:  # a torn last row is left out
                rows.setdefault(int(line.split("\t", 1)[0]), line)
    config = json.loads(sidecar_path(parts[0]).read_text())
    # Sidecar first: a kill between the two leaves the previous merge's TSV, which the shards can redo.
    write_atomic(sidecar_path(out), json.dumps({**config, "shard": f"merged from {num_shards}"}, indent=2))
    write_atomic(out, "\t".join(COLUMNS) + "\n" + "".join(rows[i] + "\n" for i in sorted(rows)))
    return out
