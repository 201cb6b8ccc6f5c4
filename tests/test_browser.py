"""A real browser (Debian's chromium through playwright) against `streamlit run app.py`.

Visits every page, runs the hallucination grid and a certification, walks the classroom path (Overview →
Hallucinations' classroom example → a quick fine-tune → certify that model), checks that the results are on
screen, and saves screenshots in test-artifacts/ (every page at 1400 and 390 px wide). Models as in test_app.py
($CADIS_TEST_MODELS).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import settle

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1500, "height": 2600})
        pg.set_default_timeout(TIMEOUT_MS)
        yield pg
        browser.close()


def visit(page, server: str, path: str, marker: str) -> None:
    page.goto(f"{server}/{path}")
    page.get_by_text(marker).first.wait_for()
    settle(page)


PAGES = [("", "cadis: provable robustness"), ("hallucinations", "Why denoisers hallucinate"),
         ("finetuning", "FT-CADIS fine-tuning"), ("certification", "Certified radii"), ("models", "Presets")]


def fill(page, values: list[tuple[str, str]]) -> None:
    """Type into number/text inputs by label, each followed by the rerun it triggers."""
    for label, value in values:
        page.get_by_label(label, exact=True).fill(value)
        page.get_by_label(label, exact=True).press("Tab")
        settle(page)


def sidebar_titles(page) -> list[str]:
    return [t.strip().splitlines()[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def test_a_deep_link_as_first_request_still_uses_the_app_navigation(page, server):
    # Runs first (file order) on a fresh server: the first request is a deep link, and app.py's navigation holds.
    visit(page, server, "models", "Presets")
    page.wait_for_timeout(500)
    assert sidebar_titles(page) == ["Overview", "Hallucinations", "Fine-tuning", "Payoff", "Certification", "Models"]


WIDTHS = (1400, 390)  # a laptop, a phone


def screenshots(page, name: str) -> None:
    """Full-page screenshots at each width in WIDTHS: test-artifacts/NAME-1400.png, NAME-390.png."""
    size = page.viewport_size
    page.mouse.move(0, 0)  # no tooltip over the picture
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(500)  # the layout follows the width
        # Streamlit scrolls inside its main block, so the window must be as tall as that block's content
        height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                               "[data-testid=stMainBlockContainer]')].map(e => e.scrollHeight), 1000)")
        page.set_viewport_size({"width": width, "height": min(int(height) + 100, 12_000)})
        page.wait_for_timeout(300)
        page.screenshot(path=ARTIFACTS / f"{name}-{width}.png", full_page=True)
    page.set_viewport_size(size)


@pytest.mark.parametrize("path, marker", PAGES)
def test_every_page_renders(page, server, path, marker):
    visit(page, server, path, marker)
    assert sidebar_titles(page) == ["Overview", "Hallucinations", "Fine-tuning", "Payoff", "Certification", "Models"]
    if path == "":
        page.locator('[data-testid="stImage"] img').nth(2).wait_for()  # clean, noisy, denoised
    screenshots(page, f"page-{path or 'overview'}")


def test_hallucination_grid_in_the_browser(page, server):
    visit(page, server, "hallucinations", "Why denoisers hallucinate")
    page.get_by_label("Test-set indices", exact=True).fill("0-3")
    page.get_by_label("Test-set indices", exact=True).press("Enter")
    settle(page)
    page.get_by_role("button", name="Denoise and classify").click()
    page.get_by_text("Hallucination rate per class").wait_for()
    settle(page)
    page.screenshot(path=ARTIFACTS / "hallucination-grid.png", full_page=True)
    page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()
    expect(page.get_by_text("off-the-shelf: kept")).to_have_count(4)  # one line per image
    expect(page.locator('[data-testid="stImage"] img')).to_have_count(4 + 32)  # 4 clean + 4 × 8 draws
    expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(3)


def test_certification_in_the_browser(page, server):
    visit(page, server, "certification", "Certified radii")
    for label, value in [("Test-set indices", "0, 1"), ("Copies used to pick the class N0", "10"),
                         ("Number of noisy copies N", "50")]:
        page.get_by_label(label, exact=True).fill(value)
        page.get_by_label(label, exact=True).press("Enter")
        settle(page)
    page.get_by_role("button", name="Certify").click()
    page.get_by_text("done: 2 images").wait_for()
    settle(page)
    page.screenshot(path=ARTIFACTS / "certification.png", full_page=True)
    expect(page.get_by_text(re.compile(r"R = \d"))).to_have_count(2)  # both images captioned with their radius
    # certificates, ACR table, the paired comparison of two shipped result files, and the shipped verdict
    expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(4)
    expect(page.get_by_text("Does FT-CADIS hold up? The embedded benchmark")).to_be_visible()
    # the run names what produced it and joins the comparison, with the shipped none baseline at its σ
    expect(page.get_by_text("this session: off-the-shelf, σ=0.25, N=50, α=0.001 (2 images)").first).to_be_visible()
    expect(page.get_by_text("none σ=0.25").first).to_be_visible()


def test_the_server_refuses_an_upload_over_the_limit_before_reading_it(page, server):
    import http.client
    import io
    from urllib.parse import urlsplit

    from PIL import Image

    visit(page, server, "certification", "Certified radii")
    page.get_by_text("Upload", exact=True).click()
    settle(page)
    uploads = []
    page.on("request", lambda r: uploads.append(r) if "/_stcore/upload_file/" in r.url and r.method == "PUT"
            else None)
    small = io.BytesIO()
    Image.new("L", (28, 28)).save(small, "PNG")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        [{"name": "ok.png", "mimeType": "image/png", "buffer": small.getvalue()}])
    deadline = time.time() + 30
    while not uploads and time.time() < deadline:
        page.wait_for_timeout(100)
    assert uploads, "no upload request seen"
    # The same request (session, cookie, XSRF token) announcing 25 MB: refused from its header, no body sent
    request, url = uploads[0], urlsplit(uploads[0].url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.putrequest("PUT", url.path)
    for name, value in request.all_headers().items():
        if name.lower() not in ("content-length", "host") and not name.startswith(":"):
            conn.putheader(name, value)
    conn.putheader("Content-Length", str(25 * 2**20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413, (response.status, response.read()[:200])
    conn.close()


def test_finetuning_curves_update_live(page, server):
    # AppTest cannot run st.fragment(run_every=...): here the page must update itself with no further input.
    visit(page, server, "finetuning", "FT-CADIS fine-tuning")
    fill(page, [("Steps", "8"), ("Batch size", "4"), ("Subset (images, 0 = all)", "8"), ("M (draws per image)", "1"),
                ("T (attack steps)", "1"), ("Evaluate every (steps, 0 = at the end)", "4"),
                ("Test images per evaluation", "8")])
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Saved to").wait_for()  # no click after Start: the fragment polled its way here
    settle(page)
    page.screenshot(path=ARTIFACTS / "finetuning-done.png", full_page=True)
    expect(page.get_by_text("done: step 8 / 8")).to_have_count(1)
    # the live curves once (stale copies go), and the finished runs' comparison and curves
    expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(3, timeout=15_000)


def test_the_classroom_path(page, server):
    """Overview → the classroom example (hallucinated draws on screen) → a quick fine-tune whose curves update →
    certify that model on 2 images: the result names the model, and the none baseline is in the comparison."""
    visit(page, server, "", "cadis: provable robustness")
    page.get_by_role("link", name="3 · Hallucinations").click()
    page.get_by_text("Why denoisers hallucinate").first.wait_for()
    settle(page)
    page.get_by_role("button", name=re.compile("Classroom example")).click()
    page.get_by_text("Hallucination rate per class").wait_for()
    settle(page)
    lines = page.get_by_text(re.compile(r"off-the-shelf · (multistep|one-shot): kept \d+, hallucinated \d+"))
    expect(lines).to_have_count(8)  # 4 shirts × (multistep, one-shot), side by side
    counts = [int(re.search(r"hallucinated (\d+)", t).group(1)) for t in lines.all_inner_texts()]
    assert sum(counts) > 0, "the classroom example shows no hallucinated draw"
    assert page.get_by_text("σ = 1.0, multistep (10 reverse steps) and one-shot").count() == 1
    screenshots(page, "classroom-example")

    # A quick fine-tune (the quick demo's settings, with few steps so that the test stays short)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Fine-tuning").click()
    page.get_by_text("FT-CADIS fine-tuning").first.wait_for()
    settle(page)
    expect(page.get_by_text("Estimated time:")).to_have_count(1)
    fill(page, [("Steps", "12"), ("Batch size", "4"), ("Subset (images, 0 = all)", "16"),
                ("Evaluate every (steps, 0 = at the end)", "6"), ("Test images per evaluation", "16")])
    page.get_by_role("button", name="Start").click()
    page.get_by_text(re.compile(r"step \d+ / 12")).first.wait_for()  # warming up, queued, running or done
    progress, deadline = set(), time.time() + 240
    while not page.get_by_text("done: step 12 / 12").count() and time.time() < deadline:
        progress.update(re.findall(r"(?:queued|running|warming up)[^\n]*?step \d+ / 12", page.inner_text("body")))
        page.wait_for_timeout(200)
    page.get_by_text("done: step 12 / 12").wait_for()  # no click after Start: the page polled its way here
    assert len(progress) >= 2, f"the curves did not update while the run went: {progress}"
    settle(page)
    screenshots(page, "finetuning-quick-demo")
    name = re.search(r"Pick it as “(.+?)”", page.inner_text("body")).group(1)

    # Certify that model on 2 images
    page.get_by_role("button", name="Certify this model").click()
    page.get_by_text("Certified radii").first.wait_for()
    settle(page)
    fill(page, [("Test-set indices", "0, 1"), ("Copies used to pick the class N0", "10"),
                ("Number of noisy copies N", "50")])
    page.get_by_role("button", name="Certify").click()
    page.get_by_text("done: 2 images").wait_for()
    settle(page)
    body = page.inner_text("body")
    assert f"fine-tuned: {name}" in body and "and the off-the-shelf baseline" in body
    runs = page.locator('[data-testid="stMultiSelect"]').first.inner_text()
    assert f"this session: fine-tuned: {name}, σ=0.5, N=50, α=0.001 (2 images)" in runs
    assert "this session: off-the-shelf, σ=0.5, N=50, α=0.001 (2 images)" in runs  # the none baseline
    assert "only the classifiers differ" in body  # the default pair: the model against its baseline, same draws
    screenshots(page, "certify-the-model")
