"""Streamlit plumbing shared by the pages: cached models, the model choice, the visitor, the image picker, errors.

Pages stay thin views; everything that is not Streamlit lives in cadis (apps.ui, analysis, ...), and
pages import what they need from there directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st
import torch

from apps.ui.certification import known_classes_note
from apps.ui.hosting import allowed_models, hide_paths, hosted, limits, new_visitor
from apps.ui.models import ModelBundle, load_bundle, model_source
from apps.ui.uploads import IMAGE_TYPES, admit_uploads, pick_indices
from apps.ui.visitor import recognise
from cadis.data import load_dataset
from cadis.errors import CadisError
from cadis.images import MAX_UPLOAD_BYTES, image_from_bytes
from cadis.models.loading import load_classifier
from cadis.models.presets import SEARCH_ROOTS, Preset

if os.environ.get("CADIS_TORCH_THREADS"):  # e.g. 1 when other jobs keep the cores busy (oversubscription is slow)
    torch.set_num_threads(int(os.environ["CADIS_TORCH_THREADS"]))

Image = tuple[str, torch.Tensor, int | None]  # (name, C×H×W tensor, label or None); test images are named #index
CERTIFY_REQUEST = "certify_request"  # a classifier name another page asks the Certification page to preselect


@st.cache_resource(show_spinner="Loading the denoiser and classifier …", max_entries=3)
def cached_bundle(preset: str, denoiser: str, classifier: str) -> ModelBundle:
    """The models of (preset, denoiser, classifier), cached per process: every session shares one copy (and its
    lock)."""
    return load_bundle(model_source(preset, denoiser, classifier))


@st.cache_resource(show_spinner="Loading the fine-tuned classifier …", max_entries=4)
def _finetuned(path: str, mtime: float) -> torch.nn.Module:
    # mtime in the key: a run saved again into the same directory is reloaded.
    return load_classifier(path, search_roots=SEARCH_ROOTS)


@st.cache_resource(show_spinner="Loading the training split …", max_entries=2)
def train_split(dataset: str):
    return load_dataset(dataset, "train")


def current_source() -> Preset:
    """The models this session uses: chosen on the Models page, else $CADIS_PRESET/$CADIS_DENOISER/…."""
    choice = st.session_state.get("model_choice")
    return model_source(*choice) if choice else model_source()


def bundle() -> ModelBundle:
    """The session's models, or an error box and a stopped page."""
    try:
        p = current_source()
        return cached_bundle(p.name, p.denoiser, p.classifier)
    except CadisError as e:
        st.error(hide_paths(str(e)))
        st.page_link("apps/views/models.py", label="Choose other models on the Models page",
                     icon=":material/extension:")
        st.stop()


def visitor() -> str:
    """This browser session's visitor id: hosted, its runs are its own, and the token in the URL finds them again
    after a reload (apps.ui.visitor)."""
    if hosted():
        return recognise(st.query_params, st.session_state)
    return st.session_state.setdefault("visitor", new_visitor())


def visible_models() -> dict[str, Path]:
    """The fine-tuned classifiers this visitor may pick: hosted, their own runs and the shipped ones."""
    return allowed_models(visitor())


def hosted_note() -> None:
    """One line on what the shared demo caps, shown where the caps bite."""
    if hosted():
        lim = limits()
        st.caption(f":material/group: Shared demo: your runs are yours alone; N ≤ {lim.n}, ≤ {lim.images} images, "
                   f"≤ {lim.steps} fine-tuning steps, and heavy jobs take turns. Run the app locally for more.")


def certify_this(name: str) -> None:
    """Open the Certification page with `name` (off-the-shelf or a fine-tuned classifier) preselected."""
    st.session_state[CERTIFY_REQUEST] = name
    st.switch_page("apps/views/certification.py")


def dataset_index(name: str) -> int | None:
    """The test-set index of an image picked by `image_picker` ('#12' → 12), None for an upload."""
    m = re.fullmatch(r"#(\d+)", name)
    return int(m.group(1)) if m else None


def finetuned_classifier(path: Path) -> torch.nn.Module:
    """A fine-tuned classifier, cached per process and reloaded when its directory is saved again."""
    return _finetuned(str(path), path.stat().st_mtime)


def keep_selection(key: str, options: list[str], default: list[str], joinable: list[str] | None = None,
                   companions=None) -> None:
    """Prepare the value of multiselect `key` before it is drawn: the first time `default`; after that, options
    that appeared since the last rerun (of `joinable`, if given; e.g. a run that just finished) join the
    selection, each with its `companions(option)` (e.g. its baseline), and options that went away leave it."""
    first = f"{key}_seen" not in st.session_state
    seen = st.session_state.setdefault(f"{key}_seen", set())
    previous = st.session_state.get(key, default)
    new = [] if first else [k for k in (options if joinable is None else joinable) if k not in seen]
    new = [c for k in new for c in [k, *(companions(k) if companions else [])]]
    st.session_state[key] = list(dict.fromkeys([*new, *[k for k in previous if k in options]]))
    seen.update(options)


@contextmanager
def errors_shown() -> Iterator[None]:
    """Show a CadisError as st.error instead of a traceback."""
    try:
        yield
    except CadisError as e:
        st.error(hide_paths(str(e)))


def parse_indices(text: str, most: int = 64) -> list[int]:
    """'0, 5, 10-12' → [0, 5, 10, 11, 12]; a CadisError for anything else or more than `most` images."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = (int(v) for v in part.split("-", 1))
                out += list(range(a, min(b, a + 64) + 1))  # capped: the count check below reports the rest
            else:
                out.append(int(part))
        except ValueError:
            raise CadisError(f"{part!r} is not an index or a range like 10-15; write e.g. 0, 5, 10-12.") from None
    if len(out) > most:
        raise CadisError(f"More than {most} images selected; pick at most {most}"
                         f"{' in this shared demo' if hosted() else ''}.")
    return out


def image_picker(b: ModelBundle, key: str, default_count: int = 8) -> list[Image] | None:
    """Images by index, by class, at random, or by upload. Returns None (with an error shown) on bad input.
    At most `limits().images` (hosted: a few) are picked."""
    ds, classes = b.dataset, b.classes
    most = limits().images
    default_count = min(default_count, most)
    how = st.radio("Images", ["By index", "By class", "At random", "Upload"], horizontal=True, key=f"{key}_how")
    try:
        if how == "Upload":
            return _uploads(b, key, most)
        if how == "By index":
            text = st.text_input("Test-set indices", ", ".join(map(str, range(default_count))), key=f"{key}_idx",
                                 help=f"0 … {len(ds) - 1}; ranges like 10-15 work.")
            idx = pick_indices(ds.labels, "index", indices=parse_indices(text, most))
        else:
            c1, c2, c3 = st.columns(3)
            class_id = None
            if how == "By class":
                class_id = c1.selectbox("Class", range(len(classes)), format_func=lambda i: classes[i],
                                        key=f"{key}_class")
            count = c2.slider("Number of images", 1, min(32, most), default_count, key=f"{key}_count")
            seed = c3.number_input("Seed", 0, 10**6, 0, key=f"{key}_pick_seed", help="Another seed, another pick.")
            idx = pick_indices(ds.labels, "class" if how == "By class" else "random", class_id=class_id,
                               count=count, seed=int(seed))
    except CadisError as e:
        st.error(str(e))
        return None
    return [(f"#{i}", ds.images[i], int(ds.labels[i])) for i in idx]


def _release(files: list) -> None:
    """Drop refused files from Streamlit's upload store now (it holds every file in memory until the session
    ends or the browser removes it), as st.chat_input does with the files it hands over."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        for f in files:
            ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=f.file_id)


def upload_key(key: str) -> str:
    """The uploader's widget key: a refused upload gets a fresh, empty uploader under a new key."""
    fresh = st.session_state.get(f"{key}_files_round", 0)
    return f"{key}_files" if not fresh else f"{key}_files{fresh}"


def _uploads(b: ModelBundle, key: str, most: int) -> list[Image] | None:
    mb = MAX_UPLOAD_BYTES // 2**20  # the server refuses bigger files before reading them (.streamlit/config.toml)
    files = st.file_uploader("Upload images", type=IMAGE_TYPES, accept_multiple_files=True, key=upload_key(key),
                             max_upload_size=mb,
                             help=f"Any size or colour mode up to {mb} MB / 4096 px: converted to the model's "
                                  f"{'grayscale' if b.input_shape[0] == 1 else 'RGB'} "
                                  f"{b.input_shape[1]}×{b.input_shape[2]} input.")
    st.info(known_classes_note(b.classes, b.preset.dataset), icon=":material/info:")  # before the first upload
    c1, c2 = st.columns(2)
    invert = c1.radio("Invert colours", ["auto", "no", "yes"], horizontal=True, key=f"{key}_invert",
                      help="auto inverts grayscale uploads with a bright border: Fashion-MNIST objects are "
                           "light on a dark background.")
    label_opts = [-1, *range(len(b.classes))]
    label = c2.selectbox("True class of the uploads", label_opts, key=f"{key}_label",
                         format_func=lambda i: "unknown (use the majority vote)" if i < 0 else b.classes[i])
    files = [f for f in files or [] if hasattr(f, "size")]  # not the ones released below (DeletedFile)
    if (refused := st.session_state.pop(f"{key}_refused", None)) and not files:
        st.error(refused)
    if not files:
        st.info("Upload one or more images (PNG, JPEG, …).")
        return None
    try:  # count and sizes first: nothing is read unless the whole request fits
        admit_uploads(visitor(), {f.file_id: f.size for f in files}, most)
    except CadisError as e:
        _release(files)
        st.session_state[f"{key}_files_round"] = st.session_state.get(f"{key}_files_round", 0) + 1
        st.session_state[f"{key}_refused"] = str(e)
        st.rerun()  # the error beside an empty uploader
    images = []
    for f in files:  # a bad file gets its error; the good ones still go through
        try:
            x = image_from_bytes(f.getvalue(), b.input_shape, f.name, {"auto": None, "no": False, "yes": True}[invert])
            images.append((f.name, x, None if label < 0 else label))
        except CadisError as e:
            st.error(str(e))
    return images or None
