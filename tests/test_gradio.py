"""The Gradio demo's `/certify` endpoint through gradio_client against a local launch.

Models as in test_app.py: $CADIS_TEST_MODELS = preset | tiny | DIR, default the preset when present, else tiny.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import model_env

ROOT = Path(__file__).resolve().parent.parent
MODEL_VARS = ("CADIS_PRESET", "CADIS_DENOISER", "CADIS_CLASSIFIER")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*:pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def client(request):
    from gradio_client import Client

    saved = {k: os.environ.get(k) for k in MODEL_VARS}
    threads = torch.get_num_threads()
    os.environ.update({"GRADIO_ANALYTICS_ENABLED": "False", **model_env(request)})
    torch.set_num_threads(int(os.environ.get("CADIS_TEST_THREADS", "1")))
    sys.path.insert(0, str(ROOT))
    gradio_app = importlib.reload(importlib.import_module("gradio_app"))  # picks up the models set above
    gradio_app._bundle.cache_clear()
    gradio_app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield Client(gradio_app.demo.local_url, verbose=False), gradio_app
    finally:
        gradio_app.demo.close()
        sys.path.remove(str(ROOT))
        torch.set_num_threads(threads)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_certify_a_test_image(client):
    c, app = client
    b = app._bundle()
    gallery, verdict, radius, counts, model_input = c.predict(None, 3, 0.25, 120, 0.001, api_name="/certify")
    assert len(gallery) == app.GALLERY_DRAWS and all(Path(g["image"]).is_file() for g in gallery)
    assert all(g["caption"].endswith("%") and g["caption"].rsplit(" ", 1)[0] in b.classes for g in gallery)
    rows = counts["data"]
    assert 1 <= len(rows) <= 5 and sum(r[1] for r in rows) <= 120
    assert f"(true class: {b.classes[int(b.dataset.labels[3])]})" in verdict
    if verdict.startswith("### Abstain"):
        assert radius == 0
    else:
        top = rows[0][0]
        shown = float(re.search(r"\*\*([0-9.]+)\*\*", verdict).group(1))
        assert verdict.startswith(f"### {top}") and radius > 0 and shown == pytest.approx(radius, abs=1e-3)
    assert Image.open(model_input).size == (28 * 8, 28 * 8)


def test_certify_an_upload(client, tmp_path):
    c, _ = client
    from gradio_client import handle_file

    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 60, 4)) * 255).astype(np.uint8)).save(path)  # RGBA, any size
    _, verdict, radius, counts, _ = c.predict(handle_file(str(path)), 0, 0.5, 100, 0.01, api_name="/certify")
    assert "true class" not in verdict and radius >= 0 and counts["data"]


@pytest.mark.parametrize("upload, index, sigma, n, alpha, message", [
    ("corrupt", 0, 0.25, 100, 0.001, "is not an image"),
    (None, 0, 0.0, 100, 0.001, "sigma must be > 0"),
    (None, 0, 0.25, 50, 0.001, "must be at least N0"),
    (None, 0, 0.25, 100, 0.5, "alpha must be in (0, 0.5)"),
    (None, 10**6, 0.25, 100, 0.001, "does not exist"),
])
def test_bad_input_gives_a_clear_error(client, tmp_path, upload, index, sigma, n, alpha, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    if upload == "corrupt":
        bad = tmp_path / "corrupt.png"
        bad.write_bytes(b"not a picture")
        upload = handle_file(str(bad))
    with pytest.raises(AppError) as err:
        c.predict(upload, index, sigma, n, alpha, api_name="/certify")
    assert message in str(err.value) and "Traceback" not in str(err.value)


def test_concurrent_sessions_are_queued(client):
    c, app = client
    from gradio_client import Client

    other = Client(app.demo.local_url, verbose=False)
    jobs = [cl.submit(None, i, 0.25, 100, 0.001, api_name="/certify") for i, cl in enumerate([c, other])]
    results = [j.result(timeout=120) for j in jobs]
    assert all(len(r[0]) == app.GALLERY_DRAWS for r in results)
    assert not app._bundle().lock.locked()


def test_one_job_at_a_time_under_the_certify_api_name(client):
    _, app = client
    assert app.demo._queue.default_concurrency_limit == 1
    assert [fn.api_name for fn in app.demo.fns.values()] == ["certify"]
