"""export.py and the onnxruntime model wrapper: round trip, metadata, dynamic axes, failures."""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import export
from models import CheckpointError, build_model, load_model, save_checkpoint
from utils.onnx_backend import parse_names, parse_stride

NAMES = ["circle", "cross", "square"]
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny 3-class checkpoint with BatchNorm statistics that make BN folding non-trivial."""
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=len(NAMES))
    model.names = list(NAMES)
    with torch.no_grad():
        for _, seq in model.conv_layers():
            if "BatchNorm2d" in seq._modules:
                bn = seq.BatchNorm2d
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    save_checkpoint(path, model)
    return path


def _reference(weights: Path, x: torch.Tensor) -> torch.Tensor:
    """PyTorch output of the unfused checkpoint, computed independently of export.py."""
    model = load_model(weights, "cpu", verbose=False)
    with torch.no_grad():
        return model(x)[0]


@needs_ort
def test_round_trip_static(weights, capsys):
    import onnx
    from utils.onnx_backend import OnnxModel
    assert export.main(["--weights", str(weights), "--img", "64"]) == 0
    out = weights.with_suffix(".onnx")  # beside the weights, same stem
    assert out.is_file() and not list(out.parent.glob(".*partial*"))
    printed = capsys.readouterr().out
    assert "ONNX check 1x3x64x64: max |diff|" in printed

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["names"] == "{0: 'circle', 1: 'cross', 2: 'square'}"
    assert parse_stride(meta["stride"]) == [8.0, 16.0, 32.0]
    assert [o.name for o in proto.graph.output] == ["output0"]
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 5 + len(NAMES)]

    model = OnnxModel(out)
    assert model.names == NAMES and model.fixed_shape == (64, 64)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # batch 2 -> 2 runs of 1
    y, raw = model(x)
    ref = _reference(weights, x)
    assert raw == [] and y.shape == ref.shape
    assert (y - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item())
    with pytest.raises(ValueError, match="exported for 64x64"):
        model(torch.rand(1, 3, 96, 64))


@needs_ort
def test_round_trip_dynamic_and_output_option(weights, tmp_path):
    from utils.onnx_backend import OnnxModel
    out = tmp_path / "sub" / "dyn.onnx"
    assert export.main(["--weights", str(weights), "--img", "64", "--dynamic", "--simplify",
                        "--output", str(out)]) == 0
    model = OnnxModel(out)
    assert model.dynamic and model.fixed_batch is None
    for shape in [(1, 3, 64, 64), (3, 3, 96, 128)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
        ref = _reference(weights, x)
        y = model(x)[0]
        assert y.shape == ref.shape  # the decode grid follows the input size
        assert (y - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item())


@needs_ort
def test_wrapper_behaves_like_an_eval_model(weights, tmp_path):
    """Code written for our model (device from parameters, deepcopy, fuse) accepts the wrapper."""
    from utils.onnx_backend import OnnxModel
    out = tmp_path / "m.onnx"
    export.main(["--weights", str(weights), "--img", "64", "--output", str(out)])
    model = OnnxModel(out)
    assert next(model.parameters()).device.type == "cpu"
    clone = copy.deepcopy(model).fuse()
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(clone(x)[0], model(x)[0])
    assert model(x.double())[0].dtype == torch.float64  # output follows the input dtype


@needs_ort
def test_check_detects_a_mismatch(weights, tmp_path):
    """The verification can fail: a graph compared against a different model is rejected."""
    out = tmp_path / "m.onnx"
    model = load_model(weights, "cpu", verbose=False)
    export.export_onnx(model, out, (64, 64))
    results = export.check_onnx(out, model, (64, 64))
    assert results and all(r.ok for r in results)
    other = copy.deepcopy(model)
    with torch.no_grad():
        det = other.module_list[other.cfg.layers[other.yolo_indices[0]].inputs[0]].Conv2d
        det.bias += 0.5
    with pytest.raises(export.ExportCheckError, match="beyond tolerance"):
        export.check_onnx(out, other, (64, 64))


@needs_ort
def test_failed_check_keeps_previous_file(weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")

    def failing_check(*args, **kwargs):
        raise export.ExportCheckError("max |diff| too large")

    monkeypatch.setattr(export, "check_onnx", failing_check)
    assert export.main(["--weights", str(weights), "--img", "64", "--output", str(out)]) == 1
    assert out.read_bytes() == b"previous export"  # nothing replaced, nothing else removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left behind
    assert "export check failed" in capsys.readouterr().out


def test_bad_input_is_named(weights, tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt"):
        export.main(["--weights", str(tmp_path / "missing.pt"), "--img", "64"])
    with pytest.raises(ValueError, match="already an ONNX file"):
        export.main(["--weights", str(tmp_path / "x.onnx")])
    with pytest.raises(ValueError, match="--output"):
        export.main(["--weights", str(weights), "--output", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):
        export.parse_args(["--weights", "w.pt", "--img", "1", "2", "3"])


def test_missing_optional_dependency_message(monkeypatch):
    from utils.onnx_backend import require_onnx, require_onnxruntime
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        require_onnxruntime()
    with pytest.raises(ImportError, match="pip install onnx"):
        require_onnx()


def test_metadata_parsers():
    assert parse_names("{0: 'a', 1: 'b'}") == ["a", "b"]
    assert parse_names("['a', 'b']") == ["a", "b"]
    assert parse_stride("32") == [32.0]  # upstream stores only the max stride
    assert parse_stride("[8, 16, 32]") == [8.0, 16.0, 32.0]
    with pytest.raises(ValueError, match="0..n-1"):
        parse_names("{1: 'a'}")
    with pytest.raises(ValueError, match="positive"):
        parse_stride("[0]")


def test_metadata_content(weights):
    model = load_model(weights, "cpu", verbose=False)
    meta = export.onnx_metadata(model, (64, 96), 1, False)
    assert parse_names(meta["names"]) == NAMES and meta["stride"] == "[8, 16, 32]"
    assert meta["imgsz"] == "[64, 96]"
    assert meta["nc"] == str(model.nc) and meta["dynamic"] == "False"


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed")
def test_export_without_onnxruntime_says_unchecked(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "m.onnx"
    assert export.main(["--weights", str(weights), "--img", "64", "--output", str(out)]) == 0
    assert out.is_file() and "NOT checked" in capsys.readouterr().out


@needs_ort
def test_latency_benchmark_smoke(weights, tmp_path, capsys):
    import importlib.util as iu
    import json
    root = Path(__file__).resolve().parents[1]
    spec = iu.spec_from_file_location("bench_onnx_latency", root / "benchmarks" / "bench_onnx_latency.py")
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "lat.json"
    assert bench.main(["--weights", str(weights), str(weights), "--labels", "a", "b", "--img", "64",
                       "--runs", "2", "--warmup", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["img"] == 64 and set(row["models"]) == {"a", "b"}
    assert all(m["ms_median"] > 0 for m in row["models"].values())
    assert row["models"]["a"]["gflops"] == row["models"]["b"]["gflops"] > 0
    assert "| 64 |" in capsys.readouterr().out
