"""cadis Streamlit app: `streamlit run app.py`. Navigation and page config only; the pages live in apps/views/."""

import sys

import streamlit as st

from apps.ui.hosted_mode import hosted  # light: the navigation is drawn before torch and the models load

st.set_page_config(page_title="cadis: certified robustness with denoised smoothing", page_icon=":material/shield:",
                   layout="wide")

pages = [
    st.Page("apps/views/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("apps/views/hallucinations.py", title="Hallucinations", icon=":material/blur_on:"),
    st.Page("apps/views/finetuning.py", title="Fine-tuning", icon=":material/tune:"),
    st.Page("apps/views/payoff.py", title="Payoff", icon=":material/trending_up:"),
    st.Page("apps/views/certification.py", title="Certification", icon=":material/verified:"),
    st.Page("apps/views/models.py", title="Models", icon=":material/extension:"),
]
navigation = st.navigation(pages)
if "apps.ui.models" not in sys.modules:  # the first visit after a start: say what the wait is
    starting = st.empty()
    starting.caption("Starting the app: loading torch, the diffusion denoiser and the classifier (a few seconds, "
                      "once after each server start) …")
    import apps.ui.models  # noqa: F401
    starting.empty()
if hosted():  # on every page, so a reload anywhere finds the visitor's runs again (the page repeats it, harmlessly)
    from apps.ui.visitor import recognise

    recognise(st.query_params, st.session_state)
navigation.run()
