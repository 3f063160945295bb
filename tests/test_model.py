"""The one model builder: parameter counts, output shapes, yaml == cfg, fusing, device hygiene."""
import re
from pathlib import Path

import pytest
import torch

from models import Darknet, build_model, read_cfg
from models.cfg import format_cfg
from utils.torch_utils import count_flops

ROOT = Path(__file__).resolve().parents[1]

# upstream YOLOv5 v6.2, nc=80
UPSTREAM_PARAMS = {
    "n": 1_872_157, "s": 7_235_389, "m": 21_190_557, "l": 46_563_709, "x": 86_749_405,
    "n6": 3_246_940, "s6": 12_626_620, "m6": 35_731_932, "l6": 76_770_172, "x6": 140_794_780,
}


@pytest.mark.parametrize("size", sorted(UPSTREAM_PARAMS))
def test_parameter_count_equals_upstream(size):
    model = build_model(ROOT / f"models/yolov5{size}.yaml")
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM_PARAMS[size]
    levels = 4 if size.endswith("6") else 3
    assert model.stride.tolist() == [8.0, 16.0, 32.0, 64.0][:levels]
    assert model.nc == 80 and len(model.yolo_layers) == levels


@pytest.mark.parametrize("size", "nsmlx")
def test_shipped_cfg_matches_parameter_count(size):
    model = build_model(ROOT / f"cfg/yolov5{size}_v6.cfg")
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM_PARAMS[size]


def _check_shapes(model: Darknet, h: int, w: int, batch: int = 1) -> None:
    x = torch.rand(batch, 3, h, w)
    no = 5 + model.nc
    expect = [(batch, m.na, h // int(m.stride), w // int(m.stride), no) for m in model.yolo_layers]
    with torch.no_grad():
        model.train()
        raw = model(x)
        assert [tuple(r.shape) for r in raw] == expect
        model.eval()
        y, raw = model(x)
    assert [tuple(r.shape) for r in raw] == expect
    assert y.shape == (batch, sum(a * b * c for _, a, b, c, _ in expect), no)
    assert torch.isfinite(y).all()
    assert ((y[..., 4:] >= 0) & (y[..., 4:] <= 1)).all()  # sigmoid scores


@pytest.mark.parametrize("img", [64, 128, 320])
def test_forward_shapes_n(img):
    _check_shapes(build_model(ROOT / "models/yolov5n.yaml", nc=3), img, img, batch=2)


def test_forward_shapes_rectangular_and_p6():
    _check_shapes(build_model(ROOT / "models/yolov5n.yaml", nc=2), 64, 128)
    _check_shapes(build_model(ROOT / "models/yolov5n6.yaml", nc=2), 128, 64)


@pytest.mark.parametrize("size", ["x", "x6"])
def test_forward_shapes_largest(size):
    # batch 2: at 64 px the P6 level is 1x1, and train-mode BatchNorm needs more than one value
    _check_shapes(build_model(ROOT / f"models/yolov5{size}.yaml"), 64, 64, batch=2)


def test_eval_decode_formula():
    """xy = (2 sigmoid - 0.5 + grid) * stride, wh = (2 sigmoid)^2 * anchor, in (level, anchor, y, x) order."""
    model = build_model(ROOT / "models/yolov5n.yaml", nc=2).eval()
    with torch.no_grad():
        y, raw = model(torch.rand(1, 3, 64, 96))
    start = 0
    for m, r in zip(model.yolo_layers, raw):
        _, na, h, w, no = r.shape
        s = r.sigmoid()
        a, gy, gx = na - 1, h - 1, w - 2
        row = y[0, start + (a * h + gy) * w + gx]
        assert torch.allclose(row[0], (2 * s[0, a, gy, gx, 0] - 0.5 + gx) * m.stride)
        assert torch.allclose(row[1], (2 * s[0, a, gy, gx, 1] - 0.5 + gy) * m.stride)
        assert torch.allclose(row[2:4], (2 * s[0, a, gy, gx, 2:4]) ** 2 * m.anchors[a])
        assert torch.allclose(row[4:], s[0, a, gy, gx, 4:])
        start += na * h * w
    assert start == y.shape[1]


def test_yaml_and_cfg_build_the_same_model():
    from_yaml = build_model(ROOT / "models/yolov5s.yaml")
    from_cfg = build_model(ROOT / "cfg/yolov5s_v6.cfg")
    assert format_cfg(from_yaml.cfg) == format_cfg(from_cfg.cfg)
    from_cfg.load_state_dict(from_yaml.state_dict())
    x = torch.rand(1, 3, 64, 64)
    from_yaml.eval(), from_cfg.eval()
    with torch.no_grad():
        (ya, ra), (yb, rb) = from_yaml(x), from_cfg(x)
    assert torch.equal(ya, yb) and all(torch.equal(a, b) for a, b in zip(ra, rb))


def test_nc_override_and_anchors_in_pixels():
    model = build_model(ROOT / "models/yolov5s.yaml", nc=1)
    assert model.cfg.layers == read_cfg(ROOT / "cfg/yolov5s_v6_hand.cfg").layers
    assert model.yolo_layers[0].anchors.tolist() == [[10, 13], [16, 30], [33, 23]]
    assert model.yolo_layers[2].anchors.tolist() == [[116, 90], [156, 198], [373, 326]]


def _randomize_bn(model: Darknet, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, seq in model.conv_layers():
        if "BatchNorm2d" in seq._modules:
            bn = seq.BatchNorm2d
            n = bn.num_features
            bn.weight.data = torch.rand(n, generator=g) + 0.5
            bn.bias.data = torch.rand(n, generator=g) - 0.5
            bn.running_mean = torch.rand(n, generator=g) - 0.5
            bn.running_var = torch.rand(n, generator=g) + 0.5


def test_fuse_keeps_outputs():
    model = build_model(ROOT / "models/yolov5n.yaml", nc=2).eval()
    _randomize_bn(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, _ = model(x)
        fused = model.fuse()
        y, _ = fused(x)
    assert fused is model
    assert not any("BatchNorm2d" in seq._modules for _, seq in model.conv_layers())
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert parse_back_is_biased(model)


def _subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


def test_fuse_leaves_no_subnormal_weights_for_nearly_zero_gammas():
    model = build_model(ROOT / "models/yolov5n.yaml", nc=2).eval()
    _randomize_bn(model)
    i, seq = next(iter(model.conv_layers()))
    seq.BatchNorm2d.weight.data[:4] = torch.tensor([1e-36, -1e-37, 1e-39, 0.0])  # soft-thresholded channels
    assert _subnormal(seq.Conv2d.weight.detach() * 1e-36) > 0  # folding them in would give subnormal weights
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, _ = model(x)
        y, _ = model.fuse()(x)
    assert all(_subnormal(p) == 0 for p in model.parameters())
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_ema_of_a_weight_held_at_zero_is_flushed_to_zero_not_left_subnormal():
    from utils.torch_utils import ModelEMA, flush_subnormal_
    live = torch.nn.Linear(4, 4)
    ema = ModelEMA(live, decay=0.5, tau=1e-9)  # decay 0.5 per update from the start
    with torch.no_grad():
        live.weight.zero_()
        ema.ema.weight.fill_(1.0)
    for _ in range(130):  # 0.5 ** 130 ~ 7e-40: below the smallest normal float32, above zero
        ema.update(live)
    assert _subnormal(ema.ema.weight) == ema.ema.weight.numel()
    ema.flush_subnormal_()
    assert torch.equal(ema.ema.weight, torch.zeros_like(ema.ema.weight))
    assert torch.equal(ema.ema.bias, live.bias)  # normal values are left as they are
    t = torch.tensor([1e-39, -1e-40, 1e-37, 0.0, 2.0])
    assert flush_subnormal_(t).tolist() == [0.0, 0.0, pytest.approx(1e-37), 0.0, 2.0]
    assert torch.equal(flush_subnormal_(torch.tensor([1, 2])), torch.tensor([1, 2]))  # integers untouched


def parse_back_is_biased(model: Darknet) -> bool:
    cfg = model.to_cfg()
    return all(not layer.bn for layer in cfg.layers if layer.type == "convolutional")


def test_narrowed_conv_and_to_cfg():
    """Forward follows the tensors' widths, and to_cfg writes them back."""
    model = build_model(ROOT / "models/yolov5n.yaml", nc=1)
    i = 2  # a C3 cv2 conv: its output feeds only the C3 concat
    consumer = next(j for j, l in enumerate(model.cfg.layers)
                    if l.type == "convolutional" and j > i and model.cfg.layers[j - 1].type == "route"
                    and i in model.cfg.layers[j - 1].inputs)
    seq, cons = model.module_list[i], model.module_list[consumer]
    keep = seq.Conv2d.out_channels // 2
    first_in = cons.Conv2d.in_channels - seq.Conv2d.out_channels
    seq.Conv2d = torch.nn.Conv2d(seq.Conv2d.in_channels, keep, 1, bias=False)
    seq.BatchNorm2d = torch.nn.BatchNorm2d(keep, eps=1e-3, momentum=0.03)
    cons.Conv2d = torch.nn.Conv2d(first_in + keep, cons.Conv2d.out_channels, 1, bias=False)
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    cfg = model.to_cfg()
    assert cfg.layers[i].options["filters"] == keep
    assert sum(p.numel() for p in Darknet(cfg).parameters()) == sum(p.numel() for p in model.parameters())


def test_params_and_flops_match_upstream():
    model = build_model(ROOT / "models/yolov5n.yaml")
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM_PARAMS["n"]
    # upstream reports 4.5 GFLOPs at 640 px; FLOPs scale with the pixel count
    assert 4.0e9 < count_flops(model, 64) * 100 < 5.0e9


def test_no_cuda_calls_in_library_code():
    offenders = []
    for folder in ("models", "utils"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if re.search(r"\.cuda\(", code):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, f".cuda() in library code: {offenders}"


def _project_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, at module level?) for every import of models/ or utils/ code."""
    import ast
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = "models." + (node.module or "") if node.level else node.module or ""
            names = [name]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in ("models", "utils"):
                found.append((n.rstrip("."), id(node) in top))
    return found


def test_models_package_imports_run_one_way():
    """models/ reads only the leaf modules of utils/, imports at module top, and has no cycles."""
    graph = {}
    for path in sorted((ROOT / "models").glob("*.py")):
        imports = _project_imports(path)
        assert all(top for _, top in imports), f"{path.name}: function-level import of project code"
        outside = {m for m, _ in imports if m.startswith("utils")}
        assert outside <= {"utils.errors", "utils.fileio", "utils.torch_utils"}, f"{path.name} imports {outside}"
        graph[path.stem] = {m.split(".")[1] for m, _ in imports if m.startswith("models.")}
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import cycle: {' -> '.join(stack + (name,))}"
        if name not in done:
            for dep in graph.get(name, ()):
                visit(dep, stack + (name,))
            done.add(name)

    for name in graph:
        if name != "__init__":
            visit(name, ())
    # the utils modules models/ may read are leaves: they import no project code beyond each other
    import ast
    leaves = {"errors", "fileio", "torch_utils"}
    for leaf in leaves:
        tree = ast.parse((ROOT / "utils" / f"{leaf}.py").read_text())
        deps = {("utils." + (n.module or "")) if n.level else (n.module or "") for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom)}
        deps |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        project = {d for d in deps if d.split(".")[0] in ("models", "utils")}
        assert project <= {f"utils.{m}" for m in leaves}, f"utils/{leaf}.py imports project code: {project}"


def test_package_exports_the_model_api():
    """Names colleagues import from the package (kept when modules inside it move)."""
    import models
    names = ["CfgError", "CheckpointError", "Darknet", "FORMAT", "Layer", "ModelCfg", "UpstreamError",
             "YOLOLayer", "atomic_save", "build_model", "check_cfg_matches", "format_cfg",
             "import_upstream", "initialize", "load_cfg_file", "load_checkpoint", "load_model",
             "make_checkpoint", "model_from_checkpoint", "parse_cfg", "read_cfg", "save_checkpoint",
             "state_checksum", "validate", "yaml_to_cfg", "_initialize"]
    assert [n for n in names if not hasattr(models, n)] == []
    assert set(models.__all__) <= set(dir(models))
