"""fp32 speed levers for the certify engine's base f = classifier ∘ denoiser (issue 25), against fp32 eager.

    HF_HUB_OFFLINE=1 python benchmarks/engine_levers.py [--isa native|avx2|both] [--levers eager,channels_last,...]
        [--images 4] [--batch-size 500] [--sigma 0.5] [--profile] [--floor]

Loads the preset's models as `cadis certify` does and draws `--images` batches of `--batch-size` noisy copies of the
first test images (the draws `Smooth.sample_counts` makes with seed i). Every lever runs every batch, in a rotating
order, after one warm-up call (compilation, export); it prints each lever's median and best seconds per batch, ratios to
fp32 eager, the largest |logit - eager logit| and how many argmaxes agree with eager's. `--profile` first prints
where eager fp32 spends a batch: denoiser against classifier, and torch.profiler's self time by kind of op.
`--floor` last prints the fastest any runtime could run f here without changing its arithmetic: f's FLOPs (counted by
torch's FlopCounterMode: convolutions, matrix products, attention) at the rate of a large square matrix product on
this machine (fp32, and bf16), with everything else (norms, activations, copies, Python) free, and the ceiling that
puts on a lever's speed-up over fp32 eager at this batch size (Cohen's loop runs that forward).

`--isa avx2` re-runs the script with ATen, oneDNN, MKL and OpenVINO's kernels capped at AVX2 (an emulation of a CPU
without AVX-512, as in cohen_reference.py, with its own inductor cache). ONNX Runtime's MLAS picks its kernels by
CPUID and has no cap: its rows always run the native ISA and say so. OpenVINO's oneDNN and JIT primitives follow
ONEDNN_MAX_CPU_ISA (their ISAs are printed: avx2 under the cap), but the matrix products it hands to MLAS
("mlas" in the note; 12% of its time here) are not capped. A lever@N runs each batch in slices of N rows.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from cohen_reference import AVX2, reexec  # noqa: E402  (one way to emulate an AVX2-only CPU)

CAPS = {**AVX2, "OV_CPU_MAX_ISA": "AVX2"}  # and OpenVINO's own kernels
LEVERS = ["eager", "channels_last", "threads1", "temb_once", "torchscript", "compile", "compile_freeze",
          "compile_freeze_cl", "max_autotune", "onnxruntime", "openvino"]  # any of them @N: in slices of N rows


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--images", type=int, default=4, help="batches timed per lever: one per test image")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, from {','.join(LEVERS)}")
    p.add_argument("--profile", action="store_true", help="profile eager fp32 first")
    p.add_argument("--floor", action="store_true", help="last, the speed-up no runtime can pass on this machine")
    p.add_argument("--isa", default="native", choices=["native", "avx2", "both"])
    return p.parse_args()


KINDS = [("inductor's fused kernels", ("CompiledFxGraph",)), ("conv", ("conv",)),  # first match wins
         ("matmul/linear", ("addmm", "mm", "bmm", "linear", "matmul")),
         ("attention (sdpa)", ("scaled_dot_product", "flash_attention")), ("group_norm", ("group_norm",)),
         ("layer_norm", ("layer_norm",)), ("softmax", ("softmax",)), ("activations", ("silu", "gelu", "sigmoid")),
         ("copies/layout", ("copy_", "clone", "contiguous", "cat", "to_dense", "reorder", "empty")),
         ("upsample", ("upsample",)), ("elementwise", ("add", "mul", "div", "sub", "clamp", "sqrt", "rsub"))]


def profile(denoiser, classifier, batch, sigma) -> None:
    import torch

    def timed(fn, *args):
        start = time.perf_counter()
        return fn(*args), time.perf_counter() - start

    with torch.inference_mode():
        times = [(t, timed(classifier, den)[1]) for den, t in (timed(denoiser, batch, sigma) for _ in range(4))][1:]
        d, c = statistics.median(t for t, _ in times), statistics.median(t for _, t in times)
        print(f"eager fp32, batch {len(batch)}: denoiser {d:.3f} s ({d / (d + c):.0%}), classifier {c:.3f} s "
              f"({c / (d + c):.0%})")
        for name, fn in (("denoiser", lambda: denoiser(batch, sigma)), ("classifier", lambda: classifier(batch))):
            print(f"  {name} {by_kind(fn)}")


def by_kind(fn) -> str:
    """torch.profiler's self time of one call of `fn`, by kind of op (KINDS)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kinds, total = Counter(), 0.0
    for e in prof.key_averages():
        kinds[next((k for k, keys in KINDS if any(s in e.key for s in keys)), "other")] += e.self_cpu_time_total / 1e6
        total += e.self_cpu_time_total / 1e6
    top = ", ".join(f"{k} {s / total:.0%}" for k, s in kinds.most_common() if s / total >= 0.01)
    return f"(profiled {total:.3f} s of self time): {top}"


def floor(base, example, eager: float, reference: str = "fp32 eager") -> None:
    """f's FLOPs at the rate of a large matrix product here, against `eager` seconds for `example`'s draws taken by
    the `reference` (also cohen_reference.py --floor's)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        base(example)
    flops = counter.get_total_flops()
    ops = ", ".join(f"{op.__name__.split('.')[0]} {n / flops:.0%}" for op, n in
                    sorted(counter.get_flop_counts()["Global"].items(), key=lambda kv: -kv[1]))
    print(f"f: {flops / len(example) / 1e6:.1f} MFLOP per draw ({ops}; CPU flash attention is not counted)")
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = (torch.randn(2048, 2048, generator=torch.Generator().manual_seed(i)).to(dtype) for i in (0, 1))
        with torch.inference_mode():
            for _ in range(2):
                a @ b
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            rate = rates[dtype] = 5 * 2 * 2048 ** 3 / (time.perf_counter() - start)
        least = flops / rate
        print(f"  {str(dtype).split('.')[-1]}: a 2048x2048 matrix product runs {rate / 1e9:.0f} GFLOP/s here; "
              f"at that rate a batch of {len(example)} takes at least {least:.3f} s, so no lever passes "
              f"{eager / least:.2f}x {reference} ({eager:.3f} s) without fewer FLOPs")
    if rates[torch.bfloat16] > rates[torch.float32]:  # bf16 native: what limits it is not the FLOPs, so show what is
        compiled, rows = torch.compile(base, dynamic=False), example[:100]  # the engine's forward pass on a CPU
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(3):
                compiled(rows)
            print(f"  bf16+compile, a forward pass of {len(rows)} draws {by_kind(lambda: compiled(rows))}")


def copies(denoiser, classifier, sigma, channels_last=False, temb_once=False):
    """classifier ∘ denoiser as one module, on copies of both (levers change modules in place)."""
    import torch

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.denoiser, self.classifier = copy.deepcopy(denoiser), copy.deepcopy(classifier)

        def forward(self, noisy):
            if channels_last:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            return self.classifier(self.denoiser(noisy, sigma))

    class FirstRow(torch.nn.Module):  # the rows are all alike (one timestep): compute one, broadcast it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x[:1]).expand(len(x), -1)

    base = Base().eval()
    if channels_last:
        base.denoiser.unet.to(memory_format=torch.channels_last)
    if temb_once:
        unet = base.denoiser.unet
        unet.time_embedding = FirstRow(unet.time_embedding)
        for m in unet.modules():
            if hasattr(m, "time_emb_proj") and m.time_emb_proj is not None:
                m.time_emb_proj = FirstRow(m.time_emb_proj)
    return base


def micro(fn, size):
    """fn over a batch, run in slices of `size` rows (the same draws, in cache-sized pieces)."""
    import torch

    sliced = lambda noisy: torch.cat([fn(part) for part in noisy.split(size)])
    sliced.inner = fn
    return sliced


def export(module, example, path):
    import torch
    if not os.path.exists(path):
        torch.onnx.export(module, (example,), path, input_names=["noisy"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"noisy": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def onnxruntime_fn(path, threads):
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def fn(noisy):
        return torch.from_numpy(session.run(None, {"noisy": noisy.numpy()})[0])

    fn.note = f"ORT {ort.__version__}: native ISA always (MLAS dispatches on CPUID, no cap)"
    return fn


def openvino_fn(path, threads):
    import openvino as ov
    import torch

    core, requests = ov.Core(), {}
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}

    def fn(noisy):
        if noisy.shape not in requests:  # one static-shape model per batch shape
            model = core.read_model(path)
            model.reshape(list(noisy.shape))
            requests[noisy.shape] = core.compile_model(model, "CPU", config).create_infer_request()
            isas = Counter()
            for op in requests[noisy.shape].get_compiled_model().get_runtime_model().get_ops():
                kind = op.get_rt_info()["primitiveType"].astype(str)
                isas[next((i for i in ("amx", "avx512", "avx2", "mlas") if i in kind), None)] += 1
            del isas[None]  # reorders, jit_uni, ref and shape arithmetic: no ISA in the name
            fn.note = f"OpenVINO {ov.__version__.split('-')[0]}, f32; primitives by ISA: " + ", ".join(
                f"{k} {v}" for k, v in isas.most_common())
        return torch.from_numpy(requests[noisy.shape].infer({0: noisy.numpy()})[0].copy())

    return fn


def main() -> None:
    args = parse()
    reexec(args, CAPS)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from cadis.acceleration import describe_machine
    from cadis.models.denoiser import DiffusionDenoiser
    from cadis.models.loading import load_classifier
    from cadis.models.presets import SEARCH_ROOTS, resolve_models

    torch._dynamo.config.cache_size_limit = 64  # every compiled lever adds its own graphs
    preset = resolve_models(args.preset, None, None, None)  # as `cadis certify --preset` loads its models
    preset.check_available()
    denoiser = DiffusionDenoiser.from_pretrained(preset.denoiser, "cpu")
    classifier = load_classifier(preset.classifier, "cpu", SEARCH_ROOTS)
    test = preset.load_dataset("test")
    batches = [torch.randn((args.batch_size, *test[i][0].shape), generator=torch.Generator().manual_seed(i))
               .mul_(args.sigma).add_(test[i][0]) for i in range(args.images)]  # Smooth's draws, seed i
    isa = "avx2 (emulated)" if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" else "native"
    threads = torch.get_num_threads()
    print(f"{describe_machine()} | {threads} threads | ISA {isa} | preset {args.preset}, σ={args.sigma}, "
          f"{args.images} batches of {args.batch_size}")
    if args.profile:
        profile(denoiser, classifier, batches[0], args.sigma)

    def base(noisy: torch.Tensor) -> torch.Tensor:  # DenoisedSmoothing.classify_noisy, one-shot
        return classifier(denoiser(noisy, args.sigma))

    def one_thread(noisy):
        torch.set_num_threads(1)
        try:
            return base(noisy)
        finally:
            torch.set_num_threads(threads)

    example = batches[0]
    onnx_dir = tempfile.mkdtemp(prefix="engine_levers_")
    onnx = lambda: export(copies(denoiser, classifier, args.sigma), example, f"{onnx_dir}/f.onnx")

    def compiled(fn, tag, **kw):
        def call(b):
            return fn(b)
        call.__code__ = call.__code__.replace(co_name=tag)  # a code object, so a dynamo cache, of its own
        return torch.compile(call, dynamic=False, **kw)

    size = len(example)  # rows per call: a lever@N is built for slices of N
    builders = {
        "eager": lambda: base,
        "channels_last": lambda: copies(denoiser, classifier, args.sigma, channels_last=True),
        "threads1": lambda: one_thread,
        "temb_once": lambda: copies(denoiser, classifier, args.sigma, temb_once=True),
        "torchscript": lambda: torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            copies(denoiser, classifier, args.sigma).eval(), example, check_trace=False))),
        "compile": lambda: compiled(base, f"compile{size}"),  # what --compile runs today
        "compile_freeze": lambda: compiled(base, f"freeze{size}", options={"freezing": True}),
        "compile_freeze_cl": lambda: compiled(copies(denoiser, classifier, args.sigma, channels_last=True),
                                              f"freeze_cl{size}", options={"freezing": True}),
        "max_autotune": lambda: compiled(base, f"autotune{size}", options={"freezing": True, "max_autotune": True}),
        "onnxruntime": lambda: onnxruntime_fn(onnx(), threads),
        "openvino": lambda: openvino_fn(onnx(), threads),
    }
    names = [n for n in args.levers.split(",") if n]
    unknown = {n.split("@")[0] for n in names} - set(builders)
    if unknown:
        sys.exit(f"unknown levers {sorted(unknown)}; choose from {','.join(LEVERS)}")
    names = ["eager"] + [n for n in names if n != "eager"]
    fns, setup, notes = {}, {}, {}
    with torch.inference_mode():
        reference = [base(b) for b in batches]
        for name in names:
            start = time.perf_counter()
            try:
                lever, _, size = name.partition("@")
                size = int(size or len(example))
                fns[name] = builders[lever]() if size >= len(example) else micro(builders[lever](), size)
                fns[name](example)
            except Exception as e:  # a lever that does not install or export is reported, not fatal
                notes[name] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"
                fns.pop(name, None)
                continue
            setup[name] = time.perf_counter() - start
            torch.set_num_threads(threads)
        seconds = {n: [] for n in fns}
        logits = {n: [None] * len(batches) for n in fns}
        order = list(fns)
        for i, b in enumerate(batches):
            for name in order[i % len(order):] + order[:i % len(order)]:  # rotate who goes first
                start = time.perf_counter()
                logits[name][i] = fns[name](b)
                seconds[name].append(time.perf_counter() - start)
    draws = sum(len(b) for b in batches)
    eager = statistics.median(seconds["eager"])
    best = min(seconds["eager"])
    print(f"| lever ({isa}) | s per batch of {args.batch_size}: median, best | vs fp32 eager: median, best | setup s "
          f"| max abs logit diff | argmax as eager | note |")
    print("|---|---|---|---|---|---|---|")  # best: the least disturbed call, where other jobs share the cores
    for name in names:
        notes[name] = notes.get(name) or getattr(getattr(fns.get(name), "inner", fns.get(name)), "note", "")
        if name not in fns:
            print(f"| {name} | - | - | - | - | - | {notes[name]} |")
            continue
        med = statistics.median(seconds[name])
        diff = max(float((a - r).abs().max()) for a, r in zip(logits[name], reference))
        same = sum(int((a.argmax(1) == r.argmax(1)).sum()) for a, r in zip(logits[name], reference))
        print(f"| {name} | {med:.3f}, {min(seconds[name]):.3f} | {eager / med:.2f}x, {best / min(seconds[name]):.2f}x "
              f"| {setup[name]:.1f} | {diff:.2e} | "
              f"{same}/{draws} ({same / draws:.2%}) | {notes[name]} |")
    if args.floor:
        floor(base, example, eager)


if __name__ == "__main__":
    main()
