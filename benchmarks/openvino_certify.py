"""Cohen et al.'s CERTIFY loop against the engine with its base on OpenVINO (`benchmarks/openvino_runtime.py`), fp32.

    HF_HUB_OFFLINE=1 python benchmarks/openvino_certify.py [--images 4] [--micro-batch 100] [--isa native|avx2]

Per image, in a rotating order: Cohen's loop (cohen_reference.py's copy of core.py, fp32 eager), cadis fp32 eager
and cadis with `openvino_forward(classify_noisy)` as the base (`Smooth(fast, ...)`), on the same draws (seed i).
Prints each one's median seconds per image, its ratio to Cohen's loop, and whether the certificates equal Cohen's.
`--isa avx2` caps ATen, oneDNN, MKL and OpenVINO's own kernels at AVX2, as cohen_reference.py does (OpenVINO's MLAS
matrix products are not capped: they pick their ISA by CPUID).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--micro-batch", type=int, default=100)
    p.add_argument("--isa", default="native", choices=["native", "avx2"])
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                   help="OpenVINO's inference precision (bf16: another f, as cadis bf16 is)")
    args = p.parse_args()
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]
    from cohen_reference import AVX2, cohen_smooth, reexec

    reexec(args, {**AVX2, "OV_CPU_MAX_ISA": "AVX2"})  # OpenVINO's own kernels capped too
    import torch
    from openvino_runtime import openvino_forward  # benchmarks/openvino_runtime.py

    from cadis.acceleration import describe_machine
    from cadis.certification.smoothing import DenoisedSmoothing, Smooth
    from cadis.models.denoiser import DiffusionDenoiser
    from cadis.models.loading import load_classifier
    from cadis.models.presets import SEARCH_ROOTS, resolve_models

    preset = resolve_models("fashion-mnist", None, None, None)
    denoiser = DiffusionDenoiser.from_pretrained(preset.denoiser, "cpu")
    classifier = load_classifier(preset.classifier, "cpu", SEARCH_ROOTS)
    test = preset.load_dataset("test")
    engine = DenoisedSmoothing(denoiser, classifier, args.sigma, args.batch_size)
    cohen = cohen_smooth()(torch.nn.Module(), classifier.num_classes, args.sigma)
    cohen.base_classifier.forward = engine.classify_noisy  # the same base f, eager fp32
    start = time.perf_counter()
    fast = openvino_forward(engine.classify_noisy, (denoiser, classifier), test[0][0][None], args.micro_batch,
                            precision=args.precision)
    setup = time.perf_counter() - start
    openvino = Smooth(fast, classifier.num_classes, args.sigma, args.batch_size)

    def certify(name, x, seed):
        if name == "Cohen's loop (fp32, eager)":
            torch.manual_seed(seed)
            return cohen.certify(x, args.n0, args.n, args.alpha, args.batch_size)
        cert = (engine if name == "cadis fp32 eager" else openvino).certify(x, args.n0, args.n, args.alpha, seed)
        return cert.prediction, cert.radius

    names = ["Cohen's loop (fp32, eager)", "cadis fp32 eager", f"cadis {args.precision} OpenVINO@{args.micro_batch}"]
    seconds, certs = {n: [] for n in names}, {n: [] for n in names}
    warm = test[len(test) - 1][0]
    for name in names:
        certify(name, warm, 0)
    for i in range(args.images):
        for name in names[i % 3:] + names[:i % 3]:
            start = time.perf_counter()
            certs[name].append(certify(name, test[i][0], i))
            seconds[name].append(time.perf_counter() - start)
    isa = "avx2 (emulated; OpenVINO's MLAS GEMMs native)" if args.isa == "avx2" else "native"
    print(f"{describe_machine()} | {torch.get_num_threads()} threads | ISA {isa} | σ={args.sigma}, n0={args.n0}, "
          f"N={args.n}, batch {args.batch_size}, {args.images} images; OpenVINO setup {setup:.1f} s")
    print("| variant | s/image (median) | vs Cohen's loop | same class and radius as Cohen |")
    print("|---|---|---|---|")
    ref = statistics.median(seconds[names[0]])
    for name in names:
        same = sum(a[0] == b[0] and abs(a[1] - b[1]) < 1e-9 for a, b in zip(certs[name], certs[names[0]]))
        print(f"| {name} | {statistics.median(seconds[name]):.2f} | {ref / statistics.median(seconds[name]):.2f}x "
              f"| {same}/{args.images} |")


if __name__ == "__main__":
    main()
