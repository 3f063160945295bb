"""Deployment formats: ONNX (upstream-style metadata, --nms, --half, --simplify), OpenVINO IR and
TorchScript export with parity checks, and every format as --weights of val.py and prune_detect.py."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import export
import prune_detect
import val
from models import build_model, save_checkpoint
from utils.backends import OpenVinoModel, TorchScriptModel, backend_kind, load_backend
from utils.boxes import non_max_suppression
from utils.export import ExportCheckError, ExportSpec, export_openvino, nms_detections
from utils.fileio import atomic_folder
from utils.onnx_backend import MissingDependencyError, OnnxModel
from utils.synthetic import CLASS_NAMES, make_shapes_dataset

HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
HAS_OV = importlib.util.find_spec("openvino") is not None
HAS_SLIM = any(importlib.util.find_spec(m) is not None for m in ("onnxslim", "onnxsim"))
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
needs_ov = pytest.mark.skipif(not (HAS_OV and HAS_ORT), reason="openvino (and onnx) not installed")
IMG = 64


def _confident_tiny_model() -> torch.nn.Module:
    """yolov5n for the synthetic classes whose finest level gives input-dependent, confident boxes."""
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=len(CLASS_NAMES))
    model.names = list(CLASS_NAMES)
    for _, seq in model.conv_layers():
        torch.nn.init.kaiming_normal_(seq.Conv2d.weight, nonlinearity="relu")
    level = model.yolo_layers[0]
    conv = model.module_list[model.cfg.layers[model.yolo_indices[0]].inputs[0]].Conv2d
    with torch.no_grad():
        w = conv.weight.view(level.na, -1, conv.in_channels)  # (na, 5+nc, cin)
        b = conv.bias.view(level.na, -1)
        w[:, 4:] *= 60
        w[:, :4] *= 3
        b[:, 4] += 6.6
        b[:, 5:] += 1.2
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """weights/tiny.pt exported to every installed format at 64 px, and a tiny labelled dataset."""
    root = tmp_path_factory.mktemp("formats")
    weights = root / "weights" / "tiny.pt"
    save_checkpoint(weights, _confident_tiny_model())
    make_shapes_dataset(root / "data", n_train=6, n_val=4, img_size=IMG, workers=0)
    formats = ",".join(f for f, ok in (("onnx", HAS_ORT), ("openvino", HAS_OV and HAS_ORT), ("torchscript", True))
                       if ok)
    assert export.main(["--weights", str(weights), "--img", str(IMG), "--format", formats]) == 0
    return root


def _exported(work: Path) -> list[Path]:
    w = work / "weights"
    found = [p for p in (w / "tiny.onnx", w / "tiny_openvino_model", w / "tiny.torchscript") if p.exists()]
    return found + ([w / "tiny_openvino_model" / "tiny.xml"] if (w / "tiny_openvino_model").exists() else [])


def test_outputs_are_named_as_upstream(work):
    w = work / "weights"
    assert (w / "tiny.torchscript").is_file()
    if HAS_ORT:
        assert (w / "tiny.onnx").is_file()
    if HAS_OV and HAS_ORT:
        folder = w / "tiny_openvino_model"
        assert sorted(p.name for p in folder.iterdir()) == ["metadata.yaml", "tiny.bin", "tiny.xml", "tiny.yaml"]
        for name in ("metadata.yaml", "tiny.yaml"):  # upstream's DetectMultiBackend reads <xml stem>.yaml
            meta = yaml.safe_load((folder / name).read_text())
            stride, names = int(meta["stride"]), meta["names"]
            assert stride == 32 and names == dict(enumerate(CLASS_NAMES))
    assert not [p for p in w.iterdir() if p.name.startswith(".")]  # no temporary files or folders left


@needs_ort
def test_onnx_metadata_loads_the_way_upstream_does(work):
    """Upstream v6.2 DetectMultiBackend: stride, names = int(meta['stride']), eval(meta['names'])."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(work / "weights" / "tiny.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    stride, names = int(meta["stride"]), ast.literal_eval(meta["names"])
    assert stride == 32
    assert names == dict(enumerate(CLASS_NAMES))
    assert ast.literal_eval(meta["strides"]) == [8, 16, 32]


def test_torchscript_config_loads_the_way_upstream_does(work):
    extra = {"config.txt": ""}
    torch.jit.load(str(work / "weights" / "tiny.torchscript"), _extra_files=extra)
    d = json.loads(extra["config.txt"], object_hook=lambda d: {int(k) if k.isdigit() else k: v for k, v in d.items()})
    assert d["stride"] == 32 and d["names"] == dict(enumerate(CLASS_NAMES)) and d["shape"] == [1, 3, IMG, IMG]


@needs_ort
def test_old_metadata_with_per_level_stride_list_still_loads(work, tmp_path):
    import onnx
    proto = onnx.load(str(work / "weights" / "tiny.onnx"))
    for p in list(proto.metadata_props):
        if p.key == "strides":
            proto.metadata_props.remove(p)
        elif p.key == "stride":
            p.value = "[8, 16, 32]"
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    assert OnnxModel(old).stride.tolist() == [8.0, 16.0, 32.0]
    assert OnnxModel(work / "weights" / "tiny.onnx").stride.tolist() == [8.0, 16.0, 32.0]


def test_every_format_matches_pytorch(work):
    model = _confident_tiny_model()
    x = torch.rand(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))  # batch 3 > static batch 1
    with torch.no_grad():
        ref = model(x)[0]
    for path in _exported(work):
        m = load_backend(path)
        assert m.names == list(CLASS_NAMES) and m.stride.tolist() == [8.0, 16.0, 32.0], path
        assert m.fixed_shape == (IMG, IMG) and m.nc == len(CLASS_NAMES), path
        y, raw = m(x)
        assert raw == [] and y.shape == ref.shape, path
        assert (y - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item()), path


def test_backend_kinds(work):
    w = work / "weights"
    assert backend_kind(w / "tiny.onnx") == "onnx" and backend_kind(w / "tiny.torchscript") == "torchscript"
    assert backend_kind(w / "tiny_openvino_model") == "openvino" == backend_kind(w / "x.xml")
    assert backend_kind(w / "tiny.pt") is None and load_backend(w / "tiny.pt") is None


def _val_map(work: Path, weights: Path, tmp_path: Path) -> dict:
    name = weights.name.replace(".", "_")
    assert val.main(["--weights", str(weights), "--data", str(work / "data"), "--img", str(IMG), "--device", "cpu",
                     "--project", str(tmp_path), "--name", name, "--no-plots", "--batch-size", "3"]) == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_val_takes_every_format(work, tmp_path):
    ref = _val_map(work, work / "weights" / "tiny.pt", tmp_path)
    assert ref["images"] == 4
    for path in _exported(work):
        got = _val_map(work, path, tmp_path)
        assert got["images"] == ref["images"] and got["instances"] == ref["instances"], path
        # static 64x64 graphs take square batches; the .pt runs rectangular ones at the same size
        assert abs(got["mAP50-95"] - ref["mAP50-95"]) < 0.05, (path, got["mAP50-95"], ref["mAP50-95"])


def test_prune_detect_takes_every_format(work, tmp_path):
    source = str(work / "data" / "images" / "val")

    def labels(weights: Path, name: str) -> list[str]:
        assert prune_detect.main(["--weights", str(weights), "--source", source, "--img", str(IMG), "--device",
                                  "cpu", "--project", str(tmp_path), "--name", name, "--save-txt", "--nosave",
                                  "--conf", "0.3"]) == 0
        return [p.read_text() for p in sorted((tmp_path / name / "labels").glob("*.txt"))]

    ref = labels(work / "weights" / "tiny.pt", "ref")  # square 64 px sources: same letterbox as static graphs
    assert len(ref) == 4 and any(ref)
    for i, path in enumerate(_exported(work)):
        got = labels(path, f"f{i}")
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert np.allclose(_rows(a), _rows(b), atol=2e-3), path


def _rows(text: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()]).reshape(-1, 5)


@needs_ort
def test_embedded_nms_matches_python_nms(work, tmp_path):
    import onnxruntime
    out = tmp_path / "nms.onnx"
    assert export.main(["--weights", str(work / "weights" / "tiny.pt"), "--img", str(IMG), "--batch-size", "2",
                        "--nms", "--conf-thres", "0.3", "--iou-thres", "0.5", "--output", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output0", "detections"]
    x = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    y, det = session.run(None, {"images": x.numpy()})
    ref = non_max_suppression(torch.from_numpy(y), 0.3, 0.5, max_det=1000)  # (n, 6) per image
    assert sum(len(r) for r in ref) > 3, "the test needs detections"
    for b in range(2):
        mine = det[det[:, 0] == b][:, 1:]  # x1 y1 x2 y2 score class
        theirs = ref[b].numpy()
        key = lambda a: np.lexsort((-a[:, 4], a[:, 5]))  # noqa: E731
        assert mine.shape == theirs.shape
        assert np.allclose(mine[key(mine)], theirs[key(theirs)], atol=1e-3)
    assert OnnxModel(out).nc == len(CLASS_NAMES)  # the first output still serves val and detect


def test_nms_detections_in_pytorch_equals_non_max_suppression():
    torch.manual_seed(0)
    y = torch.rand(2, 200, 5 + 3)
    y[..., :2] *= 64
    y[..., 2:4] = y[..., 2:4] * 20 + 2
    det = nms_detections(y, 0.2, 0.45, 1000)
    ref = non_max_suppression(y.clone(), 0.2, 0.45, max_det=1000)
    for b in range(2):
        assert (det[:, 0] == b).sum().item() == len(ref[b])
        assert torch.allclose(det[det[:, 0] == b][:, 5].sort().values, ref[b][:, 4].sort().values)


@needs_ort
@pytest.mark.skipif(not HAS_SLIM, reason="onnxslim/onnxsim not installed")
def test_simplify_and_half(work, tmp_path):
    out = tmp_path / "half.onnx"
    assert export.main(["--weights", str(work / "weights" / "tiny.pt"), "--img", str(IMG), "--simplify", "--half",
                        "--output", str(out)]) == 0
    m = OnnxModel(out)
    assert m.input_dtype == np.float16 and m.names == list(CLASS_NAMES)
    assert out.stat().st_size < 0.6 * (work / "weights" / "tiny.onnx").stat().st_size  # FP16 weights


def test_missing_simplifier_and_openvino_are_one_sentence(work, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxslim", None)
    monkeypatch.setitem(sys.modules, "onnxsim", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    w = str(work / "weights" / "tiny.pt")
    out = str(tmp_path / "x.onnx")
    if HAS_ORT:
        assert export.main(["--weights", w, "--img", str(IMG), "--simplify", "--output", out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install onnxslim" in err
        assert not Path(out).exists()
    assert export.main(["--weights", w, "--img", str(IMG), "--format", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install openvino" in err
    with pytest.raises(MissingDependencyError, match="pip install openvino"):
        OpenVinoModel(work / "weights" / "tiny_openvino_model")


def test_unknown_format_is_a_usage_error(work, capsys):
    with pytest.raises(SystemExit) as e:
        export.parse_args(["--weights", "x.pt", "--format", "onnx,tflite"])
    assert e.value.code == 2 and "--format tflite" in capsys.readouterr().err
    assert export.parse_args(["--weights", "x.pt", "--format", "onnx,openvino", "--format",
                              "torchscript,onnx"]).format == ["onnx", "openvino", "torchscript"]


@needs_ov
def test_failed_openvino_check_leaves_the_folder_as_it_was(work, tmp_path, monkeypatch):
    folder = tmp_path / "m_openvino_model"
    folder.mkdir()
    (folder / "old.txt").write_text("old")

    def fail(*a, **k):
        raise ExportCheckError("m.xml: output differs from PyTorch beyond tolerance: 1x3x64x64")
    monkeypatch.setattr("utils.export.check_openvino", fail)
    with pytest.raises(ExportCheckError, match="not written"):
        export_openvino(_confident_tiny_model(), folder, ExportSpec((IMG, IMG)))
    assert [p.name for p in folder.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["m_openvino_model"]


def test_atomic_folder_replaces_a_folder_whole(tmp_path):
    dest = tmp_path / "out"
    atomic_folder(dest, lambda t: (t / "a").write_text("1"))
    atomic_folder(dest, lambda t: (t / "b").write_text("2"))
    assert [p.name for p in dest.iterdir()] == ["b"]
    with pytest.raises(ValueError):
        atomic_folder(dest, lambda t: (_ for _ in ()).throw(ValueError("boom")))
    assert [p.name for p in dest.iterdir()] == ["b"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_torchscript_model_runs_on_its_own(work):
    m = TorchScriptModel(work / "weights" / "tiny.torchscript")
    assert m.metadata["stride"] == "32"
    with pytest.raises(Exception, match="exported for 64x64"):
        m(torch.rand(1, 3, 96, 64))


@needs_ov
def test_openvino_half_and_upstream_metadata_file(work, tmp_path):
    import shutil
    w = tmp_path / "w.pt"
    shutil.copy(work / "weights" / "tiny.pt", w)
    assert export.main(["--weights", str(w), "--img", str(IMG), "--format", "openvino", "--half"]) == 0
    folder = tmp_path / "w_openvino_model"
    full = work / "weights" / "tiny_openvino_model" / "tiny.bin"
    assert (folder / "w.bin").stat().st_size < 0.6 * full.stat().st_size  # compress_to_fp16
    (folder / "metadata.yaml").unlink()  # upstream writes only <stem>.yaml: that is read too
    m = OpenVinoModel(folder / "w.xml")
    assert m.names == list(CLASS_NAMES) and int(m.stride.max()) == 32


def test_missing_runtime_in_detect_and_val_is_one_sentence(work, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    w = work / "weights"
    for weights, package in ((w / "tiny.onnx", "onnxruntime"), (w / "tiny_openvino_model", "openvino")):
        if not weights.exists():
            continue
        assert prune_detect.main(["--weights", str(weights), "--source", str(work / "data" / "images" / "val"),
                                  "--project", str(tmp_path), "--nosave"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"pip install {package}" in err, err
        assert val.main(["--weights", str(weights), "--data", str(work / "data"), "--project", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"pip install {package}" in err, err
    assert prune_detect.main(["--weights", str(w / "gone_openvino_model"), "--project", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_dynamic_torchscript_follows_the_input_size(work, tmp_path):
    import shutil
    w = tmp_path / "d.pt"
    shutil.copy(work / "weights" / "tiny.pt", w)
    assert export.main(["--weights", str(w), "--img", str(IMG), "--format", "torchscript", "--dynamic"]) == 0
    m = TorchScriptModel(tmp_path / "d.torchscript")
    assert m.fixed_shape is None and m.fixed_batch is None
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = _confident_tiny_model()(x)[0]
    y = m(x)[0]
    assert y.shape == ref.shape and (y - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item())


@needs_ort
def test_static_batch_pads_the_last_chunk(work, tmp_path):
    out = tmp_path / "b2.onnx"
    assert export.main(["--weights", str(work / "weights" / "tiny.pt"), "--img", str(IMG), "--batch-size", "2",
                        "--output", str(out)]) == 0
    m = OnnxModel(out)
    assert m.fixed_batch == 2
    x = torch.rand(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = _confident_tiny_model()(x)[0]
    y = m(x)[0]
    assert y.shape == ref.shape and (y - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item())


def test_torchscript_alone_needs_no_onnx(work, tmp_path, monkeypatch):
    import shutil
    monkeypatch.setitem(sys.modules, "onnx", None)
    w = tmp_path / "t.pt"
    shutil.copy(work / "weights" / "tiny.pt", w)
    assert export.main(["--weights", str(w), "--img", str(IMG), "--format", "torchscript"]) == 0
    assert (tmp_path / "t.torchscript").is_file() and not (tmp_path / "t.onnx").exists()
