"""Fine-tuning curves read from a run's metrics.csv, and their figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cadis.analysis.training_curves import (
    comparison_figure,
    curves_figure,
    metric_label,
    plateau_table,
    read_metrics,
)
from cadis.errors import CadisError


def _run(path, evals=(0.8, 0.85)):
    rows = [{"kind": "step", "step": s, "loss": 1.0 / s, "loss_sce": 0.5 / s, "loss_madv": 0.5 / s,
             "selection_rate": 0.9, "mask_rate": 0.7, "acc_denoised": 0.9, "lr": 1e-3, "test_acc_denoised": None}
            for s in range(1, 7)]
    rows += [{"kind": "eval", "step": 3 * (k + 1), "test_acc_denoised": a} for k, a in enumerate(evals)]
    (path / "model").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path / "metrics.csv", index=False)
    return path


def test_read_metrics_splits_steps_and_evaluations_from_a_run_or_its_model(tmp_path):
    run = _run(tmp_path / "run")
    for where in (run, run / "model"):
        steps, evals = read_metrics(where)
        assert steps["step"].tolist() == [1, 2, 3, 4, 5, 6] and "test_acc_denoised" not in steps
        assert evals.to_dict("list") == {"step": [3, 6], "test_acc_denoised": [0.8, 0.85]}


@pytest.mark.parametrize("content, message", [(None, "No metrics.csv"), ("a,b\n1,2\n", "lacks the columns"),
                                              ("", "not a readable")])
def test_a_missing_or_foreign_log_is_refused(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.csv").write_text(content)
    with pytest.raises(CadisError, match=message):
        read_metrics(tmp_path)


def test_figures_draw_each_metric_and_each_run(tmp_path):
    steps, evals = read_metrics(_run(tmp_path / "a"))
    names = [t.name for t in curves_figure(steps, evals, smooth=3).data]
    assert names == [metric_label(n) for n in ["loss", "loss_sce", "loss_madv", "selection_rate", "mask_rate",
                                               "acc_denoised", "lr", "test_acc_denoised"]]
    assert metric_label("loss_sce").startswith("L_SCE") and metric_label("unknown") == "unknown"
    smoothed = curves_figure(steps, smooth=3).data[0].y  # rolling mean of 1/s over up to 3 steps
    assert smoothed[2] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    fig = comparison_figure({"a": tmp_path / "a", "b": _run(tmp_path / "b", (0.7, 0.9))})
    assert [t.name for t in fig.data] == ["a"] * 3 + ["b"] * 3
    assert list(fig.data[3].y) == [0.7, 0.9] and list(fig.data[3].x) == [3, 6]  # no batch sizes: steps
    for run, batch in (("a", 32), ("b", 128)):  # runs of other batch sizes line up by images seen
        (tmp_path / run / "config.json").write_text(json.dumps({"config": {"batch_size": batch}}))
    fig = comparison_figure({"a": tmp_path / "a", "b": tmp_path / "b"})
    assert list(fig.data[0].x) == pytest.approx([0.096, 0.192]) and list(fig.data[3].x) == pytest.approx([0.384, 0.768])
    assert fig.layout.xaxis.title.text.startswith("training images seen")


def test_plateau_table_reads_the_held_out_curve(tmp_path):
    table = plateau_table({"rising": _run(tmp_path / "r", (0.5, 0.6, 0.7)), "flat": _run(tmp_path / "f", (0.8, 0.8))})
    assert table.loc["rising", "at 1/3"] == 0.5 and table.loc["rising", "at 2/3"] == 0.6  # evals at steps 3, 6, 9
    assert table.loc["rising", "gain, last third"] == pytest.approx(0.1)
    assert table.loc["flat", "gain, last third"] == 0 and table.loc["flat", "best"] == 0.8


def test_a_torn_last_line_of_a_live_run_is_left_out(tmp_path):
    run = _run(tmp_path / "run")
    with (run / "metrics.csv").open("a") as f:
        f.write("step,7,0.14")  # the writer is mid-line (or was killed there)
    steps, _ = read_metrics(run)
    assert steps["step"].tolist() == [1, 2, 3, 4, 5, 6]


def test_a_curve_with_one_point_gets_a_marker(tmp_path):
    steps, evals = read_metrics(_run(tmp_path / "a"))
    one = curves_figure(steps.iloc[:1], evals.iloc[:0])
    assert all(t.mode == "lines+markers" for t in one.data)  # a single point: a line alone draws nothing
    assert all(t.mode == "lines" for t in curves_figure(steps).data)
    assert one.layout.xaxis3.title.text == "training step"
