"""export.py, utils.export and the onnxruntime model wrapper: round trip, metadata, dynamic axes,
failures and their one-sentence error path."""
from __future__ import annotations

import ast
import copy
import errno
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import export
import utils.export
from models import build_model, load_model, save_checkpoint
from utils.errors import UserError
from utils.export import ExportCheckError, ExportError, check_onnx, export_onnx, onnx_metadata, onnx_output_path
from utils.onnx_backend import MissingDependencyError, OnnxModelError, parse_names, parse_stride

NAMES = ["circle", "cross", "square"]
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_SLIM = any(importlib.util.find_spec(m) is not None for m in ("onnxslim", "onnxsim"))
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
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    printed = capsys.readouterr().out
    assert "ONNX check 1x3x64x64: max |diff|" in printed

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["names"] == "{0: 'circle', 1: 'cross', 2: 'square'}"
    assert meta["stride"] == "32"  # upstream's convention: the largest stride as an integer string
    assert parse_stride(meta["strides"]) == [8.0, 16.0, 32.0]
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
    with pytest.raises(OnnxModelError, match="exported for 64x64"):
        model(torch.rand(1, 3, 96, 64))


@needs_ort
def test_round_trip_dynamic_and_output_option(weights, tmp_path):
    from utils.onnx_backend import OnnxModel
    out = tmp_path / "sub" / "dyn.onnx"
    simplify = ["--simplify"] if HAS_SLIM else []  # without a simplifier --simplify is an error
    assert export.main(["--weights", str(weights), "--img", "64", "--dynamic", *simplify,
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
    export_onnx(model, out, (64, 64))
    results = check_onnx(out, model, (64, 64))
    assert results and all(r.ok for r in results)
    other = copy.deepcopy(model)
    with torch.no_grad():
        det = other.module_list[other.cfg.layers[other.yolo_indices[0]].inputs[0]].Conv2d
        det.bias += 0.5
    with pytest.raises(ExportCheckError, match="beyond tolerance"):
        check_onnx(out, other, (64, 64))


def _one_error_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("export.py: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@needs_ort
def test_failed_check_keeps_previous_file(weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")

    def failing_check(path, *args, **kwargs):
        assert Path(path).is_file() and Path(path) != out  # the staged file, not the destination
        raise ExportCheckError(f"{path}: onnxruntime output differs from PyTorch beyond tolerance: max |diff| 9")

    monkeypatch.setattr(utils.export, "check_onnx", failing_check)
    assert export.main(["--weights", str(weights), "--img", "64", "--output", str(out)]) == 2
    assert out.read_bytes() == b"previous export"  # nothing replaced, nothing else removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left behind
    line = _one_error_line(capsys.readouterr().err, "export check failed", f"{out} not written",
                           "beyond tolerance", "--opset")
    assert ".tmp" not in line  # names the destination, not the staging file
    assert issubclass(ExportCheckError, UserError)


def test_bad_input_is_one_sentence(weights, tmp_path, capsys):
    (tmp_path / "link.onnx").symlink_to(weights)
    cases = [(["--weights", str(tmp_path / "missing.pt"), "--img", "64"], ("--weights", "missing.pt")),
             (["--weights", str(tmp_path / "x.onnx")], ("already an ONNX file",)),
             (["--weights", str(weights), "--output", str(tmp_path / "x.pt")], ("--output", ".onnx")),
             (["--weights", str(weights), "--output", str(tmp_path / "link.onnx")], ("overwrite the weights",)),
             (["--weights", str(weights), "--opset", "9", "--output", str(tmp_path / "o.onnx")], ("--opset 9",))]
    for argv, fragments in cases:
        assert export.main(argv) == 2, argv
        _one_error_line(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "o.onnx").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(ExportError, match="--output"):  # the library raises, the CLI reports
        onnx_output_path(weights, tmp_path / "x.pt")
    for argv in (["--img", "1", "2", "3"], ["--img", "0"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as e:
            export.parse_args(["--weights", "w.pt", *argv])
        assert e.value.code == 2 and argv[0] in capsys.readouterr().err


def test_read_only_output_folder_is_one_sentence(weights, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores modes: refuse mkdir as a read-only file system does
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        rc = export.main(["--weights", str(weights), "--img", "64", "--output", str(folder / "sub" / "m.onnx")])
    finally:
        folder.chmod(0o755)
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "permission denied", str(folder))


def test_ctrl_c_exits_130(weights, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_formats", interrupted)
    assert export.main(["--weights", str(weights), "--img", "64", "--output", str(tmp_path / "m.onnx")]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_missing_optional_dependency_message(monkeypatch):
    from utils.onnx_backend import require_onnx, require_onnxruntime
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        require_onnxruntime()
    with pytest.raises(ImportError, match="pip install onnx"):
        require_onnx()
    assert issubclass(MissingDependencyError, UserError)


def test_missing_onnx_is_one_sentence(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert export.main(["--weights", str(weights), "--output", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys.readouterr().err, "pip install onnx")


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
    meta = onnx_metadata(model, (64, 96), 1, False)
    assert parse_names(meta["names"]) == NAMES and meta["stride"] == "32" and meta["strides"] == "[8, 16, 32]"
    assert int(meta["stride"]) == 32 and ast.literal_eval(meta["names"]) == dict(enumerate(NAMES))
    assert meta["imgsz"] == "[64, 96]"
    assert meta["nc"] == str(model.nc) and meta["dynamic"] == "False"


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed")
def test_export_without_onnxruntime_says_unchecked(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "m.onnx"
    assert export.main(["--weights", str(weights), "--img", "64", "--output", str(out)]) == 0
    assert out.is_file() and "NOT checked" in capsys.readouterr().out


@needs_ort
def test_latency_benchmark_smoke(weights, tmp_path, capsys, monkeypatch):
    import importlib.util as iu
    import json
    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))  # as when run as a script: its folder first
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_sentence(weights, tmp_path, capsys):
    assert export.main(["--weights", str(weights), "--device", "cuda:0", "--output", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys.readouterr().err, "--device", "cpu")
    assert not list(tmp_path.iterdir())


@needs_ort
def test_export_leaves_the_model_unchanged(weights, tmp_path):
    """BN folding happens on a fused copy: the caller's model keeps its BatchNorms, weights and mode."""
    model = load_model(weights, "cpu", verbose=False).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", (64, 64))
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert any("BatchNorm2d" in seq._modules for _, seq in model.conv_layers())
