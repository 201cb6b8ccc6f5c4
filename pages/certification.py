"""Certification: per-image certified radii with progress, and certified accuracy vs radius across runs."""

import time

import pandas as pd
import plotly.express as px
import streamlit as st

from cadis_core.analysis import (
    DEFAULT_RADII,
    certified_accuracy_figure,
    paired_comparison,
    per_class_accuracy,
    summary_table,
)
from cadis_core.errors import CadisError
from cadis_core.ui.certification import certificate_row, certify_one, load_results, result_files, session_results
from cadis_core.ui.pictures import to_uint8
from pages._common import bundle, image_picker, keep_selection, route_through_app

route_through_app()  # first: a deep link must still go through app.py

st.title("Certified radii")
st.caption("CERTIFY (Cohen et al., 2019): N0 draws pick the top class, N draws bound its probability p_A from "
           "below at confidence 1 − α; the radius is σ·Φ⁻¹(p_A). If p_A ≤ ½ the smoothed classifier abstains.")
b = bundle()
images = image_picker(b, "cert", default_count=4)

c1, c2, c3, c4, c5 = st.columns(5)
sigma = c1.number_input("σ", value=float(b.preset.sigma), step=0.05, format="%.3f", key="cert_sigma")
n0 = int(c2.number_input("N0 (selection draws)", value=min(b.preset.n0, 100), step=10, key="cert_n0"))
n = int(c3.number_input("N (estimation draws)", value=min(b.preset.n, 1000), step=100, key="cert_n"))
alpha = c4.number_input("α", value=0.001, step=0.001, format="%.4f", key="cert_alpha")
seed = int(c5.number_input("Seed", 0, 10**6, 0, key="cert_seed"))

if st.button("Certify", type="primary", disabled=images is None, key="cert_run"):
    rows = []
    bar = st.progress(0.0, text="starting …")
    try:
        started = time.time()
        for k, (name, x, label) in enumerate(images):
            def progress(done: int, total: int, k: int = k, name: str = name) -> None:
                bar.progress((k + done / total) / len(images),
                             text=f"image {k + 1}/{len(images)} ({name}): {done}/{total} draws")

            cert, counts = certify_one(b, x, sigma, n0, n, alpha, seed=seed + k, progress=progress,
                                       batch_size=min(b.preset.batch_size, 100),  # finer progress steps
                                       on_wait=lambda: st.info("Another session is certifying; waiting for it …"))
            rows.append({**certificate_row(name, label, cert, counts, b.classes, sigma), "_image": x})
        bar.progress(1.0, text=f"done: {len(rows)} images in {time.time() - started:.1f} s")
        st.session_state["cert_last"] = rows
        st.session_state.setdefault("cert_history", []).extend(
            {k: v for k, v in r.items() if k != "_image"} for r in rows)
    except CadisError as e:
        bar.empty()
        st.error(str(e))

rows = st.session_state.get("cert_last")
if rows:
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_image"} for r in rows])
    st.dataframe(table.drop(columns=["label", "predict"]), hide_index=True, key="cert_table")
    st.image([to_uint8(r["_image"], 3) for r in rows],
             caption=[f"{r['image']} {r['true class']} → {r['prediction']}, R = {r['radius']:.3f}" for r in rows],
             width=110)
    verdict = ["abstain" if r["predict"] < 0 else "correct" if r["predict"] == r["label"] else
               "unlabelled" if r["label"] < 0 else "wrong" for r in rows]
    st.plotly_chart(px.bar(table.assign(verdict=verdict), x="image", y="radius", color="verdict",
                           color_discrete_map={"correct": "#2ca02c", "wrong": "#d62728", "abstain": "#7f7f7f",
                                               "unlabelled": "#1f77b4"},
                           labels={"radius": "certified ℓ2 radius"}), key="cert_bars")
    st.download_button("Download this table (CSV)", table.to_csv(index=False), "certificates.csv", "text/csv",
                       key="cert_csv")

st.header("Certified accuracy vs radius")
files = result_files()
shipped, problems = load_results(files)
session = session_results(st.session_state.get("cert_history", []))
runs = {**session, **shipped}
for p in problems:
    st.warning(f"Skipped {p}")
if not runs:
    st.info("No results yet: none shipped in assets/results/, none under runs/, and no labelled image certified "
            "in this session. Certify test images above, or run `python -m cadis_core certify …`.")
else:
    keep_selection("cert_runs", list(runs), list(runs)[:6], joinable=list(session))  # runs certified since join
    chosen = st.multiselect("Runs (methods, σ)", list(runs), key="cert_runs")
    if chosen:
        picked = {k: runs[k] for k in chosen}
        envelope = st.checkbox("Best-σ envelope", value=False, key="cert_envelope")
        st.plotly_chart(certified_accuracy_figure(picked, envelope=envelope), key="cert_curve")
        table = summary_table(picked, DEFAULT_RADII, envelope=envelope)
        st.dataframe(table.style.format(precision=3).format("{:.0f}", subset=["images"], na_rep=""),
                     key="cert_summary")
        st.download_button("Download the ACR table (CSV)", table.to_csv(), "certified_accuracy.csv", "text/csv",
                           key="cert_summary_csv")
        radius = st.select_slider("Per class, at radius", options=list(DEFAULT_RADII), value=0.0, key="cert_class_r")
        per_class = per_class_accuracy(picked, radius, b.classes)
        st.plotly_chart(px.bar(per_class.reset_index().melt(id_vars="run", var_name="class",
                                                            value_name="certified accuracy"),
                               x="class", y="certified accuracy", color="run", barmode="group",
                               range_y=[0, 1]), key="cert_per_class")
        pairable = [k for k in chosen if k in shipped]  # result files know their dataset indices
        if len(pairable) >= 2:
            st.subheader("Paired comparison")
            st.caption("Image by image, on the images both result files hold: which run certifies an image at r "
                       "that the other does not, and the exact McNemar test of the difference. Runs made with "
                       "`python -m cadis_core results` share their noise draws, so only the classifiers differ.")
            left, right = st.columns(2)
            first = left.selectbox("Run A", pairable, index=0, key="cert_pair_a")
            second = right.selectbox("Run B", pairable, index=1, key="cert_pair_b")
            try:
                paired = paired_comparison(runs[first], runs[second], DEFAULT_RADII)
                st.dataframe(paired.rename(columns={"a_only": "only A", "b_only": "only B",
                                                    "difference": "A − B"}).style.format(
                    {"A − B": "{:+.3f}", "p_value": "{:.2g}"}), key="cert_paired")
            except CadisError as e:
                st.warning(str(e))
