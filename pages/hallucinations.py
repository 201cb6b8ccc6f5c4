"""Hallucinations: noisy → denoised draws sorted into kept and hallucinated, per class, and confidence as a detector."""

import time

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cadis_core.errors import CadisError
from cadis_core.hallucination import class_rates, detector_summary, draws_frame, roc_curve, score_images
from cadis_core.ui.models import finetuned_models, runs_dir
from cadis_core.ui.pictures import data_uri, strip, to_uint8
from cadis_core.ui.uploads import check_run_parameters
from pages._common import OFF_THE_SHELF, bundle, finetuned_classifier, image_picker, route_through_app

route_through_app()  # first: a deep link must still go through app.py

st.title("Why denoisers hallucinate")
st.caption("Each draw adds fresh Gaussian noise of level σ and denoises it. A draw is **hallucinated** when the "
           "classifier's prediction on it differs from the true class (for uploads without a class: from the "
           "majority vote). Same draws for every classifier.")

b = bundle()
images = image_picker(b, "hal")

c1, c2, c3, c4 = st.columns(4)
sigma = c1.number_input("Noise level σ", value=float(b.preset.sigma), step=0.05, format="%.3f", key="hal_sigma")
draws = int(c2.slider("Draws per image", 1, 32, 8, key="hal_draws"))
mode = c3.radio("Denoiser", ["one-shot", "multistep"], key="hal_mode", horizontal=True,
                help="one-shot: one denoising step (used for certification); multistep: reverse diffusion from σ.")
steps = int(c3.slider("Reverse steps", 2, 50, 10, key="hal_steps")) if mode == "multistep" else 10
seed = int(c4.number_input("Noise seed", 0, 10**6, 0, key="hal_seed"))

choices = finetuned_models()
if choices:
    own = [(path.stat().st_mtime, i) for i, path in enumerate(choices.values()) if runs_dir() in path.parents]
    tuned = st.selectbox("Fine-tuned classifier to compare", ["(none)", *choices], key="hal_tuned",
                         index=max(own)[1] + 1 if own else 0,  # the user's newest run, else none
                         help="runs/finetune/*/model and assets/models/finetuned/*")
else:
    tuned = "(none)"
    st.info("No fine-tuned classifier yet (`runs/finetune/*/model` or `assets/models/finetuned/*`): showing the "
            "off-the-shelf classifier only. Train one on the Fine-tuning page.")

if st.button("Denoise and classify", type="primary", disabled=images is None, key="hal_run"):
    try:
        classifiers = {OFF_THE_SHELF: b.classifier}
        if tuned != "(none)":
            classifiers[f"fine-tuned: {tuned}"] = finetuned_classifier(choices[tuned])
        start = time.time()
        with st.spinner(f"Denoising {len(images)} × {draws} draws …"):
            check_run_parameters(sigma=sigma, draws=draws)
            smooth = b.smoothing(sigma, mode, steps, batch_size=max(draws, 64))
            results = score_images(smooth, images, draws, classifiers, seed)
        st.session_state["hal_results"] = {"results": results, "sigma": sigma, "mode": mode,
                                           "seconds": time.time() - start}
    except CadisError as e:
        st.error(str(e))

state = st.session_state.get("hal_results")
if state:
    results = state["results"]
    frame = draws_frame(results, b.classes)
    names = list(results[0].scores)
    st.caption(f"σ = {state['sigma']}, {state['mode']}, {len(frame) // len(names)} draws in {state['seconds']:.1f} s")
    summary = detector_summary(frame)
    cols = st.columns(len(names))
    for col, name in zip(cols, names):
        col.metric(f"Hallucinated ({name})", f"{summary.loc[name, 'hallucination rate']:.0%}")

    st.subheader("Draws: noisy → denoised")
    for r in results:
        ref = b.classes[r.scores[names[0]]["reference"]]
        st.markdown(f"**{r.name}** · " + (f"true class: {ref}" if r.label is not None
                                          else f"no label; reference = majority vote: {ref}"))
        left, *right = st.columns([1, *([6] * len(names))])
        left.image(to_uint8(r.image, 3), caption="clean")
        for col, name in zip(right, names):
            s = r.scores[name]
            pics = [data_uri(strip([r.noisy[d], r.denoised[d]], 2)) for d in range(len(s["top1"]))]
            caps = [f"{b.classes[p]} {c:.0%}" for p, c in zip(s["top1"], s["confidence"])]
            kept = [d for d, h in enumerate(s["hallucinated"]) if not h]
            hall = [d for d, h in enumerate(s["hallucinated"]) if h]
            col.caption(f"{name}: kept {len(kept)}, hallucinated {len(hall)}")
            k_col, h_col = col.columns(2)
            k_col.markdown(":green[:material/check_circle: **kept**]")
            if kept:
                k_col.image([pics[d] for d in kept], caption=[caps[d] for d in kept], width=90)
            h_col.markdown(":red[:material/blur_on: **hallucinated**]")
            if hall:
                h_col.image([pics[d] for d in hall], caption=[caps[d] for d in hall], width=90)

    st.subheader("Hallucination rate per class")
    rates = class_rates(frame).reset_index().melt(id_vars="reference", var_name="classifier", value_name="rate")
    st.plotly_chart(px.bar(rates, x="reference", y="rate", color="classifier", barmode="group",
                           labels={"reference": "class", "rate": "hallucinated share"}, range_y=[0, 1]),
                    key="hal_rates")

    st.subheader("Is low confidence a hallucination detector?")
    h1, h2 = st.columns(2)
    hist = frame.assign(draw=np.where(frame["hallucinated"], "hallucinated", "kept"))
    h1.plotly_chart(px.histogram(hist, x="confidence", color="draw", facet_row="classifier" if len(names) > 1 else None,
                                 barmode="overlay", nbins=20, range_x=[0, 1], opacity=0.7,
                                 color_discrete_map={"kept": "#2ca02c", "hallucinated": "#d62728"}),
                    key="hal_hist")
    roc = go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance"))
    for name in names:
        g = frame[frame["classifier"] == name]
        fpr, tpr, _ = roc_curve(-g["confidence"].to_numpy(), g["hallucinated"].to_numpy())
        auc = summary.loc[name, "AUROC (1 − confidence)"]
        roc.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line_shape="hv",
                                 name=f"{name}: AUROC {'n/a' if np.isnan(auc) else f'{auc:.3f}'}"))
    roc.update_layout(xaxis_title="false-positive rate (kept flagged)", yaxis_title="true-positive rate "
                      "(hallucinations caught)", legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.98))
    h2.plotly_chart(roc, key="hal_roc")
    if summary["AUROC (1 − confidence)"].isna().any():
        st.caption("AUROC is n/a where every draw was kept (or every draw hallucinated): raise σ or add images.")
    st.dataframe(summary.style.format({c: "{:.0f}" if c == "draws" else "{:.3f}" for c in summary.columns}),
                 key="hal_summary")
    st.download_button("Download draws (CSV)", frame.to_csv(index=False), "hallucination_draws.csv", "text/csv",
                       key="hal_csv")
