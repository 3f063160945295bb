"""quantize.py and utils.quantize: INT8 end to end on a tiny model, the FP32 head rule, calibration."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export
import quantize
from models import build_model, save_checkpoint
from utils.backends import load_backend
from utils.quantize import CalibrationImages, head_nodes, int8_output_path, quantize_onnx, round_robin_latency
from utils.synthetic import CLASS_NAMES, make_shapes_dataset

HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
HAS_OV = importlib.util.find_spec("openvino") is not None
pytestmark = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
IMG = 64


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=len(CLASS_NAMES))
    model.names = list(CLASS_NAMES)
    save_checkpoint(root / "tiny.pt", model)
    make_shapes_dataset(root / "data", n_train=6, n_val=3, n_test=3, img_size=IMG, workers=0)
    return root


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    not HAS_OV, reason="openvino not installed"))])
def test_quantize_end_to_end(work, runtime, capsys):
    out_json = work / f"{runtime}.json"
    assert quantize.main(["--weights", str(work / "tiny.pt"), "--data", str(work / "data"), "--img", str(IMG),
                          "--calib", "4", "--runtime", runtime, "--runs", "3", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["task"] == "test" and res["calib"] == 4 and res["head"] == "FP32"  # test split when present
    assert set(res["models"]) == {"FP32", "INT8"}
    for row in res["models"].values():
        assert 0 <= row["mAP50-95"] <= row["mAP50"] <= 1 and row["median_ms"] > 0
    out = Path(res["int8"])
    assert out == int8_output_path(work / "tiny.pt", runtime) and out.exists()
    printed = capsys.readouterr().out
    assert "INT8 model:" in printed and "FP32" in printed
    if runtime == "onnxruntime":
        import onnx
        proto = onnx.load(str(out))
        ops = {n.op_type for n in proto.graph.node}
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["stride"] == "32" and "circle" in meta["names"]
        # the head stays FP32: every node feeding the output is a plain float op, no DequantizeLinear
        head = set(head_nodes(proto))
        assert head and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.name in head
                                for n in proto.graph.node)


def test_int8_output_is_close_to_fp32(work):
    fp32_src = work / "fp32.onnx"
    assert export.main(["--weights", str(work / "tiny.pt"), "--img", str(IMG), "--output", str(fp32_src)]) == 0
    calib = CalibrationImages(str(work / "data" / "images" / "train"), IMG, 6)
    q = quantize_onnx(fp32_src, work / "q.onnx", calib)
    x = torch.from_numpy(next(calib.arrays()))
    a, b = load_backend(fp32_src)(x)[0], load_backend(q)(x)[0]
    assert a.shape == b.shape
    # boxes in pixels: INT8 noise stays well below the image size; scores within a few hundredths
    assert (a[..., :4] - b[..., :4]).abs().median() < 0.05 * IMG
    assert (a[..., 4:] - b[..., 4:]).abs().median() < 0.05


def test_head_nodes_are_the_detect_convs_and_decode(work):
    import onnx
    path = work / "head.onnx"
    assert export.main(["--weights", str(work / "tiny.pt"), "--img", str(IMG), "--output", str(path)]) == 0
    proto = onnx.load(str(path))
    head = set(head_nodes(proto))
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name in head]
    assert len(convs) == 3  # one 1x1 detect conv per level
    assert all(next(a for a in n.attribute if a.name == "kernel_shape").ints == [1, 1] for n in convs)
    assert len(head) < len(proto.graph.node) / 2


def test_calibration_images_are_letterboxed_train_images(work):
    calib = CalibrationImages(str(work / "data" / "images" / "train"), 96, 2)
    arrays = list(calib.arrays())
    assert len(calib) == 2 and len(arrays) == 2
    assert arrays[0].shape == (1, 3, 96, 96) and arrays[0].dtype == np.float32 and 0 <= arrays[0].min()
    assert calib.get_next()["images"].shape == (1, 3, 96, 96)
    calib.get_next()
    assert calib.get_next() is None
    calib.rewind()
    assert calib.get_next() is not None


def test_round_robin_latency_reports_every_runner():
    res = round_robin_latency({"a": lambda x: x.sum(), "b": lambda x: x.mean()}, (1, 3, 8, 8), runs=4, warmup=1)
    assert set(res) == {"a", "b"} and all(r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in res.values())


def test_bad_weights_is_one_sentence(work, tmp_path, capsys):
    bad = tmp_path / "m.torchscript"
    bad.write_text("x")
    assert quantize.main(["--weights", str(bad), "--data", str(work / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "quantize.py: error: --weights" in err


def test_pipeline_report_int8_row(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import pipeline_report
    model = tmp_path / "m_int8.onnx"
    model.write_bytes(b"x" * 2000)
    res = {"int8": str(model), "runtime": "onnxruntime", "head": "FP32",
           "models": {"FP32": {"mAP50": 0.8, "mAP50-95": 0.5, "median_ms": 10.0},
                      "INT8": {"mAP50": 0.79, "mAP50-95": 0.48, "median_ms": 5.0}}}
    (tmp_path / "int8.json").write_text(json.dumps(res))
    final = {"params": 100, "flops": 1000}
    row = pipeline_report.int8_stage(tmp_path / "int8.json", final)
    assert row["mAP50"] == 0.79 and row["cpu_ms"] == 5.0 and row["size_mb"] == 0.002 and row["params"] == 100
    note = pipeline_report.int8_note({pipeline_report.INT8_STAGE: row})
    assert "10.0 ms" in note and "2.00x faster" in note and "head kept FP32" in note
    assert pipeline_report.parse_args(["--run", "r", "--base", "b", "--sparse", "s", "--pruned", "p", "--finetune",
                                       "f", "--distill", "d", "--int8", "j"]).int8 == "j"


def test_quantize_head_keeps_the_decode_fp32(work):
    import onnx
    path = work / "head2.onnx"
    assert export.main(["--weights", str(work / "tiny.pt"), "--img", str(IMG), "--output", str(path)]) == 0
    proto = onnx.load(str(path))
    decode = set(head_nodes(proto, convs=False))
    assert decode and decode < set(head_nodes(proto))
    assert not any(n.op_type == "Conv" for n in proto.graph.node if n.name in decode)
    calib = CalibrationImages(str(work / "data" / "images" / "train"), IMG, 2)
    q = onnx.load(str(quantize_onnx(path, work / "q_head.onnx", calib, keep_head_fp32=False)))
    by_name = {n.name: n for n in q.graph.node}
    # walking back from the output of the INT8 graph: float decode ops; the only Q/DQ pairs there
    # quantize the detect convs' own outputs (Conv -> Q -> DQ -> decode), nothing deeper in the decode
    q_decode = [by_name[n] for n in head_nodes(q, convs=False)]
    assert {"Sigmoid", "Concat"} <= {n.op_type for n in q_decode}
    for n in q_decode:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            want = "Conv" if n.op_type == "QuantizeLinear" else "QuantizeLinear"
            assert [by_name[p].op_type for p in _producers(q, n)] == [want], n.name
    q_convs = [by_name[n] for n in head_nodes(q) if by_name[n].op_type == "Conv"]
    assert len(q_convs) == 3 and all(any(by_name[i].op_type == "DequantizeLinear" for i in _producers(q, c))
                                     for c in q_convs)


def _producers(proto, node) -> list[str]:
    return [n.name for n in proto.graph.node if set(n.output) & set(node.input)]


def test_onnx_input_and_class_mismatch(work, tmp_path, capsys):
    src = tmp_path / "m.onnx"
    assert export.main(["--weights", str(work / "tiny.pt"), "--img", str(IMG), "--output", str(src)]) == 0
    assert quantize.main(["--weights", str(src), "--data", str(work / "data"), "--calib", "2", "--runs", "2",
                          "--task", "val", "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["int8"] == str(tmp_path / "m_int8.onnx") and res["img"] == IMG and res["task"] == "val"
    other = tmp_path / "other"
    make_shapes_dataset(other, n_train=2, n_val=2, img_size=IMG, workers=0)
    text = (other / "dataset.yaml").read_text()
    (other / "dataset.yaml").write_text(text.replace("nc: 5", "nc: 4").replace(", ring]", "]"))
    (tmp_path / "m_int8.onnx").unlink()
    capsys.readouterr()
    assert quantize.main(["--weights", str(src), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "classes" in err
    assert not (tmp_path / "m_int8.onnx").exists()  # nothing written before the check


def test_round_robin_deciles_stay_within_the_measured_times(monkeypatch):
    """Few runs with one slow outlier: the default (exclusive) deciles would extrapolate below zero."""
    import utils.quantize as q
    clock = iter([0.0, 0.001, 0.0, 0.050, 0.0, 0.001, 0.0, 0.001])
    monkeypatch.setattr(q.time, "perf_counter", lambda: next(clock))
    out = q.round_robin_latency({"m": lambda x: None}, (1, 1), runs=4, warmup=0)["m"]
    assert 1.0 <= out["p10_ms"] <= out["median_ms"] <= out["p90_ms"] <= 50.0
