"""Certified accuracy, ACR, abstain rate and the best-σ envelope, against hand-computed values."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cadis.analysis.tables import (
    certified_accuracy,
    merge_results,
    paired_comparison,
    per_class_accuracy,
    read_results,
    summarize,
    summary_table,
)
from cadis.certification.output import sidecar_path
from cadis.cli import main
from cadis.errors import CadisError

SETTINGS = {"sigma": 0.5, "n": 100_000, "alpha": 0.001}  # what a sidecar written by `_write` says, unless told
FLAGS = ["--sigma", "0.5", "--n", "100000", "--file-alpha", "0.001"]  # the same, for a file without a sidecar


def _write(path, rows, config=None):
    """Cohen's format; with `config`, a sidecar with SETTINGS and `config` (under the sidecar's current name)."""
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"] + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    if config is not None:
        sidecar_path(path).write_text(json.dumps({**SETTINGS, **config}))


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
                 "--html", str(tmp_path / "f.html"), *FLAGS]) == 0  # no sidecar: the flags give σ, N and α
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

    from cadis.analysis.tables import envelope_table

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
    # pooled by method, a recipe's run competes with the default one; each cell names the run it comes from
    pooled = {**results, "a.long large": run("a.long", 1.0, [2.0, 2.0, 1.5, 0.0], [1, 1, 1, 0])}
    table = envelope_table(pooled, radii=(0.0, 0.5, 1.0, 2.0), group=lambda r: r.partition(".")[0])
    assert table.loc["a"].tolist() == [1.0, 0.75, 0.75, 0.5] and "a.long" not in table.index
    assert table.attrs["run"].loc["a"].tolist() == ["a", "a", "a.long", "a.long"]
    results["a other images"] = run("a", 0.5, [1.0] * 4, [1] * 4).assign(idx=[5, 6, 7, 8])
    with pytest.raises(CadisError, match="different images"):
        envelope_table(results)


# ---------------------------------------------------------------- radii recomputed from the counts


class _Votes:
    """A base classifier whose selection draws all vote class 0, and whose estimation draws vote class 0
    exactly `votes` times (the first ones), class 1 otherwise: CERTIFY then counts `votes` of n."""

    def __init__(self, n0: int, votes: int):
        self.n0, self.votes = n0, votes

    def __call__(self, noisy):
        import torch

        classes = torch.zeros(len(noisy), dtype=torch.long)
        if len(noisy) != self.n0:
            classes[self.votes:] = 1
        return torch.nn.functional.one_hot(classes, 2).float()


def _certify_votes(out, votes: int, n: int = 10_000, sigma: float = 0.5, alpha: float = 0.001, **config):
    import torch

    from cadis.certification.runner import CertifyConfig, certify_dataset
    from cadis.certification.smoothing import Smooth
    from cadis.data import ImageDataset

    data = ImageDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), ["a", "b"], "toy")
    smooth = Smooth(_Votes(10, votes), 2, sigma, batch_size=n)
    smooth.cpu_forward_rows = None  # _Votes decides by call: one forward pass per batch
    cfg = CertifyConfig(denoiser="none", classifier="votes", dataset="toy", sigma=sigma, n0=10, n=n, alpha=alpha,
                        batch_size=n, **config)
    certify_dataset(smooth, data, out, cfg)


def test_a_radius_just_below_a_listed_radius_is_not_counted_there(tmp_path, capsys):
    # N=10^4, σ=0.5, α=0.001, 7057 votes: R = 0.249957, which rounding to nearest wrote as 0.2500.
    from cadis.certification.smoothing import lower_confidence_bound, radius

    exact = radius(0.5, lower_confidence_bound(7057, 10_000, 0.001))
    assert 0.2499 < exact < 0.25
    out = tmp_path / "edge.tsv"
    _certify_votes(out, 7057)
    row = out.read_text().splitlines()[1].split("\t")
    assert (row[2], row[3], row[6], row[7]) == ("0", "0.2499", "7057", "10000")
    assert main(["analyze", str(out), "--radii", "0,0.2499,0.25"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| edge"))
    assert [c.strip() for c in line.split("|")[4:7]] == ["1.000", "1.000", "0.000"]  # r=0, r=0.2499, r=0.25
    # A file written before (radius rounded to nearest): analyze recomputes from the counts all the same.
    out.write_text(out.read_text().replace("\t0.2499\t", "\t0.2500\t"))
    df = read_results(out)
    assert df["radius"].iloc[0] == pytest.approx(exact, abs=1e-15)
    assert certified_accuracy(df, [0.25]).tolist() == [0.0]


def test_adaptive_rows_are_recomputed_at_their_looks_level(tmp_path):
    from cadis.certification.adaptive import AdaptiveSettings, look_levels
    from cadis.certification.smoothing import lower_confidence_bound

    out = tmp_path / "adaptive.tsv"
    _certify_votes(out, 1000, n=1000, sigma=0.25, adaptive=AdaptiveSettings(0.025, (0.25, 0.5)))
    written = out.read_text().splitlines()[1].split("\t")
    n = int(written[7])
    assert n < 1000  # it stopped early, at a look whose level is α/6
    df = read_results(out)
    level = look_levels(0.001, 4)[[125, 250, 500, 1000].index(n)]
    assert df["p_a_lower"].iloc[0] == lower_confidence_bound(n, n, level)
    assert 0 <= df["p_a_lower"].iloc[0] - float(written[8]) < 1e-6
    # Without the sidecar the look is unknown: the file's radius, or the one at α if smaller, is kept; analyze
    # (need_settings) refuses such a file, whose N it cannot know.
    sidecar_path(out).unlink()
    assert read_results(out)["radius"].iloc[0] == float(written[3])
    with pytest.raises(CadisError, match="has no sidecar .adaptive.tsv.json. .* give them: --sigma SIGMA --n N"):
        read_results(out, need_settings=True)


def test_analyze_alpha_recertifies_from_the_counts(tmp_path, capsys):
    from cadis.certification.smoothing import lower_confidence_bound, radius

    out = tmp_path / "alpha.tsv"
    _certify_votes(out, 9000, n=1000, sigma=0.25)  # every estimation draw votes class 0
    header, row = out.read_text().splitlines()
    abstain = row.split("\t")
    abstain[0], abstain[2], abstain[3], abstain[6] = "1", "-1", "0.0000", "505"  # 505 of 1000: abstains at α=0.001
    out.write_text(f"{header}\n{row}\n{chr(9).join(abstain)}\n")
    df = read_results(out, alpha=0.1)
    assert df["radius"].iloc[0] == radius(0.25, lower_confidence_bound(1000, 1000, 0.1))
    assert df["predict"].tolist() == [0, -1]  # the abstain's class was not recorded
    assert lower_confidence_bound(505, 1000, 0.4) >= 0.5
    assert main(["analyze", str(out), "--alpha", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "Re-certified from the stored counts at α=0.4" in text and "1 image(s) abstained" in text
    cohen = tmp_path / "cohen.tsv"
    _write(cohen, [(0, 1, 1, 0.5, 1, 0)])
    with pytest.raises(CadisError, match="keeps no counts"):
        read_results(cohen, alpha=0.01)


# ---------------------------------------------------------------- rows checked against the run's σ, N and α


def _edit(path, line: int, column: str, value) -> None:
    """Set `column` of the file's `line` (1: the header) to `value`."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    fields = lines[line - 1].split("\t")
    fields[header.index(column)] = str(value)
    lines[line - 1] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("column,value,message", [
    ("alpha", 1, r"line 3: alpha 1 differs from the run's alpha=0.001 \(two.tsv.json\)"),
    ("alpha", 0.49, "line 3: alpha 0.49 differs from the run's alpha=0.001"),
    ("sigma", 1e6, r"line 3: sigma 1e\+06 differs from the run's sigma=0.5"),
    ("sigma", -0.5, "line 3: sigma -0.5 differs from the run's sigma=0.5"),
    ("sigma", 0.25, "line 3: sigma 0.25 differs from the run's sigma=0.5"),  # two σ in one file
    ("n", 20_000, "line 3: n=20000 but the run draws exactly N=10000"),
    ("count_a", -1, "line 3: count_a=-1 of n=10000 draws is impossible"),
    ("count_a", 10_001, "line 3: count_a=10001 of n=10000 draws is impossible"),
    ("radius", -0.5, "line 3: radius -0.5 is negative"),
    ("predict", -2, "line 3: predict -2 is neither a class nor -1"),
    ("idx", 0, "line 2 and .*two.tsv line 3 give image 0 different rows"),  # a second, conflicting row of image 0
])
def test_analyze_refuses_a_file_whose_rows_disagree_with_its_sidecar(column, value, message, tmp_path, capsys):
    out = tmp_path / "two.tsv"
    _certify_votes(out, 9000)  # 9000 of 10^4 estimation draws vote class 0
    header, row = out.read_text().splitlines()
    second = row.split("\t")
    second[0], second[6] = "1", "8990"  # a second image, with other counts
    out.write_text(f"{header}\n{row}\n{chr(9).join(second)}\n")
    assert main(["analyze", str(out)]) == 0
    _edit(out, 3, column, value)
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err, err
    assert re.search(message, err), err
    with pytest.raises(CadisError):  # the library refuses it too, not only the command
        read_results(out)


def test_analyze_takes_the_settings_from_the_sidecar_or_refuses_without_one(tmp_path, capsys):
    out = tmp_path / "s.tsv"
    _certify_votes(out, 9000)
    sidecar_path(out).unlink()
    assert main(["analyze", str(out)]) == 2
    assert "has no sidecar (s.tsv.json)" in capsys.readouterr().err
    assert main(["analyze", str(out), "--sigma", "0.5", "--n", "10000", "--file-alpha", "0.001"]) == 0
    assert main(["analyze", str(out), "--sigma", "0.25", "--n", "10000", "--file-alpha", "0.001"]) == 2
    assert "sigma 0.5 differs from the run's sigma=0.25 (--sigma)" in capsys.readouterr().err
    _certify_votes(tmp_path / "t.tsv", 9000)
    assert main(["analyze", str(tmp_path / "t.tsv"), "--sigma", "0.25"]) == 2  # a flag against the sidecar
    assert "--sigma 0.25 disagrees with" in capsys.readouterr().err


def test_no_certificate_exceeds_the_radius_the_sidecars_sigma_n_and_alpha_allow(tmp_path):
    from cadis.certification.smoothing import max_radius

    rng = np.random.default_rng(0)
    for sigma, n, alpha in ((0.25, 1000, 0.001), (0.5, 100, 0.01), (1.0, 10_000, 0.49)):
        cap = max_radius(sigma, n, alpha)
        out = tmp_path / f"s{sigma}.tsv"
        _certify_votes(out, n, n=n, sigma=sigma, alpha=alpha)  # all N agree: the largest radius N draws give
        lines = out.read_text().splitlines()
        rows = [lines[1]]
        for idx, k in enumerate(rng.integers(0, n + 1, 30), start=1):
            fields = lines[1].split("\t")
            fields[0], fields[3], fields[6] = str(idx), "99.0", str(k)  # a radius column that claims far too much
            rows.append("\t".join(fields))
        out.write_text("\n".join([lines[0], *rows]) + "\n")
        df = read_results(out)
        assert df["radius"].iloc[0] == cap and (df["radius"] <= cap).all()
    # Cohen's format keeps no counts: a radius beyond the cap by more than its rounding is refused, one within it cut.
    cap = max_radius(0.5, 100_000, 0.001)
    _write(tmp_path / "c.tsv", [(0, 1, 1, round(cap * 1.004, 3), 1, 0), (1, 1, 1, 0.3, 1, 0)], {})
    assert read_results(tmp_path / "c.tsv")["radius"].tolist() == [cap, 0.3]
    _write(tmp_path / "c.tsv", [(0, 1, 1, 0.3, 1, 0), (1, 1, 1, round(cap * 1.5, 3), 1, 0)], {})
    with pytest.raises(CadisError, match=r"c.tsv line 3: radius .* is beyond 1\.90.., the largest that N=100000"):
        read_results(tmp_path / "c.tsv")


def test_duplicate_rows_are_kept_once_and_shards_of_differently_split_runs_do_not_merge(tmp_path):
    _write(tmp_path / "d.tsv", [(0, 1, 1, 0.3, 1, 0), (0, 1, 1, 0.3, 1, 5), (1, 1, 2, 0.0, 0, 0)], {})
    assert read_results(tmp_path / "d.tsv")["idx"].tolist() == [0, 1]  # the time column may differ
    _write(tmp_path / "a.tsv", [(0, 1, 1, 0.3, 1, 0)], {"label": "run", "shard": "0/2"})
    _write(tmp_path / "b.tsv", [(1, 1, 1, 0.3, 1, 0)], {"label": "run", "shard": "1/3"})
    with pytest.raises(CadisError, match=r"split into different numbers of shards \(a.tsv: 2, b.tsv: 3\)"):
        merge_results([tmp_path / "a.tsv", tmp_path / "b.tsv"])
    _write(tmp_path / "b.tsv", [(1, 1, 1, 0.3, 1, 0), (0, 1, 2, 0.3, 1, 0)], {"label": "run", "shard": "1/2"})
    with pytest.raises(CadisError, match="a.tsv line 2 and .*b.tsv line 3 give image 0 different rows"):
        merge_results([tmp_path / "a.tsv", tmp_path / "b.tsv"])
    _write(tmp_path / "b.tsv", [(1, 1, 1, 0.3, 1, 0)], {"label": "run", "shard": "1/2"})
    assert merge_results([tmp_path / "a.tsv", tmp_path / "b.tsv"])["run"]["idx"].tolist() == [0, 1]


def test_every_shipped_result_file_reads_under_its_sidecar_by_the_earlier_name():
    from conftest import ROOT

    files = [f for f in sorted((ROOT / "experiments" / "results").rglob("*.tsv"))
             if not sidecar_path(f).exists() and f.with_suffix(".json").is_file() and f.read_text().endswith("\n")]
    assert len(files) >= 20
    results = merge_results(files, need_settings=True)  # every row agrees with its sidecar's σ, N and α
    assert len(results) == len(files) and all(df.attrs["config"].get("sigma") for df in results.values())
