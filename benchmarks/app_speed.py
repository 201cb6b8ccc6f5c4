"""Speed of the apps on this machine, with the models cached: page renders, the hallucination grid, certification.

    HF_HUB_OFFLINE=1 python benchmarks/app_speed.py                 # the embedded default (assets/models)
    HF_HUB_OFFLINE=1 python benchmarks/app_speed.py --models DIR    # DIR/fmnist-ddpm and DIR/fmnist-vit

Targets (2 CPU cores): a page renders in < 3 s; the hallucination grid of 8 images × 8 draws in < 3 s;
certifying one image with N = 1000 (N0 = 100) shows progress and finishes in < 10 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"page": 3.0, "grid": 3.0, "certify": 10.0}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def browser_rows(repeats: int) -> list[tuple[str, float, float | None]]:
    """End to end in Debian's chromium against `streamlit run app.py`: what a visitor waits for."""
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
                             f"--server.port={port}", "--browser.gatherUsageStats=false"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, rows = f"http://127.0.0.1:{port}", []
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)

            def settle() -> None:
                page.wait_for_timeout(100)
                page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")

            def visit(path: str, marker: str) -> float:
                start = time.perf_counter()
                page.goto(f"{url}/{path}")
                page.get_by_text(marker).first.wait_for()
                settle()
                return time.perf_counter() - start

            visit("", "Clean → noisy")  # warm: imports and the model cache
            for path, marker in [("", "Clean → noisy"), ("hallucinations", "Why denoisers"),
                                 ("finetuning", "FT-CADIS fine-tuning"), ("certification", "Certified radii"),
                                 ("models", "Presets")]:
                t = sorted(visit(path, marker) for _ in range(repeats))[repeats // 2]
                rows.append((f"browser: open {path or 'overview'} (new session)", t, TARGETS["page"]))

            times = []
            for _ in range(repeats):
                visit("hallucinations", "Why denoisers")  # a fresh session: no grid on screen yet
                start = time.perf_counter()
                page.get_by_role("button", name="Denoise and classify").click()  # 8 images × 8 draws by default
                page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()
                settle()
                times.append(time.perf_counter() - start)
            rows.append(("browser: hallucination grid 8×8, click → drawn", sorted(times)[repeats // 2],
                         TARGETS["grid"]))

            visit("certification", "Certified radii")
            page.get_by_label("Test-set indices", exact=True).fill("0")
            page.get_by_label("Test-set indices", exact=True).press("Enter")
            settle()
            start = time.perf_counter()
            page.get_by_role("button", name="Certify").click()  # N0 = 100, N = 1000 by default
            page.get_by_text("draws").first.wait_for()
            first = time.perf_counter() - start
            page.get_by_text("done: 1 images").wait_for()
            settle()
            rows.append(("browser: certify 1 image N=1000, click → done", time.perf_counter() - start,
                         TARGETS["certify"]))
            rows.append(("  browser: click → first progress text", first, None))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="directory with fmnist-ddpm/ and fmnist-vit/ (default: the preset)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (the median counts)")
    parser.add_argument("--no-browser", action="store_true", help="skip the end-to-end timings in chromium")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CADIS_RUNS_DIR"] = tempfile.mkdtemp(prefix="cadis-bench-")
    if args.models:
        os.environ["CADIS_DENOISER"] = str(Path(args.models) / "fmnist-ddpm")
        os.environ["CADIS_CLASSIFIER"] = f"local-dir:{Path(args.models) / 'fmnist-vit'}"
    if args.threads:
        os.environ["CADIS_TORCH_THREADS"] = str(args.threads)
    sys.path.insert(0, str(ROOT))

    import torch
    from streamlit.testing.v1 import AppTest

    from cadis_core.ui.certification import certify_one
    from cadis_core.ui.models import load_bundle, model_source

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load:.2f}")
    p = model_source()
    print(f"models: {p.denoiser} | {p.classifier}")
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    rows: list[tuple[str, float, float | None]] = []

    t_load, bundle = timed(lambda: load_bundle(p))
    rows.append(("load models and test split (cold, once per process)", t_load, None))

    # Pages: the first run loads the models into st.cache_resource; later runs are what a user waits for.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    t_first, _ = timed(at.run)
    rows.append(("first page (imports + model cache)", t_first, None))
    for page in ["overview", "hallucinations", "finetuning", "certification", "models"]:
        at.switch_page(f"pages/{page}.py")
        times = [timed(at.run)[0] for _ in range(args.repeats)]
        assert not at.exception, [e.value for e in at.exception]
        rows.append((f"page render: {page}", median(times), TARGETS["page"]))

    # The hallucination grid, 8 images × 8 draws, one-shot: the click (denoise, classify, draw the grid and plots).
    at.switch_page("pages/hallucinations.py").run()
    at.text_input(key="hal_idx").set_value("0-7")
    at.slider(key="hal_draws").set_value(8)
    grid, compute = [], []
    for _ in range(args.repeats):
        grid.append(timed(lambda: at.button(key="hal_run").click().run())[0])
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        compute.append(at.session_state["hal_results"]["seconds"])
    rows.append(("hallucination grid 8×8: denoise + classify", median(compute), None))
    rows.append(("hallucination grid 8×8: click → page drawn", median(grid), TARGETS["grid"]))

    # Certifying one image, N0 = 100, N = 1000, with the progress callback the page uses (batches of 100).
    updates: list[float] = []
    cert_times = []
    for k in range(args.repeats):
        updates.clear()
        start = time.perf_counter()

        def progress(done: int, total: int, start: float = start) -> None:
            updates.append(time.perf_counter() - start)

        t, _ = timed(lambda k=k, progress=progress: certify_one(
            bundle, bundle.dataset.images[k], p.sigma, 100, 1000, 0.001, seed=k, progress=progress,
            batch_size=min(p.batch_size, 100)))
        cert_times.append(t)
    rows.append(("certify 1 image, N0=100 + N=1000 (library call)", median(cert_times), TARGETS["certify"]))
    rows.append((f"  first progress update ({len(updates)} updates in all)", updates[0], None))

    at.switch_page("pages/certification.py").run()
    at.text_input(key="cert_idx").set_value("0")
    at.number_input(key="cert_n0").set_value(100)
    at.number_input(key="cert_n").set_value(1000)
    t_page = median([timed(lambda: at.button(key="cert_run").click().run())[0] for _ in range(args.repeats)])
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    rows.append(("certify 1 image, N=1000: click → table drawn (page)", t_page, TARGETS["certify"]))

    if Path(CHROMIUM).exists() and not args.no_browser:
        rows += browser_rows(args.repeats)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  seconds  target")
    for name, seconds, target in rows:
        verdict = "" if target is None else f"< {target:g} s {'ok' if seconds < target else 'MISSED'}"
        print(f"{name:<{width}}  {seconds:7.2f}  {verdict}")


if __name__ == "__main__":
    main()
