"""What the Gradio demo's `/certify` receives, checked (UI-free): each input becomes a `Request` or a CadisError
that says what to send instead, and a refused request leaves one line in the server log, not a traceback.

Every input reaches these checks as sent (the demo's components pass their payload through unchanged), so "abc"
for an index gets this module's message, not Gradio's generic error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.ui.uploads import check_run_parameters
from cadis.errors import CadisError
from cadis.images import FORMAT_NAMES

TEST_IMAGE, UPLOAD = "Test image", "Upload"
SOURCES = (TEST_IMAGE, UPLOAD)
QUOTED = 80  # characters of a refused input the log line keeps

log = logging.getLogger("apps.gradio_demo")


@dataclass(frozen=True)
class Request:
    """A checked certification request: which image (and how it is named in the result), and the parameters."""

    source: str
    image_name: str
    sigma: float
    n: int
    alpha: float
    index: int | None = None  # a test image's index
    path: str | None = None  # an upload's file here, and its name as the visitor sent it
    file_name: str | None = None
    label: int | None = None  # the true class, when known



def quote(value: Any) -> str:
    """`repr(value)`, cut to QUOTED characters: what a message or the log shows of a visitor's input."""
    quoted = repr(value)
    return quoted if len(quoted) <= QUOTED else quoted[:QUOTED - 1] + "…"


def log_refusal(reason: str, value: Any = None) -> None:
    """One warning line for a refused request: the reason's first line, and the input quoted (a visitor's bad
    input is not a server fault: no traceback)."""
    first = (str(reason).strip().splitlines() or [""])[0][:200]
    log.warning("refused a request: %s (input %s)", first, quote(value))


def as_number(value: Any, what: str, example: str) -> float:
    """`value` as a finite number, or a CadisError naming `what` and an `example` to send."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CadisError(f"{what} is missing; send a number, e.g. {example}.")
    if isinstance(value, bool):
        raise CadisError(f"{what} must be a number, e.g. {example} (got {quote(value)}).")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        raise CadisError(f"{what} must be a number, e.g. {example} (got {quote(value)}).") from None
    if not math.isfinite(number):
        raise CadisError(f"{what} must be a finite number, e.g. {example} (got {quote(value)}).")
    return number


def as_whole(value: Any, what: str, example: str) -> int:
    """`value` as a whole number (3.0 is 3), or a CadisError as `as_number` gives."""
    number = as_number(value, what, example)
    if number != int(number):
        raise CadisError(f"{what} must be a whole number, e.g. {example} (got {quote(value)}).")
    return int(number)


def check_request(source: Any, upload: Any, index: Any, true_class: Any, sigma: Any, n: Any, alpha: Any,
                  *, n0: int, classes: list[str], labels, cap: int) -> Request:
    """Every input of `/certify` checked, with a CadisError that says what to send instead.

    Only the chosen source is read: the test image's index when it is "Test image", the file (and the
    optional true class) when it is "Upload"; the other is ignored, whatever it holds. A test image's true
    class is its label in `labels`."""
    if source not in SOURCES:
        got = "nothing" if source is None else quote(source)
        raise CadisError(f"Say which image to certify: source must be {SOURCES[0]!r} or {SOURCES[1]!r} (got {got}).")
    sigma = as_number(sigma, "σ (sigma)", "0.25")
    n = as_whole(n, "N (the number of draws)", "1000")
    alpha = as_number(alpha, "α (alpha)", "0.001")
    check_run_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    if n > cap:
        raise CadisError(f"N = {n} is above this server's cap of {cap} draws, which keeps the wait short for "
                         "everyone; lower N, or run `cadis certify` on your own machine.")
    if source == TEST_IMAGE:
        i = as_whole(index, "The test-image index", "0")
        if not 0 <= i < len(labels):
            raise CadisError(f"Test image {i} does not exist; pick 0 … {len(labels) - 1}.")
        return Request(source, f"test image #{i}", sigma, n, alpha, index=i, label=int(labels[i]))
    if not upload:
        raise CadisError(f"No file was uploaded; upload a {FORMAT_NAMES} image, or set the source to "
                         f"{TEST_IMAGE!r} to certify a test image.")
    path = Path(str(upload))
    name = getattr(upload, "orig_name", None) or path.name
    label = None
    if true_class not in (None, ""):
        if true_class not in classes:
            raise CadisError(f"Unknown true class {quote(true_class)}; pick one of {', '.join(classes)}, or none.")
        label = classes.index(true_class)
    return Request(source, f"your upload {name}", sigma, n, alpha, path=str(path), file_name=name, label=label)
