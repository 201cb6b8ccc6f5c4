"""UI-free helpers shared by the Streamlit app (app.py, pages/) and the Gradio demo (gradio_app.py).

Nothing here imports a UI library. One concept per module; callers import the module they need:

- `models`: which models the apps use (preset and environment), the shared `ModelBundle`, fine-tuned models;
- `uploads`: uploaded images, test-set picks and run parameters, checked into model inputs or a CadisError;
- `pictures`: tensors as uint8 pictures, strips and inline PNGs;
- `certification`: CERTIFY one image, its table row, the session's runs and the result files;
- `jobs`: a fine-tuning run in a background thread.

The hallucination analysis the apps show lives in `cadis.analysis.hallucination`.
"""
