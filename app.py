"""cadis Streamlit app: `streamlit run app.py`. Navigation and page config only; the pages live in pages/."""

import streamlit as st

st.set_page_config(page_title="cadis: certified robustness with denoised smoothing", page_icon=":material/shield:",
                   layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/hallucinations.py", title="Hallucinations", icon=":material/blur_on:"),
    st.Page("pages/finetuning.py", title="Fine-tuning", icon=":material/tune:"),
    st.Page("pages/certification.py", title="Certification", icon=":material/verified:"),
    st.Page("pages/models.py", title="Models", icon=":material/extension:"),
]
st.navigation(pages).run()
