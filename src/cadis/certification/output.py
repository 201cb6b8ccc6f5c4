"""A run's result file and its sidecar: names, checks, and the locked opening that creates or resumes them.

The sidecar of FILE (e.g. r.tsv) is FILE.json (r.tsv.json), so two outputs never share one; files written
before that naming have FILE-without-suffix.json (r.json), which is still read (never written or renamed).

A writer holds an exclusive lock (flock) on the TSV, and only the lock holder creates content in it or
removes it: a writer that is refused leaves every file as it found it. What a resume reads survives a kill
at any point: the sidecar is replaced atomically (temp file + rename) before the TSV gets its header, a
torn last row is cut off in place (one ftruncate), and an empty TSV means "nothing done yet" whatever its
sidecar says.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from pathlib import Path
from typing import IO, Any, Protocol

from cadis.errors import CadisError, quote
from cadis.files import write_atomic

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "count_a", "n", "p_a_lower", "sigma", "alpha"]
HEADER = ("\t".join(COLUMNS) + "\n").encode()
# Keys that change the rows; anything else (shard, versions, timestamps) may differ between runs of one file.
# The device type is among them: the noise streams of CPU and CUDA generators differ.
IDENTITY_KEYS = ["denoiser", "classifier", "dataset", "split", "sigma", "n0", "n", "alpha", "seed", "batch_size",
                 "mode", "steps", "sampler", "skip", "method", "acceleration", "adaptive", "device_type"]
_OPEN_ATTEMPTS = 5  # re-opens after finding the path removed or replaced by the lock's previous holder


class RunConfig(Protocol):
    """What a run's file needs of its configuration (`runner.CertifyConfig`, which imports this module)."""

    def to_json(self) -> dict[str, Any]: ...

    def identity(self) -> dict[str, Any]: ...


def device_type(device: str | None) -> str:
    """cpu, cuda or mps: what fixes a generator's stream (cuda:0 and cuda:1 draw the same numbers)."""
    import torch

    try:
        return torch.device(device or "cpu").type
    except (RuntimeError, ValueError):
        raise CadisError(f"{quote(device)} is not a device; use cpu, cuda, cuda:1 or mps.") from None


def identity(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The identity keys of a sidecar; sidecars written before `device_type` was recorded give it from `device`."""
    found = {k: sidecar.get(k) for k in IDENTITY_KEYS}
    if found["device_type"] is None:
        found["device_type"] = device_type(sidecar.get("device"))
    return found


def sidecar_path(out: str | os.PathLike) -> Path:
    """Where the sidecar of `out` is written: its full name plus .json."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def legacy_sidecar_path(out: str | os.PathLike) -> Path:
    """The sidecar name of files written before: `out` with its suffix replaced by .json (read only)."""
    return Path(out).with_suffix(".json")


def find_sidecar(out: str | os.PathLike) -> Path | None:
    """The sidecar of `out` as it is on disk (the current name first, then the earlier one), or None."""
    for side in (sidecar_path(out), legacy_sidecar_path(out)):
        if side.is_file() and side != Path(out):
            return side
    return None


def read_sidecar(side: Path, out: Path, fix: str) -> dict[str, Any]:
    """The configuration in `side`, the sidecar of `out`, or a CadisError that ends with `fix`."""
    try:
        config = json.loads(side.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        config = None
    if not isinstance(config, dict):
        raise CadisError(f"{out.name}'s sidecar {side} is not a configuration (not valid JSON, or not an object); "
                         f"{fix}.")
    return config


def versions() -> dict[str, str]:
    import diffusers
    import scipy
    import timm
    import torch

    from cadis import __version__

    return {"cadis": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "timm": timm.__version__, "scipy": scipy.__version__, "python": platform.python_version()}


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


def output_problem(out: str | os.PathLike) -> str | None:
    """Why `out` cannot be a result file, or None: a name ending in .json (sidecars' suffix), something that
    is not a regular file (a device such as /dev/null, a pipe), or a path `file_problem` refuses for the
    file or its sidecar. Creates nothing."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        return f"{out} ends in .json, the suffix of results' sidecars; use {out.with_suffix('.tsv')}"
    if out.exists() and not out.is_dir() and not out.is_file():
        return f"{out} is not a regular file (a device, a pipe or a socket); give a file name such as results.tsv"
    return file_problem(out) or file_problem(sidecar_path(out))


def rows_written(out: str | os.PathLike) -> int:
    """Result rows already in `out` (0 for a missing or unreadable file): what a resumed run no longer certifies."""
    try:
        return max(0, len(Path(out).read_text().splitlines()) - 1)
    except (OSError, UnicodeDecodeError):
        return 0


def check_output(out: Path) -> None:
    """Raise a CadisError for an --out that cannot be a result file (see `output_problem`)."""
    problem = output_problem(out)
    if problem:
        raise CadisError(f"--out {problem}.")


def _open(out: Path) -> tuple[IO[bytes], bool] | None:
    """`out` opened for reading and appending, and whether this call created it; None if it vanished."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        try:
            fd, created = os.open(out, flags | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            fd, created = os.open(out, flags), False
    except FileNotFoundError:
        return None  # removed between the two opens: try again
    except OSError as e:
        raise CadisError(f"Cannot write {out}: {e.strerror or e}; choose another --out.") from e
    return os.fdopen(fd, "a+b"), created


def _is_path_of(f: IO[bytes], out: Path) -> bool:
    """Whether `out` still names the file `f` has open (not removed or replaced meanwhile)."""
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return False
    fs = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (fs.st_dev, fs.st_ino)


def _lock(out: Path) -> tuple[IO[bytes], bool]:
    """`out` opened (created if missing) and locked, and whether this call created it. A file locked by
    another writer is refused without touching it; one that its previous holder removed is opened anew."""
    for _ in range(_OPEN_ATTEMPTS):
        opened = _open(out)
        if opened is None:
            continue
        f, created = opened
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()  # never removed: the file belongs to the writer holding it, even if this call created it
            raise CadisError(f"{out} is being written by another certify process; wait for it to finish, "
                             "or choose another --out.") from None
        except OSError as e:
            f.close()
            raise CadisError(f"Cannot lock {out}: {e.strerror or e}; choose an --out on a local disk.") from e
        if _is_path_of(f, out):
            return f, created
        f.close()  # the previous holder removed it before letting go: what we locked is no longer `out`
    raise CadisError(f"{out} keeps being removed or replaced by another process; choose another --out.")


def _start(f: IO[bytes], out: Path, config: RunConfig) -> set[int]:
    """A new run: empty the TSV, then write the sidecar, then the header. A kill anywhere in between
    leaves an empty TSV, which the next run starts afresh whatever sidecar it finds."""
    f.flush()
    os.ftruncate(f.fileno(), 0)
    write_atomic(sidecar_path(out), json.dumps({**config.to_json(), "versions": versions()}, indent=2))
    f.write(HEADER)
    f.flush()
    return set()


def _resume(f: IO[bytes], out: Path, config: RunConfig) -> set[int] | None:
    """The indices already in `out`, or None if it holds nothing yet. Refuses (and leaves the files as they
    are) a TSV that is not ours, one without its sidecar, and another configuration. Cuts a torn last row."""
    f.seek(0)
    raw = f.read()
    complete = raw[: raw.rfind(b"\n") + 1]  # a partial last line (killed mid-write) is dropped below
    if not complete and HEADER.startswith(raw):
        return None  # empty, or a torn header: nothing done yet
    lines = complete.decode(errors="replace").splitlines()
    if not lines or lines[0].split("\t") != COLUMNS:
        raise CadisError(f"{out} is not a cadis result file; choose another --out, or pass --fresh to overwrite it.")
    side = find_sidecar(out)
    if side is None:
        raise CadisError(f"{out} exists but its sidecar {sidecar_path(out).name} (the run's configuration) is "
                         "missing; restore it, pass --fresh to start over, or choose another --out.")
    old = read_sidecar(side, out, "restore it, pass --fresh to start over, or choose another --out")
    changed = [k for k, v in config.identity().items() if identity(old).get(k) != v]
    if changed:
        raise CadisError(f"{out} was made with another configuration ({', '.join(changed)} differ). "
                         "Pass --fresh to start over, or choose another --out.")
    done = set()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if line and (len(fields) != len(COLUMNS) or not fields[0].isdigit()):
            raise CadisError(f"{out} line {number} is not a result row ({quote(line, 40)}); delete that line "
                             "to resume, or pass --fresh to start over.")
        if line:
            done.add(int(fields[0]))
    if len(complete) < len(raw):
        f.flush()
        os.ftruncate(f.fileno(), len(complete))  # one call: the complete rows stay whatever happens
    return done


def open_output(out: Path, config: RunConfig, fresh: bool) -> tuple[IO[bytes], set[int]]:
    """Open `out` for appending under an exclusive lock, after creating it (with its sidecar) or checking
    that it resumes under `config`. Returns the locked file and the indices already done. A refusal leaves
    every file as it was; a file this call created and left empty is removed while the lock is still held."""
    check_output(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CadisError(f"Cannot write {out}: {e.strerror or e}; choose another --out.") from e
    f, created = _lock(out)
    try:
        done = None if fresh else _resume(f, out, config)
        return f, _start(f, out, config) if done is None else done
    except BaseException:
        if created and os.fstat(f.fileno()).st_size == 0 and _is_path_of(f, out):
            out.unlink()  # ours and still empty; removed before the lock goes, so no writer can have it
        f.close()
        raise


def prepare_output(out: Path, config: RunConfig, fresh: bool) -> set[int]:
    """Create or check `out` (see `open_output`) and release it. Returns the indices already done."""
    f, done = open_output(out, config, fresh)
    f.close()
    return done
