"""Certified accuracy, ACR, abstain rate and the best-σ envelope, against hand-computed values."""

from __future__ import annotations

import json

import pytest

from cadis_core.analysis import (
    certified_accuracy,
    merge_results,
    paired_comparison,
    per_class_accuracy,
    read_results,
    summarize,
    summary_table,
)
from cadis_core.cli import main
from cadis_core.errors import CadisError


def _write(path, rows, config=None):
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"] + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(config))


def test_cohen_format_with_running_total_in_correct_is_recomputed(tmp_path):
    # Older code wrote a running total in `correct`; we recompute it from predict == label.
    rows = [(0, 3, 3, 0.9, 1, 1.0), (1, 2, 2, 0.3, 2, 1.0), (2, 1, 5, 0.6, 2, 1.0), (3, 4, -1, 0.0, 2, 1.0)]
    _write(tmp_path / "cohen.tsv", rows)
    df = read_results(tmp_path / "cohen.tsv")
    assert df["correct"].tolist() == [1, 1, 0, 0]
    s = summarize(df, radii=(0, 0.25, 0.5, 1.0))
    assert s["r=0"] == 0.5 and s["r=0.25"] == 0.5 and s["r=0.5"] == 0.25 and s["r=1"] == 0.0
    assert s["ACR"] == pytest.approx((0.9 + 0.3) / 4)
    assert s["abstain"] == 0.25 and s["clean_acc"] == 0.5


def test_certified_accuracy_uses_radius_at_least_r(tmp_path):
    _write(tmp_path / "a.tsv", [(0, 1, 1, 0.5, 1, 0), (1, 1, 1, 0.49999, 1, 0)])
    assert certified_accuracy(read_results(tmp_path / "a.tsv"), [0.5]).tolist() == [0.5]


def test_envelope_takes_the_best_run_at_each_radius(tmp_path):
    _write(tmp_path / "s25.tsv", [(0, 1, 1, 0.4, 1, 0), (1, 1, 1, 0.3, 1, 0)], {"sigma": 0.25, "label": "σ=0.25"})
    _write(tmp_path / "s50.tsv", [(0, 1, 1, 0.9, 1, 0), (1, 1, 2, 0.0, 0, 0)], {"sigma": 0.5, "label": "σ=0.5"})
    table = summary_table(merge_results([tmp_path / "s25.tsv", tmp_path / "s50.tsv"]), (0, 0.5), envelope=True)
    assert table.loc["σ=0.25", "r=0"] == 1.0 and table.loc["σ=0.5", "r=0.5"] == 0.5
    assert table.loc["best-σ envelope", "r=0"] == 1.0 and table.loc["best-σ envelope", "r=0.5"] == 0.5


def test_analyze_cli_writes_table_and_figure(tmp_path, capsys):
    _write(tmp_path / "r.tsv", [(i, i % 3, i % 3 if i % 4 else -1, 0.1 * i, 0, 0) for i in range(8)])
    assert main(["analyze", str(tmp_path / "r.tsv"), "--csv", str(tmp_path / "t.csv"),
                 "--html", str(tmp_path / "f.html")]) == 0
    out = capsys.readouterr().out
    assert "ACR" in out and (tmp_path / "f.html").stat().st_size > 1000
    expected_acr = sum(0.1 * i for i in range(8) if i % 4) / 8  # abstains and errors count as radius 0
    assert f"{expected_acr:.3f}" in out


def test_paired_comparison_counts_discordant_images_and_gives_mcnemar_exact_p(tmp_path):
    # 20 images of label 1. At r=0, a certifies 0-14 and b certifies 0-9 and 15-16: a_only 5, b_only 2.
    a_rows = [(i, 1, 1 if i < 15 else 2, 0.6 if i < 5 else 0.3, 0, 0) for i in range(20)]
    b_rows = [(i, 1, 1 if i < 10 or i in (15, 16) else -1, 0.6, 0, 0) for i in reversed(range(20))]
    b_rows.append((99, 1, 1, 0.6, 0, 0))  # an image a lacks is left out of the pairing
    _write(tmp_path / "a.tsv", a_rows)
    _write(tmp_path / "b.tsv", b_rows)
    table = paired_comparison(read_results(tmp_path / "a.tsv"), read_results(tmp_path / "b.tsv"), (0, 0.5))
    r0, r5 = table.loc["r=0"], table.loc["r=0.5"]
    assert (r0["images"], r0["a_only"], r0["b_only"]) == (20, 5, 2)
    assert r0["difference"] == pytest.approx(3 / 20)
    assert r0["p_value"] == pytest.approx(2 * (1 + 7 + 21) / 2**7)  # 2·P(Bin(7, 1/2) <= 2)
    # At r=0.5, a keeps images 0-4 and b keeps 0-9, 15, 16: a_only 0, b_only 7, p = 2/2^7.
    assert (r5["a_only"], r5["b_only"]) == (0, 7) and r5["p_value"] == pytest.approx(2 / 2**7)
    with pytest.raises(CadisError, match="no image in common"):
        paired_comparison(read_results(tmp_path / "a.tsv"), read_results(tmp_path / "a.tsv").assign(idx=-1))
    _write(tmp_path / "train.tsv", a_rows, {"dataset": "fashion-mnist", "split": "train"})
    _write(tmp_path / "test.tsv", a_rows, {"dataset": "fashion-mnist", "split": "test"})
    with pytest.raises(CadisError, match="different data"):
        paired_comparison(read_results(tmp_path / "train.tsv"), read_results(tmp_path / "test.tsv"))


def test_analyze_cli_paired_prints_each_comparison_and_needs_two_runs(tmp_path, capsys):
    _write(tmp_path / "a.tsv", [(i, 1, 1, 0.3, 0, 0) for i in range(6)], {"label": "A"})
    _write(tmp_path / "b.tsv", [(i, 1, 1 if i < 2 else 0, 0.3, 0, 0) for i in range(6)], {"label": "B"})
    assert main(["analyze", str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv"), "--paired", "--radii", "0"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| r=0 "))
    # 4 images only A certifies, none only B: p = 2 · 2^-4
    assert "A vs B" in out and [c.strip() for c in row.split("|")[1:-1]] == ["r=0", "6", "4", "0", "+0.667", "0.12"]
    assert main(["analyze", str(tmp_path / "a.tsv"), "--paired"]) == 2
    assert "--paired needs at least two runs" in capsys.readouterr().err


def test_per_class_accuracy_names_the_classes_and_counts_abstains_as_misses(tmp_path):
    rows = [(0, 0, 0, 0.6, 0, 0), (1, 0, -1, 0.0, 0, 0), (2, 1, 1, 0.2, 0, 0), (3, 1, 1, 0.9, 0, 0)]
    _write(tmp_path / "a.tsv", rows, {"label": "A"})
    results = merge_results([tmp_path / "a.tsv"])
    assert per_class_accuracy(results, 0.0, ["top", "trouser"]).loc["A"].to_dict() == {"top": 0.5, "trouser": 1.0}
    assert per_class_accuracy(results, 0.5).loc["A"].tolist() == [0.5, 0.5]


def test_envelope_takes_the_best_sigma_per_radius_and_method():
    import pandas as pd

    from cadis_core.analysis import envelope_table

    def run(name, sigma, radii, correct):
        df = pd.DataFrame({"idx": range(len(radii)), "label": 0, "predict": 0, "radius": radii, "correct": correct})
        df.attrs["config"] = {"run": name, "sigma": sigma}
        return df

    results = {"a small": run("a", 0.25, [0.5, 0.5, 0.0, 0.6], [1, 1, 1, 1]),   # good at small radii
               "a large": run("a", 1.0, [2.0, 1.5, 0.0, 0.0], [1, 1, 0, 0]),     # reaches large radii
               "b small": run("b", 0.25, [0.1, 0.0, 0.0, 0.0], [1, 0, 0, 0])}
    table = envelope_table(results, radii=(0.0, 0.5, 1.0, 2.0))
    assert table.loc["a"].tolist() == [1.0, 0.75, 0.5, 0.25]
    assert table.attrs["sigma"].loc["a"].tolist() == [0.25, 0.25, 1.0, 1.0]
    assert table.loc["b"].tolist() == [0.25, 0.0, 0.0, 0.0]
    results["a other images"] = run("a", 0.5, [1.0] * 4, [1] * 4).assign(idx=[5, 6, 7, 8])
    with pytest.raises(CadisError, match="different images"):
        envelope_table(results)
