"""Hosted mode (apps.ui.hosting): visitors cannot reach each other's models or the server's files, see no server
path or visitor id, and cannot make the server hold more uploads than the caps allow (apps.ui.uploads).

The Streamlit pages run through AppTest with the test models of test_app.py ($CADIS_TEST_MODELS).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from apps.ui import hosting
from apps.ui.hosting import (
    PRESET_CLASSIFIER,
    REFUSED,
    SHIPPED_MODELS,
    VISITOR_ID,
    allowed_models,
    hide_paths,
    model_choices,
    new_visitor,
    resolve_model,
)
from apps.ui.jobs import FinetuneJob
from apps.ui.uploads import UploadLedger, check_uploads, file_sizes
from cadis.errors import CadisError

from conftest import model_env

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SHIPPED = "ft-cadis-s0.25"  # a shipped LoRA adapter (a few hundred kB) copied in as a visitor's run
MB = 2**20
SAVED_VARS = ("CADIS_PRESET", "CADIS_DENOISER", "CADIS_CLASSIFIER", "CADIS_RUNS_DIR", "CADIS_HOSTED")


@pytest.fixture(autouse=True)
def hosted_env(request, tmp_path, monkeypatch):
    """Hosted mode, the test models, a fresh runs directory per test, one torch thread."""
    threads = torch.get_num_threads()
    for k, v in {"CADIS_HOSTED": "1", "CADIS_RUNS_DIR": str(tmp_path / "runs"), **model_env(request)}.items():
        monkeypatch.setenv(k, v)
    torch.set_num_threads(int(os.environ.get("CADIS_TEST_THREADS", "1")))
    yield tmp_path / "runs"
    torch.set_num_threads(threads)


def add_run(runs: Path, visitor: str, name: str) -> Path:
    """A finished run of `visitor` (a copy of a shipped adapter), as the Fine-tuning page leaves it."""
    model = runs / "visitors" / visitor / "finetune" / name / "model"
    shutil.copytree(SHIPPED_MODELS / SHIPPED, model)
    return model


def app_at(page: str, visitor: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["visitor"] = visitor  # the browser session's id, as `_common.visitor()` would draw it
    at.run()
    at.switch_page(f"apps/views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page_text(at) -> str:
    """Everything a visitor reads on the page: text elements, alerts, tables and widget options."""
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "success", "info",
                                  "warning", "error") for e in getattr(at, kind)]
    parts += [e.value.to_string() for e in at.dataframe]
    parts += [str(o) for s in at.selectbox for o in s.options]
    return "\n".join(map(str, parts))


# ---------------------------------------------------------------- visitor ids and the model allow-list


def test_visitor_ids_are_unguessable():
    ids = [new_visitor() for _ in range(500)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) and VISITOR_ID.fullmatch(i) for i in ids)  # 128 random bits


def test_a_visitor_can_load_no_other_visitors_model_nor_any_server_path(hosted_env):
    runs = hosted_env
    a, b = new_visitor(), new_visitor()
    theirs, mine = add_run(runs, a, "run-a"), add_run(runs, b, "run-b")
    (runs / "visitors" / b / "finetune" / "link").mkdir()
    (runs / "visitors" / b / "finetune" / "link" / "model").symlink_to(theirs, target_is_directory=True)
    secret = Path("/root/.ssh")

    shipped = {p.name for p in SHIPPED_MODELS.iterdir() if (p / "adapter_config.json").is_file()
               or (p / "config.json").is_file()}
    assert list(model_choices(b))[0] == PRESET_CLASSIFIER
    assert set(model_choices(b)) == {PRESET_CLASSIFIER, "run-b", *shipped}  # their runs and the shipped ones
    assert "run-a" not in allowed_models(b) and "link" not in allowed_models(b)  # a symlink out: not listed
    assert resolve_model("run-b", b) == mine.resolve() and resolve_model(SHIPPED, b) == SHIPPED_MODELS / SHIPPED
    assert resolve_model(f"{mine}/../../run-b/model", b) == mine.resolve()  # `..` back to one's own run is fine
    assert resolve_model(PRESET_CLASSIFIER, b) is None
    attempts = [str(theirs), "run-a", f"{runs}/visitors/../visitors/{a}/finetune/run-a/model",
                f"{runs}/visitors/{b}/../{a}/finetune/run-a/model", str(runs / "visitors" / b / "finetune" / "link"
                                                                       / "model"), "link",
                "/etc", str(secret), "/nonexistent-xyz", "../../../../etc/passwd", "~", "", str(SHIPPED_MODELS),
                str(runs), f"local-dir:{theirs}", "hf-hub:org/name", "/etc/passwd\0", "x" * 5000]
    messages = set()
    for entry in attempts:
        with pytest.raises(CadisError) as refused:
            resolve_model(entry, b)
        messages.add(str(refused.value))
    assert messages == {REFUSED}  # one message: it tells nothing of what exists, and names no path or id
    assert "/" not in REFUSED and a not in REFUSED and b not in REFUSED
    assert resolve_model(str(theirs), a) == theirs.resolve()  # the run is its own visitor's
    with pytest.raises(CadisError, match="No valid visitor id"):
        model_choices("../" + a)


def test_the_models_page_offers_a_list_and_no_path_field(hosted_env, monkeypatch):
    runs = hosted_env
    a, b = new_visitor(), new_visitor()
    theirs, mine = add_run(runs, a, "run-a"), add_run(runs, b, "run-b")
    at = app_at("models", b)
    keys = {w.key for w in at.text_input}
    assert not keys & {"models_denoiser", "models_classifier"}  # nothing to type a path into
    choice = at.selectbox(key="models_classifier_choice")
    assert {PRESET_CLASSIFIER, SHIPPED, "run-b"} <= set(choice.options) and "run-a" not in choice.options
    text = page_text(at)
    for secret in (str(ROOT), str(runs), a, b, "visitors"):
        assert secret not in text, secret
    assert "path" not in at.dataframe[1].value.columns

    choice.set_value("run-b")
    at.button[0].click().run()  # "Load and use"
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["model_choice"][2] == str(mine.resolve())
    text = page_text(at)
    assert "classifier `run-b`" in text and str(runs) not in text and b not in text
    at.switch_page("apps/views/overview.py").run()  # the models in use, as the other pages name them
    assert not at.exception and not at.error, [e.value for e in at.error]
    text = page_text(at)
    assert "run-b" in text and not any(secret in text for secret in (str(ROOT), str(runs), b, "visitors"))
    at.switch_page("apps/views/models.py").run()

    # A widget that offered more (a forged value: another visitor's run, a system folder) still loads none of it:
    # the page resolves the choice through the allow-list itself
    real = hosting.model_choices
    forged = [str(theirs), f"{runs}/visitors/../visitors/{a}/finetune/run-a/model", "/etc", "/nonexistent-xyz"]
    monkeypatch.setattr(hosting, "model_choices", lambda v=None: {**real(v), **dict.fromkeys(forged)})
    at.run()
    for entry in forged:
        at.selectbox(key="models_classifier_choice").set_value(entry)
        at.button[0].click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert [e.value for e in at.error] == [REFUSED]  # the same words for each: nothing about what exists
        assert at.session_state["model_choice"][2] == str(mine.resolve())  # still the visitor's own


def test_a_finished_or_failed_run_is_shown_without_server_paths(hosted_env):
    runs = hosted_env
    v = new_visitor()
    out = runs / "visitors" / v / "finetune" / "fashion-mnist-ft-cadis-s0.5-20250101-000000"
    job = SimpleNamespace(status="done", path=out / "model", name=out.name)
    shown = FinetuneJob.outcome(job, show_paths=False)
    assert shown == f"Saved as your run “{out.name}”. Pick it as “{out.name}” on the Hallucinations page."
    job.status, job.path = "stopped", out / "checkpoint"
    assert str(runs) not in FinetuneJob.outcome(job, show_paths=False) and v not in shown
    assert str(out / "model") in FinetuneJob.outcome(SimpleNamespace(status="done", path=out / "model",
                                                                     name=out.name))  # locally: the path
    error = f"Fine-tuning failed unexpectedly: OSError: [Errno 28] No space left on device: '{out}/model.bin'"
    assert hide_paths(error) == "Fine-tuning failed unexpectedly: OSError: [Errno 28] No space left on device: '…'"
    assert v not in hide_paths(f"visitor {v}") and hide_paths("N draws, 10/20, hf-hub:org/name") == \
        "N draws, 10/20, hf-hub:org/name"


# ---------------------------------------------------------------- upload caps


def test_uploads_are_capped_per_request_and_per_visitor(hosted_env, monkeypatch, tmp_path):
    lim = hosting.limits()
    size = int(17.9 * MB)  # the report's files: 20 of 17.9 MB
    with pytest.raises(CadisError, match="20 files uploaded; pick at most 8 in this shared demo"):
        check_uploads([size] * 20)
    with pytest.raises(CadisError, match=f"These 3 files hold 53.7 MB together; one upload may hold "
                                         f"{lim.upload_mb} MB in this shared demo"):
        check_uploads([size] * 3)
    check_uploads([size] * 2)
    ledger, now = UploadLedger(), 1000.0
    for k in range(4):  # 4 requests of 2 files: 143 MB within the hour
        ledger.admit("a", {f"a{k}-1": size, f"a{k}-2": size}, now=now + k)
    ledger.admit("a", {"a0-1": size, "a0-2": size}, now=now + 10)  # a rerun with the same files counts nothing
    with pytest.raises(CadisError, match=f"more than {lim.visitor_upload_mb} MB within the last hour"):
        ledger.admit("a", {"a4-1": size, "a4-2": size}, now=now + 20)
    ledger.admit("b", {"b0-1": size, "b0-2": size}, now=now + 20)  # another visitor has their own budget
    ledger.admit("a", {"a4-1": size, "a4-2": size}, now=now + ledger.window_s + 5)  # an hour later
    monkeypatch.setenv("CADIS_HOSTED", "0")
    check_uploads([size] * 20)  # the local app: one user, the wider caps
    sparse = tmp_path / "sparse.png"
    with sparse.open("wb") as f:
        f.truncate(size)  # no disk used: only its size is read
    assert file_sizes([sparse]) == {str(sparse): size}
    with pytest.raises(CadisError, match="was not received"):
        file_sizes([tmp_path / "gone.png"])


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("files, message", [
    ([(f"{i}.png", png(i)) for i in range(9)], "9 files uploaded; pick at most 8 in this shared demo"),
    ([(f"big{i}.png", png(i) + b"\0" * int(17.9 * MB)) for i in range(3)], "These 3 files hold 53.7 MB together"),
])
def test_the_app_refuses_an_upload_request_over_the_caps_before_reading_it(hosted_env, monkeypatch, files, message):
    import apps.views._common as common

    opened = []
    real = common.image_from_bytes
    monkeypatch.setattr(common, "image_from_bytes", lambda data, *a, **k: opened.append(len(data)) or real(data, *a,
                                                                                                             **k))
    at = app_at("hallucinations", new_visitor())
    at.radio(key="hal_how").set_value("Upload").run()
    uploader = at.file_uploader(key="hal_files")
    for name, data in files:
        uploader.upload(name, data, "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error if message in e.value], [e.value for e in at.error]
    assert opened == []  # refused from the sizes alone: no file was read
    assert at.button(key="hal_run").disabled
    fresh = [u for u in at.file_uploader]
    assert [u.key for u in fresh] == ["hal_files1"]  # an empty uploader replaces the refused one
    fresh[0].upload("ok.png", png(200), "image/png").run()  # a request within the caps goes through
    assert not at.error and opened == [len(png(200))] and not at.button(key="hal_run").disabled
