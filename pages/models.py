"""Models: the presets, a custom denoiser/classifier (hub id or local directory), and the fine-tuned models found."""

import json
import os

import pandas as pd
import streamlit as st

from cadis_core.errors import CadisError
from cadis_core.presets import PRESETS
from cadis_core.ui.models import finetuned_models, model_source
from pages._common import cached_bundle, current_source, route_through_app

route_through_app()  # first: a deep link must still go through app.py

st.title("Models")
offline = os.environ.get("HF_HUB_OFFLINE") == "1"
st.caption("Hub ids need a connection (or the hub cache) — this server runs "
           f"{'offline (HF_HUB_OFFLINE=1): local directories and cached hub models only' if offline else 'online'}.")

st.subheader("Presets")
st.dataframe(pd.DataFrame([{"preset": p.name, "dataset": p.dataset, "denoiser": p.denoiser, "classifier": p.classifier,
                            "σ": p.sigma, "N0": p.n0, "N": p.n, "needs hub": p.online, "about": p.description}
                           for p in PRESETS.values()]), hide_index=True, key="models_presets")

cur = current_source()
st.subheader("Choose models")
with st.form("models_form"):
    preset = st.selectbox("Preset", list(PRESETS), index=list(PRESETS).index(cur.name), key="models_preset")
    denoiser = st.text_input("Denoiser (blank: the preset's)", key="models_denoiser",
                             placeholder="a diffusers directory or hub id, e.g. google/ddpm-cifar10-32")
    classifier = st.text_input("Classifier (blank: the preset's)", key="models_classifier",
                               placeholder="local-dir:PATH, a directory, a timm name, hf-hub:ID or hf:ID")
    c1, c2 = st.columns(2)
    use = c1.form_submit_button("Load and use", type="primary")
    reset = c2.form_submit_button("Back to the default (environment)")

if use:
    try:
        p = model_source(preset, denoiser.strip() or None, classifier.strip() or None)
        with st.spinner("Loading …"):
            b = cached_bundle(p.name, p.denoiser, p.classifier)
        st.session_state["model_choice"] = (p.name, p.denoiser, p.classifier)
        st.success(f"Using {p.name}: {len(b.classes)} classes, input {b.input_shape}. The other pages now use "
                   "these models.")
    except CadisError as e:
        st.error(str(e))
if reset:
    st.session_state.pop("model_choice", None)
    st.success("Back to the default models.")

cur = current_source()
st.subheader("Models in use")
st.markdown(f"- preset **{cur.name}**\n- denoiser `{cur.denoiser}`\n- classifier `{cur.classifier}`")

st.subheader("Fine-tuned classifiers")
found = finetuned_models()
if not found:
    st.info("None yet: runs of the Fine-tuning page land in `runs/finetune/*/model`, shipped ones in "
            "`assets/models/finetuned/*`.")
else:
    rows = []
    for name, path in found.items():
        meta_file = path / "finetune.json"
        cfg = json.loads(meta_file.read_text()).get("config", {}) if meta_file.is_file() else {}
        rows.append({"name": name, "path": str(path), "method": cfg.get("method", "?"), "σ": cfg.get("sigma"),
                     "steps": cfg.get("steps"), "LoRA": cfg.get("lora")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="models_finetuned")
