"""Hallucinations: noisy → denoised draws sorted into kept and hallucinated, per class, and confidence as a detector.

The classroom example (σ = 1, shirts, multistep beside one-shot) is one click away. The title and the explanation
are drawn first; the heavy modules are cached after the first visit.
"""

import time

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from apps.ui.hosting import check_limits, hide_paths, is_own, limits
from apps.ui.models import OFF_THE_SHELF
from apps.ui.pictures import data_uri, strip, to_uint8
from apps.ui.story import detector_line
from apps.ui.style import DENOISER_DASH, VERDICT_COLOURS, colour_map, colour_of
from apps.ui.uploads import check_run_parameters
from apps.views._common import (
    bundle,
    finetuned_classifier,
    hosted_note,
    image_picker,
    visible_models,
    visitor,
)
from cadis.analysis.hallucination import detector_summary, draws_frame, roc_curve, score_images
from cadis.errors import CadisError

CLASSROOM = {"hal_how": "By class", "hal_class_name": "Shirt", "hal_count": 4, "hal_pick_seed": 0, "hal_draws": 8,
             "hal_sigma": 1.0, "hal_mode": "both", "hal_steps": 10, "hal_seed": 0}
DENOISERS = {"one-shot": ["one-shot"], "multistep": ["multistep"], "both": ["multistep", "one-shot"]}

st.title("Why denoisers hallucinate")
st.markdown(
    "A **hallucination** is a denoised draw that no longer shows the image's class: asked to remove strong noise, "
    "the diffusion model returns a *plausible* image, sometimes of another class (a shirt becomes a coat or a bag), "
    "and the classifier then names that class. **Does low confidence give it away? Only partly.** Over all classes, "
    "hallucinated draws tend to get lower confidence than kept ones. On shirts, one of the classes that hallucinate "
    "most, they do not: the classifier is often *more* confident on the coat the denoiser invented than on the real "
    "shirt. So FT-CADIS does not trust confidence: it trains only on draws whose prediction is right.")
with st.expander("How well does low confidence flag them? (AUROC)"):
    # Measured with `python benchmarks/hallucination_auroc.py` (and `--classes Shirt --images-per-class 64`) on the
    # embedded models; docs/app.md gives the table. The benchmark files' line is computed (apps.ui.story).
    st.markdown(
        "The **AUROC** of low confidence as a detector is the chance that a random hallucinated draw gets lower "
        "confidence than a random kept one: 0.5 is a coin flip, 1 a perfect detector, below 0.5 worse than a coin "
        "flip. Measured on the embedded models at σ = 1 with `benchmarks/hallucination_auroc.py`: 0.73 over all "
        "classes (multistep; 0.78 one-shot; 1280 draws each: 16 test images per class × 8 draws); on shirts 0.44 "
        "(512 draws: 64 shirts × 8). " + (detector_line(1.0) or ""))


def _classroom() -> None:  # a callback may set widgets' values before they are drawn
    st.session_state.update(CLASSROOM)
    st.session_state["hal_autorun"] = True


st.button("Classroom example: shirts at σ = 1, multistep beside one-shot", on_click=_classroom, type="primary",
          icon=":material/school:", key="hal_classroom",
          help="4 shirts × 8 draws at σ = 1, denoised by multistep reverse diffusion and by one step, side by side.")




b = bundle()
hosted_note()
if st.session_state.get("hal_class_name") in b.classes:  # the classroom example names its class
    st.session_state["hal_class"] = b.classes.index(st.session_state.pop("hal_class_name"))
st.session_state.pop("hal_class_name", None)
images = image_picker(b, "hal")

c1, c2, c3, c4 = st.columns(4)
sigma = c1.number_input("Noise level σ", value=float(b.preset.sigma), step=0.05, format="%.3f", key="hal_sigma")
draws = int(c2.slider("Draws per image", 1, limits().draws, 8, key="hal_draws"))
mode = c3.radio("Denoiser", list(DENOISERS), key="hal_mode", horizontal=True,
                help="one-shot: one denoising step (used for certification); multistep: reverse diffusion from σ; "
                     "both: multistep beside one-shot, on the same noise.")
steps = int(c3.slider("Reverse steps", 2, 50, 10, key="hal_steps")) if mode != "one-shot" else 10
seed = int(c4.number_input("Noise seed", 0, 10**6, 0, key="hal_seed"))

choices = visible_models()
if choices:
    own = [(path.stat().st_mtime, i) for i, path in enumerate(choices.values()) if is_own(path, visitor())]
    tuned = st.selectbox("Fine-tuned classifier to compare", ["(none)", *choices], key="hal_tuned",
                         index=max(own)[1] + 1 if own else 0,  # the visitor's newest run, else none
                         help="Your runs (runs/finetune/*/model) and the shipped ones (src/cadis/assets/finetuned/*)")
else:
    tuned = "(none)"
    st.info("No fine-tuned classifier yet (`runs/finetune/*/model` or `src/cadis/assets/finetuned/*`): showing the "
            "off-the-shelf classifier only. Train one on the Fine-tuning page.")

clicked = st.button("Denoise and classify", type="primary", disabled=images is None, key="hal_run")
if (clicked or st.session_state.pop("hal_autorun", False)) and images is not None:
    try:
        check_run_parameters(sigma=sigma, draws=draws)
        check_limits(images=len(images), draws=draws)
        classifiers = {OFF_THE_SHELF: b.classifier}
        if tuned != "(none)":
            classifiers[f"fine-tuned: {tuned}"] = finetuned_classifier(choices[tuned])
        modes = DENOISERS[mode]
        bar = st.progress(0.0, text=f"Denoising {len(images)} × {draws} draws …")
        waiting = st.empty()
        start, runs = time.time(), {}
        with b.lock.turn(on_position=lambda ahead: waiting.info(
                f":material/hourglass_top: The models are busy: {ahead} job(s) ahead of yours; it starts when they "
                "finish.")):
            waiting.empty()
            for k, m in enumerate(modes):
                def progress(done: int, total: int, k: int = k, m: str = m) -> None:
                    bar.progress((k + done / total) / len(modes),
                                 text=f"{m}: image {done} of {total} ({draws} draws each)")

                smooth = b.smoothing(sigma, m, steps, batch_size=max(draws, 64))
                runs[m] = score_images(smooth, images, draws, classifiers, seed, progress=progress)
        bar.empty()
        st.session_state["hal_results"] = {"results": runs[modes[0]], "runs": runs, "sigma": sigma, "mode": mode,
                                           "steps": steps, "seconds": time.time() - start}
    except CadisError as e:
        st.error(hide_paths(str(e)))


def _frame(runs: dict) -> pd.DataFrame:
    """All draws of every denoiser; `series` names the classifier, and the denoiser when several ran."""
    frames = [draws_frame(results, b.classes).assign(denoiser=m) for m, results in runs.items()]
    frame = pd.concat(frames, ignore_index=True)
    several = len(runs) > 1
    return frame.assign(series=[f"{c} · {d}" if several else c for c, d in zip(frame["classifier"],
                                                                              frame["denoiser"])])


state = st.session_state.get("hal_results")
if state:
    runs = state.get("runs") or {state["mode"]: state["results"]}
    frame = _frame(runs)
    names = list(next(iter(runs.values()))[0].scores)
    series = list(dict.fromkeys(frame["series"]))
    per_series = frame.assign(classifier=frame["series"])  # the analysis groups by its `classifier` column
    how = " and ".join(f"{m} ({state.get('steps', 10)} reverse steps)" if m == "multistep" else m for m in runs)
    st.caption(f"σ = {state['sigma']}, {how}: {len(frame) // len(series)} draws per row in {state['seconds']:.1f} s")
    summary = detector_summary(per_series)
    cols = st.columns(len(series))
    for col, name in zip(cols, series):
        col.metric(f"Hallucinated ({name})", f"{summary.loc[name, 'hallucination rate']:.0%}")

    st.subheader("Draws: noisy → denoised")
    for k, r in enumerate(next(iter(runs.values()))):
        ref = b.classes[r.scores[names[0]]["reference"]]
        st.markdown(f"**{r.name}** · " + (f"true class: {ref}" if r.label is not None
                                          else f"no label; reference = majority vote: {ref}"))
        left, *right = st.columns([1, *([6] * len(series))])
        left.image(to_uint8(r.image, 3), caption="clean")
        cells = [(m, name) for m in runs for name in names]
        for col, (m, name) in zip(right, cells):
            rm = runs[m][k]
            s = rm.scores[name]
            pics = [data_uri(strip([rm.noisy[d], rm.denoised[d]], 2)) for d in range(len(s["top1"]))]
            caps = [f"{b.classes[p]} {c:.0%}" for p, c in zip(s["top1"], s["confidence"])]
            kept = [d for d, h in enumerate(s["hallucinated"]) if not h]
            hall = [d for d, h in enumerate(s["hallucinated"]) if h]
            col.caption(f"{name}{f' · {m}' if len(runs) > 1 else ''}: kept {len(kept)}, hallucinated {len(hall)}")
            k_col, h_col = col.columns(2)
            k_col.markdown(":green[:material/check_circle: **kept**]")
            if kept:
                k_col.image([pics[d] for d in kept], caption=[caps[d] for d in kept], width=90)
            h_col.markdown(":red[:material/blur_on: **hallucinated**]")
            if hall:
                h_col.image([pics[d] for d in hall], caption=[caps[d] for d in hall], width=90)

    st.subheader("Hallucination rate per class")
    rates = frame.pivot_table(index=["reference", "classifier", "denoiser"], values="hallucinated",
                              aggfunc="mean").reset_index()
    several = len(runs) > 1
    st.plotly_chart(px.bar(rates, x="reference", y="hallucinated", color="classifier", barmode="group",
                           pattern_shape="denoiser" if several else None, range_y=[0, 1],
                           color_discrete_map=colour_map(names),
                           labels={"reference": "class", "hallucinated": "hallucinated share"}), key="hal_rates")

    st.subheader("Is low confidence a hallucination detector?")
    h1, h2 = st.columns(2)
    hist = per_series.assign(draw=np.where(per_series["hallucinated"], "hallucinated", "kept"))
    h1.plotly_chart(px.histogram(hist, x="confidence", color="draw", facet_row="classifier" if len(series) > 1
                                 else None, barmode="overlay", nbins=20, range_x=[0, 1], opacity=0.7,
                                 color_discrete_map=VERDICT_COLOURS,
                                 height=max(350, 220 * len(series))).for_each_annotation(
                                     lambda a: a.update(text=a.text.split("=", 1)[-1])),
                    key="hal_hist")
    roc = go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance"))
    for name in series:
        g = per_series[per_series["classifier"] == name]
        fpr, tpr, _ = roc_curve(-g["confidence"].to_numpy(), g["hallucinated"].to_numpy())
        auc = summary.loc[name, "AUROC (1 − confidence)"]
        roc.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line_shape="hv", name=f"{name}: AUROC "
                                 f"{'n/a' if np.isnan(auc) else f'{auc:.3f}'}",
                                 line=dict(color=colour_of(g["classifier"].iloc[0].split(" · ")[0]),
                                           dash=DENOISER_DASH[g["denoiser"].iloc[0]])))
    roc.update_layout(xaxis_title="false-positive rate (kept flagged)", yaxis_title="true-positive rate "
                      "(hallucinations caught)", legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.98))
    h2.plotly_chart(roc, key="hal_roc")
    aucs = summary["AUROC (1 − confidence)"]
    if aucs.notna().any():
        st.caption(f"Here: AUROC {', '.join(f'{v:.2f} ({k})' for k, v in aucs.dropna().items())} on "
                   f"{len(frame) // len(series)} draws each; 0.5 is chance, 1 a perfect detector.")
    if aucs.isna().any():
        st.caption("AUROC is n/a where every draw was kept (or every draw hallucinated): raise σ or add images.")
    st.dataframe(summary.style.format({c: "{:.0f}" if c == "draws" else "{:.3f}" for c in summary.columns}),
                 key="hal_summary", column_config={"_index": st.column_config.TextColumn("classifier",
                                                                                         width="large")})
    st.download_button("Download draws (CSV)", frame.drop(columns="series").to_csv(index=False),
                       "hallucination_draws.csv", "text/csv", key="hal_csv")
