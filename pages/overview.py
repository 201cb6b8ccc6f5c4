"""Overview: what denoised smoothing, hallucination and FT-CADIS are, one picture strip, the loaded models."""

import pandas as pd
import streamlit as st
import torch

from cadis_core.hallucination import score_draws
from cadis_core.ui.models import is_custom
from cadis_core.ui.pictures import to_uint8
from pages._common import bundle, errors_shown, route_through_app

route_through_app()  # first: a deep link must still go through app.py

st.title("cadis: provable robustness for off-the-shelf classifiers")
st.markdown(
    "**Denoised smoothing** (Carlini et al., 2023) makes any pretrained classifier *provably* robust: add "
    "Gaussian noise of level σ to the image, remove it again with one step of a diffusion model, classify, and "
    "take a majority vote over many noise draws. Randomized smoothing (Cohen et al., 2019) then certifies an ℓ2 "
    "radius within which no perturbation can change the vote.\n\n"
    "**Hallucination**: the denoiser does not return the original image but a plausible one, which at high "
    "noise can belong to another class. A classifier that trusts it is then confidently wrong.\n\n"
    "**FT-CADIS** (Jang et al., TMLR 2024) fine-tunes the classifier only on denoised draws it still gets right "
    "(non-hallucinated) and makes its prediction stable around them, which raises certified accuracy."
)

b = bundle()
p = b.preset
st.subheader("Clean → noisy → denoised → prediction")
c1, c2 = st.columns([1, 3])
sigma = c1.select_slider("Noise level σ", [0.12, 0.25, 0.5, 0.75, 1.0], value=p.sigma if p.sigma in
                         (0.12, 0.25, 0.5, 0.75, 1.0) else 0.25, key="ov_sigma")
st.session_state.setdefault("ov_index", 0)


def _another() -> None:  # a callback may set a widget's value before the widget is drawn
    st.session_state["ov_index"] = int(torch.randint(len(b.dataset), (1,)))


index = int(c1.number_input("Test image", 0, len(b.dataset) - 1, key="ov_index"))
c1.button("Another image", on_click=_another, key="ov_next")

with errors_shown():
    x, label = b.dataset[index]
    smooth = b.smoothing(sigma)
    [draws] = score_draws(smooth, x, label, 1, seed=index)
    pred, conf = int(draws.top1[0]), float(draws.confidence[0])
    kept = not bool(draws.hallucinated[0])
    cols = c2.columns(4)
    cols[0].image(to_uint8(x, 5), caption=f"clean #{index}: {b.classes[label]}")
    cols[1].image(to_uint8(draws.noisy[0], 5), caption=f"noisy, σ = {sigma}")
    cols[2].image(to_uint8(draws.denoised[0], 5), caption="denoised (one shot)")
    cols[3].metric("Prediction", b.classes[pred], f"{conf:.0%} confident · {'kept' if kept else 'hallucinated'}",
                   delta_color="green" if kept else "red", delta_arrow="off")

st.subheader("Loaded preset and models")
params = {name: sum(t.numel() for t in m.parameters()) for name, m in
          (("denoiser", b.denoiser), ("classifier", b.classifier))}
st.dataframe(pd.DataFrame({
    "": ["preset", "dataset", "denoiser", "classifier", "default σ", "N0 / N", "batch size"],
    "value": [p.name + (" (models replaced)" if is_custom(p) else ""), f"{p.dataset} ({len(b.dataset)} test images)",
              f"{p.denoiser} ({params['denoiser'] / 1e6:.2f} M parameters)",
              f"{p.classifier} ({params['classifier'] / 1e6:.2f} M parameters, input {b.classifier.input_size})",
              str(p.sigma), f"{p.n0} / {p.n}", str(p.batch_size)],
}), hide_index=True)
st.caption(p.description)
