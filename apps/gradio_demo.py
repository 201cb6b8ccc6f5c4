"""cadis Gradio demo: pick a test image or upload one, set σ, N and α; see denoised draws, the smoothed prediction
(or an abstain), its certified ℓ2 radius, the top class counts, and what produced the result.

Run locally: `HF_HUB_OFFLINE=1 python gradio_app.py` (http://127.0.0.1:7860). From Python:
`gradio_client.Client(url).predict("Test image", None, 0, None, 0.25, 1000, 0.001, api_name="/certify")`.
Models: the preset in $CADIS_PRESET (default fashion-mnist), or $CADIS_DENOISER / $CADIS_CLASSIFIER.
Hosting mode ($CADIS_HOSTED=1, or on a Hugging Face Space, which sets $SPACE_ID) caps N as the Streamlit app does
(apps.ui.hosting: 5,000 hosted, 100,000 locally; $CADIS_MAX_N sets it either way).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio_client import utils as client_utils
from PIL import Image
from starlette.middleware import Middleware

from apps.ui.certification import FORMULAS, WORDS, certify_one, known_classes_note, top_counts
from apps.ui.demo_input import (  # noqa: F401  result_details and verdict_markdown re-exported for callers
    SOURCES,
    TEST_IMAGE,
    UPLOAD,
    Request,
    as_whole,
    check_request,
    log_refusal,
    result_details,
    verdict_markdown,
)
from apps.ui.hosting import HOSTED_LIMITS, LOCAL_LIMITS, hosted, max_n, model_label
from apps.ui.models import ModelBundle, is_custom, load_bundle, model_source
from apps.ui.pictures import to_uint8
from apps.ui.uploads import UploadBodyCap, admit_uploads, file_sizes
from cadis.analysis.hallucination import score_draws
from cadis.certification.smoothing import ABSTAIN
from cadis.data import ImageDataset
from cadis.errors import CadisError
from cadis.images import EXTENSIONS, FORMAT_NAMES, MAX_UPLOAD_BYTES, image_from_path

GALLERY_DRAWS = 16
LOCAL_MAX_N, HOSTED_MAX_N = LOCAL_LIMITS.n, HOSTED_LIMITS.n  # the apps' one cap (apps.ui.hosting)
QUEUE_SIZE = 32  # visitors waiting beyond this are told the queue is full instead of waiting for minutes
# Gradio's upload cache: every 10 minutes, delete what this app stored more than 30 minutes ago (uploads and
# outputs; the example images are kept). Everything it stored goes when the server stops.
DELETE_CACHE = (600, 1800)


# ---------------------------------------------------------------- models, data and examples


@functools.lru_cache(maxsize=1)
def _bundle() -> ModelBundle:
    # One copy of the models per process; its lock (plus the queue) serialises certifications.
    return load_bundle(model_source())


@functools.lru_cache(maxsize=1)
def _test_set() -> ImageDataset:
    """The preset's test split, for the examples and previews (without loading the models)."""
    return model_source().load_dataset("test")


def example_indices(labels, per_class: int = 1) -> list[int]:
    """The first `per_class` test images of each class, in class order."""
    labels = np.asarray(labels)
    return [int(i) for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]


def _picture_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "cadis-gradio" / f"uid{os.getuid() if hasattr(os, 'getuid') else 0}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def example_picture(index: int) -> str:
    """Test image `index` as a PNG (×4, pixels kept sharp) in a temp folder Gradio may serve: the examples
    and the test-image preview show it; the model reads the test set itself."""
    data = _test_set()
    path = _picture_dir() / f"{data.name or 'test'}-{index}.png"
    if not path.is_file():
        x, _ = data[index]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        Image.fromarray(to_uint8(x, 4)).save(tmp, "PNG")
        tmp.replace(path)
    return str(path)


# ---------------------------------------------------------------- the event handlers


def refused(e: CadisError, value: Any) -> gr.Error:
    """A refused request: one line in the server log, the message in the visitor's page, no traceback."""
    log_refusal(str(e), value)
    return gr.Error(str(e), print_exception=False)


def _visitor(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"  # a browser session (or API client) of the demo


def certify(source: str | None, upload: str | None, index: float | None, true_class: str | None,
            sigma: float | None, n: float | None, alpha: float | None,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's documented pattern)
            request: gr.Request | None = None) -> tuple:
    """Certify the chosen image: test image `index` when `source` is "Test image", the file when "Upload"."""
    try:
        b = _bundle()
        n0 = b.preset.n0
        req = check_request(source, upload, index, true_class, sigma, n, alpha, n0=n0,
                            classes=list(b.dataset.classes), labels=b.dataset.labels, cap=max_n())
        if req.path is not None:  # sizes from the disk first: nothing is opened past the caps
            admit_uploads(_visitor(request), file_sizes([req.path]), most=1)
            x = image_from_path(req.path, b.input_shape, name=req.file_name)
        else:
            x, _ = b.dataset[req.index]
        smooth = b.smoothing(req.sigma, batch_size=min(b.preset.batch_size, 100))
        progress(0, desc="denoising draws for the gallery")
        [draws] = score_draws(smooth, x, req.label, GALLERY_DRAWS, seed=1)
        cert, counts = certify_one(b, x, req.sigma, n0, req.n, req.alpha, seed=0,
                                   progress=lambda done, total: progress((done, total), desc="certifying",
                                                                         unit="draws"),
                                   batch_size=min(b.preset.batch_size, 100))
    except CadisError as e:
        raise refused(e, {"source": source, "index": index, "sigma": sigma, "n": n, "alpha": alpha}) from None
    gallery = [(to_uint8(d, 4), f"{b.classes[p]} {c:.0%}")
               for d, p, c in zip(draws.denoised, draws.top1.tolist(), draws.confidence.tolist())]
    details = result_details(req, cert, b.classes, n0, b.preset, list(b.dataset.classes), b.acceleration.precision)
    table = [[c, v, round(v / req.n, 4)] for c, v in top_counts(counts, b.classes, k=5).items()]
    shown = f"{cert.radius:.4f}" if cert.prediction != ABSTAIN else "0 (abstain)"
    return gallery, verdict_markdown(details), shown, table, to_uint8(x, 8), details


def preview_test_image(index: float | None) -> tuple:
    """The chosen test image and its class; choosing one makes "Test image" the source."""
    data = _test_set()
    try:
        i = as_whole(index, "The test-image index", "0")
        if not 0 <= i < len(data):
            raise CadisError(f"Test image {i} does not exist; pick 0 … {len(data) - 1}.")
    except CadisError as e:
        raise refused(e, index) from None
    caption = f"Test image #{i}: {data.classes[int(data.labels[i])]}"
    return gr.update(value=example_picture(i), label=caption), TEST_IMAGE


def preview_upload(upload: str | None, request: gr.Request | None = None) -> tuple:
    """What the model will see of the upload (or why it cannot); uploading makes "Upload" the source."""
    if not upload:
        return None, "", gr.update()
    name = getattr(upload, "orig_name", None) or Path(str(upload)).name
    try:
        admit_uploads(_visitor(request), file_sizes([str(upload)]), most=1)
        x = image_from_path(str(upload), _bundle().input_shape, name=name)
    except CadisError as e:
        log_refusal(str(e), name)
        return None, f"**Cannot use this file:** {e}", UPLOAD
    return to_uint8(x, 8), f"The model sees {name} like this ({x.shape[-1]}×{x.shape[-2]}).", UPLOAD


def show_source(source: str | None) -> tuple:
    return gr.update(visible=source != UPLOAD), gr.update(visible=source == UPLOAD)


# ---------------------------------------------------------------- components


# Both adjust one component instance: a subclass of a Gradio component would make Gradio write a
# gradio_demo.pyi stub next to this file at import.


def _as_sent(component: gr.components.Component) -> gr.components.Component:
    """Let the component's value reach the handler as sent, None or out of range included, so that
    `certify` answers bad API input with its own message instead of Gradio's generic error."""
    component.preprocess = lambda payload: payload
    return component


def _uploads_only(upload: gr.File) -> gr.File:
    """Take only files uploaded to this server (within `max_file_size`): a URL sent through the API is
    refused instead of downloaded by Gradio, with no size limit, into its cache."""
    fetch, preprocess = upload.async_move_resource_to_block_cache, upload.preprocess

    async def move(url_or_file_path: str | Path | None) -> str | None:
        if url_or_file_path is not None and client_utils.is_http_url_like(str(url_or_file_path)):
            raise refused(CadisError("The demo does not fetch URLs: download the image and upload the file "
                                     "(gradio_client.handle_file with a local path)."), url_or_file_path)
        return await fetch(url_or_file_path)

    def checked(payload: Any) -> Any:  # Gradio's own refusals (e.g. the file type): one log line, no traceback
        try:
            return preprocess(payload)
        except gr.Error as e:
            raise refused(CadisError(e.message), getattr(payload, "orig_name", None) or payload) from None

    upload.async_move_resource_to_block_cache, upload.preprocess = move, checked
    return upload


def build_demo() -> gr.Blocks:
    p = model_source()
    data = _test_set()
    cap = max_n()
    picks = example_indices(data.labels)
    with gr.Blocks(title="cadis: certify an image", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# cadis: a provably robust prediction for one image\n"
                    "The demo makes many noisy copies of your image, cleans each with a diffusion model, classifies "
                    "it, and lets the copies vote. If the vote is clear enough, it comes with a certified radius: "
                    "no change to the image smaller than that can change the vote. The vote may still be wrong. "
                    f"Models: the **{p.name}** preset{' with replaced models' if is_custom(p) else ''} "
                    f"({p.dataset}): classifier {model_label(p.classifier)}, denoiser "
                    f"{model_label(p.denoiser)}. Before the N copies vote, another N0 = {p.n0} copies pick the "
                    "class." + (f" This shared server certifies one image at a time (N ≤ {cap}); your place in "
                                "the queue is shown while you wait." if hosted() else ""))
        with gr.Row():
            with gr.Column():
                source = _as_sent(gr.Radio(list(SOURCES), value=TEST_IMAGE, label="Image to certify",
                                           info="Only the chosen one is used; the result says which."))
                with gr.Group(visible=True) as test_group:
                    index = _as_sent(gr.Number(label=f"Test image index (0 … {len(data) - 1})", value=0,
                                               precision=0))
                    test_preview = gr.Image(value=example_picture(0), type="filepath", interactive=False,
                                            label=f"Test image #0: {data.classes[int(data.labels[0])]}",
                                            height=180, buttons=[])
                with gr.Group(visible=False) as upload_group:
                    gr.Markdown(known_classes_note(list(data.classes), p.dataset))
                    upload = _uploads_only(gr.File(label=f"Upload an image ({FORMAT_NAMES}, at most "
                                                         f"{MAX_UPLOAD_BYTES // 2**20} MB)",
                                                   file_types=list(EXTENSIONS), type="filepath"))
                    upload_note = gr.Markdown()
                    upload_preview = gr.Image(label="What the model sees", interactive=False, height=180, buttons=[])
                    true_class = _as_sent(gr.Dropdown(
                        list(data.classes), value=None, label="True class (optional)",
                        info="Give it and the result says whether the prediction is correct."))
                gr.Examples([[example_picture(i), i] for i in picks], [test_preview, index], visible_columns=[0],
                            label="Examples from the test set, one per class: click one, then Certify",
                            examples_per_page=len(picks), api_visibility="private")
                sigma = _as_sent(gr.Slider(0.01, 1.0, value=p.sigma, step=0.01, label=WORDS["sigma"][0],
                                           info=WORDS["sigma"][1]))
                # "N draws" starts the label: API clients and tests find the slider by it
                n = _as_sent(gr.Slider(p.n0, cap, value=min(p.n, cap), step=10,
                                       label=f"N draws: n{WORDS['n'][0][1:]} (at most {cap} here)",
                                       info=f"{WORDS['n'][1]} Another N0 = {p.n0} copies pick the class first."))
                alpha = _as_sent(gr.Number(label=WORDS["alpha"][0], value=0.001, info=WORDS["alpha"][1]))
                with gr.Accordion("The formulas behind σ, N0, N and α", open=False):
                    gr.Markdown(FORMULAS)
                run = gr.Button("Certify", variant="primary")
            with gr.Column():
                verdict = gr.Markdown("The result appears here when a run finishes.")
                # A textbox, not gr.Number, which shows "0" while it holds no value.
                radius_out = gr.Textbox(label="Certified ℓ2 radius", value="", interactive=False,
                                        placeholder="appears when a run finishes")
                counts = gr.Dataframe(headers=["class", "count", "share"], label="Top class counts (N draws)",
                                      interactive=False)
                model_input = gr.Image(label="Model input", height=160, buttons=[])
                with gr.Accordion("Run details (JSON)", open=False):
                    details = gr.JSON(label="What produced this result")
        gallery = gr.Gallery(label=f"{GALLERY_DRAWS} denoised draws: prediction and confidence", columns=8,
                             height="auto")

        source.change(show_source, source, [test_group, upload_group], api_visibility="private", queue=False)
        index.change(preview_test_image, index, [test_preview, source], api_visibility="private",
                     show_progress="hidden")
        upload.upload(preview_upload, upload, [upload_preview, upload_note, source], api_visibility="private")
        upload.clear(lambda: (None, ""), None, [upload_preview, upload_note], api_visibility="private", queue=False)
        run.click(certify, [source, upload, index, true_class, sigma, n, alpha],
                  [gallery, verdict, radius_out, counts, model_input, details], api_name="certify")
    return demo


# One certification at a time across sessions (2 CPU cores); the others wait in the queue and see their position.
demo = build_demo().queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)


def launch(**kwargs):
    """Launch with the upload limits enforced before any of it is kept: each file's by Gradio while it arrives,
    a request's total from its Content-Length (`UploadBodyCap`)."""
    app_kwargs = kwargs.pop("app_kwargs", None) or {}
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(UploadBodyCap)]
    return demo.launch(max_file_size=MAX_UPLOAD_BYTES, app_kwargs=app_kwargs, **kwargs)
