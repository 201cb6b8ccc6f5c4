"""Overview: the story in five steps, each linking to its page, then one picture strip and the loaded models.

The title and the story come first, so a visitor reads while the strip renders.
"""

import pandas as pd
import streamlit as st
import torch

from apps.ui.hosting import hide_paths, shown_spec
from apps.ui.models import is_custom
from apps.ui.pictures import to_uint8
from apps.views._common import bundle, errors_shown, visitor
from cadis.analysis.hallucination import score_draws

st.title("cadis: provable robustness for off-the-shelf classifiers")
st.markdown("A classifier trained on clean images is easy to fool. **Randomized smoothing** (Cohen et al., 2019) makes "
            "it *provably* robust: it votes over many noisy copies of the image, and the vote cannot change within a "
            "certified ℓ2 radius. Five steps, one page each:")

STORY = [
    ("apps/views/models.py", ":material/extension:", "1 · An off-the-shelf classifier",
     "A small ViT trained on clean Fashion-MNIST (or any timm / transformers model). Noise breaks it."),
    ("apps/views/overview.py", ":material/blur_on:", "2 · Denoised smoothing",
     "Add Gaussian noise of level σ, remove it with one step of a diffusion model, classify, vote over many "
     "draws (Carlini et al., 2023). See the strip below."),
    ("apps/views/hallucinations.py", ":material/visibility:", "3 · Hallucinations",
     "At high noise the denoiser returns a plausible image of another class: a shirt becomes a bag. Try the "
     "classroom example."),
    ("apps/views/finetuning.py", ":material/tune:", "4 · FT-CADIS",
     "Fine-tune the classifier on the denoised draws it still gets right, and make it consistent around them "
     "(Jang et al., 2024). The quick demo takes a few minutes."),
    ("apps/views/certification.py", ":material/verified:", "5 · Certified radii",
     "Certify your model image by image and compare it with the off-the-shelf baseline."),
]
for page, icon, label, text in STORY:
    left, right = st.columns([1, 3], vertical_alignment="center")
    left.page_link(page, label=label, icon=icon)
    right.markdown(text)

# Below the story: the heavy part (torch, the models), loaded while the visitor reads.


st.subheader("Clean → noisy → denoised → prediction")
b = bundle()
p = b.preset
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
              f"{shown_spec(p.denoiser, visitor())} ({params['denoiser'] / 1e6:.2f} M parameters)",
              f"{shown_spec(p.classifier, visitor())} ({params['classifier'] / 1e6:.2f} M parameters, input "
              f"{b.classifier.input_size})",
              str(p.sigma), f"{p.n0} / {p.n}", str(p.batch_size)],
}), hide_index=True)
st.caption(hide_paths(p.description))  # hosted: no server path
