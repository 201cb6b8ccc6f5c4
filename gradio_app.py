"""The Gradio demo's entry point (a Gradio Space runs this file): `python gradio_app.py`.

The demo itself is apps/gradio_demo.py."""

from apps.gradio_demo import demo, launch

__all__ = ["demo", "launch"]

if __name__ == "__main__":
    launch()
