"""The first lines of every page, light enough to paint before torch and the models load.

Pages call `route_through_app()` first, then draw their title, and only then import the heavy modules
(pages/_common.py, cadis_core): a visitor sees the page at once while the models load behind it.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st


def route_through_app() -> None:
    """Call first on every page. When a deep link (e.g. /certification) is the server's first request, Streamlit
    runs the pages/ folder as an old-style multipage app without app.py (no page config, every file listed in the
    sidebar) until some session runs app.py. Then run app.py here (its st.navigation switches the server over for
    good and runs this page inside it) and stop the outer run. No rerun, so a pending click is not lost."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # a Streamlit without these internals: nothing to fix
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False  # st.navigation does the same; no second detour
        ctx = get_script_run_ctx()
        runpy.run_path(ctx.main_script_path if ctx else str(Path(__file__).parent.parent / "app.py"),
                       run_name="__main__")
        st.stop()
