"""The Certification page speaks to people first: its default view (one σ, three curves in fixed colours, sentences
computed from the shipped result files), and what a certificate says in both apps (a certified wrong answer is
marked wrong; uploads are told which classes the model knows).

The expected sentences are computed here from the raw TSVs with pandas and scipy, not with the page's helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binomtest

from apps.ui.certification import MEANING, certificate_row, certificate_verdict, known_classes_note
from apps.ui.demo_input import TEST_IMAGE, UPLOAD, Request, result_details, verdict_markdown
from apps.ui.headline import LEGEND, headline_files, headline_sentence, load_runs, paired_sentence
from apps.ui.hosting import SHIPPED_RESULTS
from apps.ui.style import METHOD_COLOURS
from cadis.certification.smoothing import ABSTAIN, Certificate
from cadis.data import load_dataset
from cadis.models.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "apps" / "views" / "certification.py")
RUNS = {"FT-CADIS": "ft-cadis.authors-lora", "the denoised fine-tune": "denoised-ce.authors-lora",
        "the off-the-shelf model": "none"}
METHOD = {"ft-cadis.authors-lora": "ft-cadis", "denoised-ce.authors-lora": "denoised-ce", "none": "none"}
SIGMAS = (0.25, 0.5, 1.0)


pytestmark = pytest.mark.usefixtures("app_env")  # conftest: test models, a private runs folder


@pytest.fixture(scope="module")
def classes() -> list[str]:
    return list(load_dataset("fashion-mnist", "test").classes)


def page_at():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def chart(at, key: str):
    found = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key)]
    return json.loads(found[0].proto.spec) if found else None


# ---------------------------------------------------------------- computed independently from the TSVs


def raw(sigma: float) -> dict[str, pd.DataFrame]:
    """The three shipped files at σ, read as plain tables, on the images all three hold."""
    tables = {name: pd.read_csv(SHIPPED_RESULTS / f"{run}_s{sigma:g}.tsv", sep="\t") for name, run in RUNS.items()}
    common = set.intersection(*(set(t["idx"]) for t in tables.values()))
    return {name: t[t["idx"].isin(common)].sort_values("idx").reset_index(drop=True) for name, t in tables.items()}


def hits(t: pd.DataFrame, r: float) -> np.ndarray:
    return ((t["predict"] == t["label"]) & (t["radius"] >= r)).to_numpy()


def expected_headline(sigma: float) -> str:
    tables = raw(sigma)
    share = {name: f"{100 * hits(t, sigma).mean():.0f}%" for name, t in tables.items()}
    return (f"At radius {sigma:g} (the noise level σ), FT-CADIS certifies the right class for {share['FT-CADIS']} of "
            f"these {len(tables['FT-CADIS'])} test images; the denoised fine-tune {share['the denoised fine-tune']}, "
            f"the off-the-shelf model {share['the off-the-shelf model']}.")


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_headline_and_the_paired_sentence_are_computed_from_the_files(sigma):
    files = headline_files(SHIPPED_RESULTS)
    assert sorted(files) == list(SIGMAS) and sorted(files[sigma]) == sorted(RUNS.values())
    runs = load_runs(files[sigma])
    assert headline_sentence(runs, sigma) == expected_headline(sigma)
    tables = raw(sigma)
    ft, none = hits(tables["FT-CADIS"], sigma), hits(tables["the off-the-shelf model"], sigma)
    a_only, b_only = int((ft & ~none).sum()), int((none & ~ft).sum())
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue
    sentence = paired_sentence(runs["ft-cadis.authors-lora"], runs["none"], sigma, same_draws=True)
    assert sentence.startswith("Image by image (the same images and the same noise draws), ")
    assert f"FT-CADIS certifies {a_only} images at radius {sigma:g} that the off-the-shelf model does not" in sentence
    assert f"and the off-the-shelf model {b_only} that FT-CADIS does not" in sentence
    assert (f"p = {p:.3f}" if p >= 0.001 else "p < 0.001") in sentence and "for this one comparison" in sentence


def test_the_headline_moves_with_the_numbers(tmp_path):
    """A changed result file changes the sentence: nothing in it is typed."""
    for run in RUNS.values():
        for ext in ("tsv", "json"):
            (tmp_path / f"{run}_s0.5.{ext}").write_bytes((SHIPPED_RESULTS / f"{run}_s0.5.{ext}").read_bytes())
    t = pd.read_csv(tmp_path / "none_s0.5.tsv", sep="\t")
    t.loc[t.index[:100], "predict"] = -1  # 100 abstains: at most 400 of 500 left certified
    t.loc[t.index[:100], ["radius", "correct"]] = 0
    t.to_csv(tmp_path / "none_s0.5.tsv", sep="\t", index=False)
    runs = load_runs(headline_files(tmp_path)[0.5])
    shipped = load_runs(headline_files(SHIPPED_RESULTS)[0.5])
    assert headline_sentence(runs, 0.5) != headline_sentence(shipped, 0.5)
    assert (runs["none"]["predict"] == -1).sum() >= 100


# ---------------------------------------------------------------- the page, by default and one toggle away


def test_the_default_view_shows_one_sigma_and_three_curves_in_fixed_colours():
    at = page_at()
    assert at.radio(key="cert_view_sigma").value == 0.5 and list(at.radio(key="cert_view_sigma").options) == [
        "0.25", "0.5", "1"]
    assert at.toggle(key="cert_all").value is False
    assert not [m for m in at.multiselect if m.key == "cert_runs"]  # every other run stays behind the toggle
    curves = chart(at, "cert_three")["data"]
    assert len(curves) == 3
    assert {c["name"]: c["line"]["color"] for c in curves} == {
        LEGEND[run]: METHOD_COLOURS[METHOD[run]] for run in RUNS.values()}
    bars = chart(at, "cert_three_per_class")["data"]
    assert len(bars) == 3 and {b["name"]: b["marker"]["color"] for b in bars} == {
        c["name"]: c["line"]["color"] for c in curves}  # the same three colours
    assert len(at.get("plotly_chart")) == 2
    shown = [m.value for m in at.markdown]
    assert f"**{expected_headline(0.5)}**" in shown
    assert any(v.startswith("Image by image (the same images and the same noise draws)") for v in shown)
    labels = {w.label: w.help for w in [*at.number_input]}
    assert {"Noise level σ", "Number of noisy copies N", "Copies used to pick the class N0",
            "Error probability α"} <= set(labels) and all(labels.values())
    assert "σ·Φ⁻¹(p_A)" in at.expander[0].markdown[0].value and "Clopper–Pearson" in at.expander[0].markdown[0].value

    at.radio(key="cert_view_sigma").set_value(1.0).run()
    assert f"**{expected_headline(1.0)}**" in [m.value for m in at.markdown]
    at.toggle(key="cert_all").set_value(True).run()
    assert not at.exception
    assert chart(at, "cert_three") is None and chart(at, "cert_curve") is not None
    assert at.multiselect(key="cert_runs").value  # today's full dashboard


# ---------------------------------------------------------------- a certificate in words


def test_a_certified_wrong_answer_is_marked_wrong(classes):
    cert = Certificate(prediction=0, radius=0.41, count_a=950, n=1000, p_a_lower=0.93)
    counts = np.array([950, 0, 0, 0, 0, 0, 50, 0, 0, 0])
    row = certificate_row("#7", 6, cert, counts, classes, 0.25, n0=100, alpha=0.001, idx=7, seed=0)
    assert row["certificate"] == f"⚠ certified, but WRONG: the true class is {classes[6]}"
    assert certificate_verdict(cert, 0, classes) == "certified and correct"
    assert "may be wrong" in certificate_verdict(cert, None, classes)
    assert certificate_verdict(Certificate(ABSTAIN, 0.0, 400, 1000, 0.37), 6, classes).startswith("abstained")

    # the Streamlit page: the wrong one is said in words, beside the meaning of a certificate
    at = page_at()
    right = certificate_row("#0", 0, cert, counts, classes, 0.25, n0=100, alpha=0.001, idx=0, seed=0)
    at.session_state["cert_last"] = [{**r, "_image": torch.zeros(1, 28, 28)} for r in (row, right)]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(MEANING in i.value for i in at.info)
    [warning] = [w.value for w in at.warning if "Certified, but wrong" in w.value]
    assert f"#7 (off-the-shelf) is certified as {classes[0]}, but the true class is {classes[6]}" in warning
    assert "#0" not in warning
    captions = at.image[0].captions
    assert "WRONG" in captions[0] and "WRONG" not in captions[1]
    table = at.dataframe[0].value
    assert list(table["certificate"]) == [row["certificate"], "certified and correct"]

    # the Gradio demo's verdict text
    req = Request(TEST_IMAGE, "test image #7", 0.25, 1000, 0.001, index=7, label=6)
    text = verdict_markdown(result_details(req, cert, classes, 100, get_preset("fashion-mnist")))
    heading = text.split("\n\n")[0]
    assert heading == f"### {classes[0]} · ⚠ certified, but WRONG: the true class is {classes[6]}"
    assert " · **incorrect**" in text and " · **correct**" not in text and MEANING in text
    req = Request(TEST_IMAGE, "test image #0", 0.25, 1000, 0.001, index=0, label=0)
    text = verdict_markdown(result_details(req, cert, classes, 100, get_preset("fashion-mnist")))
    assert text.split("\n\n")[0] == f"### {classes[0]}" and "WRONG" not in text and MEANING in text


def test_uploads_are_told_which_classes_the_model_knows(classes):
    note = known_classes_note(classes, "fashion-mnist")
    assert note.startswith(f"The model knows only the {len(classes)} Fashion-MNIST classes (")
    assert len(classes) == 10 and all(c in note for c in classes)
    at = page_at()
    at.radio(key="cert_how").set_value("Upload").run()
    assert note in [i.value for i in at.info]
    from streamlit.testing.v1 import AppTest

    hal = AppTest.from_file(str(Path(PAGE).with_name("hallucinations.py")), default_timeout=120).run()
    hal.radio(key="hal_how").set_value("Upload").run()  # the same words beside every uploader, before any upload
    assert note in [i.value for i in hal.info] and not hal.exception
    req = Request(UPLOAD, "your upload x.png", 0.25, 1000, 0.001, path="x.png", file_name="x.png")
    cert = Certificate(prediction=3, radius=0.2, count_a=800, n=1000, p_a_lower=0.77)
    text = verdict_markdown(result_details(req, cert, classes, 100, get_preset("fashion-mnist")))
    assert note in text and "(true class not given)" in text


def test_two_runs_of_one_classifier_at_one_sigma_get_different_lines():
    import plotly.graph_objects as go

    from apps.ui.style import colour_of, paint

    names = ["none σ=0.25", "none σ=0.25 N=10000 adaptive", "ft-cadis σ=0.25"]
    fig = paint(go.Figure([go.Scatter(x=[0, 1], y=[1, 0], name=n) for n in names]))
    styles = [(t.line.color, t.line.dash or "solid") for t in fig.data]
    assert styles[0][0] == styles[1][0] == colour_of("none σ=0.25")  # one classifier, one colour
    assert len(set(styles)) == 3  # but no two curves drawn alike
