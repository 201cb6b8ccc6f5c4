"""The Streamlit app: every page and its main controls, through AppTest (apps.ui's helpers: test_ui_support.py).

Models: $CADIS_TEST_MODELS = `preset` (src/cadis/assets), `tiny` (random tiny models from conftest) or a directory
holding fmnist-ddpm/ and fmnist-vit/; by default the preset when its assets exist, else the tiny models.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import norm

from apps.ui.hosting import HOSTED_LIMITS, SHIPPED_RESULTS
from apps.ui.models import finetuned_models
from cadis.analysis.training_curves import metric_label
from cadis.certification.smoothing import lower_confidence_bound
from cadis.images import MAX_UPLOAD_BYTES
from cadis.models.loading import load_classifier

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGES = ["overview", "hallucinations", "finetuning", "certification", "models"]


pytestmark = pytest.mark.usefixtures("app_env")  # conftest: test models, a private runs folder


def app_at(page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(f"apps/views/{page}.py").run()
    return at


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


# ---------------------------------------------------------------- pages


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page):
    at = app_at(page)
    assert_clean(at)
    assert at.title, f"{page} shows no title"
    if page == "overview":
        assert len(at.image) == 3 and at.metric[0].label == "Prediction"
        assert "fashion-mnist" in at.dataframe[0].value.to_string()
    if page == "certification" and (SHIPPED_RESULTS / "verdict.csv").is_file():  # the shipped verdict, last
        assert at.header[-1].value == "Does FT-CADIS hold up? The embedded benchmark"
        assert "target" in at.dataframe[-1].value.columns and "N = 1000" in at.caption[-1].value
    if page == "models":
        presets = at.dataframe[0].value
        assert {"fashion-mnist", "cifar10"} <= set(presets["preset"])


def test_overview_another_image_changes_the_strip():
    at = app_at()
    first = at.image[0].captions
    torch.manual_seed(3)
    at.button(key="ov_next").click().run()
    assert_clean(at)
    assert at.number_input(key="ov_index").value != 0
    assert at.image[0].captions != first


def test_hallucination_grid(bundle):
    at = app_at("hallucinations")
    for tuned in [s for s in at.selectbox if s.key == "hal_tuned"]:  # shipped fine-tuned models exist
        tuned.set_value("(none)")  # this test reads the off-the-shelf classifier alone
    at.text_input(key="hal_idx").set_value("0-2, 7")
    at.slider(key="hal_draws").set_value(4)
    at.number_input(key="hal_sigma").set_value(0.5)
    at.button(key="hal_run").click().run()
    assert_clean(at)
    results = at.session_state["hal_results"]["results"]
    assert [r.name for r in results] == ["#0", "#1", "#2", "#7"]
    kept_hall = [c.value for c in at.caption if c.value.startswith("off-the-shelf: kept")]
    assert len(kept_hall) == 4
    for r, cap in zip(results, kept_hall):
        s = r.scores["off-the-shelf"]
        assert r.label == int(bundle.dataset.labels[int(r.name[1:])])
        assert s["hallucinated"] == [p != r.label for p in s["top1"]]  # hallucinated = prediction ≠ label
        kept, hallucinated = s["hallucinated"].count(False), s["hallucinated"].count(True)
        assert cap == f"off-the-shelf: kept {kept}, hallucinated {hallucinated}"
    # 4 clean images, then one picture per draw, each captioned with class and confidence
    draws = [c for img in at.image if img.captions != ["clean"] for c in img.captions]
    assert len(draws) == 16 and all(any(c.startswith(k) for k in bundle.classes) and c.endswith("%") for c in draws)
    assert len(at.get("plotly_chart")) == 3  # per-class rates, histograms, ROC
    summary = at.dataframe[0].value
    rate = np.mean([h for r in results for h in r.scores["off-the-shelf"]["hallucinated"]])
    assert summary.loc["off-the-shelf", "hallucination rate"] == pytest.approx(rate)


@pytest.mark.parametrize("text, message", [("0, x", "'x' is not an index"), ("0-100000000", "at most 64"),
                                           ("5, 99999", "outside the test set")])
def test_bad_indices_show_an_error(text, message):
    at = app_at("hallucinations")
    at.text_input(key="hal_idx").set_value(text).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="hal_run").disabled


def test_hallucinations_by_class_and_at_random(bundle):
    at = app_at("hallucinations")
    at.radio(key="hal_how").set_value("By class").run()
    at.selectbox(key="hal_class").set_value(5)
    at.slider(key="hal_count").set_value(3)
    at.slider(key="hal_draws").set_value(2)
    at.button(key="hal_run").click().run()
    assert_clean(at)
    assert [r.label for r in at.session_state["hal_results"]["results"]] == [5, 5, 5]
    at.radio(key="hal_how").set_value("At random").run()
    at.number_input(key="hal_seed").set_value(0)
    at.button(key="hal_run").click().run()
    assert_clean(at)
    assert len(at.session_state["hal_results"]["results"]) == 3


def test_hallucinations_multistep():
    at = app_at("hallucinations")
    at.text_input(key="hal_idx").set_value("4")
    at.slider(key="hal_draws").set_value(2)
    at.radio(key="hal_mode").set_value("multistep").run()
    at.slider(key="hal_steps").set_value(3)
    at.button(key="hal_run").click().run()
    assert_clean(at)
    state = at.session_state["hal_results"]
    assert state["mode"] == "multistep" and len(state["results"][0].scores["off-the-shelf"]["top1"]) == 2
    assert any(c.value.startswith("σ = 0.25, multistep (3 reverse steps): 2 draws") for c in at.caption)


def test_hallucination_upload_without_label_uses_majority_vote():
    at = app_at("hallucinations")
    at.radio(key="hal_how").set_value("Upload").run()
    rng = np.random.default_rng(0)
    at.file_uploader(key="hal_files").upload("shirt.png", png((rng.random((40, 30, 3)) * 255).astype(np.uint8)),
                                             "image/png").run()
    at.slider(key="hal_draws").set_value(6)
    at.button(key="hal_run").click().run()
    assert_clean(at)
    (r,) = at.session_state["hal_results"]["results"]
    s = r.scores["off-the-shelf"]
    majority = int(np.bincount(s["top1"], minlength=10).argmax())
    assert r.label is None and s["reference"] == majority
    assert sum(s["hallucinated"]) == 6 - s["top1"].count(majority)


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"these are not pixels", "not an image"),
    ("cut.png", png(np.zeros((64, 64), np.uint8))[:60], "corrupt or truncated"),
    ("huge.png", b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 1), "limit is 20 MB"),
    ("wide.png", png(np.zeros((2, 5000), np.uint8)), "4096 pixels"),
])
def test_bad_upload_shows_an_error(name, data, message):
    at = app_at("certification")
    at.radio(key="cert_how").set_value("Upload").run()
    at.file_uploader(key="cert_files").upload(name, data, "image/png").run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="cert_run").disabled  # nothing valid to certify


def test_an_upload_over_the_limit_is_refused_before_it_is_buffered():
    # `streamlit run` reads .streamlit/config.toml (the Dockerfile copies it): its server refuses a body over
    # maxUploadSize from the Content-Length header, before reading it. The widget states the same limit, and what
    # gets through is checked again by the app.
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 2**20 == MAX_UPLOAD_BYTES <= 25 * 2**20
    assert "COPY --chown=user .streamlit .streamlit" in (ROOT / "Dockerfile").read_text()
    at = app_at("certification")
    at.radio(key="cert_how").set_value("Upload").run()
    assert at.file_uploader(key="cert_files").proto.max_upload_size_mb == config["server"]["maxUploadSize"]
    at.file_uploader(key="cert_files").upload("big.png", b"\x89PNG" + b"\0" * MAX_UPLOAD_BYTES, "image/png").run()
    assert any("the limit is 20 MB" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="cert_run").disabled


@pytest.mark.parametrize("key, value, message", [
    ("cert_sigma", 0.0, "sigma must be a finite number > 0"),
    ("cert_sigma", -0.5, "sigma must be a finite number > 0"),
    ("cert_alpha", 0.5, "alpha must be in (0, 0.5)"),
    ("cert_n", 5, "must be at least N0"),
])
def test_bad_parameters_show_an_error(key, value, message):
    at = app_at("certification")
    at.text_input(key="cert_idx").set_value("0")
    at.number_input(key="cert_n0").set_value(10)
    at.number_input(key="cert_n").set_value(20)
    at.number_input(key=key).set_value(value)
    at.button(key="cert_run").click().run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert "cert_last" not in at.session_state


def test_certification_small_n(bundle, app_env):
    # A shipped-style result file so the accuracy-vs-radius section has a second run to compare.
    runs = Path(app_env["CADIS_RUNS_DIR"])
    pd.DataFrame({"idx": [0, 1, 2, 3], "label": [1, 2, 3, 4], "predict": [1, 2, -1, 0],
                  "radius": [0.3, 0.6, 0.0, 0.2]}).to_csv(runs / "demo_s025.tsv", sep="\t", index=False)
    at = app_at("certification")
    at.text_input(key="cert_idx").set_value("3, 5")
    at.number_input(key="cert_n0").set_value(10)
    at.number_input(key="cert_n").set_value(60)
    at.number_input(key="cert_sigma").set_value(0.25)
    at.button(key="cert_run").click().run()
    assert_clean(at)
    assert at.get("progress")[0].proto.text.startswith("done: 2 images")
    table = at.dataframe[0].value
    assert list(table["image"]) == ["#3", "#5"] and (table["n"] == 60).all()
    for _, row in table.iterrows():
        p = lower_confidence_bound(int(row["count_A"]), 60, 0.001)
        assert row["p_A (lower)"] == pytest.approx(p, abs=1e-4)
        if row["prediction"] == "abstain":
            assert p < 0.5 and row["radius"] == 0
        else:
            assert row["radius"] == pytest.approx(0.25 * norm.ppf(p), abs=1e-3)
            assert row["prediction"] == row["top counts"].split(":")[0]
    assert at.image[0].captions[0].startswith("#3 ") and "R = " in at.image[0].captions[1]
    assert len(at.get("plotly_chart")) == 3  # radii bars, accuracy vs radius, per class
    runs_offered = at.multiselect(key="cert_runs").options
    session_run = "this session: off-the-shelf, σ=0.25, N=60, α=0.001 (2 images)"  # all that produced it
    assert "demo_s025" in runs_offered and session_run in runs_offered
    assert session_run in at.multiselect(key="cert_runs").value  # a new run joins the comparison
    # the default selection is the first few runs; how many ship in assets/ must not matter here
    at.multiselect(key="cert_runs").set_value([session_run, "demo_s025"]).run()
    acr = at.dataframe[1].value
    assert acr.loc["demo_s025", "ACR"] == pytest.approx((0.3 + 0.6) / 4)
    assert acr.loc["demo_s025", "abstain"] == pytest.approx(0.25)
    # Two result files pair up image by image; the session's run (no dataset indices) does not.
    pd.DataFrame({"idx": [0, 1, 2, 3], "label": [1, 2, 3, 4], "predict": [1, 0, 3, 4],
                  "radius": [0.3, 0.1, 0.5, 0.2]}).to_csv(runs / "other_s025.tsv", sep="\t", index=False)
    at.run()
    at.multiselect(key="cert_runs").set_value(["demo_s025", "other_s025", session_run]).run()
    assert_clean(at)
    # the session's run knows its test-set indices (#3, #5), so it pairs with result files too
    assert at.selectbox(key="cert_pair_a").options == ["demo_s025", "other_s025", session_run]
    at.selectbox(key="cert_pair_a").set_value("demo_s025")
    at.selectbox(key="cert_pair_b").set_value("other_s025").run()
    paired = at.dataframe[2].value
    # r=0: demo alone certifies image 1, other alone images 2 and 3.
    assert (paired.loc["r=0", "only A"], paired.loc["r=0", "only B"], paired.loc["r=0", "images"]) == (1, 2, 4)
    per_class = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("cert_per_class"))
    assert '"Pullover"' in per_class.proto.spec  # class names, not indices


def test_finetuning_live_run_then_compare(bundle):
    at = app_at("finetuning")
    for key, value in dict(ft_steps=4, ft_batch=4, ft_subset=8, ft_m=2, ft_t=1, ft_eval=2, ft_eval_size=8).items():
        at.number_input(key=key).set_value(value)
    at.selectbox(key="ft_data").set_value(at.selectbox(key="ft_data").options[-1])  # the small demo split
    at.button(key="ft_start").click().run()
    assert_clean(at)
    seen_progress, deadline = [], time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        seen_progress += [p.proto.text for p in at.get("progress")]
        if at.success or at.error:
            break
    assert_clean(at)
    assert at.success, "the run did not finish in time"
    assert any(t.startswith("done: step 4 / 4") for t in seen_progress)
    assert at.get("plotly_chart"), "no live curves"
    assert {m.label for m in at.metric} >= {metric_label(k) for k in ("loss_sce", "selection_rate", "mask_rate",
                                                                        "acc_denoised")}
    assert at.button(key="ft_stop").disabled  # nothing left to stop
    found = finetuned_models()
    name = at.success[0].value.split("“")[1].split("”")[0]  # shipped models may share part of the name
    assert name in found
    assert load_classifier(str(found[name])).num_classes == 10
    # The finished run joins the finished runs' comparison by itself (it logged two evaluations).
    at.run()
    assert name in at.multiselect(key="ft_past").value
    assert_clean(at)
    compare = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("ft_compare"))
    assert f'"name":"{name}"' in compare.proto.spec.replace(" ", "")

    at.switch_page("apps/views/hallucinations.py").run()
    assert at.selectbox(key="hal_tuned").value == name  # the newest run is preselected
    at.text_input(key="hal_idx").set_value("0, 1")
    at.slider(key="hal_draws").set_value(3)
    at.button(key="hal_run").click().run()
    assert_clean(at)
    (r0, r1) = at.session_state["hal_results"]["results"]
    assert list(r0.scores) == ["off-the-shelf", f"fine-tuned: {name}"]
    assert len(at.get("plotly_chart")) == 3 and len(at.metric) == 2

    # "Certify this model": the Certification page opens with it chosen, at the σ it was trained at
    at.switch_page("apps/views/finetuning.py").run()
    at.button(key="ft_certify").click().run()  # st.switch_page: this run shows the Certification page
    assert_clean(at)
    assert at.selectbox(key="cert_classifier").value == name and at.number_input(key="cert_sigma").value == 0.5
    at.switch_page("apps/views/certification.py")  # AppTest's own page follows (a browser's URL does by itself)
    at.text_input(key="cert_idx").set_value("0, 1")
    at.number_input(key="cert_n0").set_value(10)
    at.number_input(key="cert_n").set_value(40)
    at.button(key="cert_run").click().run()
    assert_clean(at)
    table = at.dataframe[0].value  # both classifiers on the same draws, each row naming its own
    assert list(table["classifier"]) == [f"fine-tuned: {name}", "off-the-shelf"] * 2
    assert (table["n"] == 40).all() and (table["sigma"] == 0.5).all() and (table["alpha"] == 0.001).all()
    model_run = f"this session: fine-tuned: {name}, σ=0.5, N=40, α=0.001 (2 images)"
    baseline = "this session: off-the-shelf, σ=0.5, N=40, α=0.001 (2 images)"
    assert {model_run, baseline} <= set(at.multiselect(key="cert_runs").value)  # the none baseline stays
    assert (at.selectbox(key="cert_pair_a").value, at.selectbox(key="cert_pair_b").value) == (model_run, baseline)
    assert any("only the classifiers differ" in c.value for c in at.caption)
    assert any("no image can be certified beyond" in m.value for m in at.markdown)


def run_until(at, done, timeout: float = 60) -> None:
    """Rerun (as the page's polling would) until done(at) or the timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline and not done(at):
        time.sleep(0.3)
        at.run()


def test_hosted_a_second_visitor_cannot_see_or_stop_the_first_visitors_run(monkeypatch, bundle):
    assert "CADIS_HOSTED=1" in (ROOT / "Dockerfile").read_text()  # the Space runs in hosting mode
    monkeypatch.setenv("CADIS_HOSTED", "1")
    first = app_at("finetuning")
    for key, value in dict(ft_steps=300, ft_batch=4, ft_subset=8, ft_m=1, ft_t=1, ft_eval=0, ft_eval_size=0).items():
        first.number_input(key=key).set_value(value)
    first.selectbox(key="ft_data").set_value(first.selectbox(key="ft_data").options[-1])
    first.button(key="ft_start").click().run()
    assert_clean(first)
    assert not first.button(key="ft_stop").disabled

    second = app_at("finetuning")  # another browser session: another visitor
    assert second.button(key="ft_stop").disabled  # nothing of theirs to stop
    assert any("No fine-tuning run yet" in i.value for i in second.info)  # and the first visitor's run is not shown
    for key, value in dict(ft_steps=2, ft_batch=4, ft_subset=8, ft_m=1, ft_t=1, ft_eval=0, ft_eval_size=0).items():
        second.number_input(key=key).set_value(value)
    second.selectbox(key="ft_data").set_value(second.selectbox(key="ft_data").options[-1])
    second.button(key="ft_start").click().run()  # the cores are busy: it waits its turn, and says so
    assert any("Queued: 1 job(s) ahead of yours" in i.value for i in second.info), [i.value for i in second.info]
    second.button(key="ft_stop").click().run()  # stops (dequeues) their own run only
    run_until(first, lambda at: at.get("progress") and "step 0 /" not in at.get("progress")[0].proto.text)
    assert first.get("progress")[0].proto.text.startswith("running:")
    first.button(key="ft_stop").click().run()
    run_until(first, lambda at: at.warning)
    assert any("Stopped" in w.value for w in first.warning)
    assert not any("visitors" in w.value or first.session_state["visitor"] in w.value for w in first.warning)

    # A finished run is its visitor's alone: the other visitor's pages do not offer it
    for key, value in dict(ft_steps=2, ft_batch=4, ft_subset=8, ft_m=1, ft_t=1, ft_eval=0, ft_eval_size=0).items():
        first.number_input(key=key).set_value(value)
    first.button(key="ft_start").click().run()
    run_until(first, lambda at: at.success)
    name = first.success[0].value.split("“")[1].split("”")[0]
    assert first.success[0].value.startswith(f"Saved as your run “{name}”")  # no server path, no visitor id
    assert "visitors" not in first.success[0].value and first.session_state["visitor"] not in first.success[0].value
    first.switch_page("apps/views/hallucinations.py").run()
    assert first.selectbox(key="hal_tuned").value == name  # the visitor's own newest run
    second.switch_page("apps/views/hallucinations.py").run()
    assert name not in second.selectbox(key="hal_tuned").options
    assert "ft-cadis-detached-s0.25" in second.selectbox(key="hal_tuned").options  # the shipped ones stay
    second.switch_page("apps/views/certification.py").run()
    assert name not in second.selectbox(key="cert_classifier").options
    second.switch_page("apps/views/models.py").run()
    assert name not in set(second.dataframe[1].value["name"])
    # The shipped recipe is longer than the demo allows: its settings are capped, not refused
    second.switch_page("apps/views/finetuning.py").run()
    second.radio(key="ft_setting").set_value("shipped runs' recipe").run()
    assert_clean(second)
    assert (second.number_input(key="ft_steps").value, second.number_input(key="ft_subset").value) == (300, 2000)
    # N and the number of images are capped
    second.switch_page("apps/views/certification.py").run()
    second.text_input(key="cert_idx").set_value("0-20").run()
    assert any("pick at most 8 in this shared demo" in e.value for e in second.error)


def test_classroom_example():
    at = app_at("hallucinations")
    at.button(key="hal_classroom").click().run()
    assert_clean(at)
    state = at.session_state["hal_results"]
    assert state["sigma"] == 1.0 and list(state["runs"]) == ["multistep", "one-shot"]
    results = state["runs"]["multistep"]
    assert len(results) == 4 and len(results[0].scores["off-the-shelf"]["top1"]) == 8
    classes = at.session_state["hal_results"]["runs"]["one-shot"][0].scores  # same images, same noise, both ways
    assert list(classes) == list(results[0].scores)
    if "Shirt" in at.selectbox(key="hal_class").options or at.selectbox(key="hal_class").value == 6:
        assert {r.label for r in results} == {6}  # shirts (Fashion-MNIST)
    lines = [c.value for c in at.caption if " · multistep: kept" in c.value or " · one-shot: kept" in c.value]
    assert len(lines) == 4 * 2 * len(classes)
    assert sum(int(v.rsplit(" ", 1)[1]) for v in lines) > 0  # hallucinated draws on screen
    assert any(c.value.startswith("σ = 1.0, multistep (10 reverse steps) and one-shot") for c in at.caption)


def test_hf_hub_specs_reach_the_hub_loader(monkeypatch):
    import timm

    calls = []

    def offline(name, *args, **kwargs):  # what timm raises for a hub model that is not cached, offline
        calls.append(name)
        raise OSError(f"We couldn't connect to the hub to load {name}")

    monkeypatch.setattr(timm, "create_model", offline)
    at = app_at("models")
    at.text_input(key="models_classifier").set_value("hf-hub:org/name")
    at.button[0].click().run()
    assert not at.exception
    assert calls == ["hf-hub:org/name"]  # a hub model, not a directory called org/name
    errors = [e.value for e in at.error]
    assert any("hub is offline" in e and "hf-hub:org/name" in e for e in errors), errors
    assert not any("does not exist" in e for e in errors)


@pytest.mark.parametrize("which", ["classifier config", "classifier weights", "denoiser config"])
def test_a_corrupt_model_directory_gives_one_line(tmp_path, tiny_classifier_dir, tiny_denoiser_dir, which):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_denoiser_dir if which.startswith("denoiser") else tiny_classifier_dir, bad)
    if which.endswith("config"):
        (bad / ("unet" if (bad / "unet").is_dir() else "") / "config.json").write_text('{"architecture": "vit_ti')
    else:
        (bad / "model.safetensors").write_bytes(b"\0" * 64)
    at = app_at("models")
    kind = which.split()[0]
    at.text_input(key=f"models_{kind}").set_value(f"local-dir:{bad}" if kind == "classifier" else str(bad))
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(str(bad) in e and "\n" not in e for e in errors), errors  # one line that names the directory
    assert "model_choice" not in at.session_state


def test_finetuning_stop(bundle):
    at = app_at("finetuning")
    for key, value in dict(ft_steps=500, ft_batch=4, ft_subset=8, ft_m=1, ft_t=1, ft_eval=0, ft_eval_size=0).items():
        at.number_input(key=key).set_value(value)
    at.selectbox(key="ft_data").set_value(at.selectbox(key="ft_data").options[-1])
    at.button(key="ft_start").click().run()
    assert not at.button(key="ft_stop").disabled
    at.button(key="ft_stop").click().run()
    deadline = time.time() + 60
    while time.time() < deadline and not at.warning:
        time.sleep(0.3)
        at.run()
    assert any("Stopped" in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.button(key="ft_stop").disabled
    assert (Path(at.warning[0].value.split("checkpoint in ")[1].split(". ")[0]) / "state.json").is_file()


def test_models_page_rejects_a_missing_directory_and_keeps_the_models():
    at = app_at("models")
    at.text_input(key="models_denoiser").set_value("/nonexistent/ddpm")
    at.button[0].click().run()
    assert not at.exception
    assert any("/nonexistent/ddpm does not exist" in e.value for e in at.error)
    assert "model_choice" not in at.session_state
    at.switch_page("apps/views/overview.py").run()
    assert_clean(at)


def test_missing_models_give_an_error_on_every_page(monkeypatch):
    monkeypatch.setenv("CADIS_DENOISER", "/nonexistent/fmnist-ddpm")
    for page in PAGES:
        at = app_at(page)
        assert not at.exception, (page, [e.value for e in at.exception])
        if page != "models":  # the Models page needs no models: it is where one picks others
            assert any("/nonexistent/fmnist-ddpm does not exist" in e.value for e in at.error), page


# The fine-tuning page's widgets of declared FinetuneConfig settings: key -> (setting, the Limits field capping it)
FT_WIDGETS = {"ft_sigma": ("sigma", None), "ft_m": ("num_draws", None), "ft_lam": ("lam", None),
              "ft_eps": ("eps", None), "ft_t": ("adv_steps", None), "ft_rank": ("lora_r", None),
              "ft_steps": ("steps", "steps"), "ft_batch": ("batch_size", "batch"), "ft_subset": ("subset", "subset"),
              "ft_lr": ("lr", None), "ft_eval": ("eval_every", None), "ft_eval_size": ("eval_size", "eval_size"),
              "ft_seed": ("seed", None)}
FT_COST_CAPS = {"num_draws": 16, "adv_steps": 10}  # the page's own caps where the declaration has no high


@pytest.mark.parametrize("hosted", [False, True])
def test_finetuning_widgets_come_from_the_settings_declarations(monkeypatch, hosted):
    from streamlit.proto.NumberInput_pb2 import NumberInput

    from apps.ui.hosting import LOCAL_LIMITS, limits
    from apps.ui.jobs import QUICK_DEMO, SHIPPED_RECIPE
    from cadis.seeds import MAX_SEED
    from cadis.settings import settings
    from cadis.training.finetune import FinetuneConfig
    from cadis.training.objective import METHODS

    if hosted:
        monkeypatch.setenv("CADIS_HOSTED", "1")
    else:
        monkeypatch.delenv("CADIS_HOSTED", raising=False)
    lim, declared = limits(), settings(FinetuneConfig)
    assert lim.steps == (HOSTED_LIMITS if hosted else LOCAL_LIMITS).steps
    at = app_at("finetuning")
    assert_clean(at)
    for key, (name, cap_field) in FT_WIDGETS.items():
        spec, default = declared[name]
        widget = at.number_input(key=key)
        assert spec.help in widget.help and spec.hint[1:] in widget.help, (key, widget.help)
        kind = spec.kind or type(default)
        assert widget.proto.data_type == (NumberInput.INT if kind is int else NumberInput.FLOAT), key
        low = 0 if name == "subset" else spec.low  # subset: "0 = all" (None), below its low (the batch size)
        assert isinstance(low, (int, float)) and widget.min == low, (key, widget.min, low)
        # the widget's top is the local cap: a hosted cap is stated beside it and refused in words, since a
        # widget's max would drop a larger value silently (tests/test_hosted.py)
        caps = [c for c in (spec.high, FT_COST_CAPS.get(name), cap_field and getattr(LOCAL_LIMITS, cap_field))
                if isinstance(c, (int, float))]
        assert widget.max == (min(caps) if caps else None), (key, widget.max, caps)
        assert widget.value == QUICK_DEMO[name], key  # the preset still fills the widgets
    # real values, not only the declaration read back: the seed's declared top, the hosted cap in words
    assert at.number_input(key="ft_seed").max == MAX_SEED == 2**32 - 1
    assert at.number_input(key="ft_steps").max == 100_000
    assert any("At most 300 steps on this shared server" in c.value for c in at.caption) == hosted
    assert at.number_input(key="ft_t").min == 0 and at.number_input(key="ft_sigma").min == 0.0
    assert at.number_input(key="ft_lr").max == 1.0 and at.number_input(key="ft_rank").max is None
    method = at.selectbox(key="ft_method")
    assert method.options == [m for m in METHODS if m != "none"] and "training objective" in method.help
    assert declared["lora"][0].help in at.radio(key="ft_lora").help
    at.radio(key="ft_setting").set_value("shipped runs' recipe").run()
    assert_clean(at)
    assert at.number_input(key="ft_m").value == SHIPPED_RECIPE["num_draws"]
    assert at.number_input(key="ft_subset").value == (lim.subset if hosted else 0)
    at.number_input(key="ft_sigma").set_value(0.0).run()  # the open low: the widget allows it, validation refuses
    assert any("--sigma must be a finite number > 0" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="ft_start").disabled
