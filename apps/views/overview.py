"""Overview: what each step does and what the benchmark measured, each step linking to the page that shows it;
the formulas behind an expander; then one picture strip and the loaded models.

Every number in the story is computed from the shipped result files (apps.ui.story), never typed. The title and the
story come first, so a visitor reads while the strip renders.
"""

import pandas as pd
import streamlit as st
import torch

from apps.ui.hosting import hide_paths, shown_spec
from apps.ui.models import is_custom
from apps.ui.pictures import to_uint8
from apps.ui.story import STORY_SIGMA, Story, details, load_story, sentences
from apps.views._common import bundle, errors_shown, visitor
from cadis.analysis.hallucination import score_draws
from cadis.errors import CadisError

st.title("cadis: provable robustness for off-the-shelf classifiers")
st.markdown("A classifier trained on clean images is easy to fool. **Randomized smoothing** (Cohen et al., 2019) makes "
            "it *provably* robust: it votes over many noisy copies of the image, and no change of the image within a "
            "certified radius can change the vote. Five steps, each with the page that shows it, and what this "
            "project's benchmark measured:")


@st.cache_data(show_spinner=False)
def _story(sigma: float) -> Story | None:
    try:
        return load_story(sigma)
    except (CadisError, OSError, KeyError, IndexError, ValueError):  # no (or partial) result files: words only
        return None


STORY = [
    ("apps/views/payoff.py", ":material/extension:", "1 · An off-the-shelf classifier",
     "A small ViT trained on clean Fashion-MNIST (or any timm / transformers model).", "noise"),
    ("apps/views/certification.py", ":material/blur_on:", "2 · Denoised smoothing",
     "Add Gaussian noise of level σ, remove it with one step of a diffusion model, classify, and let many such "
     "draws vote (Carlini et al., 2023); the strip below shows one draw.", "denoise"),
    ("apps/views/hallucinations.py", ":material/visibility:", "3 · Hallucinations",
     "At high noise the denoiser may return a plausible image of another class: a shirt becomes a coat. Try the "
     "classroom example.", "hallucinate"),
    ("apps/views/finetuning.py", ":material/tune:", "4 · FT-CADIS",
     "Fine-tune the classifier on the denoised draws, and make its votes on them consistent (Jang et al., 2024). "
     "The quick demo takes a few minutes.", "finetune"),
    ("apps/views/payoff.py", ":material/trending_up:", "5 · The payoff",
     "Certified radii of both classifiers on the same draws, image by image; certify your own model on the "
     "Certification page.", "payoff"),
]
story = _story(STORY_SIGMA)
said = sentences(story) if story else {}
for page, icon, label, what, key in STORY:
    left, right = st.columns([1, 3], vertical_alignment="top")
    left.page_link(page, label=label, icon=icon)
    right.markdown(what + (f"\n\n{said[key]}" if key in said else ""))
if story:
    with st.expander("How these numbers are computed: formulas and sources"):
        st.markdown(details(story))
else:
    st.caption("The benchmark's result files (experiments/results) are not here, so the steps go without numbers.")

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
    with torch.inference_mode():  # the classifier alone on the same noisy draw: what noise does without the denoiser
        alone = int(b.classifier(draws.noisy[:1]).argmax(1)[0])
    pred, conf = int(draws.top1[0]), float(draws.confidence[0])
    kept = not bool(draws.hallucinated[0])
    cols = c2.columns(4)
    # a fixed width: an image otherwise widens to its caption, and the three would differ in size
    cols[0].image(to_uint8(x, 5), caption=f"clean #{index}: {b.classes[label]}", width=140)
    cols[1].image(to_uint8(draws.noisy[0], 5), caption=f"noisy, σ = {sigma} · the classifier alone: {b.classes[alone]}",
                  width=140)
    cols[2].image(to_uint8(draws.denoised[0], 5), caption="denoised (one shot)", width=140)
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
