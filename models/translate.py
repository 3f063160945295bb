"""YOLOv5 v6 blocks (Conv, C3, SPPF, Upsample, Concat, Detect) -> cfg layer specs.

Two front ends produce the same block list: :func:`yaml_blocks` computes widths from an upstream
model yaml (depth and width multiples), the upstream importer reads them from weight shapes (so
pruned upstream models work). :func:`emit` lays the blocks out as cfg layers in the section order
Darknet-style YOLOv5 cfg files use (C3: cv2, route back, cv1, bottlenecks, concat(m, cv2), cv3;
each detection conv + ``[yolo]`` right after the block that feeds it) and returns the map from
upstream module names (``model.2.cv1``) to cfg layer indices used to translate state dicts.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import yaml

from .cfg import CfgError, Layer, ModelCfg, validate

__all__ = [
    "ConvSpec", "ConvBlock", "C3Block", "SPPFBlock", "UpsampleBlock", "ConcatBlock", "DetectBlock",
    "yaml_blocks", "emit", "yaml_to_cfg", "load_yaml", "upstream_to_ours_key",
]


@dataclass
class ConvSpec:
    """Conv2d(k, s, p, groups) -> [BN] -> activation, with ``c2`` output channels."""

    c2: int
    k: int = 1
    s: int = 1
    p: int | None = None  # None: k // 2 (upstream autopad)
    g: int = 1
    act: str = "SiLU"
    bn: bool = True

    @property
    def padding(self) -> int:
        return self.k // 2 if self.p is None else self.p


@dataclass
class ConvBlock:
    f: int
    conv: ConvSpec


@dataclass
class C3Block:
    f: int
    cv1: ConvSpec
    cv2: ConvSpec
    cv3: ConvSpec
    m: list[tuple[ConvSpec, ConvSpec]]
    shortcut: bool = True


@dataclass
class SPPFBlock:
    f: int
    cv1: ConvSpec
    cv2: ConvSpec
    k: int = 5


@dataclass
class UpsampleBlock:
    f: int
    scale: int = 2


@dataclass
class ConcatBlock:
    f: list[int]


@dataclass
class DetectBlock:
    f: list[int]
    nc: int
    anchors: list[list[tuple[float, float]]]  # pixels, per level
    filters: list[int] = field(default_factory=list)  # per level, na*(5+nc) unless given


Block = Union[ConvBlock, C3Block, SPPFBlock, UpsampleBlock, ConcatBlock, DetectBlock]


# ---------------------------------------------------------------------------------------------
# yaml front end
# ---------------------------------------------------------------------------------------------
def _row_lines(text: str) -> list[int]:
    """1-based line of every ``backbone`` + ``head`` row (empty when the layout is unexpected)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return []
    sections = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    lines = []
    for name in ("backbone", "head"):
        node = sections.get(name)
        if not isinstance(node, yaml.SequenceNode):
            return []
        lines += [row.start_mark.line + 1 for row in node.value]
    return lines


def load_yaml(path: str | Path) -> dict:
    """An upstream model yaml as a dict, with ``yaml_file`` and the rows' ``yaml_lines`` added."""
    path = Path(path)
    if not path.is_file():
        raise CfgError(f"{path}: model yaml not found; check the path given to --cfg")
    text = path.read_text()
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CfgError(f"{path}: not valid yaml ({' '.join(str(e).split())}); fix the file") from None
    if not isinstance(d, dict) or "backbone" not in d or "head" not in d:
        raise CfgError(f"{path}: not a YOLOv5 model yaml (needs 'backbone' and 'head'); "
                       f"dataset descriptions go to --data, models to --cfg")
    d.setdefault("yaml_file", str(path))
    d.setdefault("yaml_lines", _row_lines(text))
    return d


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _anchor_levels(anchors, where: str) -> list[list[tuple[float, float]]]:
    if not isinstance(anchors, (list, tuple)) or not all(isinstance(a, (list, tuple)) for a in anchors):
        raise CfgError(f"{where}: anchors must be a list of per-level w,h lists, e.g. "
                       f"[[10,13, 16,30, 33,23], ...]")
    levels = []
    for row in anchors:
        if not all(_is_number(v) for v in row) or len(row) % 2 or not row:
            raise CfgError(f"{where}: anchor row {row} is not a list of w,h number pairs")
        vals = [float(v) for v in row]
        levels.append([(vals[k], vals[k + 1]) for k in range(0, len(vals), 2)])
    return levels


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class _Row:
    """One ``[from, number, module, args]`` row, checked; ``at`` names file, line and layer."""

    i: int
    f: int | list[int]
    n: int
    m: str
    args: list
    at: str


@dataclass
class _Net:
    """What a row's block builder needs besides the row: head settings, multiples, widths so far."""

    nc: int
    levels: list[list[tuple[float, float]]]
    gd: float
    gw: float
    ch: int
    chs: list[int] = field(default_factory=list)  # output channels per finished row

    def width(self, j: int) -> int:
        """Channels of absolute source ``j`` (-1: the input image)."""
        return self.ch if j < 0 else self.chs[j]


def _where(d: dict, i: int) -> str:
    path = d.get("yaml_file", "model yaml")
    lines = d.get("yaml_lines") or []
    return f"{path}:{lines[i]}: layer {i}" if i < len(lines) else f"{path}: layer {i}"


def _check_from(f, i: int, at: str, many: bool) -> int | list[int]:
    """``from`` of row ``i``: an earlier row (relative or absolute), or the image for row 0."""
    refs = f if many and isinstance(f, list) else [f]
    if many and not isinstance(f, list) or not refs or not all(_is_int(r) for r in refs):
        want = "a list of layer indices" if many else "one layer index (an int)"
        raise CfgError(f"{at}: 'from' must be {want}, got {f!r}")
    for r in refs:
        j = i + r if r < 0 else r
        if not (0 <= j < i or (i == 0 and r == -1)):
            reach = f"an earlier layer (0..{i - 1})" if i else "-1 (the input image)"
            raise CfgError(f"{at}: 'from' index {r} refers to layer {j}, which is not {reach}; "
                           f"fix the row's first entry")
    return f


def _check_args(r: _Row, low: int, high: int, signature: str) -> None:
    if not low <= len(r.args) <= high:
        raise CfgError(f"{r.at}: {r.m} takes args {signature}, got {r.args!r}")


def _int_arg(r: _Row, k: int, name: str, default, low: int = 1, none_ok: bool = False):
    if len(r.args) <= k:
        return default
    v = r.args[k]
    if v is None and none_ok:
        return None
    if not _is_int(v) or v < low:
        raise CfgError(f"{r.at}: {r.m} argument {name}={v!r} must be an integer >= {low}")
    return v


def _width_arg(r: _Row, net: _Net) -> int:
    c2 = r.args[0]
    if not _is_number(c2) or c2 <= 0:
        raise CfgError(f"{r.at}: {r.m} output channels {c2!r} must be a positive number")
    return _make_divisible(c2 * net.gw)


def _conv_row(r: _Row, net: _Net) -> tuple[Block, int]:
    _check_args(r, 1, 5, "[channels, kernel, stride, padding, groups]")
    spec = ConvSpec(_width_arg(r, net), _int_arg(r, 1, "kernel", 1), _int_arg(r, 2, "stride", 1),
                    _int_arg(r, 3, "padding", None, low=0, none_ok=True), _int_arg(r, 4, "groups", 1))
    c1 = net.width(r.i + r.f if r.f < 0 else r.f)
    if c1 % spec.g or spec.c2 % spec.g:
        raise CfgError(f"{r.at}: groups={spec.g} does not divide the {c1} input channels and "
                       f"{spec.c2} output channels")
    return ConvBlock(r.f, spec), spec.c2


def _c3_row(r: _Row, net: _Net) -> tuple[Block, int]:
    _check_args(r, 1, 2, "[channels] or [channels, shortcut]")
    c2 = _width_arg(r, net)
    shortcut = bool(r.args[1]) if len(r.args) > 1 else True
    n = max(round(r.n * net.gd), 1) if r.n > 1 else r.n
    c_ = int(c2 * 0.5)
    return C3Block(r.f, ConvSpec(c_), ConvSpec(c_), ConvSpec(c2),
                   [(ConvSpec(c_), ConvSpec(c_, 3)) for _ in range(n)], shortcut), c2


def _sppf_row(r: _Row, net: _Net) -> tuple[Block, int]:
    _check_args(r, 1, 2, "[channels] or [channels, pool size]")
    c2, k = _width_arg(r, net), _int_arg(r, 1, "pool size", 5)
    if k % 2 == 0:
        raise CfgError(f"{r.at}: SPPF pool size {k} must be odd")
    c1 = net.width(r.i + r.f if r.f < 0 else r.f)
    return SPPFBlock(r.f, ConvSpec(c1 // 2), ConvSpec(c2), k), c2


def _upsample_row(r: _Row, net: _Net) -> tuple[Block, int]:
    _check_args(r, 2, 3, "[None, scale, 'nearest']")
    scale = r.args[1]
    if r.args[0] is not None or not _is_number(scale) or scale < 1 or scale != int(scale) \
            or (len(r.args) > 2 and r.args[2] != "nearest"):
        raise CfgError(f"{r.at}: only [None, <integer scale>, 'nearest'] upsampling is supported, "
                       f"got {r.args!r}")
    return UpsampleBlock(r.f, int(scale)), net.width(r.i + r.f if r.f < 0 else r.f)


def _concat_row(r: _Row, net: _Net) -> tuple[Block, int]:
    _check_args(r, 0, 1, "[] or [1] (channel dimension)")
    if r.args and r.args[0] != 1:
        raise CfgError(f"{r.at}: Concat along dimension {r.args[0]!r} is not supported (use 1)")
    srcs = [r.i + j if j < 0 else j for j in r.f]
    return ConcatBlock(list(r.f)), sum(net.width(j) for j in srcs)


def _detect_row(r: _Row, net: _Net) -> tuple[Block, int]:
    if len(r.f) != len(net.levels):
        raise CfgError(f"{r.at}: Detect reads {len(r.f)} layers but 'anchors' has {len(net.levels)} "
                       f"levels; give one anchor row per input")
    srcs = [r.i + j if j < 0 else j for j in r.f]
    if any(net.width(j) == 0 for j in srcs):
        raise CfgError(f"{r.at}: Detect cannot read another Detect layer")
    return DetectBlock(list(r.f), net.nc, net.levels), 0


# module name -> (builder, 'from' is a list, may repeat (number > 1))
_ROW_BUILDERS = {
    "Conv": (_conv_row, False, False), "C3": (_c3_row, False, True), "SPPF": (_sppf_row, False, False),
    "nn.Upsample": (_upsample_row, False, False), "Upsample": (_upsample_row, False, False),
    "Concat": (_concat_row, True, False), "Detect": (_detect_row, True, False),
}


def _row(row, i: int, at: str, nc: int) -> _Row:
    """Check one ``[from, number, module, args]`` row of the model yaml."""
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise CfgError(f"{at}: {row!r} is not a [from, number, module, args] row")
    f, n, m, args = row
    m = str(m)
    if m not in _ROW_BUILDERS:
        raise CfgError(f"{at}: module {m!r} is not supported "
                       f"(supported: Conv, C3, SPPF, nn.Upsample, Concat, Detect)")
    _, many, repeats = _ROW_BUILDERS[m]
    at = f"{at} ({m})"
    if not _is_int(n) or n < 1 or (n > 1 and not repeats):
        allowed = "a positive integer" if repeats else f"1 for {m}"
        raise CfgError(f"{at}: number {n!r} must be {allowed}")
    if not isinstance(args, list):
        raise CfgError(f"{at}: args {args!r} must be a list")
    args = [nc if a == "nc" else None if a == "None" else a for a in args]  # upstream's spellings
    return _Row(i, _check_from(f, i, at, many), n, m, args, at)


def _model_rows(d: dict) -> list:
    where = d.get("yaml_file", "model yaml")
    for key in ("backbone", "head"):
        if not isinstance(d.get(key), list):
            raise CfgError(f"{where}: '{key}' must be a list of [from, number, module, args] rows, "
                           f"got {type(d.get(key)).__name__}")
    return d["backbone"] + d["head"]


def _number_setting(d: dict, key: str, default, kind: type = float):
    value = d.get(key, default)
    if not _is_number(value) or value <= 0 or (kind is int and not _is_int(value)):
        raise CfgError(f"{d.get('yaml_file', 'model yaml')}: '{key}' must be a positive "
                       f"{'integer' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def yaml_blocks(d: dict, nc: int | None = None, anchors=None, ch: int = 3) -> list[Block]:
    """Blocks of an upstream model yaml dict, with ``nc``/``anchors`` overrides.

    Malformed rows (unknown modules, bad ``from`` indices, wrong argument counts) raise
    :class:`CfgError` naming the file, the row's line and the layer number.
    """
    where = d.get("yaml_file", "model yaml")
    if nc is None and "nc" not in d:
        raise CfgError(f"{where}: needs 'nc' (the number of classes)")
    if anchors is None and "anchors" not in d:
        raise CfgError(f"{where}: needs 'anchors' (per-level w,h pixel pairs)")
    net = _Net(nc=int(nc) if nc is not None else _number_setting(d, "nc", None, int),
               levels=_anchor_levels(anchors if anchors is not None else d["anchors"], where),
               gd=_number_setting(d, "depth_multiple", 1.0), gw=_number_setting(d, "width_multiple", 1.0),
               ch=ch)
    blocks: list[Block] = []
    for i, raw in enumerate(_model_rows(d)):
        r = _row(raw, i, _where(d, i), net.nc)
        block, c2 = _ROW_BUILDERS[r.m][0](r, net)
        blocks.append(block)
        net.chs.append(c2)
    return blocks


# ---------------------------------------------------------------------------------------------
# emitter
# ---------------------------------------------------------------------------------------------
class _Emitter:
    def __init__(self, ch: int):
        self.layers: list[Layer] = []
        self.ch = ch
        self.keymap: dict[str, int] = {}

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    def add(self, type_: str, options: dict, inputs: tuple[int, ...]) -> int:
        self.layers.append(Layer(type=type_, options=options, inputs=inputs))
        return self.last

    def source(self, src: int) -> int:
        """Make ``src`` the previous layer (adding a one-layer route if needed)."""
        if src != self.last:
            self.add("route", {"layers": [src]}, (src,))
        return self.last

    def conv(self, spec: ConvSpec, src: int, name: str) -> int:
        prev = self.source(src)
        opts = {}
        if spec.bn:
            opts["batch_normalize"] = 1
        opts.update(filters=spec.c2, size=spec.k, stride=spec.s)
        if spec.padding == (spec.k - 1) // 2:
            opts["pad"] = 1
        else:
            opts["padding"] = spec.padding
        if spec.g != 1:
            opts["groups"] = spec.g
        opts["activation"] = spec.act
        i = self.add("convolutional", opts, (prev,))
        self.keymap[name] = i
        return i

    def c3(self, b: C3Block, src: int, name: str) -> int:
        """cv2, route back, cv1, bottlenecks (with shortcuts), concat(m, cv2), cv3."""
        cv2 = self.conv(b.cv2, src, f"{name}.cv2")
        x = self.conv(b.cv1, src, f"{name}.cv1")
        for j, (c1, c2) in enumerate(b.m):
            inp = x
            self.conv(c1, x, f"{name}.m.{j}.cv1")
            x = self.conv(c2, self.last, f"{name}.m.{j}.cv2")
            if b.shortcut:
                x = self.add("shortcut", {"from": inp, "activation": "linear"}, (x, inp))
        self.add("route", {"layers": [x, cv2]}, (x, cv2))
        return self.conv(b.cv3, self.last, f"{name}.cv3")

    def sppf(self, b: SPPFBlock, src: int, name: str) -> int:
        """cv1, three chained maxpools, concat of all four, cv2."""
        cv1 = self.conv(b.cv1, src, f"{name}.cv1")
        for _ in range(3):
            self.add("maxpool", {"size": b.k, "stride": 1}, (self.last,))
        self.add("route", {"layers": [cv1, cv1 + 1, cv1 + 2, cv1 + 3]}, (cv1, cv1 + 1, cv1 + 2, cv1 + 3))
        return self.conv(b.cv2, self.last, f"{name}.cv2")

    def detect_level(self, det: DetectBlock, level: int, src: int, name: str) -> None:
        """Detection conv ``{name}.m.{level}`` and its ``[yolo]`` (all anchors listed, masked per level)."""
        start = sum(len(a) for a in det.anchors[:level])
        na = len(det.anchors[level])
        all_anchors = [v for lv in det.anchors for a in lv for v in a]
        filters = det.filters[level] if det.filters else na * (5 + det.nc)
        self.conv(ConvSpec(filters, 1, 1, 0, act="linear", bn=False), src, f"{name}.m.{level}")
        self.add("yolo", {"mask": list(range(start, start + na)), "anchors": all_anchors,
                          "classes": det.nc, "num": len(all_anchors) // 2}, (self.last,))


def _find_detect(blocks: list[Block], path: str) -> tuple[int, DetectBlock, list[int]]:
    """(block index, the Detect block, absolute indices of the blocks it reads), checked."""
    detect_k = next((k for k, b in enumerate(blocks) if isinstance(b, DetectBlock)), None)
    if detect_k is None:
        raise CfgError(f"{path}: the model has no Detect block; add a Detect row at the end of 'head'")
    det: DetectBlock = blocks[detect_k]
    det_inputs = [detect_k + f if f < 0 else f for f in det.f]  # relative to the Detect block
    if det_inputs != sorted(det_inputs):
        raise CfgError(f"{path}: Detect inputs {det.f} must be in increasing order")
    if not all(0 <= j < detect_k for j in det_inputs) or len(det_inputs) != len(det.anchors):
        raise CfgError(f"{path}: Detect (block {detect_k}) reads blocks {det_inputs} with "
                       f"{len(det.anchors)} anchor levels; it needs one earlier block per level")
    return detect_k, det, det_inputs


def _emit_block(e: _Emitter, b: Block, srcs: list[int], name: str) -> int:
    """Layers of one non-Detect block reading cfg layers ``srcs``; returns its output layer."""
    if isinstance(b, ConvBlock):
        return e.conv(b.conv, srcs[0], name)
    if isinstance(b, C3Block):
        return e.c3(b, srcs[0], name)
    if isinstance(b, SPPFBlock):
        return e.sppf(b, srcs[0], name)
    if isinstance(b, UpsampleBlock):
        e.source(srcs[0])
        return e.add("upsample", {"stride": b.scale}, (e.last,))
    return e.add("route", {"layers": srcs}, tuple(srcs))  # ConcatBlock


def emit(blocks: list[Block], ch: int = 3, path: str = "<translated>") -> tuple[ModelCfg, dict[str, int]]:
    """Lay blocks out as cfg layers; returns the cfg and {upstream module name: cfg index}."""
    e = _Emitter(ch)
    out: dict[int, int] = {}  # block index -> cfg index of its output
    detect_k, det, det_inputs = _find_detect(blocks, path)

    def ref(f: int, k: int) -> int:
        j = k + f if f < 0 else f
        if j < 0 and k == 0:
            return -1  # the input image
        if j not in out:
            raise CfgError(f"{path}: block {k} reads block {j}, which is not an earlier block with "
                           f"an output")
        return out[j]

    for k, b in enumerate(blocks):
        if isinstance(b, DetectBlock):
            continue  # emitted level by level after the blocks that feed it
        srcs = [ref(f, k) for f in (b.f if isinstance(b.f, list) else [b.f])]
        out[k] = _emit_block(e, b, srcs, f"model.{k}")
        if k in det_inputs:
            e.detect_level(det, det_inputs.index(k), out[k], f"model.{detect_k}")
    cfg = ModelCfg(net={"channels": ch}, layers=e.layers, path=path)
    return validate(cfg), e.keymap


def yaml_to_cfg(source: str | Path | dict, nc: int | None = None, anchors=None) -> ModelCfg:
    """Translate an upstream model yaml (path or dict) into a cfg."""
    d = load_yaml(source) if not isinstance(source, dict) else source
    ch = _number_setting(d, "ch", 3, int)
    cfg, _ = emit(yaml_blocks(d, nc, anchors, ch), ch, str(d.get("yaml_file", "<yaml>")))
    return cfg


_KEY_RE = re.compile(r"^(model\.\d+(?:\.(?:cv\d|m\.\d+(?:\.cv\d)?))?)\.(?:(conv|bn)\.)?(\w+)$")


def upstream_to_ours_key(key: str, keymap: dict[str, int]) -> str | None:
    """``model.2.cv1.bn.weight`` -> ``module_list.4.BatchNorm2d.weight`` (None if unmapped)."""
    m = _KEY_RE.match(key)
    if not m or m.group(1) not in keymap:
        return None
    prefix, part, leaf = m.groups()
    sub = "BatchNorm2d" if part == "bn" else "Conv2d"
    return f"module_list.{keymap[prefix]}.{sub}.{leaf}"
