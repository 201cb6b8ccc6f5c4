"""The story the benchmark shows: the Overview's computed sentences (apps.ui.story), the Payoff page's pick rule
(apps.ui.payoff), both pages rendered (AppTest), and one walk in a real browser (Overview → the Hallucinations
classroom example → Payoff).

The expected numbers are recomputed here from other files than story.py reads where the report wrote them (summary,
paired and per-class tables) and from the raw TSV columns, so a wrong run, σ, radius or column fails.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest

from apps.ui import payoff
from apps.ui.headline import default_sigma, headline_files, headline_radius, headline_sentence, load_runs
from apps.ui.story import detector_words, load_story, sentences

from conftest import settle

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
APP = str(ROOT / "app.py")
SIGMA = 0.5
BASELINE, TUNED = "none", "ft-cadis.authors-lora"  # the runs the story and the Payoff page must compare
SHIRT = 6  # Fashion-MNIST's Shirt
COLUMNS = ["idx", "label", "predict_base", "radius_base", "count_a_base", "predict_tuned", "radius_tuned",
           "count_a_tuned"]
CHROMIUM = "/usr/bin/chromium"
needs_results = pytest.mark.skipif(not (RESULTS / f"{TUNED}_s{SIGMA:g}.tsv").is_file(), reason="no shipped results")


def tsv(run: str, sigma: float = SIGMA) -> pd.DataFrame:
    return pd.read_csv(RESULTS / f"{run}_s{sigma:g}.tsv", sep="\t").set_index("idx")


def pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}%"


# ---------------------------------------------------------------- the pick rule


def rows(*values) -> pd.DataFrame:
    return pd.DataFrame([(*v[:4], 0, *v[4:], 0) for v in values], columns=COLUMNS)


def test_pick_gains_rule_on_synthetic_rows():
    frame = rows((0, 1, 1, 0.1, 1, 0.9),   # gain 0.8: first
                 (1, 1, 1, 0.2, 1, 0.8),   # gain 0.6, but class 1 is taken
                 (2, 2, -1, 0.3, 2, 0.5),  # the baseline abstains: its radius counts as 0, gain 0.5
                 (3, 3, 4, 0.1, 3, 1.2),   # the baseline names another class: never
                 (4, 4, 4, 0.1, 5, 1.2),   # FT-CADIS names another class: never
                 (5, 5, 5, 0.3, 5, 0.54),  # gain 0.24 < margin 0.25: never
                 (6, 6, 6, 0.0, 6, 0.25),  # gain = margin: in
                 (7, 7, 7, 0.1, 7, 0.6))   # gain 0.5, tied with #2: the lower index first
    assert list(payoff.pick_gains(frame, 0.25)["idx"]) == [0, 2, 7]
    assert list(payoff.pick_gains(frame, 0.25, k=9)["idx"]) == [0, 2, 7, 6]
    assert list(payoff.pick_gains(frame, 0.25, k=9, one_per_class=False)["idx"]) == [0, 1, 2, 7, 6]
    assert payoff.pick_gains(frame, 0.25)["gain"].tolist() == pytest.approx([0.8, 0.5, 0.5])
    assert payoff.pick_gains(frame, 2.0).empty
    assert payoff.margin_for(0.5) == 0.25 and "σ/2" in payoff.RULE  # the margin the page states


def test_pick_loss_rule_on_synthetic_rows():
    frame = rows((10, 6, 6, 1.0, 6, 0.8),   # loss 0.2
                 (11, 6, 6, 0.9, 0, 0.7),   # FT-CADIS certifies a wrong class: counts as 0, loss 0.9
                 (12, 6, 6, 0.5, -1, 0.0),  # FT-CADIS abstains: loss 0.5
                 (13, 6, 0, 1.2, 6, 0.1),   # the baseline is wrong: never
                 (14, 6, 6, 0.3, 6, 0.9),   # FT-CADIS wins
                 (15, 2, 2, 1.2, 0, 0.0))   # another class
    loss = payoff.pick_loss(frame, 6)
    assert int(loss["idx"]) == 11 and loss["loss"] == pytest.approx(0.9)
    assert payoff.pick_loss(frame[frame["idx"].isin([13, 14, 15])], 6) is None


@needs_results
@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_the_shipped_picks_really_win_and_the_shirt_really_loses(sigma):
    pair = payoff.load_pair(sigma)
    assert pair.shared and "/" not in pair.source()  # same draws; file names only, no server path
    base, tuned = tsv(BASELINE, sigma), tsv(TUNED, sigma)
    margin = sigma / 2
    picks = payoff.pick_gains(pair.frame, payoff.margin_for(sigma))
    assert len(picks) == 3 and picks["label"].is_unique
    for idx in picks["idx"]:
        b, t = base.loc[idx], tuned.loc[idx]
        assert t["predict"] == t["label"] and b["predict"] in (b["label"], -1)
        assert t["radius"] - (b["radius"] if b["predict"] != -1 else 0) >= margin - 1e-3  # TSV radii: 4 decimals
    # the same picks, recomputed from the raw columns
    gain = tuned["radius"] - base["radius"].where(base["predict"] != -1, 0)
    ok = (tuned["predict"] == tuned["label"]) & ((base["predict"] == base["label"]) | (base["predict"] == -1))
    expected = (pd.DataFrame({"gain": gain, "label": base["label"]})[ok & (gain >= margin - 1e-3)]
                .reset_index().sort_values(["gain", "idx"], ascending=[False, True]).drop_duplicates("label"))
    assert list(picks["idx"]) == list(expected["idx"][:3])
    loss = payoff.pick_loss(pair.frame, SHIRT)
    b, t = base.loc[int(loss["idx"])], tuned.loc[int(loss["idx"])]
    assert b["label"] == b["predict"] == SHIRT and b["radius"] > 0
    assert (t["radius"] if t["predict"] == SHIRT else 0) < b["radius"]  # FT-CADIS really loses
    shirts = base[(base["label"] == SHIRT) & (base["predict"] == SHIRT)]
    cut = shirts["radius"] - tuned.loc[shirts.index, "radius"].where(tuned.loc[shirts.index, "predict"] == SHIRT, 0)
    assert loss["loss"] == pytest.approx(cut.max(), abs=1e-3)


# ---------------------------------------------------------------- the story


@needs_results
def test_story_sentences_are_the_files_numbers():
    said = {k: v.replace("**", "") for k, v in sentences(load_story(SIGMA)).items()}
    summary = pd.read_csv(RESULTS / "summary.csv", index_col=0)
    none, ft = summary.loc[f"none σ={SIGMA:g}"], summary.loc[f"{TUNED} σ={SIGMA:g}"]
    radii = [c for c in summary.columns if c.startswith("r=") and 0 < float(c[2:]) <= 2.5 * SIGMA]
    best = max(radii, key=lambda c: ft[c] - none[c])
    paired = pd.read_csv(RESULTS / "paired.csv", index_col=0).loc[f"{TUNED} vs none σ={SIGMA:g}", best]
    only_ft, only_none = re.search(r"\((\d+)/(\d+),", paired).groups()
    per_class = pd.read_csv(RESULTS / "per_class_r0.csv", index_col=0)
    base, tuned = tsv(BASELINE), tsv(TUNED)
    shirts = int((base["label"] == SHIRT).sum())
    detector = pd.read_csv(RESULTS / "hallucination_detector.csv")
    hal = detector.query("classifier == 'none' and sigma == @SIGMA and mode == 'one-shot'").iloc[0]
    per = pd.read_csv(RESULTS / "hallucination.csv")
    shirt_hal = per.query("classifier == 'none' and sigma == @SIGMA and mode == 'one-shot' and `class` == 'Shirt'")
    sel = pd.read_csv(RESULTS / "selection_rates.csv").query("sigma == @SIGMA").set_index("class")

    assert ("at σ = 0.5, the off-the-shelf classifier names the true class on "
            f"{pct(1 - hal['hallucination rate'])} of {int(hal['draws']):,} denoised draws") in said["denoise"]
    assert f"its vote is right, with a certificate, on {pct(none['r=0'], 1)} of the 500 test images" in said["denoise"]
    assert (f"{pct(hal['hallucination rate'])} of those draws at σ = 0.5, and "
            f"{pct(shirt_hal['hallucination rate'].iloc[0])} of Shirt draws") in said["hallucinate"]
    assert f"{detector_words(shirt_hal['AUROC'].iloc[0])} on Shirt" in said["hallucinate"]
    assert (f"that is {pct(sel.loc['all', 'selection_rate'])} of denoised training draws at σ = 0.5, but "
            f"{pct(sel.loc['Shirt', 'selection_rate'])} for Shirt") in said["finetune"]
    assert (f"all 1,000 votes agree on {pct((tuned['count_a'] == 1000).mean(), 1)} of the test images, against "
            f"{pct((base['count_a'] == 1000).mean(), 1)} before") in said["finetune"]
    assert (f"It certifies more images at large radii: at r = {float(best[2:]):g}, {pct(ft[best], 1)} of the 500 test "
            f"images against {pct(none[best], 1)} for the off-the-shelf classifier ({only_ft} images only FT-CADIS "
            f"certifies, {only_none} only the baseline)") in said["payoff"]
    assert (f"at r = 0 it certifies {pct(per_class.loc[f'{TUNED} σ={SIGMA:g}', 'Shirt'])} of the {shirts} shirts "
            f"against {pct(per_class.loc[f'none σ={SIGMA:g}', 'Shirt'])} ({pct(ft['r=0'], 1)} against "
            f"{pct(none['r=0'], 1)} over all classes)") in said["payoff"]
    assert not re.search(r"\d", said["noise"])  # no file measures the classifier on raw noise: no number


@needs_results
def test_the_story_says_what_other_numbers_would_show():
    s = load_story(SIGMA)
    flipped = dataclasses.replace(s, gain_tuned=s.gain_base - 0.01, weak_tuned=s.weak_base + 0.1,
                                  unanimous_tuned=s.unanimous_base, weak_auroc=0.9, hallucinated=0.6)
    said = sentences(flipped)
    assert "certifies no more images at any radius" in said["payoff"] and "does not pay at r = 0" in said["payoff"]
    assert "does not become more consistent" in said["finetune"] and "repairs only some draws" in said["denoise"]
    assert "fairly well over all classes and fairly well on Shirt" in said["hallucinate"]


# ---------------------------------------------------------------- the pages


@needs_results
def test_overview_and_payoff_render(app_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    shown = "\n".join(m.value for m in at.markdown)
    for sentence in sentences(load_story(SIGMA)).values():
        assert sentence in shown
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert "overview" not in links.values() and links["1 · An off-the-shelf classifier"] == "payoff"
    assert links["3 · Hallucinations"] == "hallucinations"

    at.switch_page("apps/views/payoff.py").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    pair = payoff.load_pair(SIGMA)
    picked = [*payoff.pick_gains(pair.frame, SIGMA / 2)["idx"], int(payoff.pick_loss(pair.frame, SHIRT)["idx"])]
    heads = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert [int(re.match(r"\*\*#(\d+)", h).group(1)) for h in heads] == picked
    assert len(at.get("plotly_chart")) == len(picked)  # both radii drawn, per image
    votes = [m.value for m in at.markdown if "alone, no denoiser" in m.value]
    assert len(votes) == len(picked) and all(v.count(" → ") == 3 for v in votes)
    assert sum("Live re-count of the votes: N0 = 100 + N = 200 draws" in c.value for c in at.caption) == len(picked)
    at.radio(key="pay_sigma").set_value(1.0).run()  # another σ: its own files, picks and adapter
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    pair = payoff.load_pair(1.0)
    picked = [*payoff.pick_gains(pair.frame, 0.5)["idx"], int(payoff.pick_loss(pair.frame, SHIRT)["idx"])]
    heads = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert [int(re.match(r"\*\*#(\d+)", h).group(1)) for h in heads] == picked
    assert any("`none_s1.tsv`" in c.value and "σ = 1, N0 = 100, N = 1,000" in c.value for c in at.caption)


# ---------------------------------------------------------------- one walk in a browser


@needs_results
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_story_walk_in_a_browser(server):
    from playwright.sync_api import sync_playwright

    plain = {k: v.replace("**", "") for k, v in sentences(load_story(SIGMA)).items()}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.set_default_timeout(90_000)
        page.goto(server)
        page.get_by_text("cadis: provable robustness").first.wait_for()
        settle(page)
        body = page.inner_text("body")
        for key, sentence in plain.items():
            assert sentence in body, key
        page.get_by_role("link", name="3 · Hallucinations").click()
        page.get_by_text("Why denoisers hallucinate").first.wait_for()
        settle(page)
        page.get_by_role("button", name=re.compile("Classroom example")).click()
        page.get_by_text("Hallucination rate per class").wait_for()
        settle(page)
        page.locator('[data-testid="stSidebarNav"] a', has_text="Payoff").click()
        page.get_by_text("The payoff on real images").first.wait_for()
        page.get_by_text("Noise breaks the classifier, denoising repairs it").wait_for()
        settle(page)
        body = page.inner_text("body")
        pair = payoff.load_pair(SIGMA)
        for _, row in payoff.pick_gains(pair.frame, SIGMA / 2).iterrows():
            assert f"#{int(row['idx'])} · " in body and f"radius {row['gain']:.2f} larger" in body
        loss = payoff.pick_loss(pair.frame, SHIRT)
        assert f"#{int(loss['idx'])} · Shirt — where FT-CADIS loses" in body
        assert re.search(r"alone votes for the true class on \d+ of 800 raw noisy draws; behind the denoiser, on "
                         r"\d+ of the same 800", body)
        assert page.locator('[data-testid="stPlotlyChart"]').count() == 4
        # Last stop: Certification's headline, the same sentence computed from the shipped files.
        files = headline_files(RESULTS)
        expected = headline_sentence(load_runs(files[default_sigma(list(files))]),
                                     headline_radius(default_sigma(list(files))))
        page.locator('[data-testid="stSidebarNav"] a', has_text="Certification").click()
        page.get_by_text("What the shipped results say").wait_for()
        settle(page)
        assert expected.replace("**", "") in page.inner_text("body")
        browser.close()
