"""Certification: per-image certified radii with progress, and certified accuracy vs radius across runs.

Every result names the classifier (and adapter), σ, N and α that produced it; a fine-tuned classifier is certified
together with the off-the-shelf one on the same draws, so the `none` baseline is always there to compare with.
"""

import time

import pandas as pd
import plotly.express as px
import streamlit as st

from apps.ui.certification import (
    baselines_for,
    certificate_row,
    certify_many,
    default_pair,
    default_runs,
    is_pairable,
    load_results,
    radius_cap,
    result_files,
    session_results,
    shared_draws,
    shipped_verdict,
)
from apps.ui.hosting import check_limits, hide_paths, limits, result_roots
from apps.ui.models import OFF_THE_SHELF, finetuned_info
from apps.ui.pictures import to_uint8
from apps.ui.style import VERDICT_COLOURS, colour_map, paint, sigma_of
from apps.views._common import (
    CERTIFY_REQUEST,
    bundle,
    dataset_index,
    finetuned_classifier,
    hosted_note,
    image_picker,
    keep_selection,
    visible_models,
    visitor,
)
from cadis.analysis.tables import (
    DEFAULT_RADII,
    certified_accuracy_figure,
    paired_comparison,
    per_class_accuracy,
    summary_table,
)
from cadis.certification.smoothing import max_radius
from cadis.errors import CadisError

st.title("Certified radii")
st.caption("CERTIFY (Cohen et al., 2019): N0 draws pick the top class, N draws bound its probability p_A from "
           "below at confidence 1 − α; the radius is σ·Φ⁻¹(p_A). If p_A ≤ ½ the smoothed classifier abstains.")




b = bundle()
hosted_note()
choices = visible_models()
options = [OFF_THE_SHELF, *choices]
request = st.session_state.pop(CERTIFY_REQUEST, None)
if request in options:  # "certify this model" from the Fine-tuning or Models page: its classifier, at its σ
    st.session_state["cert_classifier"] = request
    trained_at = finetuned_info(choices[request])["σ"] if request != OFF_THE_SHELF else None
    if isinstance(trained_at, (int, float)) and trained_at > 0:
        st.session_state["cert_sigma"] = float(trained_at)
if st.session_state.get("cert_classifier") not in options:
    st.session_state.pop("cert_classifier", None)
c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
chosen_clf = c1.selectbox("Classifier", options, key="cert_classifier",
                          format_func=lambda k: k if k == OFF_THE_SHELF else f"fine-tuned: {k}",
                          help="off-the-shelf: the classifier of the Models page (the preset's by default); "
                               "fine-tuned: your runs and the shipped ones.")
baseline = chosen_clf != OFF_THE_SHELF and c2.checkbox(
    "with the off-the-shelf baseline", value=True, key="cert_baseline",
    help="Also certify the off-the-shelf classifier on the same noise draws (each draw denoised once), so the "
         "comparison below differs in the classifier only.")
if chosen_clf != OFF_THE_SHELF:
    info = finetuned_info(choices[chosen_clf])
    base = f" on {info['base']}" if info["base"] else ""
    st.caption(f"fine-tuned: **{chosen_clf}** — {info['kind']}{base}; method {info['method'] or '?'}, trained at "
               f"σ = {info['σ'] or '?'}.")
images = image_picker(b, "cert", default_count=4)

c1, c2, c3, c4, c5 = st.columns(5)
sigma = c1.number_input("σ", value=float(b.preset.sigma), step=0.05, format="%.3f", key="cert_sigma")
n0 = int(c2.number_input("N0 (selection draws)", value=min(b.preset.n0, 100), step=10, key="cert_n0"))
n = int(c3.number_input("N (estimation draws)", value=min(b.preset.n, 1000), max_value=limits().n, step=100,
                        key="cert_n"))
alpha = c4.number_input("α", value=0.001, step=0.001, format="%.4f", key="cert_alpha")
seed = int(c5.number_input("Seed", 0, 10**6, 0, key="cert_seed"))


def _name(k: str) -> str:
    return k if k == OFF_THE_SHELF else f"fine-tuned: {k}"


if st.button("Certify", type="primary", disabled=images is None, key="cert_run"):
    rows = []
    bar = st.progress(0.0, text="starting …")
    waiting = st.empty()
    try:
        check_limits(n=n, images=len(images))
        names = [_name(chosen_clf)] + ([OFF_THE_SHELF] if baseline else [])
        classifiers = [b.classifier if chosen_clf == OFF_THE_SHELF else finetuned_classifier(choices[chosen_clf])]
        classifiers += [b.classifier] if baseline else []
        started = time.time()
        for k, (name, x, label) in enumerate(images):
            def progress(done: int, total: int, k: int = k, name: str = name) -> None:
                waiting.empty()
                bar.progress((k + done / total) / len(images),
                             text=f"image {k + 1}/{len(images)} ({name}): {done}/{total} draws")

            certs = certify_many(b, x, classifiers, sigma, n0, n, alpha, seed=seed + k, progress=progress,
                                 batch_size=min(b.preset.batch_size, 100),  # finer progress steps
                                 on_wait=lambda: waiting.info("Another session is certifying; waiting for it …"),
                                 on_position=lambda ahead: waiting.info(
                                     f":material/hourglass_top: {ahead} job(s) ahead of yours; yours starts when "
                                     "they finish."))
            for clf_name, cert in zip(names, certs):
                rows.append({**certificate_row(name, label, cert, cert.counts, b.classes, sigma, classifier=clf_name,
                                               n0=n0, alpha=alpha, idx=dataset_index(name), seed=seed + k,
                                               precision=b.acceleration.precision),
                             "_image": x})
        bar.progress(1.0, text=f"done: {len(images)} images in {time.time() - started:.1f} s")
        st.session_state["cert_last"] = rows
        st.session_state.setdefault("cert_history", []).extend(
            {k: v for k, v in r.items() if k != "_image"} for r in rows)
    except CadisError as e:
        bar.empty()
        st.error(hide_paths(str(e)))

rows = st.session_state.get("cert_last")
if rows:
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_image"} for r in rows])
    first = rows[0]
    several = len(set(table["classifier"])) > 1
    st.markdown(f"**{first['classifier']}**{' and the off-the-shelf baseline' if several else ''} · σ = "
                f"{first['sigma']:g} · N0 = {first['N0']} · N = {first['n']} · α = {first['alpha']:g}")
    st.dataframe(table.drop(columns=["label", "predict", "idx", "seed"]), hide_index=True, key="cert_table",
                 column_config={"classifier": st.column_config.TextColumn(width="large")})
    main = [r for r in rows if r["classifier"] == first["classifier"]]
    st.image([to_uint8(r["_image"], 3) for r in main],
             caption=[f"{r['image']} {r['true class']} → {r['prediction']}, R = {r['radius']:.3f}" for r in main],
             width=110)
    verdict = ["abstain" if r["predict"] < 0 else "correct" if r["predict"] == r["label"] else
               "unlabelled" if r["label"] < 0 else "wrong" for r in rows]
    bars = table.assign(verdict=verdict)
    fig = px.bar(bars, x="image", y="radius", color="classifier" if several else "verdict",
                 pattern_shape="verdict" if several else None, barmode="group", hover_data=["prediction"],
                 color_discrete_map=colour_map(table["classifier"]) if several else VERDICT_COLOURS,
                 labels={"radius": "certified ℓ2 radius"})
    fig.update_xaxes(type="category", title="image")  # '#3' would otherwise read as the number 3
    st.plotly_chart(fig, key="cert_bars")
    cap = max_radius(first["sigma"], first["n"], first["alpha"])
    at_cap = sum(r["radius"] >= cap - 1e-4 for r in main)
    st.markdown(radius_cap(first["sigma"], first["n"], first["alpha"]) +
                (f" Here {at_cap} of {len(main)} images reach it." if at_cap else ""))
    st.download_button("Download this table (CSV)", table.to_csv(index=False), "certificates.csv", "text/csv",
                       key="cert_csv")

st.header("Certified accuracy vs radius")
files = result_files(result_roots(visitor()))
shipped, problems = load_results(files)
methods = {f"fine-tuned: {k}": finetuned_info(p)["method"] for k, p in choices.items()}
session = session_results(st.session_state.get("cert_history", []), methods)
runs = {**session, **shipped}
for p in problems:
    st.warning(hide_paths(f"Skipped {p}"))
if not runs:
    st.info("No results yet: none shipped in experiments/results/, none under runs/, and no labelled image certified "
            "in this session. Certify test images above, or run `cadis certify …`.")
else:
    # runs certified since the last rerun join the comparison, each with its matching `none` baseline
    keep_selection("cert_runs", list(runs), default_runs(session, shipped, float(b.preset.sigma)),
                   joinable=list(session), companions=lambda k: baselines_for(k, runs))
    chosen = st.multiselect("Runs (classifier, σ, N, α)", list(runs), key="cert_runs")
    if chosen:
        picked = {k: runs[k] for k in chosen}
        envelope = st.checkbox("Best-σ envelope", value=False, key="cert_envelope")
        fig = paint(certified_accuracy_figure(picked, envelope=envelope))
        for trace in fig.data:  # this session's runs stand out from the shipped ones of the same method and σ
            if (trace.name or "").startswith("this session"):
                trace.line.width = 4
        fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), height=520)  # long names
        st.plotly_chart(fig, key="cert_curve")
        caps = {(c.get("sigma"), c.get("n"), c.get("alpha")) for c in (df.attrs.get("config", {}) for df in
                                                                        picked.values())}
        caps = sorted(c for c in caps if None not in c)
        if caps:
            st.caption("Each curve drops to 0 at the largest radius its N allows (all N draws agree): " + "; ".join(
                f"σ = {s:g}, N = {nn}, α = {a:g}: R ≤ {max_radius(s, nn, a):.3f}" for s, nn, a in caps) + ".")
        table = summary_table(picked, DEFAULT_RADII, envelope=envelope)
        st.dataframe(table.style.format(precision=3).format("{:.0f}", subset=["images"], na_rep=""),
                     key="cert_summary", column_config={"_index": st.column_config.TextColumn("run", width="large")})
        st.download_button("Download the ACR table (CSV)", table.to_csv(), "certified_accuracy.csv", "text/csv",
                           key="cert_summary_csv")
        radius = st.select_slider("Per class, at radius", options=list(DEFAULT_RADII), value=0.0, key="cert_class_r")
        per_class = per_class_accuracy(picked, radius, b.classes).reset_index().melt(
            id_vars="run", var_name="class", value_name="certified accuracy")
        per_class["σ"] = [f"σ={s:g}" if (s := sigma_of(r)) is not None else "?" for r in per_class["run"]]
        st.plotly_chart(px.bar(per_class, x="class", y="certified accuracy", color="run", barmode="group",
                               pattern_shape="σ" if per_class["σ"].nunique() > 1 else None,
                               color_discrete_map=colour_map(picked), range_y=[0, 1], height=520).update_layout(
                                   legend=dict(orientation="h", yanchor="top", y=-0.3, x=0)), key="cert_per_class")
        pairable = [k for k in chosen if is_pairable(runs[k])]
        pair = default_pair(chosen, runs)
        if pair is not None:
            st.subheader("Paired comparison")
            if st.session_state.get("cert_pair_default") != pair:  # new runs, a new default: it replaces the old
                st.session_state["cert_pair_default"] = pair
                st.session_state["cert_pair_a"], st.session_state["cert_pair_b"] = pair
            for key, default in zip(("cert_pair_a", "cert_pair_b"), pair):  # a run that left the selection
                if st.session_state.get(key) not in pairable:
                    st.session_state[key] = default
            left, right = st.columns(2)
            first = left.selectbox("Run A", pairable, key="cert_pair_a")
            second = right.selectbox("Run B", pairable, key="cert_pair_b")
            ca, cb = runs[first].attrs.get("config", {}), runs[second].attrs.get("config", {})
            differ = [name for k, name in (("sigma", "σ"), ("n", "N"), ("alpha", "α")) if ca.get(k) != cb.get(k)]
            if shared_draws(runs[first], runs[second]):
                how = "on the same noise draws, so only the classifiers differ"
            else:
                how = "on different noise draws, so the difference also holds the luck of the draws"
            st.caption("Image by image, on the images both runs hold: which run certifies an image at r that the "
                       f"other does not, and the exact McNemar test of the difference. These two were certified {how}"
                       f"{'; they differ in ' + ', '.join(differ) + ' too' if differ else ''}.")
            try:
                paired = paired_comparison(runs[first], runs[second], DEFAULT_RADII)
                st.dataframe(paired.rename(columns={"a_only": "only A", "b_only": "only B",
                                                    "difference": "A − B"}).style.format(
                    {"A − B": "{:+.3f}", "p_value": "{:.2g}"}), key="cert_paired")
            except CadisError as e:
                st.warning(hide_paths(str(e)))

verdict = shipped_verdict()
if verdict is not None:
    st.header("Does FT-CADIS hold up? The embedded benchmark")
    st.markdown("The paper's claim is *ft-cadis ≥ denoised-ce ≥ none at every radius*. Each row says where it holds "
                "on the embedded benchmark, and the worst radius of each pair (points of certified accuracy).")
    st.dataframe(verdict[0], key="cert_verdict")
    st.caption(verdict[1])
