"""Hosting mode: many visitors share one server (`CADIS_HOSTED=1`, which the Dockerfile sets).

Hosted, each visitor (an unguessable token in the page's URL, `apps.ui.visitor`; the id is its hash) writes
fine-tuning runs under runs/visitors/<id>/ and sees only those and the shipped ones; a visitor's folder is deleted
a day after its last change (`prune_visitors`).
Models load only from that list (`model_choices`, `resolve_model`), never from a typed path, and what a visitor
reads names no server path (`hide_paths`, `shown_spec`). Nobody can stop another's job; N, the number of images
and draws, uploads and the fine-tuning steps are capped; heavy jobs queue with a visible position (`turns.Turns`,
`jobs.JobQueue`). The local app (variable unset) keeps full power: one user, every run under runs/, the widgets'
own ranges.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from apps.ui.hosted_mode import HOSTED_ENV, hosted  # noqa: F401 (re-exported: pages import it from here)
from apps.ui.models import finetuned_info, finetuned_models, runs_dir
from cadis.errors import CadisError
from cadis.models.loading import parse_spec
from cadis.models.presets import FINETUNED, MODELS, PRESETS

VISITOR_TTL_S = 24 * 3600  # a visitor's folder is deleted this long after its newest file changed
VISITOR_ID = re.compile(r"[0-9a-f]{8,32}")
REPOSITORY = Path(__file__).resolve().parents[2]  # the apps run from a checkout, beside the benchmark's results
SHIPPED_MODELS = FINETUNED
SHIPPED_RESULTS = REPOSITORY / "experiments" / "results"


@dataclass(frozen=True)
class Limits:
    """The largest value each heavy parameter may take."""

    n: int  # N of a certification
    images: int  # images per certification or hallucination grid
    draws: int  # draws per image on the Hallucinations page
    steps: int  # fine-tuning steps
    batch: int  # fine-tuning batch size
    subset: int  # fine-tuning training images (0 = all counts as the whole split)
    eval_size: int  # test images per fine-tuning evaluation
    upload_mb: int  # all files of one upload request together (each file also ≤ cadis.images.MAX_UPLOAD_BYTES)
    visitor_upload_mb: int  # what one visitor may upload within an hour (uploads.UploadLedger)
    queue: int  # fine-tuning runs waiting behind the running one (jobs.JobQueue refuses more)


# One set of caps for both apps (Streamlit and the Gradio demo); $CADIS_MAX_N replaces the cap on N in either mode.
LOCAL_LIMITS = Limits(n=100_000, images=64, draws=32, steps=100_000, batch=512, subset=100_000, eval_size=5000,
                      upload_mb=512, visitor_upload_mb=100_000, queue=100)
# Hosted, 4 waiters: a newcomer waits for at most the running run and 4 capped ones, and the queue's memory (each job
# holds its datasets) stays small.
HOSTED_LIMITS = Limits(n=5000, images=8, draws=16, steps=300, batch=32, subset=2000, eval_size=200,
                       upload_mb=40, visitor_upload_mb=160, queue=4)
NAMES = {"n": "N", "images": "the number of images", "draws": "the number of draws", "steps": "the number of steps",
         "batch": "the batch size", "subset": "the training subset", "eval_size": "the test images per evaluation",
         "upload_mb": "one upload's total (MB)", "visitor_upload_mb": "your uploads of the last hour (MB)",
         "queue": "the number of waiting runs"}
# What a cap counts, in the words shown next to its input ("at most 300 steps on this shared server").
UNITS = {"n": "draws", "images": "images", "draws": "draws per image", "steps": "steps", "batch": "images per batch",
         "subset": "training images", "eval_size": "test images per evaluation"}


def limits() -> Limits:
    """The caps of this server: hosted or local, with $CADIS_MAX_N (if set) as the cap on N."""
    lim = HOSTED_LIMITS if hosted() else LOCAL_LIMITS
    value = os.environ.get("CADIS_MAX_N")
    if not value:
        return lim
    try:
        cap = int(value)
    except ValueError:
        raise CadisError(f"CADIS_MAX_N must be a whole number of draws (got {value!r}).") from None
    if cap < 1:
        raise CadisError(f"CADIS_MAX_N must be >= 1 (got {cap}).")
    return replace(lim, n=cap)


def max_n() -> int:
    """The largest N a certification may ask for here."""
    return limits().n


def check_limits(**values: int | None) -> None:
    """A CadisError for the first value above its limit (names as in `Limits`; None and 0 skip a check, except a
    subset of 0, which means the whole split)."""
    lim = limits()
    for f in fields(Limits):
        value = values.get(f.name)
        if value is None:
            continue
        cap = getattr(lim, f.name)
        if value > cap or (f.name == "subset" and value == 0 and hosted()):
            where = "this shared demo" if hosted() else "this app"
            raise CadisError(f"{NAMES[f.name].capitalize()} is capped at {cap} in {where} (got "
                             f"{'all' if value == 0 else value}); lower it, or run the app locally for more.")


def cap_note(field: str) -> str:
    """The cap of a `Limits` field in words, for the caption beside its input; empty locally (one user, the
    widgets' own ranges)."""
    if not hosted():
        return ""
    return f"At most {getattr(limits(), field):,} {UNITS[field]} on this shared server."


def new_visitor() -> str:
    """A fresh visitor id: 128 random bits from `secrets` (one per browser session), so no visitor can guess
    another's folder. Hosted, old visitors' folders are pruned first."""
    if hosted():
        prune_visitors()
    return secrets.token_hex(16)


def _last_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:  # deleted while we looked: a job is writing there
            return time.time()
    return max(times)


def prune_visitors(max_age_s: float = VISITOR_TTL_S, now: float | None = None) -> list[Path]:
    """Delete the folders under runs/visitors/ whose newest file is older than `max_age_s`; returns them. Disk
    use stays bounded by the last day's visitors (a hosted run is capped far below a day, so none is running)."""
    root = runs_dir() / "visitors"
    now = time.time() if now is None else now
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and VISITOR_ID.fullmatch(folder.name) and now - _last_change(folder) > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _checked(visitor: str | None) -> str:
    if not visitor or not VISITOR_ID.fullmatch(visitor):
        raise CadisError("No valid visitor id; reload the page.")
    return visitor


def visitor_dir(visitor: str | None) -> Path:
    """Where a visitor's files go when hosted: runs/visitors/<id>."""
    return runs_dir() / "visitors" / _checked(visitor)


def finetune_root(visitor: str | None = None) -> Path:
    """Where new fine-tuning runs go: runs/finetune locally, the visitor's own folder when hosted."""
    return visitor_dir(visitor) / "finetune" if hosted() else runs_dir() / "finetune"


def model_roots(visitor: str | None = None) -> list[Path]:
    """Where the fine-tuned classifiers a visitor may pick are (for `models.finetuned_models`)."""
    return [finetune_root(visitor), SHIPPED_MODELS]


def result_roots(visitor: str | None = None) -> list[Path]:
    """Where the result files a visitor may compare are (for `certification.result_files`)."""
    return [SHIPPED_RESULTS, visitor_dir(visitor) if hosted() else runs_dir()]


def is_own(path: Path, visitor: str | None = None) -> bool:
    """Whether a model directory is one of the visitor's runs (locally: any run under runs/), not a shipped one."""
    return _inside(Path(path), finetune_root(visitor))


# ---------------------------------------------------------------- which models a visitor may load

PRESET_CLASSIFIER = "(the preset's classifier)"  # the entry of `model_choices` that keeps the preset's own
REFUSED = "That model is not one you can use here; pick one from the list."  # the same for every refused entry


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks and `..` resolved, lies under `root` (resolved too)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def allowed_models(visitor: str | None = None) -> dict[str, Path]:
    """The fine-tuned classifiers a visitor may load, by name: the shipped ones and their own runs (locally, every
    run under runs/). Hosted, paths are resolved, and a directory that a symlink leads out of its root is left out
    (it could lead to another visitor's run)."""
    roots = model_roots(visitor)
    found = finetuned_models(roots)
    if not hosted():
        return found
    return {name: path.resolve() for name, path in found.items() if any(_inside(path, root) for root in roots)}


def model_choices(visitor: str | None = None) -> dict[str, Path | None]:
    """The classifiers the Models page offers: the preset's own (None), then `allowed_models`."""
    return {PRESET_CLASSIFIER: None, **allowed_models(visitor)}


def resolve_model(entry: str, visitor: str | None = None) -> Path | None:
    """The directory of an entry of `model_choices` (its name, or a path that resolves to one of them; None for
    the preset's own). Anything else is a CadisError with one message that names nothing: an existing and a missing
    path, another visitor's run and a system folder read the same."""
    if entry == PRESET_CLASSIFIER:
        return None
    allowed = allowed_models(visitor)  # the list itself, not what a widget offered
    if entry in allowed:
        return allowed[entry]
    try:
        target = Path(str(entry)).expanduser().resolve()  # `..` and symlinks resolved before the comparison
    except (OSError, RuntimeError, ValueError):
        raise CadisError(REFUSED) from None
    for path in allowed.values():
        if path.resolve() == target:
            return path
    raise CadisError(REFUSED)


def hosted_presets() -> list[str]:
    """The presets a visitor may pick: hosted, those that load without the hub (and the one the server runs)."""
    if not hosted():
        return list(PRESETS)
    current = os.environ.get("CADIS_PRESET") or "fashion-mnist"
    return [name for name, p in PRESETS.items() if not p.online or name == current]


# ---------------------------------------------------------------- what a visitor reads

_PATH = re.compile(r"(?<![\w.-])(?:~|\.{1,2})?(?:/[^\s'\"`,;:()\[\]]+)+")
_ID = re.compile(r"\b[0-9a-f]{16,32}\b")  # a visitor id, should one stand outside a path


def hide_paths(text: str) -> str:
    """Hosted, `text` with every file path (absolute, ~/…, ./… or ../…) and visitor id replaced by "…": an error
    names no server path; locally unchanged."""
    return _ID.sub("…", _PATH.sub("…", text)) if hosted() else text


def shown_spec(spec: str, visitor: str | None = None) -> str:
    """How a model spec is shown: locally as it is; hosted, as a name (an embedded model's, a run's, a hub id)."""
    if not hosted():
        return spec
    parsed = parse_spec(spec)
    if parsed.path is None:
        return str(parsed)  # a hub id or a timm name: no server path
    path = parsed.path.expanduser()
    known = allowed_models(visitor) if visitor else finetuned_models([SHIPPED_MODELS])
    for name, allowed in known.items():
        if path.resolve() == allowed.resolve():
            return name
    return f"embedded {path.name}" if _inside(path, MODELS) else "a model on this server"


def model_label(spec: str) -> str:
    """A model spec as a reader recognises it: paths relative to the working folder, an adapter with its base;
    on a hosted server, the model's name only (a visitor never sees where a model lies)."""
    parsed = parse_spec(spec)
    if parsed.path is None:
        return str(parsed)
    if hosted():
        return shown_spec(spec)
    path = parsed.path.expanduser()
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    if parsed.source == "adapter":
        base = finetuned_info(path)["base"]
        return f"LoRA adapter {shown}" + (f" on {base}" if base else "")
    return f"{parsed.source}:{shown}" if parsed.source == "local-dir" else shown
