"""Hallucination scoring, one image per call against many images per call, side by side in one process.

    HF_HUB_OFFLINE=1 python benchmarks/hallucination_batch.py [--images 200] [--draws 4] [--batch-size 256]

On the same images, seeds and classifiers (the preset's and a shipped fine-tuned one at --sigma, as the
hallucination stage of `python -m experiments results` scores them), alternating, best of --repeats:

- per image: `score_draws` once per image (its `draws` rows per denoiser call);
- `score_images`: calls of batch_size // draws whole images (the stage's and the apps' path);
- batched: one `score_draws_batched` call, its rows cut in batches of --batch-size across images.

Prints images/s of each, the ratio to per image, and whether they agree: the same draws, the same top-1 and
hallucination flags, and the largest difference of a softmax probability.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from cadis.acceleration import PRECISIONS, Acceleration, describe_machine  # noqa: E402
from cadis.analysis.hallucination import score_draws, score_draws_batched, score_images  # noqa: E402
from cadis.certification.smoothing import DenoisedSmoothing  # noqa: E402
from cadis.models.loading import load_classifier  # noqa: E402
from cadis.models.presets import FINETUNED, SEARCH_ROOTS, get_preset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--images", type=int, default=200, help="the first K test images")
    p.add_argument("--draws", type=int, default=4, help="draws per image (the hallucination stage's default)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tuned", default="ft-cadis.authors-lora", help="a shipped adapter at --sigma ('' for none)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    preset = get_preset(args.preset)
    denoiser, base = preset.load_models()
    classifiers = {"none": base}
    if args.tuned:
        classifiers[args.tuned] = load_classifier(str(FINETUNED / f"{args.tuned}-s{args.sigma:g}"),
                                                  search_roots=SEARCH_ROOTS)
    test = preset.load_dataset("test")
    xs = [test[i][0] for i in range(args.images)]
    labels = [int(test[i][1]) for i in range(args.images)]
    seeds = list(range(args.images))  # image k gets seed k, as score_images(seed=0) gives it
    smooth = DenoisedSmoothing(denoiser, base, args.sigma, args.batch_size,
                               acceleration=Acceleration(args.precision))
    heads = list(classifiers.values())

    def per_image():
        return [score_draws(smooth, x, y, args.draws, s, heads) for x, y, s in zip(xs, labels, seeds)]

    def chunked():
        return score_images(smooth, [(str(i), x, y) for i, (x, y) in enumerate(zip(xs, labels))], args.draws,
                            classifiers, seed=0)

    def batched():
        return score_draws_batched(smooth, xs, labels, args.draws, seeds, heads, batch_size=args.batch_size)

    runs = {"per image (score_draws)": per_image, "score_images (batch // draws images a call)": chunked,
            "batched (score_draws_batched)": batched}
    best = {name: float("inf") for name in runs}
    results = {}
    batched()  # warm-up: allocations, one-time kernels
    for r in range(args.repeats):
        for name, run in (runs.items() if r % 2 == 0 else reversed(runs.items())):  # alternate: load drifts
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    alone, together = results["per image (score_draws)"], results["batched (score_draws_batched)"]
    same_draws = all(torch.equal(a[0].noisy, b[0].noisy) for a, b in zip(alone, together))
    same_top1 = all(torch.equal(a[k].top1, b[k].top1) and torch.equal(a[k].hallucinated, b[k].hallucinated)
                    for a, b in zip(alone, together) for k in range(len(heads)))
    worst = max(float((a[k].probs - b[k].probs).abs().max())
                for a, b in zip(alone, together) for k in range(len(heads)))
    listed = results["score_images (batch // draws images a call)"]
    same_listed = all(r.scores[c]["top1"] == b[k].top1.tolist() for r, b in zip(listed, together)
                      for k, c in enumerate(classifiers))
    print(describe_machine(), f"| {torch.get_num_threads()} threads")
    print(f"preset {args.preset}, σ={args.sigma}, {args.images} images × {args.draws} draws, classifiers "
          f"{', '.join(classifiers)}, batch {args.batch_size}, {args.precision} eager, best of {args.repeats}")
    print("| run | seconds | images/s | vs per image |")
    print("|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {best[name]:.2f} | {args.images / best[name]:.1f} | "
              f"{best['per image (score_draws)'] / best[name]:.2f}x |")
    print(f"batched vs per image: same draws {same_draws}, same top-1 and hallucination flags {same_top1}, "
          f"largest softmax difference {worst:.1e}; score_images' top-1 the same as batched: {same_listed}")


if __name__ == "__main__":
    main()
