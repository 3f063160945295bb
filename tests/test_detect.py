"""prune_detect.py and utils.detect: sources, labels, outputs, .pt/.onnx parity, unreadable files,
bad input and its one-sentence error path."""
from __future__ import annotations

import dataclasses
import errno
import importlib.util
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export
import prune_detect
from models import build_model, save_checkpoint
from utils.detect import DetectOptions, DetectResult, detect, label_lines
from utils.errors import UserError
from utils.general import check_img_size
from utils.sources import ReadProblem, SourceError, image_problem, iter_frames, resolve_sources
from utils.timing import StageTimer


NAMES = ["circle", "cross", "square"]
IMG = "64"
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _confident_tiny_model() -> torch.nn.Module:
    """yolov5n, 3 classes, whose finest level gives varied, input-dependent boxes and scores.

    A freshly initialised network's outputs hardly depend on the input and its scores sit far
    below any threshold; a variance-keeping init plus an amplified P3 head fixes both, so the
    tests see real detections with distinct scores (no ties for NMS to break arbitrarily).
    """
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=len(NAMES))
    model.names = list(NAMES)
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
    return model


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    for _ in range(3):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(4, 16)), c, -1)
    return img


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """weights/tiny.pt, src/{a.jpg (48x64), b.png (40x64), v.avi (5 frames)}; letterboxing pads both."""
    root = tmp_path_factory.mktemp("detect")
    save_checkpoint(root / "weights" / "tiny.pt", _confident_tiny_model())
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "a.jpg"), _image(rng, 48, 64))
    cv2.imwrite(str(src / "b.png"), _image(rng, 40, 64))
    (src / "notes.md").write_text("not an image")  # ignored by folder sources
    writer = cv2.VideoWriter(str(src / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for _ in range(5):
        writer.write(_image(rng, 48, 64))
    writer.release()
    return root


def _run(workdir: Path, tmp_path: Path, *extra: str, weights: Path | None = None,
         source: str | None = None) -> DetectResult:
    argv = ["--weights", str(weights or workdir / "weights" / "tiny.pt"), "--img", IMG,
            "--source", source or str(workdir / "src"), "--project", str(tmp_path), "--name", "exp",
            *extra]
    return detect(prune_detect.options(prune_detect.parse_args(argv)), "cpu")


def _main(workdir: Path, tmp_path: Path, *extra: str, weights: Path | None = None,
          source: str | None = None) -> int:
    return prune_detect.main(["--weights", str(weights or workdir / "weights" / "tiny.pt"), "--img", IMG,
                              "--source", source or str(workdir / "src"), "--project", str(tmp_path),
                              "--device", "cpu", *extra])


def _one_error_line(err: str, *fragments: str) -> str:
    """The script's stderr is exactly one 'prune_detect.py: error: ...' line naming ``fragments``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(("prune_detect.py: error: ", "export.py: error: "))
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _read_labels(path: Path) -> np.ndarray:
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


# ------------------------------------------------------------------------------------ end to end
def test_folder_with_images_and_video_writes_same_names_and_labels(workdir, tmp_path, capsys):
    assert prune_detect.main(["--weights", str(workdir / "weights" / "tiny.pt"), "--img", IMG,
                              "--source", str(workdir / "src"), "--project", str(tmp_path),
                              "--save-txt", "--save-conf", "--max-det", "10"]) == 0
    out = tmp_path / "exp"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.jpg", "b.png", "v.avi"]
    labels = sorted(p.name for p in (out / "labels").iterdir())
    assert labels == ["a.txt", "b.txt"] + [f"v_{i}.txt" for i in range(1, 6)]
    for src_name in ("a.jpg", "b.png"):
        src = cv2.imread(str(workdir / "src" / src_name))
        ann = cv2.imread(str(out / src_name))
        assert ann.shape == src.shape
    cap = cv2.VideoCapture(str(out / "v.avi"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 5 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 64 and cap.get(cv2.CAP_PROP_FRAME_HEIGHT) == 48
    cap.release()
    rows = np.concatenate([_read_labels(out / "labels" / n) for n in labels])
    assert len(rows) > 0, "the fixture model should detect something"
    assert rows.shape[1] == 6  # cls cx cy w h conf
    assert set(rows[:, 0]) <= set(range(len(NAMES)))
    assert (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
    assert (rows[:, 5] >= 0.25).all()  # default --conf
    printed = capsys.readouterr().out
    assert "image 1/3 " in printed and "video 3/3 (5/5) " in printed
    assert "Speed:" in printed and "ms inference" in printed and str(out) in printed


def test_annotated_image_matches_labels(workdir, tmp_path):
    """The drawn box lies where the label says: every changed pixel is on its outline."""
    res = _run(workdir, tmp_path, "--save-txt", "--max-det", "1", "--hide-labels",
               "--line-thickness", "1", source=str(workdir / "src" / "b.png"))
    rows = _read_labels(res.label_files[0])
    assert len(rows) == 1
    src = cv2.imread(str(workdir / "src" / "b.png")).astype(int)
    ann = cv2.imread(str(res.save_dir / "b.png")).astype(int)
    h, w = src.shape[:2]
    _, cx, cy, bw, bh = rows[0]
    x1, y1 = int(round((cx - bw / 2) * w)), int(round((cy - bh / 2) * h))
    x2, y2 = int(round((cx + bw / 2) * w)), int(round((cy + bh / 2) * h))
    changed = np.abs(ann - src).sum(2) > 30  # PNG is lossless: only drawn pixels differ
    margin = 2  # line width 1 plus anti-aliasing
    outline = np.zeros_like(changed)
    outline[max(y1 - margin, 0):y2 + margin + 1, max(x1 - margin, 0):x2 + margin + 1] = True
    outline[y1 + margin + 1:max(y2 - margin, 0), x1 + margin + 1:max(x2 - margin, 0)] = False
    assert changed.sum() >= min(x2 - x1, y2 - y1)  # something was drawn
    assert not (changed & ~outline).any()


def test_labels_are_in_original_image_coordinates(workdir, tmp_path):
    """b.png (40x64) letterboxes to 64x64 with 12 grey rows above and below. Running on a copy
    padded by hand gives the same network input, so its boxes, clipped to the original rows and
    shifted up by 12, must equal the boxes reported for b.png itself."""
    src = cv2.imread(str(workdir / "src" / "b.png"))
    padded_path = tmp_path / "padded.png"
    cv2.imwrite(str(padded_path), cv2.copyMakeBorder(src, 12, 12, 0, 0, cv2.BORDER_CONSTANT,
                                                     value=(114, 114, 114)))
    args = ("--save-txt", "--save-conf", "--nosave", "--max-det", "20")
    orig = _read_labels(_run(workdir, tmp_path / "o", *args, source=str(workdir / "src" / "b.png")).label_files[0])
    pad = _read_labels(_run(workdir, tmp_path / "p", *args, source=str(padded_path)).label_files[0])
    assert len(orig) > 1 and orig.shape == pad.shape

    def to_pixels(rows, h, w, shift):
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        y1 = np.clip(cy - bh / 2, shift, shift + 40) - shift
        y2 = np.clip(cy + bh / 2, shift, shift + 40) - shift
        return np.stack([rows[:, 0], cx - bw / 2, y1, cx + bw / 2, y2, rows[:, 5]], 1)

    a, b = to_pixels(orig, 40, 64, 0), to_pixels(pad, 64, 64, 12)
    a, b = a[np.argsort(-a[:, 5], kind="stable")], b[np.argsort(-b[:, 5], kind="stable")]
    np.testing.assert_allclose(a, b, atol=2e-3 * 64)


def test_single_image_glob_and_txt_list(workdir, tmp_path):
    single = _run(workdir, tmp_path / "one", source=str(workdir / "src" / "a.jpg"))
    assert single.frames == 1 and (single.save_dir / "a.jpg").is_file()
    globbed = _run(workdir, tmp_path / "glob", source=str(workdir / "src" / "*.png"))
    assert globbed.frames == 1 and sorted(p.name for p in globbed.save_dir.iterdir()) == ["b.png"]
    listing = workdir / "list.txt"
    listing.write_text(f"src/b.png\n\n{workdir / 'src' / 'a.jpg'}\n")  # relative to the list + absolute
    listed = _run(workdir, tmp_path / "txt", source=str(listing))
    assert listed.frames == 2
    assert sorted(p.name for p in listed.save_dir.iterdir()) == ["a.jpg", "b.png"]


def test_nosave_classes_and_increment(workdir, tmp_path):
    first = _run(workdir, tmp_path, "--nosave", "--save-txt", "--classes", "1",
                 source=str(workdir / "src" / "b.png"))
    assert first.save_dir.name == "exp" and not (first.save_dir / "b.png").exists()
    rows = _read_labels(first.save_dir / "labels" / "b.txt")
    assert rows.shape[1] in (0, 5) and set(rows[:, 0]) <= {1}
    second = _run(workdir, tmp_path, "--nosave", source=str(workdir / "src" / "b.png"))
    assert second.save_dir.name == "exp2"


def test_max_det_and_conf_bound_the_detections(workdir, tmp_path):
    res = _run(workdir, tmp_path, "--max-det", "2", "--conf", "0.5", "--save-txt", "--save-conf",
               "--nosave", source=str(workdir / "src" / "b.png"))
    rows = _read_labels(res.label_files[0])
    assert 0 < len(rows) <= 2 and (rows[:, 5] > 0.5).all()


@pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
def test_onnx_gives_the_same_boxes_as_pt(workdir, tmp_path, capsys):
    onnx_path = tmp_path / "tiny.onnx"
    assert export.main(["--weights", str(workdir / "weights" / "tiny.pt"), "--img", IMG,
                        "--output", str(onnx_path)]) == 0
    args = ("--save-txt", "--save-conf", "--nosave", "--max-det", "20")
    pt = _run(workdir, tmp_path / "pt", *args, source=str(workdir / "src" / "a.jpg"))
    capsys.readouterr()
    ox = _run(workdir, tmp_path / "onnx", *args, weights=onnx_path, source=str(workdir / "src" / "a.jpg"))
    printed = capsys.readouterr().out
    a, b = _read_labels(pt.label_files[0]), _read_labels(ox.label_files[0])
    assert len(a) > 1 and a.shape == b.shape
    order_a, order_b = np.lexsort(a.T[::-1]), np.lexsort(b.T[::-1])
    np.testing.assert_allclose(a[order_a], b[order_b], atol=1e-4)
    assert any(name in printed for name in NAMES)  # class names come from the ONNX metadata


HAS_OV = HAS_ORT and importlib.util.find_spec("openvino") is not None


@pytest.mark.parametrize("fmt, name", [
    pytest.param("openvino", "tiny_openvino_model", marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed")),
    pytest.param("openvino", "tiny_openvino_model/tiny.xml",
                 marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed")),
    ("torchscript", "tiny.torchscript")])
def test_other_formats_give_the_same_boxes_as_pt(workdir, tmp_path, capsys, fmt, name):
    """An OpenVINO folder, its .xml, or a .torchscript file as --weights: the .pt's boxes and names."""
    import shutil
    weights = tmp_path / "tiny.pt"
    shutil.copy(workdir / "weights" / "tiny.pt", weights)
    assert export.main(["--weights", str(weights), "--img", IMG, "--format", fmt]) == 0
    args = ("--save-txt", "--save-conf", "--nosave", "--max-det", "20")
    pt = _run(workdir, tmp_path / "pt", *args, source=str(workdir / "src" / "a.jpg"))
    capsys.readouterr()
    other = _run(workdir, tmp_path / fmt, *args, weights=tmp_path / name, source=str(workdir / "src" / "a.jpg"))
    printed = capsys.readouterr().out
    a, b = _read_labels(pt.label_files[0]), _read_labels(other.label_files[0])
    assert len(a) > 1 and a.shape == b.shape
    order_a, order_b = np.lexsort(a.T[::-1]), np.lexsort(b.T[::-1])
    np.testing.assert_allclose(a[order_a], b[order_b], atol=1e-4)
    assert any(n in printed for n in NAMES)  # class names come from the format's metadata


@pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
def test_onnx_static_size_overrides_img(workdir, tmp_path, capsys):
    onnx_path = tmp_path / "fixed.onnx"
    export.main(["--weights", str(workdir / "weights" / "tiny.pt"), "--img", "64", "96",
                 "--output", str(onnx_path)])
    capsys.readouterr()
    res = _run(workdir, tmp_path, "--nosave", weights=onnx_path, source=str(workdir / "src" / "b.png"))
    out = capsys.readouterr().out
    assert res.frames == 1 and "exported for 64x96" in out and ": 64x96 " in out


# ------------------------------------------------------------------------------------ bad input
def test_missing_weights_is_one_sentence(workdir, tmp_path, capsys):
    for missing in (tmp_path / "nope.pt", tmp_path / "nope.onnx"):
        assert _main(workdir, tmp_path, weights=missing) == 2
        _one_error_line(capsys.readouterr().err, "--weights", missing.name, "not found")
    assert not (tmp_path / "exp").exists()  # nothing started


def test_missing_or_empty_source_is_named(workdir, tmp_path, capsys):
    with pytest.raises(SourceError, match="no_such_dir"):
        _run(workdir, tmp_path, source=str(tmp_path / "no_such_dir"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images or videos"):
        _run(workdir, tmp_path, source=str(empty))
    with pytest.raises(SourceError, match="matches no"):
        _run(workdir, tmp_path, source=str(tmp_path / "*.jpg"))
    assert issubclass(SourceError, UserError) and issubclass(SourceError, FileNotFoundError)
    assert _main(workdir, tmp_path, source=str(tmp_path / "no_such_dir")) == 2
    _one_error_line(capsys.readouterr().err, "--source", "no_such_dir")


def test_bad_flags_exit_with_usage(capsys):
    for argv in (["--img", "64", "64", "64"], ["--conf", "1.5"], ["--iou", "-0.1"], ["--max-det", "0"],
                 ["--img", "0"]):
        with pytest.raises(SystemExit) as e:
            prune_detect.parse_args(argv)
        assert e.value.code == 2
        assert argv[0] in capsys.readouterr().err


@pytest.fixture
def unwritable(tmp_path, monkeypatch) -> Path:
    """A folder nothing can be created in: read-only by its mode, or (as root, who ignores modes)
    by refusing mkdir inside it the way a read-only file system does."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    yield folder
    folder.chmod(0o755)


def test_read_only_output_folder_is_one_sentence(workdir, unwritable, capsys):
    assert _main(workdir, unwritable, source=str(workdir / "src" / "b.png")) == 2
    _one_error_line(capsys.readouterr().err, "permission denied", str(unwritable))


def test_ctrl_c_exits_130(workdir, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_detect, "detect", interrupted)
    assert _main(workdir, tmp_path) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_sentence(workdir, tmp_path, capsys):
    assert _main(workdir, tmp_path, "--device", "cuda:0") == 2
    _one_error_line(capsys.readouterr().err, "--device", "cpu")


# ------------------------------------------------------------------------------ unreadable sources
def _unreadable_folder(workdir: Path, root: Path) -> Path:
    """A good image, an empty .jpg, a JPEG cut in half and a text file named .png."""
    folder = root / "mixed"
    folder.mkdir()
    good = cv2.imread(str(workdir / "src" / "b.png"))
    cv2.imwrite(str(folder / "good.png"), good)
    (folder / "empty.jpg").write_bytes(b"")
    ok, jpeg = cv2.imencode(".jpg", good)
    assert ok
    (folder / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    return folder


def test_unreadable_images_are_skipped_with_one_warning_each(workdir, tmp_path, capfd):
    folder = _unreadable_folder(workdir, tmp_path)
    assert _main(workdir, tmp_path / "runs", "--save-txt", source=str(folder)) == 0
    out, err = capfd.readouterr()  # file descriptors: libjpeg would print to fd 2 if it decoded
    run = tmp_path / "runs" / "exp"
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == ["good.png"]
    assert sorted(p.name for p in (run / "labels").iterdir()) == ["good.txt"]
    warnings = [line for line in (out + err).splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3, warnings
    for name, reason in (("empty.jpg", "empty"), ("truncated.jpg", "truncated JPEG"),
                         ("text.png", "cannot be decoded")):
        (line,) = [w for w in warnings if name in w]
        assert reason in line and line.endswith("skipped")
    assert "3 of 4 source files skipped" in out
    assert "Traceback" not in err and "Premature end of JPEG" not in err and "Corrupt JPEG" not in err


def test_nothing_readable_is_one_sentence(workdir, tmp_path, capsys):
    folder = _unreadable_folder(workdir, tmp_path)
    (folder / "good.png").unlink()
    assert _main(workdir, tmp_path / "runs", source=str(folder)) == 2
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if not l.startswith("WARNING")]
    assert len(line) == 1 and "none of its 3 files could be read" in line[0] and str(folder) in line[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "exp").exists()  # no empty run folder left behind
    assert _main(workdir, tmp_path / "runs", source=str(folder / "empty.jpg")) == 2
    _one_error_line(capsys.readouterr().err.split("\n", 1)[1], "--source", "empty.jpg", "the file is empty")


def test_truncated_video_ends_with_a_warning(workdir, tmp_path, capsys):
    data = (workdir / "src" / "v.avi").read_bytes()
    movi = data.find(b"movi")  # AVI: header, then one '00dc' chunk per MJPEG frame
    frame_chunks = [m.start() for m in re.finditer(b"00dc", data) if m.start() > movi]
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: frame_chunks[3] + 20])  # the 4th frame is cut off, the index is gone
    res = _run(workdir, tmp_path, "--nosave", source=str(cut))
    assert 0 < res.frames < 5
    (problem,) = res.problems
    assert problem.path == cut and not problem.whole_file and res.skipped == []
    assert f"frame {res.frames + 1} of 5 cannot be decoded" in capsys.readouterr().err


def test_image_problem_signatures(tmp_path):
    img = np.full((16, 16, 3), 90, np.uint8)
    for ext in (".jpg", ".png"):
        ok, data = cv2.imencode(ext, img)
        whole = tmp_path / f"whole{ext}"
        whole.write_bytes(data.tobytes())
        assert image_problem(whole) is None
        padded = tmp_path / f"padded{ext}"
        padded.write_bytes(data.tobytes() + b"\x00" * 16)  # zero padding some writers add
        assert image_problem(padded) is None
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(data.tobytes()[:-3])
        assert "truncated" in image_problem(cut)
    (tmp_path / "empty.png").write_bytes(b"")
    assert image_problem(tmp_path / "empty.png") == "the file is empty"
    (tmp_path / "other.bmp").write_bytes(b"BM not checked here")
    assert image_problem(tmp_path / "other.bmp") is None  # left to the decoder


def test_iter_frames_reports_or_raises(workdir, tmp_path):
    folder = _unreadable_folder(workdir, tmp_path)
    files = resolve_sources(folder)
    problems: list[ReadProblem] = []
    frames = list(iter_frames(files, problems.append))
    assert [f.path.name for f in frames] == ["good.png"]
    assert sorted(p.path.name for p in problems) == ["empty.jpg", "text.png", "truncated.jpg"]
    assert all(p.whole_file for p in problems)
    with pytest.raises(SourceError, match="empty.jpg"):  # without a handler: the first one raises
        list(iter_frames(files))


# ------------------------------------------------------------------------------------ helpers
def test_label_lines_round_trip():
    det = np.array([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0]])
    (line,) = label_lines(det, (80, 40), save_conf=True)
    cls, cx, cy, w, h, conf = (float(v) for v in line.split())
    assert cls == 2 and line.startswith("2 ")
    assert (cx * 40, cy * 80, w * 40, h * 80) == pytest.approx((20, 40, 20, 40))
    assert conf == pytest.approx(0.9)
    assert len(label_lines(det, (80, 40), save_conf=False)[0].split()) == 5
    assert label_lines(det[:0], (80, 40), True) == []


def test_resolve_sources_and_frames(workdir, tmp_path):
    files = resolve_sources(workdir / "src")
    assert [f.name for f in files] == ["a.jpg", "b.png", "v.avi"]  # sorted, non-media skipped
    frames = list(iter_frames(files))
    assert len(frames) == 7
    assert [f.index for f in frames if f.is_video] == [1, 2, 3, 4, 5]
    assert frames[0].image.shape == (48, 64, 3) and frames[0].describe().startswith("image 1/3 ")
    bad = tmp_path / "list.txt"
    bad.write_text("missing.jpg\n")
    with pytest.raises(SourceError, match=r"list.txt:1"):
        resolve_sources(bad)
    odd = tmp_path / "model.pt"
    odd.write_bytes(b"x")
    with pytest.raises(SourceError, match="unknown file type"):
        resolve_sources(odd)


def test_img_size_rounds_up_to_stride():
    assert check_img_size([640], 32) == (640, 640)
    assert check_img_size([100, 60], 32) == (128, 64)
    with pytest.raises(UserError, match="--img"):
        check_img_size([0], 32)


def test_stage_timer_charges_each_stage_its_own_time():
    timer = StageTimer("cpu", ("pre-process", "inference", "NMS"))
    assert timer.device is None  # nothing to synchronise on the CPU
    for _ in range(2):
        timer.start()
        busy = sum(range(20000))  # noqa: F841 - some work for the first stage
        first = timer.lap("pre-process")
        second = timer.lap("inference")
        assert first > 0 and second >= 0
    assert list(timer.total) == ["pre-process", "inference", "NMS"] and timer.total["NMS"] == 0.0
    ms = timer.per_item_ms(2)
    assert ms["pre-process"] == pytest.approx(timer.total["pre-process"] / 2 * 1e3)
    assert timer.per_item_ms(0)["inference"] == pytest.approx(timer.total["inference"] * 1e3)


def test_library_defaults_are_the_flag_defaults():
    parsed = dataclasses.asdict(prune_detect.options(prune_detect.parse_args([])))
    default = dataclasses.asdict(DetectOptions())
    parsed["img"], default["img"] = list(parsed["img"]), list(default["img"])
    assert parsed == default


@pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
def test_damaged_onnx_is_one_sentence(workdir, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    assert _main(workdir, tmp_path, weights=bad) == 2
    _one_error_line(capsys.readouterr().err, "bad.onnx", "onnxruntime cannot load")


def test_no_function_level_imports_of_project_modules():
    """The detection/export/evaluation files import project modules at the top only (optional
    dependencies such as onnx, onnxruntime, tqdm or pycocotools may be imported where used)."""
    import ast
    root = Path(__file__).resolve().parents[1]
    files = ["export.py", "prune_detect.py", "val.py", "quantize.py"] + [f"utils/{m}.py" for m in (
        "detect", "export", "timing", "onnx_backend", "backends", "quantize", "sources", "annotate", "evaluate",
        "metrics", "boxes", "plots")]
    project = {p.stem for p in root.glob("*.py")} | {"models", "utils", "data"}
    for name in files:
        tree = ast.parse((root / name).read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""] if node.level == 0 else ["utils"]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                else:
                    continue
                assert not any(m.split(".")[0] in project for m in modules), \
                    f"{name}:{node.lineno} imports {modules} inside {fn.name}()"
