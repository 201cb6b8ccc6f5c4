"""The Gradio demo: its `/certify` endpoint through gradio_client against a local launch, its handlers called
directly, its layout and limits, and (when chromium is installed) what a browser shows before any run.

Models as in test_app.py: $CADIS_TEST_MODELS = preset | tiny | DIR, default the preset when present, else tiny.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image
from scipy.stats import norm

from conftest import free_port, model_env

ROOT = Path(__file__).resolve().parent.parent
SAVED_VARS = ("CADIS_PRESET", "CADIS_DENOISER", "CADIS_CLASSIFIER", "CADIS_HOSTED", "CADIS_MAX_N", "SPACE_ID",
              "GRADIO_TEMP_DIR")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*:pandas.errors.Pandas4Warning")
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
ARGS = dict(index=0, true_class=None, sigma=0.25, n=100, alpha=0.001)  # N = N0: the cheapest run


@pytest.fixture(scope="module")
def client(request, tmp_path_factory):
    """The demo launched on a free port, with its own Gradio cache folder, and a client."""
    from gradio_client import Client

    saved = {k: os.environ.get(k) for k in SAVED_VARS}
    threads = torch.get_num_threads()
    for k in ("CADIS_HOSTED", "CADIS_MAX_N", "SPACE_ID"):
        os.environ.pop(k, None)
    cache = tmp_path_factory.mktemp("gradio-cache")
    os.environ.update({"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(cache), **model_env(request)})
    torch.set_num_threads(int(os.environ.get("CADIS_TEST_THREADS", "1")))
    sys.path.insert(0, str(ROOT))
    # A fresh module (reloaded if imported before): its models, test set and cache folder are the ones set above.
    loaded = sys.modules.get("apps.gradio_demo")
    gradio_app = importlib.reload(loaded) if loaded else importlib.import_module("apps.gradio_demo")
    gradio_app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        yield Client(gradio_app.demo.local_url, verbose=False), gradio_app
    finally:
        gradio_app.demo.close()
        sys.path.remove(str(ROOT))
        torch.set_num_threads(threads)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def call(c, source, upload=None, **kw):
    a = {**ARGS, **kw}
    return c.predict(source, upload, a["index"], a["true_class"], a["sigma"], a["n"], a["alpha"], api_name="/certify")


def app_error(c, source, upload=None, **kw) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        call(c, source, upload, **kw)
    message = str(err.value)
    assert "Traceback" not in message and "upstream Gradio app has raised an exception" not in message
    return message


def upload_file(tmp_path, name: str, data: bytes):
    from gradio_client import handle_file

    path = tmp_path / name
    path.write_bytes(data)
    return handle_file(str(path))


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def component(app, label_start: str):
    found = [b for b in app.demo.blocks.values() if str(getattr(b, "label", "") or "").startswith(label_start)]
    assert len(found) == 1, label_start
    return found[0]


def group_of(block):
    """The gr.Group holding a component (Gradio puts a Form between them)."""
    while block is not None and type(block).__name__ != "Group":
        block = block.parent
    return block


# ---------------------------------------------------------------- certification results


def test_certify_a_test_image_names_what_produced_it(client):
    c, app = client
    b = app._bundle()
    gallery, verdict, radius, counts, model_input, details = call(c, app.TEST_IMAGE, index=3, n=120)
    assert len(gallery) == app.GALLERY_DRAWS and all(Path(g["image"]).is_file() for g in gallery)
    assert all(g["caption"].endswith("%") and g["caption"].rsplit(" ", 1)[0] in b.classes for g in gallery)
    rows = counts["data"]
    assert 1 <= len(rows) <= 5 and sum(r[1] for r in rows) <= 120
    label = int(b.dataset.labels[3])
    assert f"**Image:** test image #3 (true class: {b.dataset.classes[label]})" in verdict
    produced = re.search(r"\*\*Produced by:\*\* classifier (.+), denoiser (.+) \(one-shot\), σ = 0.25, N = 120 "
                         r"\(after N0 = 100 to pick the class\), α = 0.001, (fp32|bf16) \(the precision", verdict)
    assert produced and produced.group(1) == app.model_label(b.preset.classifier)
    assert "fmnist-vit" in produced.group(1) or "vit" in produced.group(1)
    assert details["classifier"] == produced.group(1) and details["denoiser"] == produced.group(2)
    assert (details["sigma"], details["n"], details["n0"], details["alpha"]) == (0.25, 120, 100, 0.001)
    assert details["precision"] == produced.group(3) == b.acceleration.precision  # measured once, named
    assert details["source"] == app.TEST_IMAGE and details["image"] == "test image #3"
    if verdict.startswith("### Abstain"):
        assert radius == "0 (abstain)" and details["correct"] is False and "abstained" in verdict
    else:
        top = rows[0][0]
        shown = float(re.search(r"below \*\*([0-9.]+)\*\*", verdict).group(1))
        assert verdict.startswith(f"### {top}") and shown > 0 and float(radius) == pytest.approx(shown, abs=1e-4)
        right = b.classes.index(top) == label
        assert details["correct"] == right
        assert ("· **correct**" in verdict) == right and ("· **incorrect**" in verdict) == (not right)
        capped = details["count_a"] == 120
        assert details["at_largest_radius"] == capped
        assert ("the largest radius N = 120 allows at α = 0.001" in verdict) == capped
        assert details["largest_radius"] == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 120)), abs=1e-4)
    assert Image.open(model_input).size == (28 * 8, 28 * 8)


@pytest.mark.parametrize("count_a, capped", [(1000, True), (990, False)])
def test_the_cap_sentence_appears_exactly_when_every_draw_agrees(client, count_a, capped):
    _, app = client
    from cadis.certification.smoothing import decide

    counts = np.array([count_a, 1000 - count_a, 0])
    cert = decide(counts, counts, 0.001, 0.25)
    req = app.Request(app.UPLOAD, "your upload x.png", 0.25, 1000, 0.001, path="x.png", file_name="x.png", label=0)
    d = app.result_details(req, cert, ["a", "b", "c"], 100, app.model_source())
    text = app.verdict_markdown(d)
    sentence = "All 1000 draws agree, so this is the largest radius N = 1000 allows at α = 0.001: " \
               "σ·Φ⁻¹(α^(1/N)) = 0.6158."
    assert (sentence in text) == capped and d["at_largest_radius"] == capped
    assert (d["radius"] == d["largest_radius"]) == capped
    assert "**Image:** your upload x.png (true class: a) · **correct**" in text


def test_certify_an_upload_with_and_without_a_true_class(client, tmp_path):
    c, app = client
    classes = list(app._test_set().classes)
    rgba = (np.random.default_rng(0).random((90, 60, 4)) * 255).astype(np.uint8)  # RGBA, any size
    f = upload_file(tmp_path, "photo.png", png(rgba))
    _, verdict, radius, counts, _, details = call(c, app.UPLOAD, f, sigma=0.5, alpha=0.01)
    assert "**Image:** your upload photo.png (true class not given)" in verdict
    assert details["correct"] is None and details["true_class"] is None and counts["data"]
    assert "correct" not in verdict.split("\n\n")[1]
    _, verdict, _, _, _, details = call(c, app.UPLOAD, f, true_class=classes[2], sigma=0.5, alpha=0.01)
    assert f"**Image:** your upload photo.png (true class: {classes[2]})" in verdict
    right = details["prediction"] != "abstain" and app._bundle().classes.index(details["prediction"]) == 2
    assert details["correct"] == right and details["true_class"] == classes[2]
    assert (" · **correct**" in verdict) == right and (" · **incorrect**" in verdict or "abstained" in verdict) != right


# ---------------------------------------------------------------- the two sources are exclusive


def test_only_the_chosen_source_is_used(client, tmp_path):
    c, app = client
    b = app._bundle()
    f = upload_file(tmp_path, "other.png", png(np.full((28, 28), 255, np.uint8)))
    alone = call(c, app.TEST_IMAGE, None, index=5)
    with_file = call(c, app.TEST_IMAGE, f, index=5, true_class=b.dataset.classes[0])  # file and class ignored
    assert with_file[5]["image"] == "test image #5" and with_file[5]["source"] == app.TEST_IMAGE
    assert with_file[5]["true_class"] == b.dataset.classes[int(b.dataset.labels[5])]
    assert [alone[i] for i in (1, 2)] == [with_file[i] for i in (1, 2)]
    assert alone[3]["data"] == with_file[3]["data"]
    assert np.array_equal(np.asarray(Image.open(alone[4])), np.asarray(Image.open(with_file[4])))
    assert Image.open(alone[4]).convert("L").getextrema() != (0, 0)
    upload = call(c, app.UPLOAD, f, index=10**6)  # an index that does not exist is ignored for an upload
    assert upload[5]["image"] == "your upload other.png" and upload[5]["source"] == app.UPLOAD
    assert Image.open(upload[4]).convert("L").getextrema() == (0, 0)  # white page, inverted: the upload itself


def test_the_upload_source_without_a_file_says_what_to_do(client):
    c, app = client
    message = app_error(c, app.UPLOAD, None)
    assert "No file was uploaded; upload a PNG, JPEG" in message and "'Test image'" in message


def test_the_layout_makes_the_sources_exclusive(client):
    _, app = client
    source = component(app, "Image to certify")
    assert source.value == app.TEST_IMAGE and [v for _, v in source.choices] == list(app.SOURCES)
    test_group, upload_group = group_of(component(app, "Test image index")), group_of(component(app, "Upload an image"))
    assert test_group is not None and upload_group is not None and test_group is not upload_group
    assert group_of(component(app, "True class")) is upload_group
    assert test_group.visible is True and upload_group.visible is False
    assert app.show_source(app.UPLOAD) == ({"__type__": "update", "visible": False},
                                           {"__type__": "update", "visible": True})
    assert app.show_source(app.TEST_IMAGE)[1]["visible"] is False


# ---------------------------------------------------------------- defaults, examples, previews


def test_defaults_before_any_run(client):
    _, app = client
    assert component(app, "Noise level σ").value == 0.25
    radius = component(app, "Certified ℓ2 radius")
    assert radius.value == "" and type(radius).__name__ == "Textbox"  # gr.Number would show "0"
    assert component(app, "Top class counts").value["data"] == []
    assert component(app, "What produced this result").value is None


def test_examples_are_test_images_one_per_class(client):
    _, app = client
    data = app._test_set()
    datasets = [b for b in app.demo.blocks.values() if type(b).__name__ == "Dataset"]
    assert len(datasets) == 1
    ds = datasets[0]
    picks = app.example_indices(data.labels)
    assert len(ds.samples) == len(data.classes) == len(picks)
    assert sorted(int(data.labels[i]) for i in picks) == list(range(len(data.classes)))
    for sample, i in zip(ds.samples, picks):
        shown = np.asarray(Image.open(sample[0]["path"]).convert("L"))[::4, ::4]
        assert np.array_equal(shown, np.asarray(app.to_uint8(data[i][0], 1)))
    assert [fn.api_name for fn in app.demo.fns.values() if fn.api_visibility == "public"] == ["certify"]


def test_choosing_a_test_image_previews_it_and_selects_that_source(client):
    _, app = client
    data = app._test_set()
    update, source = app.preview_test_image(7)
    assert source == app.TEST_IMAGE and update["label"] == f"Test image #7: {data.classes[int(data.labels[7])]}"
    assert np.array_equal(np.asarray(Image.open(update["value"]).convert("L"))[::4, ::4],
                          np.asarray(app.to_uint8(data[7][0], 1)))
    import gradio as gr

    for bad in (None, len(data)):
        with pytest.raises(gr.Error):
            app.preview_test_image(bad)


def test_an_upload_is_previewed_as_the_model_sees_it(client, tmp_path):
    _, app = client
    good = tmp_path / "dark.png"
    good.write_bytes(png(np.zeros((50, 40), np.uint8)))
    picture, note, source = app.preview_upload(str(good))
    assert picture.shape == (28 * 8, 28 * 8) and picture.max() == 0 and source == app.UPLOAD
    assert "The model sees dark.png like this (28×28)" in note
    bad = tmp_path / "photo.png"
    bad.write_bytes(EPS)
    picture, note, source = app.preview_upload(str(bad))
    assert picture is None and "is not an image in an accepted format" in note and source == app.UPLOAD
    assert app.preview_upload(None)[:2] == (None, "")


# ---------------------------------------------------------------- bad input: the demo's own errors


@pytest.mark.parametrize("source, kw, message", [
    (None, {}, "Say which image to certify: source must be 'Test image' or 'Upload' (got nothing)"),
    ("Test image", {"index": None}, "The test-image index is missing; send a number, e.g. 0"),
    ("Test image", {"sigma": None}, "σ (sigma) is missing; send a number, e.g. 0.25"),
    ("Test image", {"n": None}, "N (the number of draws) is missing; send a number, e.g. 1000"),
    ("Test image", {"alpha": None}, "α (alpha) is missing; send a number, e.g. 0.001"),
    ("Upload", {}, "No file was uploaded"),
])
def test_none_inputs_get_the_demos_own_error(client, source, kw, message):
    c, _ = client
    assert message in app_error(c, source, None, **kw)


@pytest.mark.parametrize("kw, message", [
    ({"sigma": 0.0}, "sigma must be a finite number > 0"),
    ({"sigma": "abc"}, "σ (sigma) must be a number"),
    ({"n": 50}, "must be at least N0"),
    ({"n": 150.5}, "must be a whole number"),
    ({"alpha": 0.5}, "alpha must be in (0, 0.5)"),
    ({"index": 10**6}, "does not exist"),
    ({"source": "Both"}, "source must be 'Test image' or 'Upload' (got 'Both')"),
    ({"index": "abc"}, "The test-image index must be a number, e.g. 0 (got 'abc')"),
    ({"alpha": "x" * 500}, "α (alpha) must be a number, e.g. 0.001 (got 'xxxxx"),
])
def test_bad_parameters_give_a_clear_error(client, kw, message):
    c, app = client
    kw = dict(kw)
    source = kw.pop("source", app.TEST_IMAGE)
    assert message in app_error(c, source, None, **kw)


def test_n_is_capped(client, monkeypatch):
    c, app = client
    assert app.max_n() == app.LOCAL_MAX_N
    monkeypatch.setenv("CADIS_MAX_N", "150")
    assert "N = 160 is above this server's cap of 150 draws" in app_error(c, app.TEST_IMAGE, n=160)
    monkeypatch.delenv("CADIS_MAX_N")
    monkeypatch.setenv("SPACE_ID", "someone/cadis")  # what a Hugging Face Space sets
    assert app.hosted() and app.max_n() == app.HOSTED_MAX_N
    assert f"above this server's cap of {app.HOSTED_MAX_N}" in app_error(c, app.TEST_IMAGE, n=app.HOSTED_MAX_N + 10)
    monkeypatch.setenv("CADIS_HOSTED", "0")
    assert not app.hosted() and app.max_n() == app.LOCAL_MAX_N
    monkeypatch.setenv("CADIS_HOSTED", "1")
    hosted = app.build_demo()
    slider = next(b for b in hosted.blocks.values() if str(getattr(b, "label", "")).startswith("N draws"))
    assert slider.maximum == app.HOSTED_MAX_N and "one image at a time" in str(hosted.config)


# ---------------------------------------------------------------- uploads: formats, contents, size, cache


def test_eps_behind_a_png_name_is_refused_without_ghostscript(client, tmp_path, monkeypatch):
    c, app = client
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # what PIL would have made of it
    message = app_error(c, app.UPLOAD, upload_file(tmp_path, "photo.png", EPS))
    assert "photo.png is not an image in an accepted format (PNG, JPEG, WebP, BMP, GIF or TIFF)" in message
    assert calls == []


def test_non_finite_pixels_are_refused(client, tmp_path):
    c, app = client
    arr = np.full((28, 28), 0.5, np.float32)
    arr[0, :3] = [np.nan, np.inf, -np.inf]
    buf = io.BytesIO()
    Image.fromarray(arr, "F").save(buf, "TIFF")
    message = app_error(c, app.UPLOAD, upload_file(tmp_path, "float.tif", buf.getvalue()))
    assert "float.tif has 3 pixels that are NaN or infinite" in message


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"not a picture", "notes.png is not an image in an accepted format"),
    ("notes.txt", b"not a picture", "Invalid file type"),  # Gradio's own check of the extension
    ("empty.png", b"", "empty.png is empty"),
])
def test_a_non_image_upload_gets_a_clear_message(client, tmp_path, name, data, message):
    c, app = client
    assert message in app_error(c, app.UPLOAD, upload_file(tmp_path, name, data))


def test_a_url_is_not_fetched(client):
    from gradio_client import handle_file

    c, app = client
    message = app_error(c, app.UPLOAD, handle_file("http://127.0.0.1:9/picture.png"))
    assert "does not fetch URLs" in message


def test_an_upload_over_the_limit_is_refused_while_it_arrives(client, tmp_path):
    c, app = client
    from gradio_client import handle_file

    assert app.demo.max_file_size == app.MAX_UPLOAD_BYTES <= 25 * 10**6
    big = tmp_path / "big.png"
    big.write_bytes(png(np.zeros((8, 8), np.uint8)) + b"\0" * app.MAX_UPLOAD_BYTES)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client knows the limit
        call(c, app.UPLOAD, handle_file(str(big)))
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    with big.open("rb") as f:  # and the server enforces it on its own, while receiving
        response = httpx.post(f"{app.demo.local_url}gradio_api/upload", files={"files": ("big.png", f)})
    assert response.status_code == 413 and "maximum allowed size" in response.text
    kept = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > app.MAX_UPLOAD_BYTES // 2]
    assert kept == []


def test_the_upload_cache_is_cleaned(client, tmp_path):
    c, app = client
    from gradio.route_utils import delete_files_created_by_app

    assert app.demo.delete_cache == app.DELETE_CACHE
    call(c, app.UPLOAD, upload_file(tmp_path, "keep-me-not.png", png(np.zeros((9, 9), np.uint8))))
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    assert list(cache.rglob("keep-me-not.png"))
    delete_files_created_by_app(app.demo, 0)  # what the scheduled clean-up runs, here with age 0
    assert not list(cache.rglob("keep-me-not.png"))
    examples = next(b for b in app.demo.blocks.values() if type(b).__name__ == "Dataset")
    assert all(Path(s[0]["path"]).is_file() for s in examples.samples)  # the examples stay


def test_uploads_are_capped_per_visitor_before_they_are_opened(client, tmp_path, monkeypatch):
    import gradio as gr

    _, app = client
    monkeypatch.setenv("CADIS_HOSTED", "1")
    opened = []
    monkeypatch.setattr(app, "image_from_path", lambda path, *a, **k: opened.append(path) or torch.zeros(1, 28, 28))
    files = []
    for i in range(9):  # 9 files of 17.9 MB (sparse: only their size is real), each within the 20 MB limit
        files.append(tmp_path / f"big{i}.png")
        with files[-1].open("wb") as f:
            f.truncate(int(17.9 * 2**20))
    visitor, other = SimpleNamespace(session_hash="visitor-x"), SimpleNamespace(session_hash="visitor-y")
    for f in files[:8]:
        assert app.preview_upload(str(f), visitor)[0] is not None
    assert opened == [str(f) for f in files[:8]]
    picture, note, _ = app.preview_upload(str(files[8]), visitor)  # 161 MB within the hour: over the budget
    assert picture is None and "more than 160 MB within the last hour" in note and len(opened) == 8
    with pytest.raises(gr.Error, match="more than 160 MB within the last hour"):
        app.certify(app.UPLOAD, str(files[8]), 0, None, 0.25, 100, 0.001, request=visitor)
    assert len(opened) == 8  # refused from os.stat alone
    assert app.preview_upload(str(files[8]), other)[0] is not None  # another visitor has their own budget
    picture, note, _ = app.preview_upload(str(tmp_path / "gone.png"), visitor)
    assert picture is None and "was not received" in note


def test_an_upload_request_over_the_total_is_refused_before_its_body(client, monkeypatch, caplog):
    """Gradio bounds each file (max_file_size) but takes up to 1000 in one request: the server refuses a body
    over the total cap from its Content-Length, and an upload that does not state its length."""
    _, app = client
    url = urlparse(app.demo.local_url)

    def post(headers: dict[str, str], body: bytes) -> str:
        head = f"POST {url.path}gradio_api/upload HTTP/1.1\r\nHost: {url.netloc}\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        with socket.create_connection((url.hostname, url.port), timeout=30) as s:
            s.sendall(head.encode() + body)  # the head and a few bytes: the rest is never sent
            answer = b""
            while len(answer.partition(b"\r\n\r\n")[2].strip()) < 8:  # the body may come after the head
                part = s.recv(65536)
                if not part:
                    break
                answer += part
            return answer.decode("latin-1")

    monkeypatch.setenv("CADIS_HOSTED", "1")
    form = {"Content-Type": "multipart/form-data; boundary=x"}
    answer = post({**form, "Content-Length": str(20 * int(17.9 * 2**20))}, b"--x\r\n")
    assert answer.startswith("HTTP/1.1 413") and "One upload may hold 40 MB in all" in answer
    answer = post({**form, "Transfer-Encoding": "chunked"}, b"5\r\n--x\r\n\r\n")
    assert answer.startswith("HTTP/1.1 411") and "must state its size" in answer
    assert len([r for r in caplog.records if "refused an upload request" in r.getMessage()]) == 2
    monkeypatch.delenv("CADIS_HOSTED")
    with (Path(os.environ["GRADIO_TEMP_DIR"]).parent / "small.png").open("wb") as f:
        f.write(png(np.zeros((8, 8), np.uint8)))
    with open(f.name, "rb") as f:
        response = httpx.post(f"{app.demo.local_url}gradio_api/upload", files={"files": ("small.png", f)})
    assert response.status_code == 200  # within the caps, uploads go through as before


# ---------------------------------------------------------------- refused requests: one log line, no traceback


def test_bad_input_is_one_log_line_and_no_traceback(client, tmp_path, caplog, capfd):
    import gradio as gr
    from gradio_client import handle_file

    c, app = client
    caplog.set_level(logging.WARNING, logger="apps.gradio_demo")
    capfd.readouterr()
    cases = [(app.TEST_IMAGE, None, {"index": "abc"}, "The test-image index must be a number, e.g. 0 (got 'abc')"),
             (app.TEST_IMAGE, None, {"sigma": "abc"}, "σ (sigma) must be a number"),
             (app.TEST_IMAGE, None, {"alpha": "x" * 500}, "α (alpha) must be a number"),
             (app.TEST_IMAGE, None, {"n": None}, "N (the number of draws) is missing"),
             ("Both", None, {}, "source must be 'Test image' or 'Upload'"),
             (app.UPLOAD, upload_file(tmp_path, "notes.txt", b"text"), {}, "Invalid file type"),
             (app.UPLOAD, handle_file("http://127.0.0.1:9/picture.png"), {}, "does not fetch URLs")]
    for source, upload, kw, message in cases:
        assert message in app_error(c, source, upload, **kw)
    with pytest.raises(gr.Error, match="must be a number"):
        app.preview_test_image(10**400)  # too large for a float: still the demo's own message
    lines = [r.getMessage() for r in caplog.records if r.name == "apps.gradio_demo"]
    assert len(lines) == len(cases) + 1, lines  # one line per refused request
    assert all(line.startswith("refused a request: ") and "\n" not in line and len(line) < 400 for line in lines)
    assert "x" * 100 not in "".join(lines)  # the input is quoted, cut short
    assert "abc" in lines[0]
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]


# ---------------------------------------------------------------- the queue


def test_concurrent_sessions_are_queued(client):
    c, app = client
    from gradio_client import Client

    other = Client(app.demo.local_url, verbose=False)
    jobs = [cl.submit(app.TEST_IMAGE, None, i, None, 0.25, 100, 0.001, api_name="/certify")
            for i, cl in enumerate([c, other])]
    results = [j.result(timeout=120) for j in jobs]
    assert [r[5]["image"] for r in results] == ["test image #0", "test image #1"]
    assert not app._bundle().lock.locked()


def test_one_certification_at_a_time_with_a_bounded_queue(client):
    _, app = client
    assert app.demo._queue.default_concurrency_limit == 1
    assert app.demo._queue.max_size == app.QUEUE_SIZE
    [certify] = [fn for fn in app.demo.fns.values() if fn.api_name == "certify"]
    assert certify.concurrency_limit == "default" and certify.queue is True  # the queue's limit of 1


# ---------------------------------------------------------------- in a browser


def test_a_browser_shows_the_defaults_and_the_examples(client):
    """What a visitor sees before any run: σ at 0.25, an empty radius (not "0"), one example per class; an
    example fills the index, and the "Upload" choice swaps the test-image inputs for the upload's."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    _, app = client
    data = app._test_set()
    picks = app.example_indices(data.labels)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(app.demo.local_url)
            thumbs = page.locator("button.gallery-item img")
            expect(thumbs).to_have_count(len(data.classes), timeout=30_000)
            radius = page.get_by_label("Certified ℓ2 radius")
            expect(radius).to_have_value("")
            expect(radius).to_have_attribute("placeholder", "appears when a run finishes")
            expect(page.get_by_label("number input for Noise level σ")).to_have_value("0.25")
            index = page.get_by_label(re.compile("^Test image index"))
            expect(index).to_have_value("0")
            expect(page.get_by_text("Upload an image")).to_be_hidden()
            page.locator("button.gallery-item").nth(3).click()
            expect(index).to_have_value(str(picks[3]))
            caption = f"Test image #{picks[3]}: {data.classes[int(data.labels[picks[3]])]}"
            expect(page.get_by_text(caption)).to_be_visible()
            page.get_by_test_id(f"{app.UPLOAD}-radio-label").click()
            expect(page.get_by_text("Upload an image")).to_be_visible()
            expect(index).to_be_hidden()
            expect(page.get_by_label("True class (optional)")).to_be_visible()
        finally:
            browser.close()


def test_importing_the_demo_writes_no_stub_file(client):
    """Subclassing a Gradio component makes Gradio write `<module>.pyi` beside it; the demo does not."""
    assert not (ROOT / "apps" / "gradio_demo.pyi").exists() and not (ROOT / "gradio_app.pyi").exists()
