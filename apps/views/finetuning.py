"""Fine-tuning: configure FT-CADIS (or a baseline), start/stop it, and watch its curves live.

A quick demo setting finishes in about 5 minutes; the time is estimated before Start and, from the live pace, during
the run. Runs take turns in a bounded queue (one at a time on few cores); hosted, each visitor (a token in the URL,
so a reload finds the run again) sees and stops only their own, and has at most one queued or running.
"""

import time

import pandas as pd
import streamlit as st

from apps.ui.hosting import LOCAL_LIMITS, UNITS, cap_note, check_limits, finetune_root, hide_paths, hosted, limits
from apps.ui.jobs import (
    SETTINGS,
    FinetuneJob,
    JobQueue,
    duration,
    estimate_seconds,
    measure_speed,
    shared_queue,
    warmup_for,
)
from apps.ui.setting_inputs import widget_spec
from apps.ui.style import paint
from apps.ui.visitor import recognise
from apps.views._common import (
    bundle,
    certify_this,
    hosted_note,
    keep_selection,
    train_split,
    visible_models,
    visitor,
)
from cadis.analysis.training_curves import comparison_figure, curves_figure, metric_label, read_metrics
from cadis.data import ImageDataset
from cadis.errors import CadisError
from cadis.training.finetune import FinetuneConfig

st.title("FT-CADIS fine-tuning")
st.markdown("FT-CADIS fine-tunes the classifier on denoised noisy copies of training images. It learns only from "
            "the copies it still gets right (the hallucinated ones are left out), and it makes its answers on "
            "those copies agree with each other, even when a copy is nudged a little, for images whose copies "
            "are all right. A more consistent vote certifies larger radii. The denoiser stays as it is.")
with st.expander("The objective, in the paper's symbols"):
    st.markdown("Loss = L_SCE + λ·L_MAdv (Jang et al., 2024). L_SCE: cross-entropy on the denoised draws the "
                "classifier classifies correctly. L_MAdv: the consistency of its predictions within an ε-ball "
                "(ℓ2, in denoised space) around those draws, found by T steps of an attack, only for images whose "
                "M draws are all correct. `denoised-ce` is the baseline: cross-entropy on every draw.")


if hosted():  # the visitor's token in the URL: a reload finds their run again
    recognise(st.query_params, st.session_state)

DEMO_DATA = "second half of the test split (demo: then certify only the first half)"
FIELDS = {"method": "ft_method", "sigma": "ft_sigma", "num_draws": "ft_m", "lam": "ft_lam", "eps": "ft_eps",
          "adv_steps": "ft_t", "lora": "ft_lora", "lora_r": "ft_rank", "steps": "ft_steps", "batch_size": "ft_batch",
          "subset": "ft_subset", "lr": "ft_lr", "eval_every": "ft_eval", "eval_size": "ft_eval_size",
          "seed": "ft_seed"}
LIVE_METRICS = ["loss_sce", "loss_madv", "selection_rate", "mask_rate", "acc_denoised"]
METRIC_HELP = {"loss_sce": "Cross-entropy on the denoised draws the classifier still gets right (L_SCE).",
               "loss_madv": "λ-weighted consistency around the draws of images whose draws are all kept (L_MAdv).",
               "selection_rate": "Share of this batch's denoised draws classified correctly (kept).",
               "mask_rate": "Share of this batch's images every draw of which is kept: L_MAdv applies to them.",
               "acc_denoised": "Accuracy on this batch's denoised draws (the same count as the kept share)."}


def _queue() -> JobQueue:
    # Process-wide, outside Streamlit's caches (which a visitor may clear): one run at a time, the others wait.
    return shared_queue()


@st.cache_resource(show_spinner="Timing the models on this machine …", max_entries=3, ttl=600)
def _speed(models: tuple[str, str, str], _b):
    # Not under the models' lock (a page must not wait for others' jobs): a busy machine times slower and the
    # estimate errs long, so it is timed again after 10 minutes rather than kept from one busy moment for good.
    return measure_speed(_b.denoiser, _b.classifier, _b.input_shape)


def _training_data(b, source: str) -> tuple[ImageDataset, ImageDataset]:
    """The training split, or (where only the test split ships) its second half, keeping the first for tests."""
    test = b.dataset
    if source != DEMO_DATA:
        return train_split(b.preset.dataset), test
    half = len(test) // 2
    return (ImageDataset(test.images[half:], test.labels[half:], test.classes, f"{test.name}[{half}:]"),
            ImageDataset(test.images[:half], test.labels[:half], test.classes, f"{test.name}[:{half}]"))


CAPPED = {"steps": "steps", "batch_size": "batch", "subset": "subset", "eval_size": "eval_size"}
# The app's own caps on what multiplies each step's work (the declarations set no upper bound): M draws and T attack
# steps, on this machine's few cores. Every other bound of a setting's widget is its declaration's, or the local
# app's. The hosted caps are not the widgets' max: a browser silently drops a value above it, where the page should
# refuse it in words (check_limits below).
COST_CAPS = {"num_draws": 16, "adv_steps": 10}
SHIPPED_FT = "ft-cadis.authors-lora-s0.5"  # the shipped FT-CADIS run at the quick demo's σ


def _apply(setting: str) -> None:
    """Fill the settings' widgets with a named setting (a callback: before the widgets are drawn), within the
    hosted demo's caps; what a cap lowered is said on the page (ft_lowered), never changed silently."""
    lim, lowered = limits(), []
    for name, value in SETTINGS.get(setting, {}).items():
        if name in CAPPED:
            cap = getattr(lim, CAPPED[name])
            if value > cap or (name == "subset" and value == 0 and hosted()):
                lowered.append(f"{'all' if value == 0 else value} → {cap} {UNITS[CAPPED[name]]}")
                value = cap
        st.session_state[FIELDS[name]] = {True: "LoRA", False: "full"}.get(value, value) if name == "lora" else value
    st.session_state["ft_lowered"] = lowered


def _edited() -> None:
    """A setting's value changed by hand: the settings are now the visitor's own."""
    st.session_state["ft_setting"] = "custom"
    st.session_state["ft_lowered"] = []


def _mine(queue: JobQueue) -> FinetuneJob | None:
    """The job this session follows: hosted, the visitor's own newest; locally, the one running, else the newest."""
    return queue.latest(visitor()) if hosted() else queue.running() or queue.latest()


b = bundle()
hosted_note()
queue = _queue()
lim = limits()
if "ft_setting" not in st.session_state:  # first visit: the quick demo
    st.session_state["ft_setting"] = "quick demo"
    _apply("quick demo")

try:
    train_split(b.preset.dataset)
    sources = ["training split", DEMO_DATA]
except CadisError as e:
    st.warning(hide_paths(f"{e} Using the demo split instead."))
    sources = [DEMO_DATA]

setting = st.radio("Setting", [*SETTINGS, "custom"], horizontal=True, key="ft_setting",
                   on_change=lambda: _apply(st.session_state["ft_setting"]),
                   help="quick demo: about 5 minutes on 2 idle CPU cores, enough for the curves to move; shipped "
                        "runs' recipe: what made src/cadis/assets/finetuned (over an hour here); custom: your own.")
if st.session_state.get("ft_lowered"):
    st.info("This setting asks for more than this shared server allows, so these were lowered to its caps: "
            + "; ".join(st.session_state["ft_lowered"]) + ".")
if SHIPPED_FT in visible_models():
    st.caption(f":material/bolt: No time to wait? **{SHIPPED_FT}** is FT-CADIS already trained (σ = 0.5, LoRA, the "
               "authors' recipe): certify it at once, or pick it on the Hallucinations page.")
    if st.button("Certify the shipped FT-CADIS model", icon=":material/verified:", key="ft_shipped"):
        certify_this(SHIPPED_FT)
caps = {name: getattr(LOCAL_LIMITS, cap) for name, cap in CAPPED.items()} | COST_CAPS


def _cap(column, field: str, more: str = "") -> None:
    """Hosted, the cap of an input in words beneath it, before anything is started."""
    if hosted():
        column.caption(cap_note(field) + more)


def _spec(name: str, label: str, **more) -> dict:
    """The widget's keywords from the setting's one declaration in FinetuneConfig (help, bounds, kind), within
    this server's caps."""
    return widget_spec(FinetuneConfig, name, label, caps=caps, **more)


c1, c2, c3, c4 = st.columns(4)
spec = _spec("method", "Method", note="ft-cadis: L_SCE + λ·L_MAdv; denoised-ce: cross-entropy on every draw "
             "(baseline); sce-only / ce-madv: ablations.")
spec["options"] = [m for m in spec["options"] if m != "none"]  # trains nothing
method = c1.selectbox(**spec, key="ft_method", on_change=_edited)
sigma = c2.number_input(**_spec("sigma", "σ"), step=0.05, format="%.3f", key="ft_sigma", on_change=_edited)
num_draws = int(c3.number_input(**_spec("num_draws", "M (draws per image)"), key="ft_m", on_change=_edited))
lam = c4.number_input(**_spec("lam", "λ (weight of L_MAdv)"), step=0.5, key="ft_lam", on_change=_edited)
eps = c1.number_input(**_spec("eps", "ε (ℓ2 radius, denoised space)"), step=0.025, format="%.3f", key="ft_eps",
                      on_change=_edited)
adv_steps = int(c2.number_input(**_spec("adv_steps", "T (attack steps)"), key="ft_t", on_change=_edited))
lora = c3.radio("Trained weights", ["LoRA", "full"], horizontal=True, key="ft_lora", on_change=_edited,
                help="full: " + widget_spec(FinetuneConfig, "lora")["help"]) == "LoRA"
lora_r = int(c4.number_input(**_spec("lora_r", "LoRA rank"), key="ft_rank", on_change=_edited))
steps = int(c1.number_input(**_spec("steps", "Steps"), key="ft_steps", on_change=_edited))
_cap(c1, "steps")
batch = int(c2.number_input(**_spec("batch_size", "Batch size"), key="ft_batch", on_change=_edited))
_cap(c2, "batch")
subset = int(c3.number_input(**_spec("subset", "Subset (images, 0 = all)", none_as=0), key="ft_subset",
                             on_change=_edited))
_cap(c3, "subset", " 0 (all) is not allowed here.")
lr = c4.number_input(**_spec("lr", "Learning rate"), format="%.0e", step=1e-4, key="ft_lr", on_change=_edited)
eval_every = int(c1.number_input(**_spec("eval_every", "Evaluate every (steps, 0 = at the end)"), key="ft_eval",
                                 on_change=_edited))
eval_size = int(c2.number_input(**_spec("eval_size", "Test images per evaluation"), key="ft_eval_size",
                                on_change=_edited))
_cap(c2, "eval_size")
seed = int(c3.number_input(**_spec("seed", "Seed"), key="ft_seed", on_change=_edited))
source = c4.selectbox("Training data", sources, key="ft_data")
config = None
try:
    out = finetune_root(visitor()) / f"{b.preset.name}-{method}-s{sigma:g}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = FinetuneConfig(out=str(out), method=method, sigma=sigma, num_draws=num_draws, lam=lam, eps=eps,
                            adv_steps=adv_steps, lora=lora, lora_r=lora_r, lora_alpha=float(lora_r), steps=steps,
                            batch_size=batch, lr=lr, warmup=warmup_for(steps), subset=subset or None, seed=seed,
                            save_as="adapter" if lora else "merged", eval_every=eval_every, eval_size=eval_size)
    config.validate()
    check_limits(steps=steps, batch=batch, subset=subset, eval_size=eval_size)
    estimate = estimate_seconds(config, _speed((b.preset.name, b.preset.denoiser, b.preset.classifier), b))
    ahead, waiting = queue.running(), len(queue.waiting())
    wait = f"; it starts after the run going now ({duration(ahead.seconds_left() or 0)} left)" if ahead else ""
    wait += f" and the {waiting} waiting" if ahead and waiting else ""
    wait += (f". The queue is full ({lim.queue} waiting): a new run is refused until one of them starts"
             if ahead and waiting >= lim.queue else "")
    st.caption(f":material/schedule: Estimated time: **{duration(estimate)}** on this machine "
               f"({steps} steps of {batch} images × {num_draws} draws; warmup {config.warmup} steps, 5% of the "
               f"run){wait}.")
except CadisError as e:
    config = None
    st.error(hide_paths(str(e)))

job = _mine(queue)
if st.button("Start", type="primary", disabled=config is None, key="ft_start"):
    try:
        train, test = _training_data(b, source)
        new = FinetuneJob(config, b.denoiser, b.classifier, train, test, owner=visitor(), estimate_s=estimate)
        job = queue.submit(new, max_waiting=lim.queue, one_per_owner=hosted())  # refuses, starting nothing
        if job.status == "queued":
            st.toast(f"Queued: {queue.position(job)} job(s) ahead of yours.")
    except CadisError as e:
        st.error(hide_paths(str(e)))

can_stop = job is not None and job.active and (not hosted() or job.owner == visitor())
if st.button("Stop", disabled=not can_stop, key="ft_stop",
             help="Stops after the current step and keeps a checkpoint (or takes a queued run out of the queue)."):
    job.stop()
    st.toast("Stopping after the current step …")
busy = job is not None and job.active


@st.fragment(run_every=1.0 if busy else None)
def live(polling: bool) -> None:
    # Reruns by itself every second while a run is queued or going; the rest of the page stays as it is.
    current = _mine(_queue())
    if current is None:
        st.info("No fine-tuning run yet: pick a setting above and press Start.")
        return
    if current.status == "queued":
        wait = _queue().wait_ahead_s(current)
        st.info(f":material/hourglass_top: Queued: {_queue().position(current)} job(s) ahead of yours"
                f"{'' if wait is None else f', {duration(wait)} to wait'}; then "
                f"{duration(current.estimate_s or 0)} to run.")
    frame = current.frame()
    last = frame.iloc[-1] if not frame.empty else None
    text = f"step {0 if last is None else int(last['step'])} / {current.config.steps}"
    if last is not None and "images_per_s" in last:
        text += f" · {last['images_per_s']:.1f} images/s · {current.elapsed:.0f} s"
    left = current.seconds_left()  # from the latest steps' pace: it follows a busier or calmer machine
    if current.running and left is not None:
        text += f" · {duration(left)} left" + ("" if len(current.step_times) >= 3 else " (estimated before the start)")
    st.progress(current.progress, text=f"{current.activity()}: {text}")
    if not hosted() and len(_queue().waiting()) > (current.status == "queued"):
        st.caption(f"{len(_queue().waiting())} run(s) queued; each starts when the one before it ends.")
    if last is not None:
        m = st.columns(len(LIVE_METRICS))
        for col, key in zip(m, LIVE_METRICS):
            col.metric(metric_label(key), f"{last[key]:.3f}" if key in last else "–", help=METRIC_HELP.get(key))
        smooth = max(1, len(frame) // 20)  # batch metrics are noisy: a short rolling mean once there are points
        st.plotly_chart(curves_figure(frame, pd.DataFrame(list(current.evals)), smooth=smooth), key="ft_curves")
    if current.status == "done":
        st.success(current.outcome(show_paths=not hosted()))
        if st.button("Certify this model", icon=":material/verified:", key="ft_certify",
                     help="Opens the Certification page with this classifier chosen."):
            certify_this(current.name)
    elif current.status == "stopped":
        st.warning(current.outcome(show_paths=not hosted()))
    elif current.status == "cancelled":
        st.warning("Taken out of the queue before it started.")
    elif current.status == "failed":
        st.error(hide_paths(current.error or "Fine-tuning failed."))
    if polling and not current.active:
        st.rerun()  # the whole page, so the buttons and the polling interval follow the new state


live(busy)


st.header("Finished runs")
st.caption("The shipped fine-tuned models (`python -m experiments results`) and your runs: test accuracy on denoised "
           "images, L_MAdv and the share of images every draw of which is kept.")
with_metrics = {}
for name, path in visible_models().items():
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
        st.plotly_chart(paint(comparison_figure({k: with_metrics[k] for k in picked})), key="ft_compare")
        one = st.selectbox("All curves of one run", picked, key="ft_past_one")
        steps_frame, evals = read_metrics(with_metrics[one])
        st.plotly_chart(curves_figure(steps_frame, evals, smooth=20), key="ft_past_curves")
