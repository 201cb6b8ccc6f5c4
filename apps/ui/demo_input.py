"""What the Gradio demo's `/certify` receives, checked (UI-free): each input becomes a `Request` or a CadisError
that says what to send instead, and a refused request leaves one line in the server log, not a traceback. Also what
a result says (`result_details`, `verdict_markdown`), testable without Gradio.

Every input reaches these checks as sent (the demo's components pass their payload through unchanged), so "abc"
for an index gets this module's message, not Gradio's generic error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.ui.certification import MEANING, certificate_verdict, known_classes_note
from apps.ui.hosting import model_label
from apps.ui.uploads import check_run_parameters
from cadis.certification.smoothing import ABSTAIN, Certificate, max_radius
from cadis.errors import CadisError
from cadis.images import FORMAT_NAMES
from cadis.models.presets import Preset

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


def result_details(req: Request, cert: Certificate, classes: list[str], n0: int, p: Preset,
                   label_names: list[str] | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Everything a result is made of, for the JSON output and the text. The prediction is named by the
    classifier's `classes`, the true class by the dataset's `label_names` (the same for the presets)."""
    cap = max_radius(req.sigma, req.n, req.alpha)
    abstained = cert.prediction == ABSTAIN
    names = label_names or classes
    return {
        "image": req.image_name, "source": req.source,
        "true_class": None if req.label is None else names[req.label],
        "prediction": "abstain" if abstained else classes[cert.prediction],
        "correct": None if req.label is None else (not abstained and cert.prediction == req.label),
        "certificate": certificate_verdict(cert, req.label, names),
        "radius": round(cert.radius, 4), "largest_radius": round(cap, 4),
        "at_largest_radius": (not abstained) and cert.count_a == cert.n,
        "count_a": cert.count_a, "p_a_lower": round(cert.p_a_lower, 6),
        "classifier": model_label(p.classifier), "denoiser": model_label(p.denoiser), "preset": p.name,
        "sigma": req.sigma, "n0": n0, "n": req.n, "alpha": req.alpha, "precision": precision,
        "known_classes": known_classes_note(classes, p.dataset) if req.source == UPLOAD else None,
    }


def verdict_markdown(d: dict[str, Any]) -> str:
    """The result in words: prediction, which image, correct or not (a certified wrong answer says so in words, not
    only in a colour), the radius and what it means, its cap, the producer."""
    wrong = d["correct"] is False and d["prediction"] != "abstain"
    if d["true_class"] is None:
        truth = " (true class not given)" if d["source"] == UPLOAD else ""
    else:
        truth = f" (true class: {d['true_class']})"
    if d["correct"] is None:
        judged = ""
    elif d["prediction"] == "abstain":
        judged = " · **abstained**, so not certified correct"
    else:
        judged = " · **correct**" if d["correct"] else " · **incorrect**"
    heading = "Abstain" if d["prediction"] == "abstain" else d["prediction"]
    lines = [f"### {heading}{' · ' + d['certificate'] if wrong else ''}",
             f"**Image:** {d['image']}{truth}{judged}"]
    if d["prediction"] == "abstain":
        lines.append(f"The top class holds only {d['count_a']}/{d['n']} noisy copies: the lower bound of its "
                     f"probability, {d['p_a_lower']:.3f}, is not above ½ at α = {d['alpha']:g}. No certificate.")
    else:
        lines.append(f"Certified for every ℓ2 perturbation below **{d['radius']:.4f}** ({d['count_a']}/{d['n']} "
                     f"noisy copies agree, p_A ≥ {d['p_a_lower']:.4f}). {MEANING}")
    if d["at_largest_radius"]:
        lines.append(f"All {d['n']} draws agree, so this is the largest radius N = {d['n']} allows at α = "
                     f"{d['alpha']:g}: σ·Φ⁻¹(α^(1/N)) = {d['largest_radius']:.4f}. Only a larger N certifies more.")
    if d.get("known_classes"):
        lines.append(d["known_classes"])
    lines.append(f"**Produced by:** classifier {d['classifier']}, denoiser {d['denoiser']} (one-shot), "
                 f"σ = {d['sigma']:g}, N = {d['n']} (after N0 = {d['n0']} to pick the class), α = {d['alpha']:g}, "
                 f"{d['precision']} (the precision this machine runs the models fastest at).")
    return "\n\n".join(lines)
