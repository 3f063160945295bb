"""INT8 post-training static quantization of an exported detector, and its cost/benefit.

:func:`quantize_onnx` runs ONNX Runtime's ``quantize_static`` (QDQ format, per-channel weights,
MinMax calibration) on letterboxed images of the TRAIN split read by :class:`CalibrationImages`.
The detection head stays in FP32 by default: :func:`head_nodes` finds, from the graph alone, the
convolutions whose outputs reach the model output without another convolution in between (the
final 1x1 detect convs) and every node on that way (the box decode: sigmoid, grid, anchors,
concat); those are excluded from quantization. Measured on upstream's yolov5n trained on shapes
(320 px, 128 val images, 64 calibration images): FP32 mAP@.5:.95 0.1081; head FP32 0.1100;
detect convs INT8 with the decode FP32 0.1087; everything INT8 0.0000 (boxes in input pixels and
[0, 1] scores share one tensor, one 8-bit scale cannot serve both). So the decode always stays
FP32 and the detect convs stay FP32 unless asked (a small share of the compute).
:func:`openvino_from_onnx` converts an (INT8 QDQ or FP32) ONNX graph to OpenVINO IR; the OpenVINO
CPU plugin runs QDQ graphs in INT8 (NNCF is not needed). :func:`round_robin_latency` times models
one run each in turn, so load drifting on a shared machine hits all of them alike.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from .augment import letterbox
from .backends import require_openvino
from .dataconfig import list_image_files
from .errors import UserError
from .export import write_openvino_metadata
from .onnx_backend import read_metadata, require_onnx, require_onnxruntime

__all__ = ["QuantizeError", "CalibrationImages", "head_nodes", "quantize_onnx", "openvino_from_onnx",
           "round_robin_latency", "int8_output_path"]


class QuantizeError(UserError, ValueError):
    """A quantization request that cannot be carried out; the message names the flag or file."""


class CalibrationImages:
    """The first ``count`` images of ``sources`` (sorted), letterboxed to ``size`` x ``size``,
    as (1, 3, size, size) float32 RGB in [0, 1]; also an onnxruntime CalibrationDataReader."""

    def __init__(self, sources: Any, size: int, count: int, input_name: str = "images"):
        files = sorted(list_image_files(sources))
        if not files:
            raise QuantizeError(f"no calibration images: the train split {sources} holds no images")
        self.files = files[:count]
        self.size, self.input_name = int(size), input_name
        self._iter: Iterator[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def arrays(self) -> Iterator[np.ndarray]:
        for f in self.files:
            image = cv2.imread(str(f))
            if image is None:
                continue  # unreadable files are the dataset checker's business; calibration skips them
            padded = letterbox(image, self.size, auto=False)[0]
            chw = np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / 255
            yield chw[None]  # (1, 3, size, size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """onnxruntime's CalibrationDataReader protocol."""
        if self._iter is None:
            self._iter = self.arrays()
        x = next(self._iter, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._iter = None


def head_nodes(proto: Any, convs: bool = True) -> list[str]:
    """Names of the detection head's nodes: walk back from the graph outputs through every
    non-Conv node (the decode); the Conv nodes where the walk stops are the detect convs, returned
    too unless ``convs`` is False."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    seen: set[str] = set()
    stack = [o.name for o in proto.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type != "Conv":
            stack.extend(node.input)
    return [n.name for n in proto.graph.node if n.name in seen and (convs or n.op_type != "Conv")]


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """onnxruntime's quantization tools log advice through the root logger; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _ensure_node_names(proto: Any) -> None:
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def quantize_onnx(fp32: Path, out: Path, calib: CalibrationImages, keep_head_fp32: bool = True,
                  per_channel: bool = True) -> Path:
    """INT8 QDQ model of ``fp32`` calibrated on ``calib``, written to ``out`` (metadata kept).

    The box decode always stays FP32; ``keep_head_fp32`` keeps the detect convs FP32 as well.
    """
    onnx, _ = require_onnx(), require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    named = out.with_name(out.stem + "_prep.onnx")
    with _quiet_ort_logging():
        quant_pre_process(str(fp32), str(named), skip_symbolic_shape=True)  # folds constants: biases -> initializers
    proto = onnx.load(str(named))
    _ensure_node_names(proto)
    onnx.save(proto, str(named))
    try:
        with _quiet_ort_logging():
            quantize_static(str(named), str(out), calib, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=head_nodes(proto, convs=keep_head_fp32))
    finally:
        named.unlink(missing_ok=True)
    q = onnx.load(str(out))
    del q.metadata_props[:]
    q.metadata_props.extend(proto.metadata_props)
    onnx.save(q, str(out))
    return out


def openvino_from_onnx(onnx_file: Path, folder: Path, stem: str) -> Path:
    """``folder/<stem>.xml`` + ``.bin`` + metadata (stride, names, strides; ``metadata.yaml`` and
    ``<stem>.yaml``) from an ONNX file."""
    ov, onnx = require_openvino(), require_onnx()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    names, strides = read_metadata(meta, str(onnx_file), None)
    ov.save_model(ov.convert_model(str(onnx_file)), str(folder / f"{stem}.xml"), compress_to_fp16=False)
    data = {"stride": int(max(strides)), "names": dict(enumerate(names)), "strides": [int(s) for s in strides]}
    write_openvino_metadata(folder, stem, data)
    return folder


def round_robin_latency(runners: dict[str, Callable[[np.ndarray], Any]], shape: Sequence[int],
                        runs: int = 50, warmup: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median, p10 and p90 milliseconds of each runner on one fixed random input, the runners
    called one after another ``runs`` times (after ``warmup`` rounds)."""
    x = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(warmup + runs):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, t in times.items():
        # inclusive: the deciles stay within the measured times (the default extrapolates on few runs)
        q = statistics.quantiles(t, n=10, method="inclusive") if len(t) > 1 else [t[0]] * 9
        out[name] = {"median_ms": statistics.median(t), "p10_ms": q[0], "p90_ms": q[-1]}
    return out


def int8_output_path(source: Path, runtime: str) -> Path:
    """``<stem>_int8.onnx`` or ``<stem>_int8_openvino_model/`` beside ``source``."""
    stem = source.stem.removesuffix("_openvino_model")
    if runtime == "openvino":
        return source.parent / f"{stem}_int8_openvino_model"
    return source.parent / f"{stem}_int8.onnx"
