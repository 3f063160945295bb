"""Export of a detector to ONNX, OpenVINO IR and TorchScript, each verified against PyTorch before
it is published.

Every format holds the eval model's inference tensor, BatchNorm folded: input ``images``
(B, 3, H, W) in [0, 1], output ``output0`` (B, N, 5+nc) with xywh in input pixels and sigmoid
scores. Metadata follows upstream YOLOv5 so the tools users deploy with run our models unchanged:

* ONNX ``<stem>.onnx``: ``metadata_props`` ``stride`` (largest stride, '32'), ``names``
  ("{0: 'circle', ...}"), plus ``strides`` (per level), ``nc``, ``imgsz``, ``batch``, ``dynamic``.
* OpenVINO ``<stem>_openvino_model/``: ``<stem>.xml`` + ``<stem>.bin`` converted from the ONNX
  graph, and the metadata (``stride``, ``names``; plus ``strides``, ``imgsz``) as ``metadata.yaml``
  and as ``<stem>.yaml`` (the file upstream YOLOv5's DetectMultiBackend reads beside the .xml).
* TorchScript ``<stem>.torchscript``: traced, with ``config.txt`` (json: ``shape``, ``stride``,
  ``names``; plus ``strides``, ``dynamic``) in its extra files.

Each output is written under a temporary name beside its destination (a temporary folder for
OpenVINO), run by its runtime on random inputs against PyTorch, and renamed into place only when
``max|diff| <= tol * max(1, max|ref|)`` with tol 1e-3 (FP32) or 1e-2 (``half``); a failure leaves
the destination as it was. ``half``: FP16 weights and input/output (ONNX via onnxruntime's float16
converter, OpenVINO via ``compress_to_fp16``, TorchScript on CUDA only). ``nms``: the ONNX graph
gets a second output ``detections`` (K, 7) = [batch index, x1, y1, x2, y2, score, class] from an
ONNX ``NonMaxSuppression`` node (see :func:`nms_detections`).
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml

from .errors import UserError
from .fileio import atomic_folder, atomic_write
from .backends import openvino_core, openvino_cpu_config, require_openvino
from .onnx_backend import MissingDependencyError, is_onnx, require_onnx, require_onnxruntime

__all__ = ["ExportError", "ExportCheckError", "CheckResult", "INPUT_NAME", "OUTPUT_NAME", "NMS_OUTPUT_NAME",
           "MIN_OPSET", "FORMATS", "ExportSpec", "onnx_metadata", "openvino_metadata", "torchscript_config",
           "export_onnx", "simplify_onnx", "check_onnx", "export_checked", "export_openvino",
           "export_torchscript", "export_formats", "onnx_output_path", "output_paths", "nms_detections",
           "require_openvino", "write_openvino_metadata", "compare_runtime", "check_openvino", "check_torchscript"]

INPUT_NAME, OUTPUT_NAME, NMS_OUTPUT_NAME = "images", "output0", "detections"
MIN_OPSET = 11  # meshgrid/arange in the decode and nearest upsampling need opset 11+
RELATIVE_TOL = 1e-3
HALF_RELATIVE_TOL = 1e-2  # FP16 weights round to ~5e-4 relative each; errors add up through the layers
FORMATS = ("onnx", "openvino", "torchscript")


class ExportError(UserError, ValueError):
    """A request that cannot be exported as asked (opset, output name); the message names the flag."""


class ExportCheckError(UserError, RuntimeError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""


@dataclass
class CheckResult:
    """One runtime-vs-PyTorch comparison on a random input of ``shape``."""
    shape: tuple[int, ...]
    max_diff: float
    max_ref: float
    rel_tol: float = RELATIVE_TOL

    @property
    def tolerance(self) -> float:
        return self.rel_tol * max(1.0, self.max_ref)

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance

    def __str__(self) -> str:
        return (f"{'x'.join(map(str, self.shape))}: max |diff| {self.max_diff:.3g} "
                f"(max |output| {self.max_ref:.4g}, tolerance {self.tolerance:.3g})")


@dataclass
class ExportSpec:
    """What to export: input size, static batch, opset, and the options of export.py."""
    img_size: tuple[int, int] = (640, 640)
    batch: int = 1
    opset: int = 17
    dynamic: bool = False
    simplify: bool = False
    half: bool = False
    nms: bool = False
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 100

    @property
    def rel_tol(self) -> float:
        return HALF_RELATIVE_TOL if self.half else RELATIVE_TOL


class _InferenceOutput(nn.Module):
    """Exposes only the decoded (B, N, 5+nc) tensor; the raw maps are training-only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def _quiet_export_warnings() -> None:
    for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
        warnings.filterwarnings("ignore", category=category)


def _inference_copy(model: nn.Module, half: bool = False) -> nn.Module:
    """A fused eval copy (FP16 when asked); ``model`` itself is never changed."""
    net = model.fused_copy() if hasattr(model, "fused_copy") else copy.deepcopy(model).eval()
    net = net.half() if half else net.float()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def onnx_metadata(model: nn.Module, img_size: tuple[int, int], batch: int, dynamic: bool) -> dict[str, str]:
    """Metadata strings in upstream YOLOv5's convention, so tools that deploy upstream models run ours:
    ``stride`` the largest stride as an integer string ('32') and ``names`` a dict literal
    ("{0: 'circle', ...}"); our extras under their own keys: ``strides`` (per level, '[8, 16, 32]'),
    ``nc``, the input the graph was exported for and a description."""
    names = {i: str(n) for i, n in enumerate(model.names)}
    strides = [int(s) if float(s).is_integer() else float(s) for s in model.stride.tolist()]
    return {"stride": str(int(max(strides))), "names": str(names), "strides": repr(strides),
            "nc": str(len(names)), "imgsz": repr(list(img_size)), "batch": str(batch),
            "dynamic": str(bool(dynamic)),
            "description": "yolov5-prune detector: output0 (B, N, 5+nc) = xywh pixels, obj, cls"}


class _NmsFunction(torch.autograd.Function):
    """Per-class NMS; exported as one ONNX ``NonMaxSuppression`` node (the PyTorch forward, used
    while tracing and in tests, computes the same selection with torchvision)."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_det: int, iou_thres: float,
                conf_thres: float) -> torch.Tensor:
        """boxes (B, N, 4) xyxy, scores (B, C, N) -> selected (K, 3) = [batch, class, box index]."""
        from torchvision.ops import nms
        rows = [torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)]
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                keep = (scores[b, c] > conf_thres).nonzero().flatten()
                idx = keep[nms(boxes[b, keep], scores[b, c, keep], iou_thres)[:max_det]]
                rows.append(torch.stack([torch.full_like(idx, b), torch.full_like(idx, c), idx], 1))
        return torch.cat(rows, 0)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou_thres: float, conf_thres: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_thres], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([conf_thres], dtype=torch.float32)))


def nms_detections(y: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                   max_det: int = 100) -> torch.Tensor:
    """The ``--nms`` graph tail: (B, N, 5+nc) inference tensor -> (K, 7) rows
    [batch index, x1, y1, x2, y2, score, class], grouped by image and class, best score first.

    Each box competes only in its best class (score = objectness x class score), as the Python
    :func:`utils.boxes.non_max_suppression` does with ``multi_label=False``; ``max_det`` bounds the
    boxes per image and class (the ONNX operator's ``max_output_boxes_per_class``).
    """
    n = y.shape[1]
    xy, wh = y[..., :2], y[..., 2:4]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)  # (B, N, 4) xyxy
    scores = y[..., 5:] * y[..., 4:5]  # (B, N, C)
    scores = scores * (scores == scores.amax(-1, keepdim=True)).to(scores.dtype)  # best class only
    scores_t = scores.transpose(1, 2).contiguous()  # (B, C, N)
    sel = _NmsFunction.apply(boxes, scores_t, int(max_det), float(iou_thres), float(conf_thres))  # (K, 3)
    bi, ci, ni = sel[:, 0], sel[:, 1], sel[:, 2]
    box = boxes.reshape(-1, 4)[bi * n + ni]  # (K, 4)
    score = scores_t.reshape(-1)[(bi * scores_t.shape[1] + ci) * n + ni]  # (K,)
    return torch.cat([bi[:, None].to(y.dtype), box, score[:, None], ci[:, None].to(y.dtype)], 1)


class _WithNms(nn.Module):
    """Outputs ``output0`` (B, N, 5+nc) and ``detections`` (K, 7) (see :func:`nms_detections`)."""

    def __init__(self, model: nn.Module, spec: ExportSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.model(x)[0]
        return y, nms_detections(y.float(), self.spec.conf_thres, self.spec.iou_thres, self.spec.max_det)


def _set_metadata(proto: Any, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _to_float16(proto: Any) -> Any:
    """FP16 weights and input/output via onnxruntime's converter (works on CPU, no GPU needed)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise MissingDependencyError("--half for ONNX needs onnxruntime's float16 converter: "
                                     "pip install onnxruntime") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=False, disable_shape_infer=True)
    _float32_resize_scales(half)
    return half


def _float32_resize_scales(proto: Any) -> None:
    """Resize's ``scales`` input must be float32; the converter turns its Constant into float16."""
    onnx = require_onnx()
    scales = {n.input[2] for n in proto.graph.node if n.op_type == "Resize" and len(n.input) > 2}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] in scales:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT16:
                    value = onnx.numpy_helper.to_array(attr.t).astype(np.float32)
                    attr.t.CopyFrom(onnx.numpy_helper.from_array(value, attr.t.name))
    for init in proto.graph.initializer:
        if init.name in scales and init.data_type == onnx.TensorProto.FLOAT16:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).astype(np.float32),
                                                       init.name))


def export_onnx(model: nn.Module, path: str | Path, img_size: tuple[int, int] = (640, 640),
                batch: int = 1, opset: int = 17, dynamic: bool = False,
                spec: ExportSpec | None = None) -> Path:
    """Write ``model``'s inference graph (BN folded, on a copy) with metadata to ``path``.

    Uses the TorchScript-based exporter (``dynamo=False``): the torch.export-based default needs
    the separate onnxscript package, and the traced graph of our decode already follows the input
    shape, so ``dynamic`` axes (batch, height, width) work with it. ``spec`` (when given) overrides
    the size arguments and adds ``half`` and ``nms``.
    """
    spec = spec or ExportSpec(tuple(img_size), batch, opset, dynamic)
    onnx = require_onnx()
    if spec.opset < MIN_OPSET:
        raise ExportError(f"--opset {spec.opset}: the detection decode needs opset {MIN_OPSET} or newer")
    net = _inference_copy(model)
    wrapper = (_WithNms(net, spec) if spec.nms else _InferenceOutput(net)).eval()
    x = torch.zeros(spec.batch, 3, *spec.img_size, device=next(model.parameters()).device)
    outputs = [OUTPUT_NAME, NMS_OUTPUT_NAME] if spec.nms else [OUTPUT_NAME]
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 1: "anchors"}} if spec.dynamic else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        _quiet_export_warnings()
        torch.onnx.export(wrapper, (x,), str(path), dynamo=False, opset_version=spec.opset,
                          input_names=[INPUT_NAME], output_names=outputs,
                          dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    if spec.half:
        proto = _to_float16(proto)
    _set_metadata(proto, onnx_metadata(model, spec.img_size, spec.batch, spec.dynamic))
    onnx.save(proto, str(path))
    return path


def _simplifier() -> tuple[str, Callable[[Any], Any]] | None:
    """(name, proto -> simplified proto): onnxslim, else onnxsim; None when neither is installed."""
    try:
        import onnxslim
        return "onnxslim", onnxslim.slim
    except ImportError:
        pass
    try:
        import onnxsim
    except ImportError:
        return None

    def run(proto: Any) -> Any:
        simplified, ok = onnxsim.simplify(proto)
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified graph")
        return simplified
    return "onnxsim", run


def simplify_onnx(path: str | Path) -> bool:
    """Simplify in place with onnxslim (or onnxsim); True when the file was changed.

    Neither installed: :class:`MissingDependencyError` naming ``pip install onnxslim``. A
    simplifier that fails on the graph only warns; the unsimplified graph is kept.
    """
    found = _simplifier()
    if found is None:
        raise MissingDependencyError("--simplify needs onnxslim: pip install onnxslim "
                                     "(or export without --simplify)")
    name, simplify = found
    onnx = require_onnx()
    proto = onnx.load(str(path))
    try:
        simplified = simplify(proto)
    except Exception as e:  # simplifiers raise assorted runtime errors on unsupported graphs
        print(f"--simplify: {name} failed ({type(e).__name__}: {e}); keeping the unsimplified graph")
        return False
    _set_metadata(simplified, {p.key: p.value for p in proto.metadata_props})
    onnx.save(simplified, str(path))
    return True


def _check_shapes(img_size: tuple[int, int], batch: int, dynamic: bool,
                  max_stride: int) -> list[tuple[int, int, int, int]]:
    """The exported shape, plus for dynamic graphs another batch and height (proves the axes)."""
    shapes = [(batch, 3, *img_size)]
    if dynamic:
        shapes.append((batch + 1, 3, img_size[0] + max_stride, img_size[1]))
    return shapes


@torch.no_grad()
def compare_runtime(run: Callable[[np.ndarray], np.ndarray], model: nn.Module, shapes: Sequence[tuple],
                    name: str, rel_tol: float = RELATIVE_TOL, seed: int = 0) -> list[CheckResult]:
    """``run`` (a runtime: float32 (B, 3, H, W) array -> (B, N, 5+nc)) and ``model`` (eval, its
    device) on the same random inputs; :class:`ExportCheckError` when any comparison exceeds the
    tolerance. ``model``'s train/eval mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    results = []
    try:
        for shape in shapes:
            x = torch.rand(tuple(shape), generator=gen)
            ref = model(x.to(device))[0].float().cpu()  # (B, N, 5+nc)
            out = torch.from_numpy(np.asarray(run(x.numpy()), dtype=np.float32))
            if out.shape != ref.shape:
                raise ExportCheckError(f"{name}: output shape {tuple(out.shape)} differs from "
                                       f"PyTorch's {tuple(ref.shape)} for input {tuple(shape)}")
            results.append(CheckResult(tuple(shape), float((out - ref).abs().max()), float(ref.abs().max()),
                                       rel_tol))
    finally:
        model.train(was_training)
    bad = [r for r in results if not r.ok]
    if bad:
        raise ExportCheckError(f"{name}: output differs from PyTorch beyond tolerance: "
                               + "; ".join(map(str, bad)))
    return results


def check_onnx(path: str | Path, model: nn.Module, img_size: tuple[int, int], batch: int = 1,
               dynamic: bool = False, seed: int = 0, rel_tol: float = RELATIVE_TOL) -> list[CheckResult]:
    """Run the ONNX file with onnxruntime (CPU) and ``model`` on the same random inputs; raise
    :class:`ExportCheckError` when any comparison exceeds the tolerance."""
    ort = require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    shapes = _check_shapes(img_size, batch, dynamic, int(max(model.stride.tolist())))
    return compare_runtime(lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(dtype)})[0],
                           model, shapes, str(path), rel_tol, seed)


def _check_nms_output(path: Path, spec: ExportSpec, seed: int = 0) -> None:
    """The embedded NMS output equals :func:`nms_detections` applied to the graph's own output0."""
    ort = require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand((spec.batch, 3, *spec.img_size), generator=torch.Generator().manual_seed(seed))
    dtype = np.float16 if spec.half else np.float32
    y, det = session.run([OUTPUT_NAME, NMS_OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(dtype)})
    ref = nms_detections(torch.from_numpy(y).float(), spec.conf_thres, spec.iou_thres, spec.max_det)
    got = torch.from_numpy(det).float()
    if got.shape != ref.shape or (got.shape[0] and not torch.allclose(_sorted(got), _sorted(ref), atol=1e-2)):
        raise ExportCheckError(f"{path}: the embedded NMS selected {got.shape[0]} boxes, PyTorch "
                               f"{ref.shape[0]} (or different ones)")


def _sorted(det: torch.Tensor) -> torch.Tensor:
    """(K, 7) rows in a canonical order (batch, class, score descending)."""
    key = det[:, 0] * 1e6 + det[:, 6] * 1e3 - det[:, 5]
    return det[key.argsort()]


def _verify(check: Callable[[], list[CheckResult]], out: Path) -> list[CheckResult]:
    """``check()`` on a staged output; its failure names the destination, not the staging name.
    A missing runtime only warns: the output is then published unchecked."""
    try:
        return check()
    except ExportCheckError as e:
        detail = str(e).split(": ", 1)[-1]
        raise ExportCheckError(f"export check failed, {out} not written ({detail}); try another --opset "
                               f"or export without --simplify/--half") from None
    except ImportError as e:
        print(f"WARNING: {e}\nWARNING: {out} was NOT checked against PyTorch")
        return []


def export_checked(model: nn.Module, out: str | Path, img_size: tuple[int, int], batch: int = 1,
                   opset: int = 17, dynamic: bool = False, simplify: bool = False,
                   spec: ExportSpec | None = None) -> list[CheckResult]:
    """Export ``model`` to the ONNX file ``out`` only if the graph reproduces PyTorch (see the
    module docstring). On any failure the previous ``out`` (if any) is left as it was and no
    temporary file remains. Returns the comparisons made (empty without onnxruntime)."""
    spec = spec or ExportSpec(tuple(img_size), batch, opset, dynamic, simplify)
    out = Path(out)
    results: list[CheckResult] = []

    def write(tmp: Path) -> None:
        export_onnx(model, tmp, spec=spec)
        if spec.simplify:
            simplify_onnx(tmp)
        results.extend(_verify(lambda: check_onnx(tmp, model, spec.img_size, spec.batch, spec.dynamic,
                                                  rel_tol=spec.rel_tol), out))
        if spec.nms and results:
            _verify(lambda: _check_nms_output(tmp, spec) or [], out)

    atomic_write(out, write)
    return results


# ------------------------------------------------------------------------------------- folders
# ----------------------------------------------------------------------------------- OpenVINO
def openvino_metadata(model: nn.Module, img_size: tuple[int, int]) -> dict:
    """metadata.yaml content: ``stride`` (int, largest) and ``names`` ({0: 'name'}) as upstream
    writes them, plus ``strides`` and ``imgsz``."""
    strides = [int(s) for s in model.stride.tolist()]
    return {"stride": max(strides), "names": {i: str(n) for i, n in enumerate(model.names)},
            "strides": strides, "imgsz": list(img_size)}


def write_openvino_metadata(folder: Path, stem: str, metadata: dict) -> None:
    """The same YAML twice: ``metadata.yaml`` and ``<stem>.yaml`` (the name upstream YOLOv5's
    DetectMultiBackend reads beside ``<stem>.xml``)."""
    text = yaml.safe_dump(metadata, sort_keys=False)
    for name in ("metadata.yaml", f"{stem}.yaml"):
        (folder / name).write_text(text)


def check_openvino(xml: Path, model: nn.Module, spec: ExportSpec) -> list[CheckResult]:
    compiled = openvino_core().compile_model(str(xml), "CPU", openvino_cpu_config())
    shapes = _check_shapes(spec.img_size, spec.batch, spec.dynamic, int(max(model.stride.tolist())))
    return compare_runtime(lambda x: compiled(x)[0], model, shapes, str(xml), spec.rel_tol)


def export_openvino(model: nn.Module, folder: str | Path, spec: ExportSpec,
                    stem: str | None = None) -> list[CheckResult]:
    """``<folder>/<stem>.xml`` + ``.bin`` (converted from a fresh FP32 ONNX graph without NMS;
    ``half`` compresses the weights to FP16) and the metadata (``metadata.yaml`` and
    ``<stem>.yaml``), checked, written atomically."""
    ov = require_openvino()
    folder = Path(folder)
    stem = stem or folder.name.removesuffix("_openvino_model")
    results: list[CheckResult] = []
    onnx_spec = ExportSpec(spec.img_size, spec.batch, spec.opset, spec.dynamic, spec.simplify)

    def write(tmp: Path) -> None:
        onnx_file = tmp / f"{stem}.onnx"
        export_onnx(model, onnx_file, spec=onnx_spec)
        if spec.simplify:
            simplify_onnx(onnx_file)
        xml = tmp / f"{stem}.xml"
        ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=spec.half)
        onnx_file.unlink()
        write_openvino_metadata(tmp, stem, openvino_metadata(model, spec.img_size))
        results.extend(_verify(lambda: check_openvino(xml, model, spec), folder))

    atomic_folder(folder, write)
    return results


# -------------------------------------------------------------------------------- TorchScript
def torchscript_config(model: nn.Module, spec: ExportSpec) -> dict:
    """``config.txt`` content: ``shape``, ``stride`` (largest) and ``names`` as upstream writes
    them, plus ``strides`` and ``dynamic``."""
    strides = [int(s) for s in model.stride.tolist()]
    return {"shape": [spec.batch, 3, *spec.img_size], "stride": max(strides),
            "names": {i: str(n) for i, n in enumerate(model.names)}, "strides": strides,
            "dynamic": bool(spec.dynamic)}


def check_torchscript(path: Path, model: nn.Module, spec: ExportSpec) -> list[CheckResult]:
    device = next(model.parameters()).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    dtype = torch.float16 if spec.half else torch.float32

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).to(device, dtype)).float().cpu().numpy()
    shapes = _check_shapes(spec.img_size, spec.batch, spec.dynamic, int(max(model.stride.tolist())))
    return compare_runtime(run, model, shapes, str(path), spec.rel_tol)


def export_torchscript(model: nn.Module, out: str | Path, spec: ExportSpec) -> list[CheckResult]:
    """Trace the fused inference model to ``out`` with ``config.txt`` in its extra files; checked,
    written atomically. ``half`` needs the model on CUDA (CPU kernels lack FP16 convolutions)."""
    device = next(model.parameters()).device
    if spec.half and device.type != "cuda":
        raise ExportError("--half: an FP16 TorchScript model needs --device cuda (CPU has no FP16 "
                          "convolutions); export without --half or on a GPU")
    out = Path(out)
    net = _InferenceOutput(_inference_copy(model, spec.half)).eval()
    x = torch.zeros(spec.batch, 3, *spec.img_size, device=device, dtype=torch.float16 if spec.half else None)
    with warnings.catch_warnings():
        _quiet_export_warnings()
        traced = torch.jit.trace(net, x, strict=False, check_trace=False)
    extra = {"config.txt": json.dumps(torchscript_config(model, spec))}
    results: list[CheckResult] = []

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        results.extend(_verify(lambda: check_torchscript(tmp, model, spec), out))

    atomic_write(out, write)
    return results


# ---------------------------------------------------------------------------------- all formats
def onnx_output_path(weights: Path, output: str | Path | None) -> Path:
    """``--output`` or ``<weights stem>.onnx`` beside the weights; refuses names that are not
    ``.onnx`` and the weights file itself."""
    out = Path(output) if output else weights.with_suffix(".onnx")
    if not is_onnx(out):
        raise ExportError(f"--output {out}: the file name must end in .onnx")
    if out.resolve() == weights.resolve():
        raise ExportError(f"--output {out}: would overwrite the weights file")
    return out


def output_paths(weights: Path, formats: Sequence[str], output: str | Path | None = None) -> dict[str, Path]:
    """Where each format goes: ``<stem>.onnx`` (or ``--output``), ``<stem>_openvino_model/``,
    ``<stem>.torchscript``, beside the weights (upstream's naming)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"--format {','.join(unknown)}: unknown; choose from {', '.join(FORMATS)}")
    paths = {"onnx": onnx_output_path(weights, output) if "onnx" in formats else None,
             "openvino": weights.parent / f"{weights.stem}_openvino_model",
             "torchscript": weights.with_suffix(".torchscript")}
    return {f: paths[f] for f in FORMATS if f in formats}


def export_formats(model: nn.Module, paths: dict[str, Path], spec: ExportSpec) -> dict[str, list[CheckResult]]:
    """Export ``model`` to every format in ``paths`` ({format: destination}); returns each
    format's checks. Formats are written one after another; a failing one stops the run (those
    already written stay)."""
    if spec.nms and "onnx" not in paths:
        raise ExportError("--nms embeds NMS in the ONNX graph only; add --format onnx")
    writers = {"onnx": lambda p: export_checked(model, p, spec.img_size, spec=spec),
               "openvino": lambda p: export_openvino(model, p, spec),
               "torchscript": lambda p: export_torchscript(model, p, spec)}
    return {fmt: writers[fmt](path) for fmt, path in paths.items()}
