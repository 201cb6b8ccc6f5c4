"""Is low confidence a hallucination detector? The AUROC the Hallucinations page quotes, on the embedded models.

    HF_HUB_OFFLINE=1 python benchmarks/hallucination_auroc.py                 # σ=1, 16 images per class × 8 draws
    HF_HUB_OFFLINE=1 python benchmarks/hallucination_auroc.py --sigma 0.25 --classes Shirt

Draws the first K test images of each class, denoises `draws` noisy copies of each one-shot and multistep
(same noise), and prints per denoiser the hallucination rate and the AUROC of 1 − confidence as a detector of
hallucinated draws, over all the classes asked for and per class.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--images-per-class", type=int, default=16)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="reverse steps of the multistep denoiser")
    parser.add_argument("--classes", nargs="*", help="class names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))

    import torch

    from apps.ui.models import load_bundle, model_source
    from cadis.analysis.hallucination import detector_summary, draws_frame, score_images

    torch.set_num_threads(args.threads)
    b = load_bundle(model_source())
    wanted = [b.classes.index(c) for c in args.classes] if args.classes else range(len(b.classes))
    images = []
    for c in wanted:
        for i in torch.nonzero(b.dataset.labels == c).flatten()[:args.images_per_class].tolist():
            images.append((f"#{i}", b.dataset.images[i], c))
    print(f"σ = {args.sigma}, {len(images)} images × {args.draws} draws, classes: "
          f"{', '.join(b.classes[c] for c in wanted)}")
    for mode in ("one-shot", "multistep"):
        start = time.time()
        smooth = b.smoothing(args.sigma, mode, args.steps, batch_size=64)
        frame = draws_frame(score_images(smooth, images, args.draws, {mode: b.classifier}), b.classes)
        total = detector_summary(frame)
        per_class = detector_summary(frame.assign(classifier=frame["reference"]))
        print(f"\n{mode} ({time.time() - start:.0f} s): {len(frame)} draws, hallucinated "
              f"{total['hallucination rate'].iloc[0]:.1%}, AUROC {total['AUROC (1 − confidence)'].iloc[0]:.3f}")
        print(per_class[["draws", "hallucination rate", "AUROC (1 − confidence)"]].round(3).to_string())


if __name__ == "__main__":
    main()
