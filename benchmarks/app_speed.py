"""Speed of the apps on this machine: what a visitor waits for, cold and warm, and the library calls behind it.

    HF_HUB_OFFLINE=1 python benchmarks/app_speed.py                 # the embedded default (src/cadis/assets)
    HF_HUB_OFFLINE=1 python benchmarks/app_speed.py --models DIR    # DIR/fmnist-ddpm and DIR/fmnist-vit
    HF_HUB_OFFLINE=1 python benchmarks/app_speed.py --quick-demo    # also time the Fine-tuning page's quick demo

In Debian's chromium against `streamlit run app.py`, per page: "on screen" (the page's title is visible) and
"settled" (the script run is over), cold (the first request to a fresh server: imports and model loading) and warm
(a new session on a warm server), and the Hallucinations page's classroom example (click → drawn). Then AppTest
renders, the hallucination grid and certification in-process.

Targets (2 CPU cores): something on screen within 2 s; a warm page settled in ≤ 3 s; the classroom example in
≤ 10 s; the hallucination grid of 8 images × 8 draws in < 3 s; certifying one image with N = 1000 (N0 = 100) shows
progress and finishes in < 10 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"page": 3.0, "grid": 3.0, "certify": 10.0, "paint": 2.0, "classroom": 10.0}
# (path, the page's title, text its script draws last): "on screen" waits for the title, "settled" for the last
# text and the end of the script run
PAGES = [("", "cadis: provable robustness", "Loaded preset and models"),
         ("hallucinations", "Why denoisers hallucinate", "Denoise and classify"),
         ("finetuning", "FT-CADIS fine-tuning", "Finished runs"),
         ("payoff", "The payoff on real images", "Why a larger radius matters"),
         ("certification", "Certified radii", "Does FT-CADIS hold up?"),
         ("models", "Models", "Certify a classifier")]
HALLUCINATIONS = PAGES[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class Server:
    """`streamlit run app.py` on a free port, as a context manager."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}

    def __enter__(self) -> str:
        import socket
        import subprocess
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
                                      f"--server.port={port}", "--browser.gatherUsageStats=false",
                                      "--server.fileWatcherType=none"], cwd=ROOT, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    return url
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("streamlit did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def browser_rows(repeats: int, cold: bool) -> list[tuple[str, float, float | None]]:
    """End to end in Debian's chromium against `streamlit run app.py`: what a visitor waits for."""
    from playwright.sync_api import sync_playwright

    rows, painted = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(180_000)

        def settle() -> None:
            page.wait_for_timeout(100)
            page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")

        def visit(url: str, path: str, title: str, last: str) -> tuple[float, float]:
            """(seconds until the title is on screen, seconds until the run is over) for a new session; the seconds
            until the navigation is drawn go to `painted`."""
            start = time.perf_counter()
            page.goto(f"{url}/{path}")
            page.locator('[data-testid="stSidebarNav"]').first.wait_for()
            painted.append(time.perf_counter() - start)
            page.get_by_role("heading", name=title).first.wait_for()
            shown = time.perf_counter() - start
            page.get_by_text(last).first.wait_for()
            settle()
            return shown, time.perf_counter() - start

        if cold:  # a fresh server per page: that page is its first request (imports, models, caches)
            for path, title, last in PAGES:
                with Server() as url:
                    shown, settled = visit(url, path, title, last)
                name = path or "overview"
                rows.append((f"browser cold: {name}, navigation on screen", painted[-1], TARGETS["paint"]))
                rows.append((f"browser cold: {name}, title on screen", shown, None))
                rows.append((f"browser cold: {name}, settled", settled, None))

        with Server() as url:
            for path, title, last in PAGES:  # warm: imports, the model cache, the calibration
                visit(url, path, title, last)
            for path, title, last in PAGES:
                times = sorted(visit(url, path, title, last) for _ in range(repeats))
                shown, settled = times[repeats // 2]
                name = path or "overview"
                rows.append((f"browser warm: {name}, title on screen", shown, TARGETS["paint"]))
                rows.append((f"browser warm: {name}, settled (new session)", settled, TARGETS["page"]))

            times = []
            for _ in range(repeats):
                visit(url, *HALLUCINATIONS)  # a fresh session: nothing drawn yet
                start = time.perf_counter()
                page.get_by_role("button", name="Classroom example").click()  # 4 shirts × 8 draws, σ = 1, both
                page.get_by_text("Hallucination rate per class").wait_for()
                page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()
                settle()
                times.append(time.perf_counter() - start)
            rows.append(("browser: classroom example (multistep + one-shot), click → drawn",
                         sorted(times)[repeats // 2], TARGETS["classroom"]))

            times = []
            for _ in range(repeats):
                visit(url, *HALLUCINATIONS)
                start = time.perf_counter()
                page.get_by_role("button", name="Denoise and classify").click()  # 8 images × 8 draws by default
                page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()
                settle()
                times.append(time.perf_counter() - start)
            rows.append(("browser: hallucination grid 8×8, click → drawn", sorted(times)[repeats // 2],
                         TARGETS["grid"]))

            visit(url, *next(p for p in PAGES if p[0] == "certification"))
            clicks = []
            for index in ("0", "1"):  # the first certification of a session, then the next (the target's)
                page.get_by_label("Test-set indices", exact=True).fill(index)
                page.get_by_label("Test-set indices", exact=True).press("Enter")
                settle()
                start = time.perf_counter()
                page.get_by_role("button", name="Certify").click()  # N0 = 100, N = 1000 by default
                page.get_by_text("draws").first.wait_for()
                first = time.perf_counter() - start
                page.get_by_text("done: 1 images").wait_for()
                settle()
                clicks.append((time.perf_counter() - start, first))
            rows.append(("browser: certify 1 image N=1000, click → done (the session's first)", clicks[0][0], None))
            rows.append(("browser: certify 1 image N=1000, click → done (the next)", clicks[1][0], 3.0))
            rows.append(("  browser: click → first progress text", clicks[1][1], None))
        browser.close()
    return rows


def quick_demo_rows(bundle) -> list[tuple[str, float, float | None]]:
    """The Fine-tuning page's quick demo, as the page runs it (training split, the estimate made before Start)."""
    from apps.ui.jobs import QUICK_DEMO, FinetuneJob, estimate_seconds, measure_speed, warmup_for
    from cadis.training.finetune import FinetuneConfig, evaluate_denoised

    values = {k: v for k, v in QUICK_DEMO.items() if k != "subset"}
    config = FinetuneConfig(out=tempfile.mkdtemp(prefix="cadis-quick-"), **values, subset=QUICK_DEMO["subset"],
                            lora_alpha=float(QUICK_DEMO["lora_r"]), warmup=warmup_for(QUICK_DEMO["steps"]))
    estimate = estimate_seconds(config, measure_speed(bundle.denoiser, bundle.classifier, bundle.input_shape))
    before = evaluate_denoised(bundle.classifier, bundle.denoiser, bundle.dataset, config.sigma, config.eval_size,
                               config.batch_size, config.seed)
    job = FinetuneJob(config, bundle.denoiser, bundle.classifier, bundle.preset.load_dataset("train"),
                      bundle.dataset).start()
    job.thread.join()
    frame, fifth = job.frame(), max(1, config.steps // 5)
    print(f"quick demo ({job.status}): test accuracy on denoised images {before:.3f} before, "
          + ", ".join(f"{e['test_acc_denoised']:.3f} at step {e['step']}" for e in job.evals)
          + f"; loss {frame['loss'][:fifth].mean():.3f} → {frame['loss'][-fifth:].mean():.3f} (first/last fifth), "
          f"kept draws {frame['selection_rate'][:fifth].mean():.3f} → {frame['selection_rate'][-fifth:].mean():.3f}")
    return [("fine-tuning quick demo: estimated before Start", estimate, None),
            ("fine-tuning quick demo: measured", job.elapsed, 300.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="directory with fmnist-ddpm/ and fmnist-vit/ (default: the preset)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (the median counts)")
    parser.add_argument("--no-browser", action="store_true", help="skip the end-to-end timings in chromium")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold starts (a fresh server per page)")
    parser.add_argument("--quick-demo", action="store_true", help="also run the Fine-tuning page's quick demo")
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

    from apps.ui.certification import certify_one
    from apps.ui.models import load_bundle, model_source

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    from cadis.acceleration import describe_machine

    print(f"machine: {describe_machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {load:.2f}")
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
        at.switch_page(f"apps/views/{page}.py")
        times = [timed(at.run)[0] for _ in range(args.repeats)]
        assert not at.exception, [e.value for e in at.exception]
        rows.append((f"page render: {page}", median(times), TARGETS["page"]))

    # The hallucination grid, 8 images × 8 draws, one-shot: the click (denoise, classify, draw the grid and plots).
    at.switch_page("apps/views/hallucinations.py").run()
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
    rows.append((f"certify 1 image, N0=100 + N=1000 (library call, {bundle.acceleration.precision}: auto)",
                 median(cert_times), TARGETS["certify"]))
    rows.append((f"  first progress update ({len(updates)} updates in all)", updates[0], None))
    if bundle.acceleration.precision != "fp32":  # the apps certified at fp32 before `auto`: side by side
        from cadis.acceleration import Acceleration

        chosen, fp32_times = bundle.acceleration, []
        bundle.__dict__["acceleration"] = Acceleration("fp32")
        for k in range(args.repeats):
            fp32_times.append(timed(lambda k=k: certify_one(bundle, bundle.dataset.images[k], p.sigma, 100, 1000,
                                                            0.001, seed=k, batch_size=min(p.batch_size, 100)))[0])
        bundle.__dict__["acceleration"] = chosen
        rows.append(("certify 1 image, N0=100 + N=1000 (library call, fp32)", median(fp32_times), None))
        print(f"auto ({chosen.precision}) vs fp32, certify 1 image: {median(fp32_times) / median(cert_times):.2f}x")

    at.switch_page("apps/views/certification.py").run()
    at.text_input(key="cert_idx").set_value("0")
    at.number_input(key="cert_n0").set_value(100)
    at.number_input(key="cert_n").set_value(1000)
    t_page = median([timed(lambda: at.button(key="cert_run").click().run())[0] for _ in range(args.repeats)])
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    rows.append(("certify 1 image, N=1000: click → table drawn (page)", t_page, TARGETS["certify"]))

    if args.quick_demo:
        rows += quick_demo_rows(bundle)
    if Path(CHROMIUM).exists() and not args.no_browser:
        rows += browser_rows(args.repeats, cold=not args.no_cold)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  seconds  target")
    for name, seconds, target in rows:
        verdict = "" if target is None else f"≤ {target:g} s {'ok' if seconds <= target else 'MISSED'}"
        print(f"{name:<{width}}  {seconds:7.2f}  {verdict}")


if __name__ == "__main__":
    main()
