"""cadis Streamlit app: `streamlit run app.py`. Navigation and page config only; the pages live in apps/views/."""

import streamlit as st

from apps.ui.hosting import hosted
from apps.ui.visitor import recognise

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
if hosted():  # on every page, so a reload anywhere finds the visitor's runs again (the page repeats it, harmlessly)
    recognise(st.query_params, st.session_state)
st.navigation(pages).run()
