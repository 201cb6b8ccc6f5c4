"""The report: tables (markdown, CSV) and figures (HTML) from the result files in experiments/results/.

docs/results.md gets the summary, the paired differences, the verdict and the fine-tuning cost between its
markers; the README gets a three-line headline; summary.md adds the per-class tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cadis.analysis.tables import (
    certified_accuracy_figure,
    envelope_table,
    merge_results,
    per_class_accuracy,
    summary_markdown,
    summary_table,
)
from cadis.analysis.training_curves import comparison_figure, plateau_table
from cadis.certification.smoothing import max_radius
from cadis.data import FASHION_MNIST_CLASSES
from experiments.comparisons import paired_table, run_name, seed_findings, seed_table
from experiments.paths import FINETUNED, REPOSITORY, RESULTS, RESULTS_DOC
from experiments.verdict import RADII, TOLERANCE, VERDICT_RECIPE, headline, verdict_table

README = REPOSITORY / "README.md"
RESULTS_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")  # in docs/results.md
HEADLINE_MARKERS = ("<!-- headline:start -->", "<!-- headline:end -->")  # in the README


def write_report(radii=RADII) -> str:
    """Tables (markdown, CSV) and figures (HTML) from whatever result files exist. docs/results.md gets the
    summary, the paired differences and the fine-tuning cost, the README a three-line headline; summary.md adds
    the per-class tables."""
    files = sorted(RESULTS.glob("*_s*.tsv"))
    if not files:
        return "no results yet"
    results = merge_results(files)
    table = summary_table(results, radii)
    table.to_csv(RESULTS / "summary.csv")
    markdown = summary_markdown(table)
    paired = paired_table(results, radii)
    if paired is not None:
        paired.to_csv(RESULTS / "paired.csv")
        markdown += ("\n\nPaired differences in certified accuracy (points; same images and draws): "
                     "images only the first run certifies / only the second, and the exact McNemar p-value "
                     "(per comparison, not corrected for multiplicity)\n\n" + paired.to_markdown())
    seeds = seed_table(results, radii)
    if seeds is not None:
        seeds.to_csv(RESULTS / "seeds.csv")
        markdown += ("\n\nTraining seeds: ft-cadis against denoised-ce per seed (paired on the same images and "
                     "draws, exact McNemar), and pooled over seeds with the image as the unit (per image, the mean "
                     "over seeds of the difference in being certified; a two-sided sign-flip permutation test over "
                     "images, 99,999 resamples, not corrected for multiplicity)\n\n" + seeds.to_markdown()
                     + "\n\n" + "\n".join(seed_findings(seeds)))
    verdict = verdict_table(results, radii=radii)
    if verdict is not None:
        verdict.to_csv(RESULTS / "verdict.csv")
        tests = verdict.attrs["tests"]
        tests.to_csv(RESULTS / "verdict_tests.csv", index=False)
        (RESULTS / "verdict.json").write_text(json.dumps(verdict.attrs["produced_by"], indent=2) + "\n")
        markdown += (f"\n\nThe paper's ordering (ft-cadis ≥ denoised-ce ≥ none at every radius) under the "
                     f"`{VERDICT_RECIPE}` recipe: per σ paired on the same draws (exact McNemar), and on the best-σ "
                     f"envelope (point estimates). The {len(tests)} per-σ tests are one family: each p-value is "
                     f"given raw and Holm-adjusted (`verdict_tests.csv`; {int((tests['p_value'] < 0.05).sum())} "
                     f"have p < 0.05, {int((tests['p_holm'] < 0.05).sum())} keep it after Holm), and "
                     "\"significant\" means Holm p < 0.05. Target: ft-cadis at most "
                     f"{100 * TOLERANCE:g} point below either at any radius, and ahead of none at r = σ "
                     "(Holm p < 0.05)\n\n" + verdict.to_markdown(disable_numparse=True))
    by_sigma = {sigma for df in results.values() for sigma in [df.attrs["config"].get("sigma")]}
    if len(by_sigma) > 1:
        markdown += ("\n\nBest-σ envelope per method (its recipes pooled): the best certified accuracy over σ at each "
                     "radius, and the σ (and the recipe, where not `short`) that gives it\n\n"
                     + envelope_markdown(results, radii))
    for folder in sorted(RESULTS.glob("n*-adaptive")):
        markdown += beyond_cap_markdown(folder, radii)
    cost = finetuning_cost()
    if cost is not None:
        cost.to_csv(RESULTS / "finetune_cost.csv")
        markdown += "\n\nFine-tuning cost\n\n" + cost.to_markdown(floatfmt=["", ".0f", ".0f", ".1f", ".1f", ".2f"])
    logs = {d.name: d for d in sorted(FINETUNED.glob("*")) if (d / "metrics.csv").is_file()}
    plateau = plateau_table(logs) if logs else pd.DataFrame()
    if not plateau.empty:
        plateau.to_csv(RESULTS / "finetune_plateau.csv")
        markdown += ("\n\nOne-draw accuracy on the first 500 denoised test images during fine-tuning (a gain near 0 "
                     "over the last third: the curve has levelled off; the curves: `finetune_curves.html`)\n\n"
                     + plateau.to_markdown(floatfmt=["", ".0f", ".3f", ".3f", ".3f", ".3f", "+.3f"]))
    full = markdown
    for r in (0.0, 0.5):
        per_class = per_class_accuracy(results, r, list(FASHION_MNIST_CLASSES))
        per_class.to_csv(RESULTS / f"per_class_r{r:g}.csv")
        full += f"\n\nCertified accuracy per class at r={r:g}\n\n" + per_class.to_markdown(floatfmt=".2f")
    if (RESULTS / "selection_rates.csv").is_file():
        long = pd.read_csv(RESULTS / "selection_rates.csv")
        rates = long.pivot(index="class", columns="sigma", values=["selection_rate", "mask_rate"])
        rates = rates.reindex(long["class"].unique())  # the dataset's class order, "all" last
        rates.columns = [f"{name.split('_')[0]} σ={sigma:g}" for name, sigma in rates.columns]
        side = RESULTS / "selection_rates.json"
        draws = json.loads(side.read_text()).get("num_draws", "M") if side.is_file() else "M"
        full += ("\n\nWhat the objectives see at step 0: the off-the-shelf classifier's selection rate (share of "
                 f"denoised draws it gets right) and mask rate (share of images with all {draws} draws right), "
                 "per class and σ, on training images (`results --stage diagnose`)\n\n"
                 + rates.to_markdown(floatfmt=".2f"))
    if (RESULTS / "hallucination_detector.csv").is_file():
        full += "\n\n" + hallucination_markdown()
    (RESULTS / "summary.md").write_text(full + "\n")
    update_block(RESULTS_DOC, markdown, RESULTS_MARKERS)
    top = headline(results)
    if top:
        update_block(README, top, HEADLINE_MARKERS)
    if logs:
        comparison_figure(logs).write_html(RESULTS / "finetune_curves.html", include_plotlyjs="cdn",
                                         div_id="finetune-curves")  # a fixed id: no diff when unchanged
    for sigma in sorted(s for s in by_sigma if s is not None):
        subset = {k: v for k, v in results.items() if v.attrs["config"].get("sigma") == sigma}
        certified_accuracy_figure(subset).write_html(RESULTS / f"certified_accuracy_s{sigma:g}.html",
                                                     include_plotlyjs="cdn", div_id=f"certified-s{sigma:g}")
    return full


def hallucination_markdown() -> str:
    """The hallucination tables (per classifier, and per class), and their figure as HTML beside them."""
    import plotly.express as px

    detector = pd.read_csv(RESULTS / "hallucination_detector.csv")
    per_class = pd.read_csv(RESULTS / "hallucination.csv")
    per_class["panel"] = per_class["mode"] + " σ=" + per_class["sigma"].map("{:g}".format)
    fig = px.bar(per_class, x="class", y="hallucination rate", color="classifier", barmode="group",
                 facet_row="panel", height=260 * per_class["panel"].nunique(),
                 title="Share of denoised draws whose top-1 class is not the label")
    fig.write_html(RESULTS / "hallucination.html", include_plotlyjs="cdn", div_id="hallucination")
    classes = list(per_class["class"].unique())

    def by_class(value: str) -> str:  # one row per (panel, classifier), in the order they were scored
        rows = list(dict.fromkeys(zip(per_class["panel"], per_class["classifier"])))
        table = per_class.set_index(["panel", "classifier", "class"])[value].unstack("class").reindex(rows)[classes]
        table.index = [f"{panel} {clf}" for panel, clf in table.index]
        return table.map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}").to_markdown()

    return ("Hallucinations: share of denoised draws whose top-1 class is not the label, and the AUROC of low "
            "confidence (1 − max softmax) as their detector (0.5: no better than chance; < 0.5: hallucinated draws "
            "are the more confident); `results --stage hallucination`\n\n"
            + detector.astype({"draws": int})[["mode", "sigma", *detector.columns[:-2]]]
            .to_markdown(index=False, floatfmt=["", "g", "", "d", ".3f", ".3f", ".3f", ".3f"])
            + "\n\nHallucination rate per class\n\n" + by_class("hallucination rate")
            + "\n\nAUROC of low confidence per class (n/a: every draw of the class kept)\n\n" + by_class("AUROC"))


def envelope_markdown(results: dict[str, pd.DataFrame], radii=RADII) -> str:
    """Per method run at several σ (its recipes pooled), the best certified accuracy over σ at each radius, with
    the σ (and the recipe, where not `short`) that gives it."""
    method = {label: run_name(df).partition(".")[0] for label, df in results.items()}
    several = [label for label in results if sum(m == method[label] for m in method.values()) > 1]
    table = envelope_table({label: results[label] for label in several}, radii, group=lambda run: run.partition(".")[0])
    sigma, run = table.attrs["sigma"], table.attrs["run"]

    def where(col: str) -> list[str]:
        return [f"{v:.3f} (σ={s:g}{', ' + r.partition('.')[2] if '.' in r else ''})" if v > 0 else "0.000"
                for v, s, r in zip(table[col], sigma[col], run[col])]

    return table.apply(lambda col: where(col.name)).to_markdown(disable_numparse=True)


def beyond_cap_markdown(folder: Path, radii=RADII) -> str:
    """The adaptive runs in `folder` (`results --adaptive --n N`) where N=1000's radius cap cuts a radius:
    certified accuracy, the draws each image used, and the paired differences (summary.csv, paired.csv there)."""
    files = sorted(folder.glob("*_s*.tsv"))
    if not files:
        return ""
    results = merge_results(files)
    config = next(iter(results.values())).attrs["config"]
    n, alpha = config["n"], config["alpha"]
    table = summary_table(results, radii)
    table["mean draws"] = [df["n"].mean() for df in results.values()]
    table.to_csv(folder / "summary.csv")
    caps = ", ".join(f"{max_radius(sigma, n, alpha / 2):.2f} at σ={sigma:g}"
                     for sigma in sorted({df.attrs["config"]["sigma"] for df in results.values()}))
    text = (f"\n\nBeyond N=1000's radius cap: adaptive CERTIFY with N={n:,} (`{folder.name}/`; radii of interest "
            f"{', '.join(f'{r:g}' for r in radii)}; n0={config['n0']}, α={alpha:g}; the same images, and each σ's "
            f"runs on shared draws). The largest radius it allows is {caps} (all draws agreeing, at the final "
            "look's α/2)\n\n"
            + table.to_markdown(floatfmt=["", ".0f", ".2f", *[".3f"] * (len(table.columns) - 3), ".0f"]))
    paired = paired_table(results, radii)
    if paired is not None:
        paired.to_csv(folder / "paired.csv")
        text += f"\n\nPaired differences at N={n:,} (exact McNemar, as above)\n\n" + paired.to_markdown()
    return text


def update_block(document: Path, markdown: str, markers: tuple[str, str] = RESULTS_MARKERS) -> bool:
    """Put `markdown` between the document's markers (if it has them); True when it did."""
    if not document.exists():
        return False
    text = document.read_text()
    (first, last), start = markers, text.find(markers[0])
    end = text.find(last)
    if start < 0 or end < start:
        return False
    document.write_text(text[: start + len(first)] + "\n" + markdown + "\n" + text[end:])
    return True


def finetuning_cost() -> pd.DataFrame | None:
    """Steps, images/s and wall time of each shipped fine-tuning run, from its metrics log."""
    rows = {}
    for metrics in sorted(FINETUNED.glob("*/metrics.csv")):
        df = pd.read_csv(metrics)
        steps = df[df["kind"] == "step"]
        info = json.loads((metrics.parent / "finetune.json").read_text())
        rows[metrics.parent.name] = {"steps": int(steps["step"].max()),
                                     "batch": info["config"]["batch_size"],
                                     "images/s": steps["images_per_s"].median(),
                                     "total minutes": df["elapsed_s"].dropna().max() / 60,
                                     "trainable %": 100 * info["trainable_fraction"]}
    return pd.DataFrame.from_dict(rows, orient="index") if rows else None
