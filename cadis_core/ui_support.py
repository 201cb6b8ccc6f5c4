"""Pure helpers shared by the Streamlit app (app.py, pages/) and the Gradio demo (gradio_app.py).

Nothing here imports a UI library: it turns uploads into model inputs (or a CadisError that says
what to do), picks the models the apps use, and runs fine-tuning in a background thread. The
hallucination analysis the apps show lives in `hallucination.py`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .acceleration import default_acceleration
from .classifier import ImageClassifier
from .data import ASSETS, ImageDataset
from .denoiser import DiffusionDenoiser
from .errors import CadisError
from .loading import missing_directory
from .presets import Preset, resolve_models
from .smoothing import ABSTAIN, Certificate, DenoisedSmoothing, check_parameters

log = logging.getLogger(__name__)

ROOT = ASSETS.parent
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_SIDE = 4096
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]


# ---------------------------------------------------------------- which models the apps use


def runs_dir() -> Path:
    """Where the apps write fine-tuning runs and look for the user's results: $CADIS_RUNS_DIR or runs/."""
    return Path(os.environ.get("CADIS_RUNS_DIR") or ROOT / "runs")


def model_source(preset: str | None = None, denoiser: str | None = None, classifier: str | None = None) -> Preset:
    """The preset the apps use: $CADIS_PRESET (default fashion-mnist), with its denoiser and classifier
    replaced by the arguments or by $CADIS_DENOISER / $CADIS_CLASSIFIER (a directory or a hub id/spec)."""
    return resolve_models(preset or os.environ.get("CADIS_PRESET") or "fashion-mnist",
                          denoiser or os.environ.get("CADIS_DENOISER"),
                          classifier or os.environ.get("CADIS_CLASSIFIER"))


def is_custom(p: Preset) -> bool:
    """Whether the preset's models were replaced by named ones."""
    return p.custom


@dataclass
class ModelBundle:
    """Models and data of one preset, loaded once per process and shared by all sessions.

    `lock` serialises heavy work on the shared models, so two sessions certifying at once queue
    instead of halving each other's speed (and the second sees that it waits)."""

    preset: Preset
    denoiser: DiffusionDenoiser
    classifier: ImageClassifier
    dataset: ImageDataset
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the denoiser's input: the space where noise is added and radii hold."""
        cfg = self.denoiser.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return int(cfg.in_channels), int(size), int(size)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    def smoothing(self, sigma: float, mode: str = "one-shot", steps: int = 10,
                  batch_size: int | None = None) -> DenoisedSmoothing:
        kwargs = {"steps": steps} if mode == "multistep" else {}
        return DenoisedSmoothing(self.denoiser, self.classifier, sigma, batch_size or self.preset.batch_size,
                                 mode=mode, acceleration=default_acceleration(self.denoiser.device), **kwargs)


def load_bundle(p: Preset, device: str = "cpu") -> ModelBundle:
    """Load a preset's models and test split, with a CadisError that says what is missing."""
    if p.custom:  # named models: a plainly missing directory is reported before anything loads
        for spec in (p.denoiser, p.classifier):
            if (path := missing_directory(spec)) is not None:
                raise CadisError(f"Model directory {path} does not exist.")
    denoiser, classifier = p.load_models(device)
    dataset = p.load_dataset("test")
    if classifier.num_classes != len(dataset.classes):
        raise CadisError(f"The classifier has {classifier.num_classes} classes but {p.dataset} has "
                         f"{len(dataset.classes)}; pick a classifier trained on {p.dataset}.")
    return ModelBundle(p, denoiser, classifier, dataset)


def finetuned_models(roots: list[Path] | None = None) -> dict[str, Path]:
    """Fine-tuned classifiers the apps can pick: runs/finetune/*/model and assets/models/finetuned/*."""
    found: dict[str, Path] = {}
    candidates = []
    for root in roots or [runs_dir() / "finetune", ASSETS / "models" / "finetuned"]:
        if root.name == "finetune":
            candidates += [(d.parent.name, d) for d in sorted(root.glob("*/model"))]
        else:
            candidates += [(d.name, d) for d in sorted(root.glob("*"))]
    for name, d in candidates:
        if (d / "config.json").is_file() or (d / "adapter_config.json").is_file():
            found[name if name not in found else f"{name} ({d})"] = d
    return found


# ---------------------------------------------------------------- uploads and parameters


def image_from_bytes(data: bytes, shape: tuple[int, int, int], name: str = "the file",
                     invert: bool | None = None) -> torch.Tensor:
    """Decode an uploaded image into a C×H×W float tensor in [0, 1] of `shape`, or raise a CadisError.

    Any mode is accepted: alpha is composited onto black, colour is converted to the model's channels,
    16-bit and float images are rescaled, EXIF rotation is applied, and the image is padded to a square
    (black) and resized. `invert=None` inverts a single-channel target when the image's border is bright:
    Fashion-MNIST-style data is a light object on a dark background, photos are usually the opposite."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise CadisError(f"{name} is empty; upload a PNG or JPEG image.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise CadisError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. "
                         "Upload a smaller image (the model sees it at "
                         f"{shape[1]}×{shape[2]} pixels anyway).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size  # read from the header: no pixels decoded yet
            if max(w, h) > MAX_SIDE:
                raise CadisError(f"{name} is {w}×{h} pixels; the limit is {MAX_SIDE} pixels per side. "
                                 "Downscale it first.")
            img.load()
            img = ImageOps.exif_transpose(img)
    except CadisError:
        raise
    except UnidentifiedImageError as e:
        raise CadisError(f"{name} is not an image PIL can read; upload a "
                         f"{', '.join(t.upper() for t in IMAGE_TYPES[:5])} file.") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CadisError(f"{name} is corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         "; re-export it and upload again.") from e
    return _to_tensor(img, shape, invert)


def _to_tensor(img, shape: tuple[int, int, int], invert: bool | None) -> torch.Tensor:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16"):
            top = 65535.0
        else:  # 32-bit ints and floats carry no range: take the smallest usual one that holds the values
            top = next((t for t in ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0) if peak <= t), peak)
        img = Image.fromarray(np.clip(arr / top * 255, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    img = img.convert("L" if shape[0] == 1 else "RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    if invert is None:
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
        invert = shape[0] == 1 and float(border.mean()) > 0.5
    if invert:
        x = 1 - x
    h, w = x.shape[1:]
    side = max(h, w)
    x = F.pad(x, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
    if side != shape[1] or side != shape[2]:
        x = F.interpolate(x[None], size=shape[1:], mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1).contiguous()


def image_from_path(path: str | os.PathLike, shape: tuple[int, int, int], invert: bool | None = None) -> torch.Tensor:
    """`image_from_bytes` for a file on disk; the size is checked before reading it."""
    path = Path(path)
    if not path.is_file():
        raise CadisError(f"{path.name} was not received; upload it again.")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise CadisError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the limit is "
                         f"{MAX_UPLOAD_BYTES // 2**20} MB. Upload a smaller image.")
    return image_from_bytes(path.read_bytes(), shape, path.name, invert)


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


# ---------------------------------------------------------------- pictures


def to_uint8(x: torch.Tensor, scale: int = 3) -> np.ndarray:
    """C×H×W in [0, 1] (noisy images are clipped) → H·s×W·s (grey) or ×3 uint8, pixels kept sharp."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    arr = arr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()


def strip(images: list[torch.Tensor], scale: int = 3, gap: int = 2) -> np.ndarray:
    """Images side by side with a white gap: e.g. noisy → denoised as one picture."""
    parts = [to_uint8(x, scale) for x in images]
    sep = np.full((parts[0].shape[0], gap, *parts[0].shape[2:]), 255, dtype=np.uint8)
    out = [parts[0]]
    for p in parts[1:]:
        out += [sep, p]
    return np.concatenate(out, axis=1)


def data_uri(arr: np.ndarray) -> str:
    """A uint8 picture as an inline PNG: dozens of small images then travel with the page instead of as
    one HTTP request each, which is what made the hallucination grid slow to appear."""
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- certification


def certify_one(bundle: ModelBundle, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, seed: int = 0,
                mode: str = "one-shot", steps: int = 10, progress=None, batch_size: int | None = None,
                on_wait=None) -> tuple[Certificate, np.ndarray]:
    """CERTIFY one image under the bundle's lock; also returns the class counts of the N draws.

    `progress(done, total)` is called after each batch; `on_wait()` once if another session holds the lock."""
    check_run_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
    smooth = bundle.smoothing(sigma, mode, steps, batch_size)
    total, done = n0 + n, 0

    def step(b: int) -> None:
        nonlocal done
        done += b
        if progress is not None:
            progress(done, total)

    if not bundle.lock.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
        bundle.lock.acquire()
    try:
        cert = smooth.certify(x, n0, n, alpha, seed=seed, progress=step)
    finally:
        bundle.lock.release()
    return cert, cert.counts


def top_counts(counts: np.ndarray, classes: list[str], k: int = 3) -> dict[str, int]:
    order = np.argsort(-counts, kind="stable")[:k]
    return {classes[i]: int(counts[i]) for i in order if counts[i] > 0}


def certificate_row(name: str, label: int | None, cert: Certificate, counts: np.ndarray, classes: list[str],
                    sigma: float) -> dict[str, Any]:
    """One table row for a certified image; `predict`/`label`/`radius` as in Cohen's TSV."""
    return {"image": name, "label": -1 if label is None else label,
            "true class": "?" if label is None else classes[label], "predict": cert.prediction,
            "prediction": "abstain" if cert.prediction == ABSTAIN else classes[cert.prediction],
            "radius": round(cert.radius, 4), "p_A (lower)": round(cert.p_a_lower, 4),
            "count_A": cert.count_a, "n": cert.n, "sigma": sigma,
            "top counts": ", ".join(f"{c}: {v}" for c, v in top_counts(counts, classes).items())}


def session_results(rows: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The session's labelled certifications as Cohen-style tables (one per σ) for the analysis plots."""
    frame = pd.DataFrame([r for r in rows if r["label"] >= 0])
    out = {}
    if frame.empty:
        return out
    for sigma, g in frame.groupby("sigma"):
        df = pd.DataFrame({"idx": range(len(g)), "label": g["label"].to_numpy(), "predict": g["predict"].to_numpy(),
                           "radius": g["radius"].to_numpy(float)})
        df["correct"] = (df["predict"] == df["label"]).astype(int)
        df.attrs["config"] = {"sigma": float(sigma)}
        out[f"this session σ={sigma:g} ({len(g)} images)"] = df
    return out


def result_files(roots: list[Path] | None = None) -> list[Path]:
    """Certification TSVs shipped in assets/results and written under the runs directory."""
    files: list[Path] = []
    for root in roots or [ASSETS / "results", runs_dir()]:
        if root.is_dir():
            files += sorted(p for p in root.rglob("*.tsv") if p.is_file())
    return files


def load_results(paths: list[Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Read result files, skipping (and reporting) the ones that are not certification tables."""
    from .analysis import merge_results, read_results

    good, problems = [], []
    for p in paths:
        try:
            read_results(p)
            good.append(p)
        except (CadisError, ValueError, pd.errors.ParserError) as e:
            problems.append(f"{p.name}: {e}")
    return (merge_results(good) if good else {}), problems


# ---------------------------------------------------------------- fine-tuning in the background


class FinetuneJob:
    """Runs `cadis_core.finetune.finetune` in a daemon thread and collects its events for a UI to poll.

    The UI thread only reads `steps`, `evals`, `status`, `error`, `path`; the worker only appends,
    so no lock is needed (list.append is atomic). `stop()` sets the event the loop checks each step."""

    def __init__(self, config, denoiser: torch.nn.Module, classifier: ImageClassifier, train_set: ImageDataset,
                 test_set: ImageDataset | None = None):
        config.validate()  # bad settings fail here, in the UI thread, with a CadisError
        self.config = config
        self._args = (denoiser, classifier, train_set, test_set)
        self.steps: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.status = "created"
        self.error: str | None = None
        self.path: Path | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cadis-finetune", daemon=True)

    def start(self) -> FinetuneJob:
        self.status = "running"
        self.started = time.time()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def progress(self) -> float:
        last = self.steps[-1]["step"] if self.steps else 0
        return min(1.0, last / max(self.config.steps, 1))

    def _event(self, event: dict[str, Any]) -> None:
        if event["kind"] == "step":
            self.steps.append(event)
        elif event["kind"] == "eval":
            self.evals.append(event)

    def _run(self) -> None:
        from .finetune import finetune

        try:
            result = finetune(self.config, *self._args[:3], self._args[3], callback=self._event,
                              stop_event=self.stop_event)
            self.path, self.status = result.path, "stopped" if result.stopped else "done"
        except CadisError as e:
            self.status, self.error = "failed", str(e)
        except Exception as e:  # the UI shows one line; the traceback goes to the server log
            log.exception("fine-tuning failed")
            self.status, self.error = "failed", f"Fine-tuning failed unexpectedly: {type(e).__name__}: {e}"
        finally:
            self.finished = time.time()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.steps))
