"""Fine-tuning: configure FT-CADIS (or a baseline), start/stop it, and watch its curves live."""

import threading
import time
from typing import Any

import pandas as pd
import streamlit as st

from cadis_core.data import ImageDataset
from cadis_core.errors import CadisError
from cadis_core.finetune import FinetuneConfig
from cadis_core.objective import METHODS
from cadis_core.training_curves import comparison_figure, curves_figure, read_metrics
from cadis_core.ui.jobs import FinetuneJob
from cadis_core.ui.models import finetuned_models, runs_dir
from pages._common import bundle, keep_selection, route_through_app, train_split

route_through_app()  # first: a deep link must still go through app.py

DEMO_DATA = "second half of the test split (demo: then certify only the first half)"


@st.cache_resource
def _jobs() -> dict[str, Any]:
    # Process-wide: one run at a time on a small machine, visible (and stoppable) from every session.
    return {"lock": threading.Lock()}


def _training_data(b, source: str) -> tuple[ImageDataset, ImageDataset]:
    """The training split, or (where only the test split ships) its second half, keeping the first for tests."""
    test = b.dataset
    if source != DEMO_DATA:
        return train_split(b.preset.dataset), test
    half = len(test) // 2
    return (ImageDataset(test.images[half:], test.labels[half:], test.classes, f"{test.name}[{half}:]"),
            ImageDataset(test.images[:half], test.labels[:half], test.classes, f"{test.name}[:{half}]"))


st.title("FT-CADIS fine-tuning")
st.caption("FT-CADIS trains the classifier on denoised draws it still classifies correctly (L_SCE) and makes it "
           "consistent within an ε-ball around them (λ·L_MAdv, only for images whose draws are all correct). "
           "The denoiser stays frozen.")
b = bundle()
jobs = _jobs()
job: FinetuneJob | None = jobs.get("current")
busy = job is not None and job.running

try:
    train_split(b.preset.dataset)
    sources = ["training split", DEMO_DATA]
except CadisError as e:
    st.warning(f"{e} Using the demo split instead.")
    sources = [DEMO_DATA]

with st.form("ft_form"):
    c1, c2, c3, c4 = st.columns(4)
    methods = [m for m in METHODS if m != "none"]
    method = c1.selectbox("Method", methods, index=methods.index("ft-cadis"), key="ft_method",
                          help="ft-cadis: L_SCE + λ·L_MAdv; denoised-ce: cross-entropy on every draw (baseline); "
                               "sce-only / ce-madv: ablations.")
    sigma = c2.number_input("σ", value=float(b.preset.sigma), step=0.05, format="%.3f", key="ft_sigma")
    num_draws = int(c3.number_input("M (draws per image)", 1, 16, 4, key="ft_m"))
    lam = c4.number_input("λ (weight of L_MAdv)", value=4.0, step=0.5, key="ft_lam")
    eps = c1.number_input("ε (ℓ2 radius, denoised space)", value=0.125, step=0.025, format="%.3f", key="ft_eps")
    adv_steps = int(c2.number_input("T (attack steps)", 1, 10, 4, key="ft_t"))
    lora = c3.radio("Trained weights", ["LoRA", "full"], horizontal=True, key="ft_lora") == "LoRA"
    lora_r = int(c4.number_input("LoRA rank", 1, 64, 4, key="ft_rank"))
    steps = int(c1.number_input("Steps", 1, 100_000, 100, key="ft_steps"))
    batch = int(c2.number_input("Batch size", 1, 512, 16, key="ft_batch"))
    subset = int(c3.number_input("Subset (images, 0 = all)", 0, 100_000, 1000, key="ft_subset"))
    lr = c4.number_input("Learning rate", value=1e-3, format="%.0e", step=1e-4, key="ft_lr",
                         help="1e-3 suits LoRA; use about 1e-4 for full fine-tuning.")
    eval_every = int(c1.number_input("Evaluate every (steps, 0 = at the end)", 0, 10_000, 25, key="ft_eval"))
    eval_size = int(c2.number_input("Test images per evaluation", 0, 5000, 200, key="ft_eval_size"))
    seed = int(c3.number_input("Seed", 0, 10**6, 0, key="ft_seed"))
    source = c4.selectbox("Training data", sources, key="ft_data")
    start = st.form_submit_button("Start", type="primary", disabled=busy)

if start and not busy:
    try:
        out = runs_dir() / "finetune" / f"{b.preset.name}-{method}-s{sigma:g}-{time.strftime('%Y%m%d-%H%M%S')}"
        config = FinetuneConfig(out=str(out), method=method, sigma=sigma, num_draws=num_draws, lam=lam, eps=eps,
                                adv_steps=adv_steps, lora=lora, lora_r=lora_r, lora_alpha=float(lora_r), steps=steps,
                                batch_size=batch, lr=lr, subset=subset or None, seed=seed,
                                save_as="adapter" if lora else "merged", eval_every=eval_every, eval_size=eval_size)
        train, test = _training_data(b, source)
        with jobs["lock"]:  # two sessions pressing Start at once still start one run
            if jobs.get("current") is not None and jobs["current"].running:
                raise CadisError("Another session started a fine-tuning run a moment ago; watch it below.")
            jobs["current"] = job = FinetuneJob(config, b.denoiser, b.classifier, train, test).start()
        busy = True
    except CadisError as e:
        st.error(str(e))

if st.button("Stop", disabled=not busy, key="ft_stop", help="Stops after the current step and keeps a checkpoint."):
    job.stop()
    st.toast("Stopping after the current step …")


@st.fragment(run_every=1.0 if busy else None)
def live(polling: bool) -> None:
    # Reruns by itself every second while a run is going; the rest of the page stays as it is.
    current: FinetuneJob | None = _jobs().get("current")
    if current is None:
        st.info("No fine-tuning run yet: set it up above and press Start.")
        return
    frame = current.frame()
    last = frame.iloc[-1] if not frame.empty else None
    text = f"step {0 if last is None else int(last['step'])} / {current.config.steps}"
    if last is not None and "images_per_s" in last:
        text += f" · {last['images_per_s']:.1f} images/s · {current.elapsed:.0f} s"
    st.progress(current.progress, text=f"{current.status}: {text}")
    if last is not None:
        m = st.columns(5)
        for col, key in zip(m, ["loss_sce", "loss_madv", "selection_rate", "mask_rate", "acc_denoised"]):
            col.metric(key, f"{last[key]:.3f}" if key in last else "–")
        st.plotly_chart(curves_figure(frame, pd.DataFrame(list(current.evals))), key="ft_curves")
    if current.status == "done":
        st.success(f"Saved to {current.path}. Pick it as “{current.path.parent.name}” on the Hallucinations page.")
    elif current.status == "stopped":
        st.warning(f"Stopped; checkpoint in {current.path}. Start the same settings again to train a new run.")
    elif current.status == "failed":
        st.error(current.error)
    if polling and not current.running:
        st.rerun()  # the whole page, so the buttons and the polling interval follow the new state


live(busy)


st.header("Finished runs")
st.caption("The shipped fine-tuned models (`python -m cadis_core results`) and your runs under runs/finetune: "
           "test accuracy on denoised images, L_MAdv and the share of images every draw of which is kept.")
with_metrics = {}
for name, path in finetuned_models().items():
    try:
        read_metrics(path)
        with_metrics[name] = path
    except CadisError:
        continue  # a model without its training log has no curves to show
if not with_metrics:
    st.info("No finished run with a metrics log yet.")
else:
    keep_selection("ft_past", list(with_metrics), list(with_metrics)[:4])  # a run that just finished joins
    picked = st.multiselect("Runs", list(with_metrics), key="ft_past")
    if picked:
        st.plotly_chart(comparison_figure({k: with_metrics[k] for k in picked}), key="ft_compare")
        one = st.selectbox("All curves of one run", picked, key="ft_past_one")
        steps, evals = read_metrics(with_metrics[one])
        st.plotly_chart(curves_figure(steps, evals, smooth=20), key="ft_past_curves")
