"""Export a SlowFast model for other runtimes: ONNX (onnxruntime, TensorRT's trtexec, OpenVINO) and PT2
(torch.export; an AOTInductor package where it builds).

What is exported is the reference model with every BatchNorm folded into the conv before it
(``fold_batchnorms``: exact in fp32, the same folding as the fused model's), so the graph is plain
Conv / Relu / Add / MaxPool / AveragePool / MatMul nodes that every runtime fuses well. The fused model's
own kernels are this library's custom ops and packed weights, which no other runtime can read: export
is for deploying elsewhere, ``fuse()`` is for running here.

Every export is checked right after it is written: the exported file is run (onnxruntime, or the PT2
program loaded back) on the example clip and compared with the unfolded reference in float64; the check's
figures are returned (``ExportCheck``) and printed by the CLI. fp32 passes within 1e-4 relative (the
error over the largest logit), bf16 within 2x eager bf16's own error against the same float64 oracle.

Inputs are named ``slow`` [N, 3, T/alpha, H, W] and ``fast`` [N, 3, T, H, W] (Slow-only: ``x``), the
output ``logits`` [N, classes]; with ``batch="dynamic"`` N is a dynamic axis, else fixed.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .ops.conv3d_bn_act import fold_bn

FORMATS = ("onnx", "pt2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ONNX_OPSET = 18
FP32_RTOL = 1e-4


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of a reference model in eval mode with each Conv3d + BatchNorm3d pair folded into one Conv3d
    with a bias (``fold_bn``: w * gamma / sqrt(var + eps), beta + (b - mean) * gamma / sqrt(var + eps)) and the
    BatchNorm replaced by Identity. Pairs are the reference's attribute pairs: ``conv``/``norm`` (stem),
    ``conv_a``/``norm_a`` ... (bottleneck), ``branch1_conv``/``branch1_norm`` (shortcut),
    ``conv_fast_to_slow``/``norm`` (lateral)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        children = dict(module.named_children())
        for name, conv in children.items():
            if not isinstance(conv, nn.Conv3d):
                continue
            for norm_name in (name.replace("conv", "norm"), "norm"):
                bn = children.get(norm_name)
                if norm_name != name and isinstance(bn, nn.BatchNorm3d) and bn.num_features == conv.out_channels:
                    break
            else:
                continue  # a conv without BN (MMAction2's bare lateral conv): nothing to fold
            weight, bias = fold_bn(conv, bn)
            new = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, conv.groups, bias=True, device=weight.device)
            with torch.no_grad():
                new.weight.copy_(weight.to(conv.weight.dtype))
                new.bias.copy_(bias.to(conv.weight.dtype))
            setattr(module, name, new)
            setattr(module, norm_name, nn.Identity())
            children[norm_name] = None  # each BN folds into one conv
    return folded


class PathwayInputs(nn.Module):
    """model([slow, fast]) as a module of named tensor arguments, forward(slow, fast): the form exporters and
    other runtimes take. Slow-only models: SlowOnlyInput, forward(x)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return self.model([slow, fast])


class SlowOnlyInput(PathwayInputs):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model([x])


def named_inputs(model: nn.Module) -> PathwayInputs:
    return (SlowOnlyInput if model.config.slow_only else PathwayInputs)(model)


def input_names(model: nn.Module) -> List[str]:
    return ["x"] if model.config.slow_only else ["slow", "fast"]


def example_inputs(model: nn.Module, batch: int = 1, size: int = 224, dtype: torch.dtype = torch.float32,
                   seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """A seeded clip of the model's frame counts at size x size (what the check runs)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    if cfg.slow_only:
        shapes = [(batch, 3, cfg.num_frames, size, size)]
    else:
        shapes = [(batch, 3, cfg.num_frames // cfg.alpha, size, size), (batch, 3, cfg.num_frames, size, size)]
    return tuple(torch.randn(s, generator=g).to(dtype) for s in shapes)


@dataclasses.dataclass
class ExportCheck:
    """The exported program against the unfolded reference on the example clip, both against float64."""

    path: str
    format: str
    dtype: str
    max_abs_error: float           # exported vs float64 reference
    rel_error: float               # max_abs_error / max |logit|
    tolerance: float               # the bound rel_error passed
    reference_rel_error: Optional[float] = None  # eager in this dtype vs float64 (bf16: the 2x rule's base)

    def summary(self) -> str:
        ref = "" if self.reference_rel_error is None else f", eager {self.dtype} {self.reference_rel_error:.2e}"
        return (f"{self.format} {self.path}: max |error| {self.max_abs_error:.2e}, relative {self.rel_error:.2e} "
                f"(bound {self.tolerance:.1e}{ref}) against the float64 reference")


class ExportCheckError(RuntimeError):
    """The exported program does not reproduce the reference within tolerance."""


def _check_args(model: nn.Module, fmt: str, dtype: torch.dtype, batch: Union[str, int], size: int) -> None:
    if not hasattr(model, "config") or not hasattr(model.config, "slow_only"):
        raise ValueError(f"export: model: expected a slowfast_reference SlowFast model, got {type(model).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"export: format: expected one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES.values():
        raise ValueError(f"export: dtype: expected torch.float32 or torch.bfloat16, got {dtype}")
    if not (batch == "dynamic" or (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1)):
        raise ValueError(f"export: batch: expected 'dynamic' or an int >= 1, got {batch!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"export: size: expected an int >= 32 (the network downsamples by 32), got {size!r}")


@contextlib.contextmanager
def _quiet_onnx_registry():
    """The ONNX exporter warns once per torchvision op it cannot register when torchvision is absent (this
    model uses none of them)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside the exporter
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], *, dtype: torch.dtype = torch.float32,
                batch: Union[str, int] = "dynamic", size: int = 224, check: bool = True,
                opset: int = ONNX_OPSET) -> Optional[ExportCheck]:
    """Write the BN-folded model as ONNX (opset >= 17) and, with check=True, run it in onnxruntime against
    the reference; raises ExportCheckError when it differs by more than the tolerance."""
    _check_args(model, "onnx", dtype, batch, size)
    if dtype != torch.float32:
        # Refused rather than written unchecked: onnxruntime's CPU provider has no bfloat16 Conv.
        raise ValueError("export: dtype: ONNX export is float32 only (onnxruntime cannot run a bfloat16 Conv to "
                         "check it); runtimes lower the precision themselves (trtexec --bf16 / --fp16, OpenVINO's "
                         "inference_precision hint)")
    wrapped = named_inputs(fold_batchnorms(model).to("cpu", torch.float32)).eval()
    names = input_names(model)
    example = example_inputs(model, 2 if batch == "dynamic" else batch, size)
    dynamic = None
    if batch == "dynamic":
        dim = torch.export.Dim("batch", min=1, max=1024)
        dynamic = tuple({0: dim} for _ in names)
    path = os.fspath(path)
    with torch.no_grad(), _quiet_onnx_registry():
        program = torch.onnx.export(wrapped, example, None, input_names=names, output_names=["logits"],
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic,
                                    optimize=True, verbose=False)
    program.save(path)
    return check_export(model, path, "onnx", dtype, example) if check else None


def export_pt2(model: nn.Module, path: Union[str, os.PathLike], *, dtype: torch.dtype = torch.float32,
               batch: Union[str, int] = "dynamic", size: int = 224, check: bool = True) -> Optional[ExportCheck]:
    """torch.export of the fused model (fuse(model, dtype=dtype) on the CPU), saved with torch.export.save.
    The program holds this library's ops (slowfast_kernels::conv3d_bn_act ...): load it with
    ``import slowfast_kernels; torch.export.load(path).module()``. It runs each op through its dispatcher
    (no per-shape runners: about 2x the fused model's time on the CPU); H and W are fixed at size."""
    from .fuse import fuse

    _check_args(model, "pt2", dtype, batch, size)
    wrapped = named_inputs(fuse(copy.deepcopy(model).eval().to("cpu", torch.float32), dtype=dtype, device="cpu"))
    example = example_inputs(model, 2 if batch == "dynamic" else batch, size, torch.float32)
    dynamic = None
    if batch == "dynamic":
        dim = torch.export.Dim("batch", min=1, max=1024)
        dynamic = tuple({0: dim} for _ in example)
    with torch.no_grad():
        program = torch.export.export(wrapped, example, dynamic_shapes=dynamic)
    path = os.fspath(path)
    torch.export.save(program, path)
    return check_export(model, path, "pt2", dtype, example) if check else None


def run_exported(path: str, fmt: str, inputs: Sequence[torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """The logits of an exported file on inputs (onnxruntime's CPU provider for ONNX)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = {}
        for name, t in zip(names, inputs):
            # numpy has no bfloat16: a bf16 model's inputs go in as the bits ORT reads as bfloat16
            feeds[name] = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        out = session.run(None, feeds)[0]
        result = torch.from_numpy(out)
        return result.view(torch.bfloat16) if result.dtype == torch.int16 else result
    program = torch.export.load(path)
    with torch.no_grad():
        return program.module()(*inputs)


def check_export(model: nn.Module, path: str, fmt: str, dtype: torch.dtype,
                 inputs: Sequence[torch.Tensor]) -> ExportCheck:
    """Compare the exported file's logits with the unfolded reference run in float64 on the same inputs."""
    ref64 = named_inputs(copy.deepcopy(model).eval().to("cpu", torch.float64))
    with torch.no_grad():
        oracle = ref64(*(t.double() for t in inputs))
        got = run_exported(path, fmt, inputs, input_names(model)).double()
        scale = oracle.abs().max().clamp_min(1e-12).item()
        err = (got - oracle).abs().max().item()
        ref_rel = None
        tol = FP32_RTOL
        if dtype != torch.float32:
            eager = named_inputs(copy.deepcopy(model).eval().to("cpu", dtype))(*(t.to(dtype) for t in inputs)).double()
            ref_rel = (eager - oracle).abs().max().item() / scale
            tol = 2 * ref_rel
    result = ExportCheck(path, fmt, str(dtype).replace("torch.", ""), err, err / scale, tol, ref_rel)
    if not result.rel_error <= tol:
        raise ExportCheckError(f"export check failed: {result.summary()}")
    return result


def export(model: nn.Module, path: Union[str, os.PathLike], format: str = "onnx", **kwargs) -> Optional[ExportCheck]:
    """export_onnx or export_pt2 by format."""
    if format not in FORMATS:
        raise ValueError(f"export: format: expected one of {FORMATS}, got {format!r}")
    return (export_onnx if format == "onnx" else export_pt2)(model, path, **kwargs)
