"""cadis Streamlit app: `streamlit run app.py`. Navigation and page config only; the pages live in pages/."""

import streamlit as st

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
st.navigation(pages).run()
