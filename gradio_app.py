"""cadis Gradio demo: upload or pick an image, set σ, N and α; see denoised draws, the smoothed prediction
(or an abstain), its certified ℓ2 radius and the top class counts.

Run locally: `HF_HUB_OFFLINE=1 python gradio_app.py` (http://127.0.0.1:7860). From Python:
`gradio_client.Client(url).predict(None, 0, 0.25, 1000, 0.001, api_name="/certify")`.
Models: the preset in $CADIS_PRESET (default fashion-mnist), or $CADIS_DENOISER / $CADIS_CLASSIFIER.
"""

from __future__ import annotations

import functools

import gradio as gr

from cadis_core.errors import CadisError
from cadis_core.hallucination import score_draws
from cadis_core.smoothing import ABSTAIN
from cadis_core.ui.certification import certify_one, top_counts
from cadis_core.ui.models import ModelBundle, is_custom, load_bundle, model_source
from cadis_core.ui.pictures import to_uint8
from cadis_core.ui.uploads import check_run_parameters, image_from_path

GALLERY_DRAWS = 16


@functools.lru_cache(maxsize=1)
def _bundle() -> ModelBundle:
    # One copy of the models per process; its lock (plus the queue) serialises certifications.
    return load_bundle(model_source())


def certify(image_file: str | None, index: float, sigma: float, n: float, alpha: float,
            progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 (gradio's documented pattern)
    """Certify the uploaded image (or test image `index` when none is uploaded)."""
    try:
        b = _bundle()
        n0, n = b.preset.n0, int(n)
        check_run_parameters(sigma=sigma, alpha=alpha, n0=n0, n=n)
        if image_file:
            x, label = image_from_path(image_file, b.input_shape), None
        else:
            i = int(index)
            if not 0 <= i < len(b.dataset):
                raise CadisError(f"Test image {i} does not exist; pick 0 … {len(b.dataset) - 1}.")
            x, label = b.dataset[i]
        smooth = b.smoothing(sigma, batch_size=min(b.preset.batch_size, 100))
        progress(0, desc="denoising draws for the gallery")
        [draws] = score_draws(smooth, x, label, GALLERY_DRAWS, seed=1)
        cert, counts = certify_one(b, x, sigma, n0, n, alpha, seed=0,
                                   progress=lambda done, total: progress((done, total), desc="certifying",
                                                                         unit="draws"),
                                   batch_size=min(b.preset.batch_size, 100))
    except CadisError as e:
        raise gr.Error(str(e)) from e
    gallery = [(to_uint8(d, 4), f"{b.classes[p]} {c:.0%}")
               for d, p, c in zip(draws.denoised, draws.top1.tolist(), draws.confidence.tolist())]
    truth = "" if label is None else f" (true class: {b.classes[label]})"
    if cert.prediction == ABSTAIN:
        verdict = (f"### Abstain{truth}\nThe top class holds only {cert.count_a}/{n} draws: its probability's "
                   f"lower bound {cert.p_a_lower:.3f} is not above ½ at α = {alpha:g}.")
    else:
        verdict = (f"### {b.classes[cert.prediction]}{truth}\nCertified for every ℓ2 perturbation below "
                   f"**{cert.radius:.3f}** ({cert.count_a}/{n} draws, p_A ≥ {cert.p_a_lower:.3f}, σ = {sigma:g}).")
    table = [[c, v, round(v / n, 4)] for c, v in top_counts(counts, b.classes, k=5).items()]
    return gallery, verdict, round(cert.radius, 4), table, to_uint8(x, 8)


def build_demo() -> gr.Blocks:
    p = model_source()
    with gr.Blocks(title="cadis: certify an image") as demo:
        gr.Markdown("# cadis: a provably robust prediction for one image\n"
                    "Denoised smoothing: add Gaussian noise (σ), denoise with a diffusion model, classify, and "
                    "vote over N draws. The radius is guaranteed with probability 1 − α. "
                    f"Models: the **{p.name}** preset{' with replaced models' if is_custom(p) else ''} "
                    f"({p.dataset}); N0 = {p.n0} draws pick the class before the N that certify it.")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Upload an image (or leave empty to use a test image)", file_types=["image"],
                                type="filepath")
                index = gr.Number(label="Test image index", value=0, precision=0)
                sigma = gr.Slider(0.0, 1.0, value=p.sigma, step=0.01, label="Noise level σ")
                n = gr.Slider(10, 10_000, value=min(p.n, 1000), step=10, label=f"N draws (N0 = {p.n0} extra)")
                alpha = gr.Number(label="α (failure probability)", value=0.001)
                run = gr.Button("Certify", variant="primary")
            with gr.Column():
                verdict = gr.Markdown()
                radius = gr.Number(label="Certified ℓ2 radius (0 when abstaining)")
                counts = gr.Dataframe(headers=["class", "count", "share"], label="Top class counts (N draws)")
                model_input = gr.Image(label="Model input", height=160)
        gallery = gr.Gallery(label=f"{GALLERY_DRAWS} denoised draws: prediction and confidence", columns=8,
                             height="auto")
        run.click(certify, [image, index, sigma, n, alpha], [gallery, verdict, radius, counts, model_input],
                  api_name="certify")
    return demo


# One job at a time across sessions (2 CPU cores); others wait in the queue and see their position.
demo = build_demo().queue(default_concurrency_limit=1)

if __name__ == "__main__":
    demo.launch()  # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set the address (Spaces: 0.0.0.0:7860)
