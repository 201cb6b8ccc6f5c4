"""Shared fixtures: tiny randomly initialised models saved in the same layouts as real ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One torch thread unless CADIS_TEST_THREADS says otherwise (as test_app, test_gradio and test_finetune already
# do): the test models are tiny, and on a core that anything else uses (a subprocess of the tests, another job)
# a second thread's spin-waits make a tiny UNet's forward tens of times slower.
torch.set_num_threads(int(os.environ.get("CADIS_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parent.parent


def model_env(request) -> dict[str, str]:
    """Environment that points the apps at the test models (empty: the preset itself)."""
    from cadis.errors import CadisError  # imported late: HF_HUB_OFFLINE must be set first
    from cadis.models.presets import get_preset

    choice = os.environ.get("CADIS_TEST_MODELS", "auto")
    if choice in ("auto", "preset"):
        try:
            get_preset("fashion-mnist").check_available()
            return {}
        except CadisError:
            if choice == "preset":
                raise
    if choice not in ("auto", "tiny"):
        return {"CADIS_DENOISER": str(Path(choice) / "fmnist-ddpm"),
                "CADIS_CLASSIFIER": f"local-dir:{Path(choice) / 'fmnist-vit'}"}
    return {"CADIS_DENOISER": str(request.getfixturevalue("tiny_denoiser_dir")),
            "CADIS_CLASSIFIER": f"local-dir:{request.getfixturevalue('tiny_classifier_dir')}"}


APP_VARS = ("CADIS_PRESET", "CADIS_DENOISER", "CADIS_CLASSIFIER", "CADIS_RUNS_DIR")


@pytest.fixture(scope="module")
def app_env(request, tmp_path_factory) -> dict[str, str]:
    """For one test module: the apps pointed at the test models (model_env) and a private runs directory."""
    saved = {k: os.environ.get(k) for k in APP_VARS}
    env = {"CADIS_RUNS_DIR": str(tmp_path_factory.mktemp("runs")), **model_env(request)}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def bundle(app_env):
    """The apps' models and test set, loaded as the apps load them."""
    from apps.ui.models import load_bundle, model_source

    return load_bundle(model_source())


def make_tiny_unet(channels: int = 1, size: int = 28):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, norm_num_groups=4,
                       block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def make_tiny_vit(num_classes: int = 10):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=28,
                             patch_size=7, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, in_chans=1,
                             pretrained_cfg_overlay=dict(mean=(0.5,), std=(0.5,), input_size=(1, 28, 28),
                                                         num_classes=num_classes))


@pytest.fixture(scope="session")
def tiny_denoiser_dir(tmp_path_factory) -> Path:
    """A tiny DDPM (linear schedule, 1000 steps) saved in diffusers' pipeline layout."""
    from diffusers import DDPMPipeline, DDPMScheduler

    path = tmp_path_factory.mktemp("tiny-ddpm")
    DDPMPipeline(unet=make_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A tiny timm ViT (1×28×28, 10 classes) saved in timm's local-dir layout."""
    import timm

    path = tmp_path_factory.mktemp("tiny-vit")
    timm.models.save_for_hf(make_tiny_vit(), path, safe_serialization=True,
                            model_config={"label_names": [f"class{i}" for i in range(10)]})
    return path


def free_port() -> int:
    """A port nothing listens on, so concurrent test runs do not collide on a fixed master port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(request, tmp_path_factory):
    """`streamlit run app.py` on a free port, with the test models and a private runs directory: one server for
    the browser tests of every module (test_browser.py runs first, so its first request is a fresh server's)."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CADIS_RUNS_DIR": str(tmp_path_factory.mktemp("runs")),
           "CADIS_TORCH_THREADS": os.environ.get("CADIS_TEST_THREADS", "1"), **model_env(request)}
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
                                 f"--server.port={port}", "--server.address=127.0.0.1",
                                 "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def settle(page, timeout_ms: int = 90_000) -> None:
    """Wait until the script run is over (Streamlit shows a status widget while it runs), with no exception."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_ms)
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator('[data-testid="stException"]') \
        .first.inner_text()
