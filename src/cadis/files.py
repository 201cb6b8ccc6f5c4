"""Files written whole: a reader, or a process resuming after a kill, sees the old content or the new, never a mix."""

from __future__ import annotations

import os
from pathlib import Path

from cadis.errors import CadisError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `path` so that a reader (or a process resuming after a kill) sees the old content or the new, never
    a truncated one: the data goes to a temporary sibling, is flushed to disk and renamed over `path`."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed before its rename
        if not _alive(stale.name.removesuffix(".tmp").rpartition(".")[2]):  # never another live writer's
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder: one line, and the old file stays as it was
        raise CadisError(f"Cannot write {path}: {e.strerror or e}; choose another location or free some space.") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: str) -> bool:
    """Whether the process `pid` (a decimal string) still runs; a name that is not a pid counts as dead."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
