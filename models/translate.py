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
def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CfgError(f"{path}: model yaml not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CfgError(f"{path}: not valid yaml ({e})") from None
    if not isinstance(d, dict) or "backbone" not in d or "head" not in d:
        raise CfgError(f"{path}: not a YOLOv5 model yaml (needs 'backbone' and 'head'); "
                       f"dataset descriptions go to --data, models to --cfg")
    d.setdefault("yaml_file", str(path))
    return d


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _anchor_levels(anchors, where: str) -> list[list[tuple[float, float]]]:
    if not isinstance(anchors, (list, tuple)) or not all(isinstance(a, (list, tuple)) for a in anchors):
        raise CfgError(f"{where}: anchors must be a list of per-level w,h lists")
    levels = []
    for row in anchors:
        vals = [float(v) for v in row]
        if len(vals) % 2:
            raise CfgError(f"{where}: anchor row {row} is not w,h pairs")
        levels.append([(vals[k], vals[k + 1]) for k in range(0, len(vals), 2)])
    return levels


def yaml_blocks(d: dict, nc: int | None = None, anchors=None, ch: int = 3) -> list[Block]:
    """Blocks of an upstream model yaml dict, with ``nc``/``anchors`` overrides."""
    where = d.get("yaml_file", "model yaml")
    nc = int(nc if nc is not None else d["nc"])
    levels = _anchor_levels(anchors if anchors is not None else d["anchors"], where)
    gd, gw = float(d.get("depth_multiple", 1.0)), float(d.get("width_multiple", 1.0))
    chs: list[int] = []
    blocks: list[Block] = []

    def c_in(f: int) -> int:
        return ch if (f == -1 and not chs) else chs[f]

    for i, row in enumerate(d["backbone"] + d["head"]):
        try:
            f, n, m, args = row
        except (TypeError, ValueError):
            raise CfgError(f"{where}: layer {i} {row!r} is not [from, number, module, args]") from None
        m = str(m)
        n = max(round(n * gd), 1) if n > 1 else n
        args = [nc if a == "nc" else None if a == "None" else a for a in args]
        if m == "Conv":
            c2 = _make_divisible(args[0] * gw)
            k = args[1] if len(args) > 1 else 1
            s = args[2] if len(args) > 2 else 1
            p = args[3] if len(args) > 3 else None
            g = args[4] if len(args) > 4 else 1
            blocks.append(ConvBlock(f, ConvSpec(c2, k, s, p, g)))
        elif m == "C3":
            c2 = _make_divisible(args[0] * gw)
            shortcut = bool(args[1]) if len(args) > 1 else True
            c_ = int(c2 * 0.5)
            blocks.append(C3Block(f, ConvSpec(c_), ConvSpec(c_), ConvSpec(c2),
                                  [(ConvSpec(c_), ConvSpec(c_, 3)) for _ in range(n)], shortcut))
        elif m == "SPPF":
            c1 = c_in(f)
            c2 = _make_divisible(args[0] * gw)
            k = args[1] if len(args) > 1 else 5
            blocks.append(SPPFBlock(f, ConvSpec(c1 // 2), ConvSpec(c2), k))
            chs.append(c2)
            continue
        elif m in ("nn.Upsample", "Upsample"):
            blocks.append(UpsampleBlock(f, int(args[1])))
            chs.append(c_in(f))
            continue
        elif m == "Concat":
            blocks.append(ConcatBlock(list(f)))
            chs.append(sum(chs[j] for j in f))
            continue
        elif m == "Detect":
            blocks.append(DetectBlock(list(f), nc, levels))
            chs.append(0)
            continue
        else:
            raise CfgError(f"{where}: layer {i}: module {m!r} is not supported "
                           f"(supported: Conv, C3, SPPF, nn.Upsample, Concat, Detect)")
        chs.append(blocks[-1].conv.c2 if m == "Conv" else blocks[-1].cv3.c2)
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


def emit(blocks: list[Block], ch: int = 3, path: str = "<translated>") -> tuple[ModelCfg, dict[str, int]]:
    """Lay blocks out as cfg layers; returns the cfg and {upstream module name: cfg index}."""
    e = _Emitter(ch)
    out: dict[int, int] = {}  # block index -> cfg index of its output
    detect_k = next((k for k, b in enumerate(blocks) if isinstance(b, DetectBlock)), None)
    if detect_k is None:
        raise CfgError(f"{path}: the model has no Detect block")
    det: DetectBlock = blocks[detect_k]
    det_inputs = [detect_k + f if f < 0 else f for f in det.f]  # relative to the Detect block
    if det_inputs != sorted(det_inputs):
        raise CfgError(f"{path}: Detect inputs {det.f} must be in increasing order")
    all_anchors = [v for level in det.anchors for a in level for v in a]
    start = 0
    masks = []
    for level in det.anchors:
        masks.append(list(range(start, start + len(level))))
        start += len(level)

    def ref(f: int, k: int) -> int:
        j = k + f if f < 0 else f
        return -1 if j < 0 else out[j]

    for k, b in enumerate(blocks):
        name = f"model.{k}"
        if isinstance(b, ConvBlock):
            out[k] = e.conv(b.conv, ref(b.f, k), name)
        elif isinstance(b, C3Block):
            src = ref(b.f, k)
            cv2 = e.conv(b.cv2, src, f"{name}.cv2")
            x = e.conv(b.cv1, src, f"{name}.cv1")
            for j, (c1, c2) in enumerate(b.m):
                inp = x
                e.conv(c1, x, f"{name}.m.{j}.cv1")
                x = e.conv(c2, e.last, f"{name}.m.{j}.cv2")
                if b.shortcut:
                    x = e.add("shortcut", {"from": inp, "activation": "linear"}, (x, inp))
            e.add("route", {"layers": [x, cv2]}, (x, cv2))
            out[k] = e.conv(b.cv3, e.last, f"{name}.cv3")
        elif isinstance(b, SPPFBlock):
            cv1 = e.conv(b.cv1, ref(b.f, k), f"{name}.cv1")
            for _ in range(3):
                e.add("maxpool", {"size": b.k, "stride": 1}, (e.last,))
            e.add("route", {"layers": [cv1, cv1 + 1, cv1 + 2, cv1 + 3]}, (cv1, cv1 + 1, cv1 + 2, cv1 + 3))
            out[k] = e.conv(b.cv2, e.last, f"{name}.cv2")
        elif isinstance(b, UpsampleBlock):
            e.source(ref(b.f, k))
            out[k] = e.add("upsample", {"stride": b.scale}, (e.last,))
        elif isinstance(b, ConcatBlock):
            srcs = [ref(f, k) for f in b.f]
            out[k] = e.add("route", {"layers": srcs}, tuple(srcs))
        elif isinstance(b, DetectBlock):
            continue  # emitted level by level after the blocks that feed it
        if k in det_inputs:
            level = det_inputs.index(k)
            na = len(det.anchors[level])
            filters = det.filters[level] if det.filters else na * (5 + det.nc)
            e.conv(ConvSpec(filters, 1, 1, 0, act="linear", bn=False), out[k], f"model.{detect_k}.m.{level}")
            e.add("yolo", {"mask": masks[level], "anchors": list(all_anchors),
                           "classes": det.nc, "num": len(all_anchors) // 2}, (e.last,))
    cfg = ModelCfg(net={"channels": ch}, layers=e.layers, path=path)
    return validate(cfg), e.keymap


def yaml_to_cfg(source: str | Path | dict, nc: int | None = None, anchors=None) -> ModelCfg:
    """Translate an upstream model yaml (path or dict) into a cfg."""
    d = load_yaml(source) if not isinstance(source, dict) else source
    cfg, _ = emit(yaml_blocks(d, nc, anchors, int(d.get("ch", 3))), int(d.get("ch", 3)),
                  str(d.get("yaml_file", "<yaml>")))
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
