"""apps.ui, the apps' support without a UI library: parameter checks, picking images, turns at the models' lock,
hosting caps and visitors' folders, widgets read from the settings' declarations, colours, session results."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from apps.ui.certification import certificate_row, certify_one
from apps.ui.hosting import check_limits
from apps.ui.turns import Turns
from apps.ui.uploads import check_run_parameters, pick_indices
from cadis.certification.smoothing import Certificate
from cadis.errors import CadisError

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("app_env")  # conftest: test models, a private runs folder


def test_ui_support_imports_no_ui_library():
    code = ("import sys, apps.ui.certification, apps.ui.jobs, apps.ui.pictures, apps.ui.hosting, apps.ui.uploads, "
            "apps.ui.demo_input; "
            "print(sorted({'streamlit', 'gradio'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_parameter_checks():
    check_run_parameters(sigma=0.25, alpha=0.001, n0=100, n=100)
    for kwargs, message in [({"sigma": 0}, "sigma"), ({"alpha": 0}, "alpha"), ({"alpha": 0.5}, "alpha"),
                            ({"n0": 100, "n": 99}, "at least N0"), ({"draws": 0}, "draws")]:
        with pytest.raises(CadisError, match=message):
            check_run_parameters(**kwargs)


def test_pick_indices():
    labels = torch.tensor([0, 1, 0, 2, 0])
    assert pick_indices(labels, "index", indices=[4, 0, 4]) == [4, 0]
    assert sorted(pick_indices(labels, "class", class_id=0, count=10)) == [0, 2, 4]
    assert len(set(pick_indices(labels, "random", count=3, seed=1))) == 3
    with pytest.raises(CadisError, match="outside"):
        pick_indices(labels, "index", indices=[5])


def wait_for(condition, timeout: float = 30) -> None:
    """Poll until condition() holds or the timeout passes (the assertion after it says what was expected)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        time.sleep(0.01)


def test_two_sessions_certifying_at_once_queue_on_the_lock(bundle):
    x = bundle.dataset.images[0]
    waited, results = [], []

    def session(name: str) -> None:
        results.append(certify_one(bundle, x, 0.25, 10, 40, 0.001, on_wait=lambda: waited.append(name))[0])

    with bundle.lock:  # the first session is busy; the second must wait, not fail
        t = threading.Thread(target=session, args=("second",))
        t.start()
        wait_for(lambda: waited)  # the second session reached the lock and was told to wait
        assert t.is_alive() and waited == ["second"]
    t.join(60)
    session("third")
    assert waited == ["second"] and len(results) == 2
    assert results[0].prediction == results[1].prediction and results[0].count_a == results[1].count_a


def test_turns_are_first_come_first_served_and_tell_the_place_in_line():
    turns = Turns(poll_s=0.02)
    order, seen = [], {"b": [], "c": []}

    def job(name: str) -> None:
        with turns.turn(on_position=seen[name].append):
            order.append(name)
            time.sleep(0.2)  # long enough for the one behind to see its place move

    with turns:  # a is busy; b, then c, queue behind it
        b = threading.Thread(target=job, args=("b",))
        b.start()
        wait_for(lambda: seen["b"])  # b is in line before c starts
        c = threading.Thread(target=job, args=("c",))
        c.start()
        wait_for(lambda: seen["c"])
        assert turns.waiting() == 2 and seen == {"b": [1], "c": [2]}
    b.join(5)
    c.join(5)
    assert order == ["b", "c"] and seen["c"] == [2, 1] and not turns.locked()


def test_hosting_caps(monkeypatch):
    monkeypatch.delenv("CADIS_HOSTED", raising=False)
    check_limits(n=100_000, images=64, steps=50_000, subset=0)  # the local app keeps full power
    monkeypatch.setenv("CADIS_HOSTED", "1")
    for values, message in [({"n": 5001}, "N is capped at 5000"), ({"images": 9}, "capped at 8"),
                            ({"steps": 1000}, "steps is capped"), ({"subset": 0}, "got all")]:
        with pytest.raises(CadisError, match=message):
            check_limits(**values)
    check_limits(n=5000, images=8, steps=300, subset=2000)


def test_widget_spec_reads_the_declaration():
    from apps.ui.setting_inputs import widget_spec
    from cadis.acceleration import PRECISIONS
    from cadis.seeds import MAX_SEED
    from cadis.training.finetune import FinetuneConfig
    from cadis.training.objective import METHODS

    # an int setting: integer bounds, the hint after the help, a cap only where it is tighter
    assert widget_spec(FinetuneConfig, "seed", "Seed") == {
        "label": "Seed", "help": "training seed. Any integer from 0.", "min_value": 0, "max_value": MAX_SEED}
    steps = widget_spec(FinetuneConfig, "steps", caps={"steps": 300})
    assert (steps["min_value"], steps["max_value"]) == (0, 300) and type(steps["max_value"]) is int
    assert widget_spec(FinetuneConfig, "steps", caps={"steps": 10**9})["max_value"] == 1_000_000  # MAX_STEPS
    assert "max_value" not in widget_spec(FinetuneConfig, "num_draws")  # no declared high, no cap
    assert widget_spec(FinetuneConfig, "num_draws", caps={"num_draws": 16})["max_value"] == 16
    # a setting whose low names another (subset >= batch_size): that one's low; "0 = all" below it on request
    assert widget_spec(FinetuneConfig, "subset")["min_value"] == 1
    assert widget_spec(FinetuneConfig, "subset", none_as=0, caps={"subset": 2000}) == {
        "help": "train on this many images (a seeded random subset).", "min_value": 0, "max_value": 2000}
    # floats with an open low: float bounds, the low itself kept (validation refuses it)
    sigma = widget_spec(FinetuneConfig, "sigma", "σ")
    assert sigma == {"label": "σ", "help": "noise level σ. Try 0.25 or 0.5.", "min_value": 0.0}
    assert type(sigma["min_value"]) is float
    lr = widget_spec(FinetuneConfig, "lr")
    assert (lr["min_value"], lr["max_value"]) == (0.0, 1.0) and type(lr["max_value"]) is float
    assert lr["help"] == "peak learning rate. 1e-3 is usual with LoRA, 1e-4 with --full."
    # choices: the options, no bounds; a page's note after the declaration's words
    method = widget_spec(FinetuneConfig, "method", "Method", note="ft-cadis: the paper's.")
    assert method == {"label": "Method", "help": "training objective. ft-cadis: the paper's.",
                      "options": list(METHODS)}
    assert widget_spec(FinetuneConfig, "precision")["options"] == list(PRECISIONS)
    assert widget_spec(FinetuneConfig, "warm_start") == {"help": "no warm start: images with no correct draw add no "
                                                                 "loss."}
    with pytest.raises(KeyError, match="declares no setting 'sigmaa'"):
        widget_spec(FinetuneConfig, "sigmaa")
    code = "import sys, apps.ui.setting_inputs; print(sorted({'streamlit', 'gradio'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # UI-free


def test_one_colour_per_classifier_or_method():
    from apps.ui.style import METHOD_COLOURS, VERDICT_COLOURS, colour_of, method_of

    assert colour_of("none σ=0.25") == colour_of("off-the-shelf") == colour_of("this session: off-the-shelf, σ=0.5")
    assert method_of("fine-tuned: fashion-mnist-ft-cadis-s0.5-20250101-120000") == "ft-cadis"
    assert method_of("ft-cadis-detached-lam1 σ=0.25") == "ft-cadis-detached-lam1"
    assert colour_of("someone's model") == colour_of("someone's model")  # stable for unknown names too
    reds_and_greens = {VERDICT_COLOURS["hallucinated"], VERDICT_COLOURS["kept"], VERDICT_COLOURS["abstain"]}
    assert not reds_and_greens & set(METHOD_COLOURS.values())  # a fine-tuned model is never "hallucinated" red


def _run(config: dict, idx=(0, 1)) -> pd.DataFrame:
    df = pd.DataFrame({"idx": list(idx), "label": [1, 2], "predict": [1, 2], "radius": [0.3, 0.2]})
    df["correct"] = 1
    df.attrs["config"] = config
    return df


def test_session_runs_name_what_produced_them_and_meet_their_baseline():
    from apps.ui.certification import default_pair, default_runs, session_results, shared_draws

    cert = Certificate(1, 0.3, 90, 100, 0.9)
    rows = [certificate_row(f"#{i}", 1, cert, np.array([0, 90, 10]), ["a", "b", "c"], 0.5, classifier=clf, n0=10,
                            alpha=0.001, idx=i, seed=k)
            for k, i in enumerate([4, 7]) for clf in ["fine-tuned: x", "off-the-shelf"]]
    rows.append(certificate_row("#4", 1, cert, np.array([0, 90, 10]), ["a", "b", "c"], 0.25, n0=10, alpha=0.001,
                                idx=4, seed=0))
    session = session_results(rows, {"fine-tuned: x": "ft-cadis"})
    model, base, other = "this session: fine-tuned: x, σ=0.5, N=100, α=0.001 (2 images)", \
        "this session: off-the-shelf, σ=0.5, N=100, α=0.001 (2 images)", \
        "this session: off-the-shelf, σ=0.25, N=100, α=0.001 (1 image)"
    assert list(session) == [model, base, other]  # grouped by classifier, σ, N and α
    assert list(session[model]["idx"]) == [4, 7] and shared_draws(session[model], session[base])
    shipped = {"none σ=0.5": _run({"method": "none", "sigma": 0.5, "n": 1000, "alpha": 0.001}),
               "ft σ=0.5": _run({"method": "ft-cadis", "sigma": 0.5, "n": 1000, "alpha": 0.001}),
               "none σ=0.25": _run({"method": "none", "sigma": 0.25, "n": 1000, "alpha": 0.001})}
    assert default_runs({}, shipped, 0.25) == ["none σ=0.25"]
    assert default_runs({model: session[model]}, shipped, 0.25) == [model, "none σ=0.5"]
    runs = {**session, **shipped}
    assert default_runs(session, shipped, 0.25)[:3] == [model, base, "none σ=0.5"]
    assert default_pair([model, base, "none σ=0.5", "ft σ=0.5"], runs) == (model, base)  # same draws first
    assert default_pair(["none σ=0.5", "ft σ=0.5"], runs) == ("ft σ=0.5", "none σ=0.5")


def test_hosted_visitors_folders_are_pruned_a_day_after_their_last_change(monkeypatch, tmp_path):
    import os
    import time

    from apps.ui.hosting import VISITOR_TTL_S, new_visitor, prune_visitors

    monkeypatch.setenv("CADIS_RUNS_DIR", str(tmp_path))
    visitors = tmp_path / "visitors"
    now = time.time()
    for name, age_of_newest in (("aaaaaaaa00000001", 2 * VISITOR_TTL_S), ("aaaaaaaa00000002", 60)):
        run = visitors / name / "finetune" / "run"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text("step\n")
        old = now - 3 * VISITOR_TTL_S
        for path in (visitors / name, visitors / name / "finetune", run):
            os.utime(path, (old, old))
        os.utime(run / "metrics.csv", (now - age_of_newest, now - age_of_newest))
    (visitors / "not-a-visitor").mkdir()
    os.utime(visitors / "not-a-visitor", (0, 0))
    assert prune_visitors(now=now) == [visitors / "aaaaaaaa00000001"]  # its newest file is two days old
    assert sorted(p.name for p in visitors.iterdir()) == ["aaaaaaaa00000002", "not-a-visitor"]
    # hosted, a new visitor prunes; locally nothing is deleted
    os.utime(visitors / "aaaaaaaa00000002" / "finetune" / "run" / "metrics.csv", (0, 0))
    monkeypatch.delenv("CADIS_HOSTED", raising=False)
    new_visitor()
    assert (visitors / "aaaaaaaa00000002").exists()
    monkeypatch.setenv("CADIS_HOSTED", "1")
    new_visitor()
    assert not (visitors / "aaaaaaaa00000002").exists() and (visitors / "not-a-visitor").exists()
