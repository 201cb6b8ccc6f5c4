"""For the benchmarks: the smoothing engine's base f (noisy images -> logits) in fp32 on OpenVINO.

`openvino_forward(fn, modules, example)` converts `fn` (e.g. `DenoisedSmoothing.classify_noisy`, with the modules it
calls) once with OpenVINO and returns a callable with fn's signature: a torch batch in, fp32 torch logits out. It
runs every batch in slices of exactly `micro_batch` rows (the last one padded with copies of its first row, whose
logits are dropped), so one static-shape model serves every batch size the engine asks for, and each slice's
activations stay in the CPU's caches. The model is the same f in fp32 (the precision hint is pinned to f32, so
OpenVINO does not switch to bf16 on CPUs that have it); logits match eager torch to rounding
(tests/test_inference_runtime.py), and the certificates on shared draws are those of eager fp32 unless a draw
sits on a decision boundary to within that rounding.

OpenVINO is an optional dependency (`pip install openvino`). It picks kernels by CPUID itself: ATen's
ATEN_CPU_CAPABILITY does not reach it. ONEDNN_MAX_CPU_ISA (and OV_CPU_MAX_ISA, where its build reads it) cap its
oneDNN and JIT kernels; the fully connected layers it runs through MLAS are not capped.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch

from cadis.errors import CadisError

MICRO_BATCH = 100  # rows per OpenVINO call: 50 and 100 ran alike, both faster than 500 (benchmarks/engine_levers.py)


class _Forward(torch.nn.Module):
    """fn as a module, with the modules it calls as submodules, so conversion sees their weights as weights."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], modules: Iterable[torch.nn.Module]):
        super().__init__()
        self.fn, self.parts = fn, torch.nn.ModuleList(modules)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.fn(noisy)


def openvino_forward(fn: Callable[[torch.Tensor], torch.Tensor], modules: Iterable[torch.nn.Module],
                     example: torch.Tensor, micro_batch: int = MICRO_BATCH, threads: int | None = None,
                     precision: str = "f32") -> Callable[[torch.Tensor], torch.Tensor]:
    """`fn` compiled by OpenVINO for CPU in fp32, run in slices of `micro_batch` rows on `threads` threads
    (default: torch's). `example` is one batch `fn` accepts (its rows' shape and dtype are what is compiled)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise CadisError("The OpenVINO runtime needs the openvino package: pip install openvino.") from e
    if micro_batch < 1:
        raise CadisError(f"micro_batch must be >= 1 (got {micro_batch}).")
    sample = example[:1].expand(micro_batch, *example.shape[1:]).contiguous()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():  # no inference tensors to trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: shapes are
        model = ov.convert_model(_Forward(fn, modules).eval(), example_input=sample.clone())
    model.reshape(list(sample.shape))  # static, as traced
    # f32 by default: left alone, OpenVINO picks bf16 where the CPU has it
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()

    def forward(noisy: torch.Tensor) -> torch.Tensor:
        out = []
        for part in noisy.split(micro_batch):
            rows = len(part)
            if rows < micro_batch:  # pad to the compiled shape with copies of a real row; their logits are dropped
                part = torch.cat([part, part[:1].expand(micro_batch - rows, *part.shape[1:])])
            result = request.infer({0: part.detach().to(sample.dtype).contiguous().cpu().numpy()})[0]
            out.append(torch.from_numpy(result[:rows].copy()))
        return torch.cat(out).to(noisy.device)

    forward.micro_batch = micro_batch
    return forward
