"""What a visitor hands the apps: uploaded images, test-set picks and run parameters.

Each becomes a model input (a C×H×W tensor in [0, 1], indices, checked numbers) or a CadisError that says
what to change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence

import torch

from apps.ui.hosting import hosted, limits
from cadis.certification.smoothing import check_parameters
from cadis.errors import CadisError
from cadis.images import EXTENSIONS

# Uploads are opened by cadis.images (the Gradio demo's opener too); these are the uploader's extensions.
IMAGE_TYPES = [ext.removeprefix(".") for ext in EXTENSIONS]
UPLOAD_WINDOW_S = 3600  # `Limits.visitor_upload_mb` counts the uploads of this long
FORM_OVERHEAD = 64 * 1024  # a multipart body's boundaries and headers, beyond its files' bytes

log = logging.getLogger(__name__)


def _mb(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def check_uploads(sizes: Sequence[int], most: int | None = None) -> None:
    """One upload request, from its file sizes alone (before any file is read): at most `most` files (default
    `limits().images`), together within `limits().upload_mb`. A CadisError refuses the whole request; each file's
    own limit (MAX_UPLOAD_BYTES) is checked as it is opened (cadis.images.check_size), so the others still go
    through."""
    lim = limits()
    most = lim.images if most is None else most
    where = " in this shared demo" if hosted() else ""
    if len(sizes) > most:
        raise CadisError(f"{len(sizes)} files uploaded; pick at most {most}{where}. Remove some and upload again.")
    if sum(sizes) > lim.upload_mb * 2**20:
        raise CadisError(f"These {len(sizes)} files hold {_mb(sum(sizes))} together; one upload may hold "
                         f"{lim.upload_mb} MB{where}. Upload fewer or smaller images.")


def file_sizes(paths: Sequence[str | os.PathLike]) -> dict[str, int]:
    """Each uploaded file's size on disk (os.stat: nothing is opened), by path."""
    sizes = {}
    for path in paths:
        try:
            sizes[str(path)] = os.stat(path).st_size
        except OSError:
            raise CadisError("An uploaded file was not received (or was cleaned up); upload it again.") from None
    return sizes


class UploadLedger:
    """What each visitor uploaded within `window_s`, so that no visitor keeps the server reading and decoding
    beyond `limits().visitor_upload_mb`. A file is counted once however often a page reruns with it."""

    def __init__(self, window_s: float = UPLOAD_WINDOW_S):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[str, dict[str, tuple[float, int]]] = {}  # visitor → file id → (time, size)

    def admit(self, visitor: str, files: Mapping[str, int], now: float | None = None) -> None:
        """Count `files` (id → size) for `visitor`, or a CadisError (and nothing counted) when they would bring
        the visitor's last `window_s` over the cap."""
        now = time.time() if now is None else now
        cap = limits().visitor_upload_mb * 2**20
        with self._lock:
            for who in list(self._seen):  # forget what left the window: the ledger stays small
                kept = {k: v for k, v in self._seen[who].items() if now - v[0] <= self.window_s}
                self._seen[who] = kept
                if not kept:
                    del self._seen[who]
            seen = self._seen.get(visitor, {})
            new = {k: size for k, size in files.items() if k not in seen}
            if sum(size for _, size in seen.values()) + sum(new.values()) > cap:
                raise CadisError(f"You uploaded more than {cap // 2**20} MB within the last hour"
                                 f"{' in this shared demo' if hosted() else ''}; wait a while, or run the app "
                                 "locally.")
            self._seen[visitor] = {**seen, **{k: (now, size) for k, size in new.items()}}


LEDGER = UploadLedger()  # one per process: every session's uploads


def admit_uploads(visitor: str, files: Mapping[str, int], most: int | None = None) -> None:
    """The checks of one upload request (`check_uploads`), then the visitor's budget (`LEDGER`); `files` maps a
    file's id (Streamlit's file id, the Gradio cache path) to its size."""
    check_uploads(list(files.values()), most)
    LEDGER.admit(visitor, files)


class UploadBodyCap:
    """ASGI middleware (the Gradio demo's server): a POST body over `limits().upload_mb` is refused from its
    Content-Length, before any of it is read, and a multipart (upload) POST that does not state its length is
    refused too. Gradio's own `max_file_size` bounds each file, not how many one request sends (up to 1000)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST":
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length", b"").decode("latin-1").strip()
            multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
            cap = limits().upload_mb
            refusal = None
            if multipart and not length.isdigit():
                refusal = 411, "An upload must state its size (Content-Length)."
            elif length.isdigit() and int(length) > cap * 2**20 + FORM_OVERHEAD:
                refusal = 413, f"One upload may hold {cap} MB in all; send fewer or smaller files."
            if refusal:
                log.warning("refused an upload request to %s: %s", scope.get("path", "")[:80], refusal[1])
                await send({"type": "http.response.start", "status": refusal[0],
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": refusal[1].encode()})
                return
        await self.app(scope, receive, send)


def check_run_parameters(sigma: float | None = None, alpha: float | None = None, n0: int | None = None,
                         n: int | None = None, draws: int | None = None) -> None:
    """The library's checks plus the apps' own: N >= N0 and at least one draw."""
    check_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    if n0 is not None and n is not None and n < n0:
        raise CadisError(f"N ({n}) must be at least N0 ({n0}): N0 draws only pick the class, "
                         "N draws bound its probability. Raise N or lower N0.")
    if draws is not None and draws < 1:
        raise CadisError(f"The number of draws must be >= 1 (got {draws}).")


def pick_indices(labels: torch.Tensor, how: str, *, indices: list[int] | None = None, class_id: int | None = None,
                 count: int = 8, seed: int = 0) -> list[int]:
    """Test-set indices chosen by 'index' (given), 'class' (random ones of a class) or 'random'."""
    size = len(labels)
    gen = torch.Generator().manual_seed(seed)
    if how == "index":
        chosen = list(dict.fromkeys(indices or []))
        bad = [i for i in chosen if not 0 <= i < size]
        if bad:
            raise CadisError(f"Indices {bad} are outside the test set (0 … {size - 1}).")
        if not chosen:
            raise CadisError("Give at least one image index.")
        return chosen
    if how == "class":
        pool = torch.nonzero(labels == class_id).flatten()
        if len(pool) == 0:
            raise CadisError(f"The test set has no image of class {class_id}.")
        return pool[torch.randperm(len(pool), generator=gen)[:count]].tolist()
    if how == "random":
        return torch.randperm(size, generator=gen)[:count].tolist()
    raise CadisError(f"Unknown selection {how!r}; use 'index', 'class' or 'random'.")
