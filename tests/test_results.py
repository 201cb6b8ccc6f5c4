"""The embedded benchmark pipeline end to end, at toy scale: fine-tune, certify, report, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cadis.certification.adaptive import AdaptiveSettings
from cadis.errors import CadisError
from experiments import report, results
from experiments.comparisons import comparisons


def test_pipeline_runs_resumes_and_reports(tmp_path, monkeypatch):
    for module in (results, report):
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
        monkeypatch.setattr(module, "FINETUNED", tmp_path / "finetuned")
    monkeypatch.setattr(report, "README", tmp_path / "README.md")  # never the repository's own
    monkeypatch.setattr(report, "RESULTS_DOC", tmp_path / "results.md")
    methods, sigmas = ("none", "ft-cadis"), (0.25,)
    results.run_finetuning(methods, sigmas, steps=2, runs=tmp_path / "runs")
    adapter = tmp_path / "finetuned" / "ft-cadis-s0.25"
    assert (adapter / "cadis_adapter.json").exists() and (adapter / "metrics.csv").exists()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # auto's timings: measured here, not reused
    for _ in range(2):  # the second pass finds everything done and changes nothing
        results.run_certification(methods, sigmas, max_images=3, n0=10, n=50, batch_size=60, auto=(True, True))
        files = sorted((tmp_path / "results").glob("*.tsv"))
        assert [f.name for f in files] == ["ft-cadis_s0.25.tsv", "none_s0.25.tsv"]
        assert all(len(f.read_text().splitlines()) == 4 for f in files)
    # One engine for runs on shared draws, chosen by auto and named in each sidecar: a tiny job never compiles.
    sides = [json.loads(f.with_name(f.name + ".json").read_text()) for f in files]
    assert sides[0]["acceleration"] == sides[1]["acceleration"] and sides[0]["acceleration"]["compile"] is False
    assert all(s["precision_auto"]["precision"] == s["acceleration"]["precision"] for s in sides)
    assert all(s["compile_auto"]["compile"] is False and not s["compile_auto"]["measured"] for s in sides)
    detector = results.run_hallucination((0.25,), images=3, draws=4, multistep_images=0)
    assert detector["classifier"].tolist() == ["none", "ft-cadis"]  # every classifier shipped at that σ
    assert (detector["draws"] == 12).all() and detector["hallucination rate"].between(0, 1).all()
    per_class = pd.read_csv(tmp_path / "results" / "hallucination.csv")
    assert set(per_class["classifier"]) == {"none", "ft-cadis"} and (per_class["sigma"] == 0.25).all()
    assert "AUROC" in per_class and per_class["AUROC"].dropna().between(0, 1).all()
    assert "AUROC of low confidence per class" in report.hallucination_markdown()
    assert (tmp_path / "results" / "hallucination.html").exists()
    produced_by = json.loads((tmp_path / "results" / "hallucination.json").read_text())
    assert produced_by["denoiser"] == "src/cadis/assets/fmnist-ddpm"  # the same on every checkout
    # An adaptive run beyond N=1000 lands beside the main results, on the same images and shared draws.
    adaptive = AdaptiveSettings(0.025, results.RADII, first_look=25)
    results.run_certification(methods, sigmas, max_images=3, n0=10, n=200, batch_size=60, adaptive=adaptive)
    beside = tmp_path / "results" / "n200-adaptive"
    assert sorted(f.name for f in beside.glob("*.tsv")) == ["ft-cadis_s0.25.tsv", "none_s0.25.tsv"]
    adaptive_rows = pd.read_csv(beside / "none_s0.25.tsv", sep="\t")
    assert len(adaptive_rows) == 3 and adaptive_rows["n"].between(25, 200).all()
    rates = results.run_diagnostics((0.25,), limit=40)
    assert rates["images"].iloc[-1] == 40 and (rates["mask_rate"] <= rates["selection_rate"]).all()
    table = report.write_report()
    assert "What the objectives see at step 0" in table and "mask σ=0.25" in table
    assert "ft-cadis σ=0.25" in table and "none σ=0.25" in table
    assert "ft-cadis vs none σ=0.25" in table and (tmp_path / "results" / "paired.csv").exists()
    assert (tmp_path / "results" / "certified_accuracy_s0.25.html").exists()
    assert (tmp_path / "results" / "finetune_curves.html").exists()
    per_class = pd.read_csv(tmp_path / "results" / "per_class_r0.csv", index_col=0)
    assert list(per_class.index) == ["ft-cadis σ=0.25", "none σ=0.25"]
    assert "Certified accuracy per class at r=0" in table
    # the adaptive runs get their own table, and stay out of the main ones
    assert "Beyond N=1000's radius cap: adaptive CERTIFY with N=200" in table
    assert "ft-cadis σ=0.25 N=200 adaptive" in table and "ft-cadis vs none σ=0.25" in table
    summary = pd.read_csv(beside / "summary.csv", index_col=0)
    assert summary.loc["none σ=0.25 N=200 adaptive", "mean draws"] == adaptive_rows["n"].mean()
    assert len(pd.read_csv(tmp_path / "results" / "summary.csv")) == 2


def test_the_block_between_the_markers_is_replaced(tmp_path):
    doc = tmp_path / "results.md"
    start, end = report.RESULTS_MARKERS
    doc.write_text(f"intro\n{start}\nold table\n{end}\noutro\n")
    assert report.update_block(doc, "| new | table |")
    assert doc.read_text() == f"intro\n{start}\n| new | table |\n{end}\noutro\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not report.update_block(plain, "x") and plain.read_text() == "no markers\n"


def test_a_named_variant_changes_one_hyperparameter_of_its_method(tmp_path):
    base = results.finetune_config("ft-cadis", 0.25, 10, tmp_path)
    variant = results.finetune_config("ft-cadis-detached", 0.25, 10, tmp_path)
    assert variant.method == "ft-cadis" and variant.detach_target and not base.detach_target
    assert variant.out.endswith("fashion-mnist-ft-cadis-detached-s0.25") and variant.out != base.out
    assert results.classifier_spec("ft-cadis-detached", 0.5).endswith("ft-cadis-detached-s0.5")
    lam1 = results.finetune_config("ft-cadis-detached-lam1", 0.25, 10, tmp_path)
    assert lam1.lam == 1.0 != base.lam and lam1.detach_target
    with pytest.raises(CadisError, match="Unknown run"):
        results.run_method("ft-cadis-lam2")


def test_the_short_recipe_is_the_regime_of_the_shipped_runs(tmp_path):
    # the shipped adapters' finetune.json records the regime they were trained in; the recipe must repeat it
    import json

    shipped = json.loads((results.FINETUNED / "denoised-ce-s0.25" / "finetune.json").read_text())["config"]
    config = results.finetune_config("denoised-ce", 0.25, None, tmp_path).__dict__
    for key in ("steps", "batch_size", "lr", "warmup", "num_draws", "lam", "eps", "adv_steps", "weight_decay",
                "grad_clip", "eval_every", "eval_size", "lora_r", "seed", "save_as"):
        assert config[key] == shipped[key], key


def test_the_authors_recipes_follow_their_learning_rate_rule(tmp_path):
    lora = results.finetune_config("ft-cadis.authors-lora", 1.0, None, tmp_path)
    assert (lora.num_draws, lora.adv_steps, lora.lam, lora.lora) == (2, 1, 2.0, True)
    assert lora.lr == pytest.approx(4e-4 * 128 / 256) and lora.min_lr == 1e-6
    assert lora.steps == round(3 * 60_000 / 128) and lora.warmup == round(0.1 * lora.steps)
    assert lora.out.endswith("fashion-mnist-ft-cadis.authors-lora-s1")
    full = results.finetune_config("ft-cadis.authors-full", 1.0, None, tmp_path)
    assert (full.num_draws, full.adv_steps, full.lam, full.lora, full.save_as) == (4, 4, 4.0, False, "merged")
    assert full.lr == pytest.approx(5e-5) and full.layer_decay == 0.65
    short = results.finetune_config("denoised-ce.authors-lora", 1.0, 100, tmp_path)
    assert short.steps == 100 and short.warmup == round(lora.warmup * 100 / lora.steps)  # warmup scales
    with pytest.raises(CadisError, match="Unknown recipe"):
        results.run_method("ft-cadis.nope")


def test_comparisons_pair_runs_within_a_recipe_and_across_recipes():
    runs = {"none", "denoised-ce", "ft-cadis", "denoised-ce.authors-lora", "ft-cadis.authors-lora"}
    pairs = comparisons(runs)
    for pair in [("ft-cadis", "none"), ("ft-cadis.authors-lora", "none"),
                 ("ft-cadis.authors-lora", "denoised-ce.authors-lora"), ("denoised-ce.authors-lora", "none"),
                 ("ft-cadis.authors-lora", "ft-cadis"), ("denoised-ce.authors-lora", "denoised-ce")]:
        assert pair in pairs
    assert ("ft-cadis.authors-lora", "denoised-ce") not in pairs  # not across recipes within a method pair
    assert len(pairs) == len(set(pairs)) and all(a in runs and b in runs for a, b in pairs)
    assert comparisons({"ft-cadis"}) == []


def _run(name: str, sigma: float, radii: list[float]) -> pd.DataFrame:
    """A result file's frame: image i certified at radii[i] (negative: not certified)."""
    df = pd.DataFrame({"idx": range(len(radii)), "label": 0, "predict": 0,
                       "radius": [max(r, 0.0) for r in radii], "correct": [r >= 0 for r in radii]})
    df.attrs["config"] = {"run": name, "sigma": sigma, "dataset": "d", "split": "test"}
    return df


def test_the_verdict_checks_the_papers_ordering_and_the_target_per_sigma():
    # 100 images; none certifies 60 at r=0.5 and 70 at r=0; denoised-ce 2 more at r=0; ft-cadis wins 20 at r=0.5
    none = [0.6] * 60 + [0.1] * 10 + [-1] * 30
    ce = [0.6] * 60 + [0.1] * 12 + [-1] * 28
    ft = [0.6] * 80 + [-1] * 20          # 80 at r=0.5, but 80 at r=0 too: 0 below anyone at r=0
    runs = {"n": _run("none", 0.5, none), "c": _run("denoised-ce.authors-lora", 0.5, ce),
            "f": _run("ft-cadis.authors-lora", 0.5, ft)}
    table = report.verdict_table(runs, radii=(0.0, 0.5, 1.0))
    row = table.loc["σ=0.5 (authors-lora)"]
    assert row["target"] == "met" and row["ordering holds at r="] == "0, 0.5"  # r=1: nobody certifies, left out
    assert row["ft-cadis vs none at r=σ"].startswith("+20.0 (p=")
    assert row["a step reversed (Holm p<0.05) at r="] == "nowhere"
    # ft-cadis 3 points below denoised-ce at r=0 (72 against 69): missed, by how much
    runs["f"] = _run("ft-cadis.authors-lora", 0.5, [0.6] * 69 + [-1] * 31)
    row = report.verdict_table(runs, radii=(0.0, 0.5)).loc["σ=0.5 (authors-lora)"]
    assert row["target"] == "missed: 3.0 points below at worst" and row["ordering holds at r="] == "0.5"
    assert row["ft-cadis vs denoised-ce: worst"].startswith("-3.0 at r=0 (p=")
    # level with none at r=σ: not clearly ahead
    runs["f"] = _run("ft-cadis.authors-lora", 0.5, none)
    row = report.verdict_table(runs, radii=(0.0, 0.5)).loc["σ=0.5 (authors-lora)"]
    assert row["target"] == "missed: 2.0 points below at worst, not clearly ahead of none at r=σ"
    # a second σ adds the envelope row; a σ without all three runs is not judged
    runs |= {"n1": _run("none", 1.0, [1.5] * 50 + [-1] * 50), "n2": _run("none", 0.25, none),
             "c1": _run("denoised-ce.authors-lora", 1.0, [1.5] * 40 + [-1] * 60),
             "f1": _run("ft-cadis.authors-lora", 1.0, [1.5] * 55 + [-1] * 45)}
    table = report.verdict_table(runs, radii=(0.0, 0.5, 1.0, 1.5))
    assert list(table.index) == ["σ=0.5 (authors-lora)", "σ=1 (authors-lora)", "envelope (authors-lora, best σ)"]
    envelope = table.loc["envelope (authors-lora, best σ)"]
    # best σ per radius: r=0 from σ=0.5 (ft-cadis 70 against denoised-ce 72), r ≥ 1 from σ=1 (55, 40, 50)
    assert envelope["ft-cadis vs denoised-ce: worst"] == "-2.0 at r=0"
    assert envelope["denoised-ce vs none: worst"] == "-10.0 at r=1" and envelope["ordering holds at r="] == "0.5"
    assert report.verdict_table({"n": runs["n"], "c": runs["c"]}) is None


def test_the_report_writes_the_verdict_with_what_produced_it(tmp_path, monkeypatch):
    from apps.ui.certification import shipped_verdict

    assert shipped_verdict(tmp_path) is None  # never written: the page shows nothing
    none = [0.6] * 60 + [0.1] * 10 + [-1] * 30
    runs = {"n": _run("none", 0.5, none), "c": _run("denoised-ce.authors-lora", 0.5, none),
            "f": _run("ft-cadis.authors-lora", 0.5, [0.6] * 80 + [-1] * 20)}
    for df in runs.values():
        df.attrs["config"] |= {"n0": 100, "n": 1000, "alpha": 0.001, "seed": 0,
                               "classifier": f"local-dir:{report.REPOSITORY}/src/cadis/assets/x"}
    del runs["n"].attrs["config"]["run"]  # an older sidecar names only its method
    runs["n"].attrs["config"]["method"] = "none"
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "merge_results", lambda files: runs)
    monkeypatch.setattr(report, "README", tmp_path / "README.md")
    monkeypatch.setattr(report, "RESULTS_DOC", tmp_path / "results.md")
    (tmp_path / "none_s0.5.tsv").touch()  # the report runs once a result file exists
    report.write_report()
    table, caption = shipped_verdict(tmp_path)
    assert table.loc["σ=0.5 (authors-lora)", "target"] == "met"
    assert "ft-cadis.authors-lora, none at σ = 0.5" in caption and "N = 1000, α = 0.001, 100 test images" in caption
    import json

    side = json.loads((tmp_path / "verdict.json").read_text())
    assert side["runs"][0]["classifier"] == "local-dir:src/cadis/assets/x"  # the same path on every checkout


def test_every_shipped_certificate_is_at_or_below_the_exact_clopper_pearson_bound_of_its_counts():
    """No shipped row claims more than its counts certify at the run's α (adaptive looks certify at smaller levels,
    so their bound at α is an upper bound too)."""
    from scipy.stats import beta, norm

    files = sorted(results.RESULTS.rglob("*.tsv"))
    assert len(files) >= 25
    for path in files:
        df = pd.read_csv(path, sep="\t")
        kept = df[df["predict"] >= 0]
        p_exact = beta.ppf(kept["alpha"], kept["count_a"], kept["n"] - kept["count_a"] + 1)
        bound = kept["sigma"] * norm.ppf(p_exact)
        assert (kept["radius"] <= bound + 1e-12).all(), path.name
        assert (kept["p_a_lower"] <= p_exact + 1e-12).all(), path.name


def test_the_verdict_adjusts_every_p_value_with_holm_over_its_family():
    from statsmodels.stats.multitest import multipletests

    from experiments.verdict import holm

    rng = np.random.default_rng(0)
    tables = {sigma: {pair: pd.DataFrame({"difference": [0.01, -0.02], "a_only": [3, 1], "b_only": [1, 3],
                                          "p_value": rng.uniform(0, 0.1, 2)}, index=["r=0", "r=0.5"])
                      for pair in (("a", "b"), ("a", "c"))} for sigma in (0.25, 0.5)}
    family = holm(tables)
    assert len(family) == 8
    raw = family["p_value"].to_numpy()
    assert np.allclose(family["p_holm"], multipletests(raw, method="holm")[1])
    assert (family["p_holm"] >= family["p_value"]).all() and family["p_holm"].max() <= 1
    shipped = pd.read_csv(results.RESULTS / "verdict_tests.csv")
    assert {"p_value", "p_holm"} <= set(shipped.columns)
    assert np.allclose(shipped["p_holm"], multipletests(shipped["p_value"], method="holm")[1])


def test_the_seed_replicate_pools_over_seeds_with_the_image_as_the_unit():
    from experiments.comparisons import seed_findings, seed_table, split_seed

    assert split_seed("ft-cadis.authors-lora-whole.seed2") == ("ft-cadis.authors-lora-whole", 2)
    assert split_seed("ft-cadis.authors-lora-whole") == ("ft-cadis.authors-lora-whole", 0)
    base = [0.6] * 50 + [-1] * 50
    runs = {}
    for seed, wins in ((0, 10), (1, 12), (2, 0)):  # ft-cadis certifies `wins` more images at r=0.5 per seed
        tag = f".seed{seed}" if seed else ""
        runs[f"c{seed}"] = _run(f"denoised-ce.w{tag}", 0.5, base)
        runs[f"f{seed}"] = _run(f"ft-cadis.w{tag}", 0.5, [0.6] * (50 + wins) + [-1] * (50 - wins))
    runs["lonely"] = _run("ft-cadis.other", 0.5, base)  # one seed only: no pooled row
    table = seed_table(runs, (0.0, 0.5), resamples=9_999)
    assert list(table.index) == [f"ft-cadis vs denoised-ce.w σ=0.5 seed {s}" for s in range(3)] + [
        "ft-cadis vs denoised-ce.w σ=0.5 pooled over 3 seeds (100 images)"]
    assert table.iloc[0]["r=0.5"].startswith("+10.0 (10/0, p=0.002")  # the per-seed McNemar row
    pooled = table.iloc[3]["r=0.5"]
    assert pooled.startswith("+7.3 (p=")  # (10 + 12 + 0) / 3 images' worth per 100
    assert float(pooled.split("p=")[1].rstrip(")")) < 0.005  # 12 images gain, none lose: exact p = 2^-11
    (finding,) = seed_findings(table)  # computed from the table: r=0, then the largest gain (r=0 here too)
    assert finding.startswith("- ft-cadis vs denoised-ce.w σ=0.5: at r=0 it is below in 0 and above in 2 of 3 seeds "
                              "(+10.0, +12.0, +0.0 points), pooled +7.3 points (p=0.00")
    assert "at r=0.5" not in finding
    # no difference anywhere: the permutation test finds nothing
    same = {k: _run(df.attrs["config"]["run"], 0.5, base) for k, df in runs.items()}
    assert seed_table(same, (0.5,)).iloc[-1]["r=0.5"] == "+0.0 (p=1)"
