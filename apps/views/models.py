"""Models: the presets, a custom denoiser/classifier (hub id or local directory), and the fine-tuned models found.

Specs are parsed by cadis.models.loading (`hf-hub:org/name` and `hf:org/name` are hub models, never paths); a model
that fails to load gives one line saying which and why, never a traceback. Hosted, the classifier is picked from
the visitor's list (`hosting.model_choices`: the preset's, the shipped ones, their own runs), never typed, and no
server path is shown.
"""

import pandas as pd
import streamlit as st

from apps.ui.hosting import hide_paths, hosted, hosted_presets, model_choices, resolve_model, shown_spec
from apps.ui.models import OFF_THE_SHELF, finetuned_info, model_source
from apps.views._common import cached_bundle, certify_this, current_source, visible_models, visitor
from cadis.errors import CadisError
from cadis.models.loading import hub_offline
from cadis.models.presets import PRESETS

st.title("Models")
shared = hosted()
offline = hub_offline()
st.caption("Hub ids need a connection (or the hub cache) — this server runs "
           f"{'offline (HF_HUB_OFFLINE=1): local directories and cached hub models only' if offline else 'online'}.")

st.subheader("Presets")
st.dataframe(pd.DataFrame([{"preset": p.name, "dataset": p.dataset, "denoiser": shown_spec(p.denoiser),
                            "classifier": shown_spec(p.classifier), "σ": p.sigma, "N0": p.n0, "N": p.n,
                            "needs hub": p.online, "about": hide_paths(p.description)}
                           for p in PRESETS.values()]), hide_index=True, key="models_presets")

cur = current_source()
st.subheader("Choose models")
presets = hosted_presets()
with st.form("models_form"):
    preset = st.selectbox("Preset", presets, index=presets.index(cur.name) if cur.name in presets else 0,
                          key="models_preset")
    if shared:  # a shared server loads only what is on the visitor's list: no typed path reaches the loader
        denoiser = ""
        classifier = st.selectbox("Classifier", list(model_choices(visitor())), key="models_classifier_choice",
                                  help="The preset's own, the shipped fine-tuned ones and your runs.")
    else:
        denoiser = st.text_input("Denoiser (blank: the preset's)", key="models_denoiser",
                                 placeholder="a diffusers directory or hub id, e.g. google/ddpm-cifar10-32")
        classifier = st.text_input("Classifier (blank: the preset's)", key="models_classifier",
                                   placeholder="local-dir:PATH, a directory, a timm name, hf-hub:ID or hf:ID")
    c1, c2 = st.columns(2)
    use = c1.form_submit_button("Load and use", type="primary")
    reset = c2.form_submit_button("Back to the default (environment)")

if use:
    try:
        if shared:
            path = resolve_model(classifier, visitor())
            p = model_source(preset, None, None if path is None else str(path))
        else:
            p = model_source(preset, denoiser.strip() or None, classifier.strip() or None)
        with st.spinner("Loading …"):
            b = cached_bundle(p.name, p.denoiser, p.classifier)
        st.session_state["model_choice"] = (p.name, p.denoiser, p.classifier)
        st.success(f"Using {p.name}: {len(b.classes)} classes, input {b.input_shape}. The other pages now use "
                   "these models.")
    except CadisError as e:
        st.error(hide_paths(str(e)))
if reset:
    st.session_state.pop("model_choice", None)
    st.success("Back to the default models.")

cur = current_source()
st.subheader("Models in use")
st.markdown(f"- preset **{cur.name}**\n- denoiser `{shown_spec(cur.denoiser, visitor())}`\n"
            f"- classifier `{shown_spec(cur.classifier, visitor())}`")

st.subheader("Fine-tuned classifiers")
found = visible_models()
if not found:
    st.info("None yet: runs of the Fine-tuning page land in `runs/finetune/*/model`, shipped ones in "
            "`src/cadis/assets/finetuned/*`.")
else:
    rows = []
    for name, path in found.items():
        info = finetuned_info(path)
        rows.append({"name": name, "method": info["method"] or "?", "σ": info["σ"], "steps": info["steps"],
                     "weights": info["kind"], "base": info["base"] and hide_paths(info["base"]),
                     **({} if shared else {"path": str(path)}),
                     "note": "" if info["readable"] else "finetune.json unreadable"})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="models_finetuned",
                 column_config={"name": st.column_config.TextColumn(width="large")})
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
target = c1.selectbox("Certify a classifier", [OFF_THE_SHELF, *found], key="models_certify_choice",
                      format_func=lambda k: k if k == OFF_THE_SHELF else f"fine-tuned: {k}")
if c2.button("Certify this model", icon=":material/verified:", key="models_certify",
             help="Opens the Certification page with this classifier chosen."):
    certify_this(target)
