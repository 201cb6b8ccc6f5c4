"""Hosted mode (apps.ui.hosting): visitors cannot reach each other's models or the server's files, see no server
path or visitor id, and cannot make the server hold more uploads than the caps allow (apps.ui.uploads).

The Streamlit pages run through AppTest with the test models of test_app.py ($CADIS_TEST_MODELS).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
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
from apps.ui.jobs import ONE_RUN, QUEUE_FULL, FinetuneJob, shared_queue
from apps.ui.uploads import UploadLedger, check_uploads, file_sizes
from apps.ui.visitor import PARAM, TOKEN_KEY, new_token, recognise, visitor_id
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


def app_at(page: str, token: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[TOKEN_KEY] = token  # the browser session's token, as `visitor.recognise` keeps it
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
    token = new_token()
    a, b = new_visitor(), visitor_id(token)
    theirs, mine = add_run(runs, a, "run-a"), add_run(runs, b, "run-b")
    at = app_at("models", token)
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
    at = app_at("hallucinations", new_token())
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


# ---------------------------------------------------------------- a visitor across a reload, the queue, the caps

TINY_RUN = dict(ft_steps=2, ft_batch=4, ft_subset=8, ft_m=1, ft_t=1, ft_eval=0, ft_eval_size=0)


def empty(queue):
    for job in list(queue.jobs):
        job.stop()
        job.thread.join(60) if job.thread.is_alive() else None
    queue.jobs.clear()
    return queue


@pytest.fixture
def queue():
    """The process-wide job queue, emptied before and after (a test's jobs must not hold up another's)."""
    yield empty(shared_queue())
    empty(shared_queue())


def finetuning_at(token: str | None = None):
    """A fresh browser session on the Fine-tuning page; `token` in its URL as a reload would send it."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({} if token is None else {PARAM: token})
    at.run()
    at.switch_page("apps/views/finetuning.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def set_inputs(at, values: dict) -> None:
    for key, value in values.items():
        at.number_input(key=key).set_value(value)
    at.selectbox(key="ft_data").set_value(at.selectbox(key="ft_data").options[-1])  # the small demo split


def test_tokens_are_recognised_only_when_the_server_issued_them(hosted_env, monkeypatch):
    params, state = {}, {}
    first = recognise(params, state)  # a first visit: a token in the URL, the id a hash of it
    token = params[PARAM]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", token) and first == visitor_id(token) and VISITOR_ID.fullmatch(first)
    assert token not in first and first not in token
    assert recognise({PARAM: token}, {}) == first  # a reload: a new session, the same visitor
    assert recognise({}, state) == first  # a page switch that lost the URL's parameters: the session's token
    for forged in ("A" * 32, token[:-1] + ("A" if token[-1] != "A" else "B"), "../x", "", first, "x" * 5000):
        params = {PARAM: forged}
        new = recognise(params, {})
        assert new != first and params[PARAM] not in (forged, token)  # a new visitor; nothing else told
    hosting.visitor_dir(first).mkdir(parents=True)  # after a restart the folder vouches for the token
    monkeypatch.setattr("apps.ui.visitor._issued", {})
    assert recognise({PARAM: token}, {}) == first
    assert state[TOKEN_KEY] == token


def test_issued_tokens_are_forgotten_after_a_day_and_beyond_a_bound(hosted_env, monkeypatch):
    from apps.ui import visitor

    monkeypatch.setattr(visitor, "_issued", {})
    monkeypatch.setattr(visitor, "MAX_ISSUED", 3)
    clock = [1000.0]
    monkeypatch.setattr(visitor.time, "time", lambda: clock[0])
    old = visitor.new_token()
    assert visitor.known(old)
    clock[0] += hosting.VISITOR_TTL_S + 1  # a day later, with no folder: forgotten at the next first visit
    tokens = [visitor.new_token() for _ in range(4)]
    assert not visitor.known(old)
    assert len(visitor._issued) == 3 and not visitor.known(tokens[0])  # the bound drops the oldest
    assert all(visitor.known(t) for t in tokens[1:])


def test_a_visitor_who_reloads_sees_and_stops_their_run_and_cannot_start_a_second(hosted_env, queue, monkeypatch):

    gate, real = threading.Event(), FinetuneJob._baseline
    monkeypatch.setattr(FinetuneJob, "_baseline", lambda self: gate.wait(60) and real(self))  # held in warm-up
    first = finetuning_at()
    token = first.query_params[PARAM]
    assert first.session_state["visitor"] == visitor_id(token)
    set_inputs(first, {**TINY_RUN, "ft_steps": 300})
    first.button(key="ft_start").click().run()
    assert not first.error, [e.value for e in first.error]
    job = queue.latest(visitor_id(token))
    assert job is not None and job.running

    again = finetuning_at(token)  # the reload: a new session, the same URL
    assert again.query_params[PARAM] == token and not again.button(key="ft_stop").disabled
    assert not any("No fine-tuning run yet" in i.value for i in again.info)
    progress = again.get("progress")[0].proto.text
    assert progress.startswith("warming up: ") and "step 0 / 300" in progress, progress
    set_inputs(again, TINY_RUN)
    again.button(key="ft_start").click().run()  # a second run: refused, nothing queued
    assert [e.value for e in again.error] == [ONE_RUN]
    assert [j for j in queue.jobs if j.owner == visitor_id(token)] == [job]

    other = finetuning_at(finetuning_at().query_params[PARAM])  # another visitor's token, reloaded
    unknown = finetuning_at("Z" * 32)  # a token the server never issued: a new visitor, told nothing
    for at in (other, unknown):
        assert at.button(key="ft_stop").disabled and any("No fine-tuning run yet" in i.value for i in at.info)
        assert token not in str(at.query_params) and not at.get("progress")
    assert unknown.query_params[PARAM] != "Z" * 32

    again.button(key="ft_stop").click().run()  # the reloaded page stops the run started before the reload
    gate.set()
    job.thread.join(60)
    assert job.status == "stopped"
    again.run()  # the run has ended (joined above): one rerun shows it, as the page's polling would
    assert any("Stopped" in w.value for w in again.warning), [w.value for w in again.warning]
    assert again.button(key="ft_stop").disabled


def placeholder(owner: str) -> FinetuneJob:
    """A job for the queue's bookkeeping alone: no thread, no model; it runs until the test says otherwise."""
    from cadis.training.finetune import FinetuneConfig

    job = FinetuneJob(FinetuneConfig(steps=1, batch_size=1), None, None, None, owner=owner, estimate_s=60.0)
    job.start = lambda: setattr(job, "status", "running") or job
    return job


def test_a_queued_run_keeps_its_place_across_a_reload_and_a_full_queue_refuses(hosted_env, queue):

    bound = hosting.limits().queue
    for k in range(3):  # one running, two waiting
        queue.submit(placeholder(f"{k:016x}"), max_waiting=bound)
    first = finetuning_at()
    set_inputs(first, TINY_RUN)
    first.button(key="ft_start").click().run()
    again = finetuning_at(first.query_params[PARAM])  # reloaded: their place in the queue, and Stop
    assert any("Queued: 3 job(s) ahead of yours" in i.value for i in again.info), [i.value for i in again.info]
    assert not again.button(key="ft_stop").disabled

    while len(queue.waiting()) < bound:  # the queue at its bound
        queue.submit(placeholder(f"{len(queue.jobs):016x}"), max_waiting=bound)
    late = finetuning_at()
    set_inputs(late, TINY_RUN)
    assert any(f"The queue is full ({bound} waiting)" in c.value for c in late.caption)  # said before Start
    late.button(key="ft_start").click().run()
    assert [e.value for e in late.error] == [QUEUE_FULL.format(n=bound)] and "try again" in QUEUE_FULL
    assert len(queue.jobs) == bound + 1 and queue.latest(late.session_state["visitor"]) is None
    assert any("No fine-tuning run yet" in i.value for i in late.info)

    again.button(key="ft_stop").click().run()  # out of the queue: the one behind moves up
    assert any("Taken out of the queue" in w.value for w in again.warning) and len(queue.waiting()) == bound - 1


def test_caps_are_stated_beside_their_inputs_and_an_over_cap_value_is_refused(hosted_env, queue):
    lim = hosting.limits()
    at = finetuning_at()
    captions = [c.value for c in at.caption]
    for words in (f"At most {lim.steps} steps on this shared server", f"At most {lim.batch} images per batch",
                  f"At most {lim.subset:,} training images", f"At most {lim.eval_size} test images per evaluation"):
        assert any(words in c for c in captions), words
    assert at.number_input(key="ft_steps").max > lim.steps  # a browser would drop a value above max silently
    set_inputs(at, {**TINY_RUN, "ft_steps": lim.steps + 1})
    at.run()
    assert [e.value for e in at.error] == [f"The number of steps is capped at {lim.steps} in this shared demo (got "
                                           f"{lim.steps + 1}); lower it, or run the app locally for more."]
    assert at.number_input(key="ft_steps").value == lim.steps + 1  # kept as typed, not replaced
    assert at.button(key="ft_start").disabled and not queue.jobs
    at.radio(key="ft_setting").set_value("shipped runs' recipe").run()  # a setting above the caps: lowered, in words
    assert any("1000 → 300 steps" in i.value and "all → 2000 training images" in i.value
               for i in at.info), [i.value for i in at.info]
