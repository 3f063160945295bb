"""Darknet-style ``.cfg`` text <-> typed layer specs.

A cfg file is a list of sections. ``[net]`` holds free-form settings (only ``channels`` is used);
every other section is one layer, indexed from 0 in file order. Parsing turns every value into its
type, resolves relative layer references (negative numbers) to absolute indices, remembers the line
each section and key came from, and validates the graph: unknown sections or keys, references out of
range, residual adds of unequal widths, concatenations of unequal resolutions and detection convs
whose ``filters`` do not match ``anchors * (5 + classes)`` are errors naming the file and line.

``format_cfg`` writes specs back as text that parses to identical specs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from utils.errors import UserError

__all__ = [
    "CfgError", "Layer", "ModelCfg", "parse_cfg", "read_cfg", "format_cfg", "ACTIVATIONS",
]

# Activation names accepted in ``[convolutional] activation=`` (case-insensitive).
ACTIVATIONS = ("silu", "swish", "leaky", "linear", "relu", "mish", "hardswish", "logistic")


class CfgError(UserError, ValueError):
    """A model description is malformed; the message names the file, the line and what to fix."""


def _int(value: str) -> int:
    return int(value)


def _float(value: str) -> float:
    return float(value)


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


def _str(value: str) -> str:
    return value


# Known keys per section type, with their value type. Darknet keys that this toolkit accepts but
# ignores (training settings of the original Darknet) are listed so that files written for Darknet
# still parse.
_SCHEMA: dict[str, dict[str, Callable[[str], Any]]] = {
    "convolutional": {
        "batch_normalize": _int, "filters": _int, "size": _int, "stride": _int, "pad": _int,
        "padding": _int, "groups": _int, "activation": _str,
    },
    "shortcut": {"from": _int, "activation": _str},
    "route": {"layers": _ints},
    "upsample": {"stride": _int},
    "maxpool": {"size": _int, "stride": _int},
    "yolo": {
        "mask": _ints, "anchors": _floats, "classes": _int, "num": _int,
        # accepted for compatibility, unused:
        "jitter": _float, "ignore_thresh": _float, "truth_thresh": _float, "random": _float,
        "scale_x_y": _float, "iou_thresh": _float, "cls_normalizer": _float,
        "iou_normalizer": _float, "iou_loss": _str, "nms_kind": _str, "beta_nms": _float,
        "max_delta": _float, "resize": _float, "new_coords": _int,
    },
}

# Keys each section must have.
_REQUIRED = {
    "convolutional": ("filters",),
    "shortcut": ("from",),
    "route": ("layers",),
    "upsample": (),
    "maxpool": (),
    "yolo": ("mask", "anchors", "classes"),
}

_DEFAULTS = {
    "convolutional": {"batch_normalize": 0, "size": 1, "stride": 1, "pad": 0, "groups": 1,
                      "activation": "linear"},
    "upsample": {"stride": 2},
    "maxpool": {"size": 2, "stride": 2},
}


@dataclass
class Layer:
    """One cfg section after parsing.

    ``options`` holds typed values as written (references already absolute); ``inputs`` the
    absolute indices of the layers this one reads (-1 = the input image).
    """

    type: str
    options: dict[str, Any]
    inputs: tuple[int, ...]
    line: int = field(default=0, compare=False)
    key_lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def get(self, key: str) -> Any:
        """Option value, falling back to the section's default."""
        if key in self.options:
            return self.options[key]
        return _DEFAULTS.get(self.type, {}).get(key)

    # Convenience accessors for convolutional layers.
    @property
    def bn(self) -> bool:
        return bool(self.get("batch_normalize"))

    @property
    def padding(self) -> int:
        """Zero padding of a conv or maxpool: explicit ``padding``, else ``(size-1)//2`` if ``pad``."""
        if self.type == "maxpool":
            return (self.get("size") - 1) // 2
        if "padding" in self.options:
            return self.options["padding"]
        return (self.get("size") - 1) // 2 if self.get("pad") else 0


@dataclass
class ModelCfg:
    """A parsed cfg: ``[net]`` settings and the layer list, plus derived per-layer facts."""

    net: dict[str, Any]
    layers: list[Layer]
    path: str = field(default="<string>", compare=False)
    net_line: int = field(default=0, compare=False)
    channels: list[int] = field(default_factory=list, compare=False, repr=False)
    scales: list[float] = field(default_factory=list, compare=False, repr=False)

    @property
    def in_channels(self) -> int:
        return int(self.net.get("channels", 3))

    def in_width(self, j: int) -> int:
        """Channels that source ``j`` feeds a layer: the image channels for ``j < 0``, else layer j's output."""
        return self.in_channels if j < 0 else self.channels[j]

    @property
    def yolo_indices(self) -> list[int]:
        return [i for i, l in enumerate(self.layers) if l.type == "yolo"]

    @property
    def nc(self) -> int:
        ys = self.yolo_indices
        return self.layers[ys[0]].options["classes"] if ys else 0

    @property
    def strides(self) -> list[float]:
        """Stride of each detection level, from the graph (product of down/up-sampling factors)."""
        return [self.scales[i] for i in self.yolo_indices]

    def level_anchors(self) -> list[list[tuple[float, float]]]:
        """Anchors in pixels per detection level, ``[[(w, h), ...], ...]``."""
        out = []
        for i in self.yolo_indices:
            opts = self.layers[i].options
            pairs = _pairs(opts["anchors"])
            out.append([pairs[m] for m in opts["mask"]])
        return out

    def copy(self) -> "ModelCfg":
        return copy.deepcopy(self)

    def with_head(self, nc: int | None = None,
                  anchors: list[list[tuple[float, float]]] | None = None) -> "ModelCfg":
        """A copy with other classes and/or per-level anchors (pixels); detect convs follow nc."""
        new = self.copy()
        ys = new.yolo_indices
        if anchors is not None and len(anchors) != len(ys):
            raise CfgError(f"{self.path}: {len(anchors)} anchor levels given for {len(ys)} [yolo] layers; "
                           f"give one anchor list per detection level")
        flat = [a for level in anchors for a in level] if anchors is not None else None
        start = 0
        for k, i in enumerate(ys):
            opts = new.layers[i].options
            if nc is not None:
                opts["classes"] = int(nc)
            if flat is not None:
                na = len(anchors[k])
                opts["anchors"] = [float(v) for a in flat for v in a]
                opts["mask"] = list(range(start, start + na))
                opts["num"] = len(flat)
                start += na
            conv = new.layers[new.layers[i].inputs[0]]
            conv.options["filters"] = len(opts["mask"]) * (5 + opts["classes"])
        return validate(new)


def _pairs(values: list[float]) -> list[tuple[float, float]]:
    return [(values[k], values[k + 1]) for k in range(0, len(values) - 1, 2)]


def _strip_comment(line: str) -> str:
    for mark in ("#", ";"):
        pos = line.find(mark)
        if pos >= 0:
            line = line[:pos]
    return line.strip()


def _error(path: str, line: int, msg: str) -> CfgError:
    """``path:line: msg``; layers built in code (line 0, e.g. translated from a yaml) give ``path: msg``."""
    return CfgError(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")


def _convert_net_value(value: str) -> Any:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def parse_cfg(text: str, path: str | Path = "<string>") -> ModelCfg:
    """Parse cfg text into a validated :class:`ModelCfg`."""
    path = str(path)
    sections: list[tuple[str, int, list[tuple[str, str, int]]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise _error(path, lineno, f"malformed section header {line!r}")
            sections.append((line[1:-1].strip().lower(), lineno, []))
            continue
        if not sections:
            raise _error(path, lineno, f"{line!r} appears before the first [section]")
        if "=" not in line:
            raise _error(path, lineno, f"expected key=value, got {line!r}")
        key, value = line.split("=", 1)
        sections[-1][2].append((key.strip(), value.strip(), lineno))

    if not sections:
        raise CfgError(f"{path}: no sections found (is this a Darknet .cfg file?)")
    if sections[0][0] != "net":
        raise _error(path, sections[0][1], f"the first section must be [net], got [{sections[0][0]}]")
    net_name, net_line, net_items = sections[0]
    net = {k: _convert_net_value(v) for k, v, _ in net_items}

    layers = []
    for index, (name, lineno, items) in enumerate(sections[1:]):
        layers.append(_parse_layer(path, index, name, lineno, items))
    return validate(ModelCfg(net=net, layers=layers, path=path, net_line=net_line))


# Integer options that must be at least 1 (0 would divide by zero or build an empty layer).
_POSITIVE = ("filters", "size", "stride", "groups", "classes")


def _typed_options(path: str, name: str, schema: dict[str, Callable[[str], Any]],
                   items: list[tuple[str, str, int]]) -> tuple[dict[str, Any], dict[str, int]]:
    """A section's ``key=value`` items as typed options, and the line of each key."""
    options: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    for key, value, kline in items:
        conv = schema.get(key)
        if conv is None:
            raise _error(path, kline, f"unknown key {key!r} in [{name}] (known: {', '.join(schema)})")
        if key in options:
            raise _error(path, kline, f"key {key!r} given twice in [{name}]")
        try:
            options[key] = conv(value)
        except ValueError:
            raise _error(path, kline, f"bad value {value!r} for {key!r} in [{name}]") from None
        if key in _POSITIVE and options[key] < 1 or key == "padding" and options[key] < 0:
            raise _error(path, kline, f"{key}={options[key]} in [{name}] must be "
                                      f"{'0 or more' if key == 'padding' else 'at least 1'}")
        key_lines[key] = kline
    return options, key_lines


def _parse_layer(path: str, index: int, name: str, lineno: int,
                 items: list[tuple[str, str, int]]) -> Layer:
    if name == "net":
        raise _error(path, lineno, "[net] may only appear once, as the first section")
    schema = _SCHEMA.get(name)
    if schema is None:
        known = ", ".join(f"[{k}]" for k in _SCHEMA)
        raise _error(path, lineno, f"unknown section [{name}] (known: [net], {known})")
    options, key_lines = _typed_options(path, name, schema, items)
    for key in _REQUIRED[name]:
        if key not in options:
            raise _error(path, lineno, f"[{name}] (layer {index}) needs {key!r}")

    def absolute(ref: int, key: str) -> int:
        j = index + ref if ref < 0 else ref
        if not 0 <= j < index:
            raise _error(path, key_lines[key],
                         f"[{name}] (layer {index}) refers to layer {ref} -> {j}, "
                         f"which is not an earlier layer (0..{index - 1})")
        return j

    prev = index - 1  # -1 = the input image
    if name == "route":
        options["layers"] = [absolute(r, "layers") for r in options["layers"]]
        if not options["layers"]:
            raise _error(path, key_lines["layers"], "[route] needs at least one layer")
        inputs = tuple(options["layers"])
    elif name == "shortcut":
        options["from"] = absolute(options["from"], "from")
        if prev < 0:
            raise _error(path, lineno, "[shortcut] cannot be the first layer")
        inputs = (prev, options["from"])
    else:
        inputs = (prev,)
    if name == "convolutional" and options.get("activation", "linear").lower() not in ACTIVATIONS:
        raise _error(path, key_lines["activation"],
                     f"unknown activation {options['activation']!r} (known: {', '.join(ACTIVATIONS)})")
    if name == "yolo":
        anchors = options["anchors"]
        if len(anchors) % 2:
            raise _error(path, key_lines["anchors"], "anchors must be w,h pairs")
        n = len(anchors) // 2
        if any(not 0 <= m < n for m in options["mask"]):
            raise _error(path, key_lines["mask"], f"mask refers to anchors outside 0..{n - 1}")
    return Layer(type=name, options=options, inputs=inputs, line=lineno, key_lines=key_lines)


# Output (channels, stride) of one layer from its sources' (channels, stride); ``src(j)`` gives
# those of layer j (-1: the input image). Each raises a CfgError naming the line on a bad graph.
_Shape = Callable[[ModelCfg, int, Layer, Callable[[int], tuple[int, float]]], tuple[int, float]]


def _conv_shape(cfg: ModelCfg, i: int, layer: Layer, src) -> tuple[int, float]:
    c, s = src(layer.inputs[0])
    groups = layer.get("groups")
    if c % groups or layer.options["filters"] % groups:
        raise _error(cfg.path, layer.line, f"groups={groups} does not divide the {c} input "
                                           f"channels and {layer.options['filters']} filters")
    return layer.options["filters"], s * layer.get("stride")


def _shortcut_shape(cfg: ModelCfg, i: int, layer: Layer, src) -> tuple[int, float]:
    (ca, sa), (cb, sb) = src(layer.inputs[0]), src(layer.inputs[1])
    if ca != cb:
        raise _error(cfg.path, layer.key_lines.get("from", layer.line),
                     f"[shortcut] (layer {i}) adds layer {layer.inputs[0]} ({ca} channels) "
                     f"and layer {layer.inputs[1]} ({cb} channels): widths differ")
    if sa != sb:
        raise _error(cfg.path, layer.line, f"[shortcut] (layer {i}) adds maps of different resolution")
    return ca, sa


def _route_shape(cfg: ModelCfg, i: int, layer: Layer, src) -> tuple[int, float]:
    parts = [src(j) for j in layer.inputs]
    if len({s for _, s in parts}) > 1:
        raise _error(cfg.path, layer.key_lines.get("layers", layer.line),
                     f"[route] (layer {i}) concatenates maps of different resolution "
                     f"(strides {[s for _, s in parts]})")
    return sum(c for c, _ in parts), parts[0][1]


def _upsample_shape(cfg: ModelCfg, i: int, layer: Layer, src) -> tuple[int, float]:
    c, s = src(layer.inputs[0])
    return c, s / layer.get("stride")


def _maxpool_shape(cfg: ModelCfg, i: int, layer: Layer, src) -> tuple[int, float]:
    c, s = src(layer.inputs[0])
    return c, s * layer.get("stride")


def _yolo_shape(cfg: ModelCfg, i: int, layer: Layer, src) -> tuple[int, float]:
    j = layer.inputs[0]
    if j < 0 or cfg.layers[j].type != "convolutional":
        raise _error(cfg.path, layer.line, f"[yolo] (layer {i}) must follow a [convolutional]")
    need = len(layer.options["mask"]) * (5 + layer.options["classes"])
    have = cfg.layers[j].options["filters"]
    if have != need:
        raise _error(cfg.path, cfg.layers[j].key_lines.get("filters", cfg.layers[j].line),
                     f"detection conv (layer {j}) has filters={have}, but its [yolo] "
                     f"(line {layer.line}) needs {len(layer.options['mask'])} anchors x "
                     f"(5 + {layer.options['classes']} classes) = {need}")
    return have, src(j)[1]


_SHAPES: dict[str, _Shape] = {
    "convolutional": _conv_shape, "shortcut": _shortcut_shape, "route": _route_shape,
    "upsample": _upsample_shape, "maxpool": _maxpool_shape, "yolo": _yolo_shape,
}


def validate(cfg: ModelCfg) -> ModelCfg:
    """Check widths and resolutions along the graph; fill ``cfg.channels`` and ``cfg.scales``."""
    channels: list[int] = []
    scales: list[float] = []

    def src(j: int) -> tuple[int, float]:
        return (cfg.in_channels, 1.0) if j < 0 else (channels[j], scales[j])

    for i, layer in enumerate(cfg.layers):
        shape = _SHAPES.get(layer.type)
        if shape is None:  # _parse_layer rejects unknown types; specs built in code may not
            raise _error(cfg.path, layer.line, f"unknown section [{layer.type}]")
        c, s = shape(cfg, i, layer, src)
        channels.append(c)
        scales.append(s)
    cfg.channels, cfg.scales = channels, scales
    return cfg


def read_cfg(path: str | Path) -> ModelCfg:
    """Read and parse a ``.cfg`` file; a clear error for missing files and yaml given as cfg."""
    path = Path(path)
    if not path.is_file():
        raise CfgError(f"{path}: cfg file not found; check the path given to --cfg")
    if path.suffix.lower() in (".yaml", ".yml"):
        raise CfgError(f"{path}: this is a yaml model description; use models.build_model() "
                       f"or pass it where a .yaml or .cfg is accepted")
    return parse_cfg(path.read_text(), path)


def _fmt_number(v: Any) -> str:
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v):
            return str(int(v))
        return repr(v)
    return str(v)


def format_cfg(cfg: ModelCfg) -> str:
    """Cfg text for ``cfg``; references are written relative (negative), as Darknet files do."""
    lines = ["[net]"]
    lines += [f"{k}={_fmt_number(v)}" for k, v in cfg.net.items()]
    for i, layer in enumerate(cfg.layers):
        lines += ["", f"[{layer.type}]"]
        for key, value in layer.options.items():
            if layer.type == "route" and key == "layers":
                value = ",".join(str(j - i) for j in value)
            elif layer.type == "shortcut" and key == "from":
                value = str(value - i)
            elif isinstance(value, list):
                value = ",".join(_fmt_number(v) for v in value)
                if key == "anchors":  # pairs, as Darknet writes them
                    parts = value.split(",")
                    value = ", ".join(",".join(parts[k:k + 2]) for k in range(0, len(parts), 2))
            else:
                value = _fmt_number(value)
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"
