"""The one model: a flat layer graph built from a :class:`~models.cfg.ModelCfg`.

Every conv is an ``nn.Sequential`` with children ``Conv2d``, ``BatchNorm2d`` (when the section has
``batch_normalize=1``) and ``activation`` (unless linear), so state-dict keys read
``module_list.{i}.Conv2d.weight`` / ``module_list.{i}.BatchNorm2d.running_mean`` as in the Darknet
world. Forward reads widths from the tensors, never from the cfg, so tools may replace a conv by a
narrower one in place; :meth:`Darknet.to_cfg` writes the current widths and anchors back.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn

from utils.torch_utils import flush_subnormal_

from .cfg import Layer, ModelCfg, validate

__all__ = ["Darknet", "YOLOLayer", "Route", "Shortcut", "BN_EPS", "BN_MOMENTUM", "make_activation"]

BN_EPS = 1e-3  # YOLOv5's BatchNorm settings; eps is not part of a state dict, so set it here
BN_MOMENTUM = 0.03


def make_activation(name: str) -> nn.Module | None:
    """Activation module for a cfg ``activation=`` value (None for linear)."""
    name = name.lower()
    table = {
        "silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "mish": nn.Mish,
        "hardswish": nn.Hardswish, "logistic": nn.Sigmoid,
        "leaky": lambda: nn.LeakyReLU(0.1),
    }
    if name == "linear":
        return None
    return table[name]()


class Route(nn.Module):
    """Concatenation of earlier outputs (or a copy of one). Parameter-free placeholder."""

    def __init__(self, layers: list[int]):
        super().__init__()
        self.layers = list(layers)

    def extra_repr(self) -> str:
        return f"layers={self.layers}"


class Shortcut(nn.Module):
    """Residual add of the previous output and an earlier one. Parameter-free placeholder."""

    def __init__(self, source: int):
        super().__init__()
        self.source = source

    def extra_repr(self) -> str:
        return f"from={self.source}"


class YOLOLayer(nn.Module):
    """One detection level: reshapes the conv output and, for inference, decodes boxes (YOLOv5 v6).

    ``anchors`` are in input pixels, shape (na, 2); ``stride`` in pixels per grid cell.
    """

    def __init__(self, anchors: torch.Tensor, stride: float):
        super().__init__()
        self.register_buffer("anchors", anchors.float().clone(), persistent=False)
        self.stride = float(stride)

    @property
    def na(self) -> int:
        return self.anchors.shape[0]

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """(B, na*no, H, W) -> raw (B, na, H, W, no)."""
        b, c, h, w = p.shape
        return p.view(b, self.na, c // self.na, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw (B, na, H, W, no) -> (B, na*H*W, no): xywh in input pixels, sigmoid scores."""
        b, na, h, w, no = raw.shape
        y = raw.sigmoid()
        ys = torch.arange(h, device=raw.device, dtype=y.dtype)
        xs = torch.arange(w, device=raw.device, dtype=y.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), 2).view(1, 1, h, w, 2) - 0.5
        anchor_grid = self.anchors.to(y.dtype).view(1, na, 1, 1, 2)
        xy, wh, conf = y.split((2, 2, no - 4), 4)
        xy = (xy * 2 + grid) * self.stride
        wh = (wh * 2) ** 2 * anchor_grid
        return torch.cat((xy, wh, conf), 4).view(b, na * h * w, no)

    def extra_repr(self) -> str:
        return f"na={self.na}, stride={self.stride:g}"


def _build_conv(layer: Layer, in_channels: int) -> nn.Sequential:
    filters = layer.options["filters"]
    parts: list[tuple[str, nn.Module]] = [(
        "Conv2d",
        nn.Conv2d(in_channels, filters, layer.get("size"), layer.get("stride"), layer.padding,
                  groups=layer.get("groups"), bias=not layer.bn),
    )]
    if layer.bn:
        parts.append(("BatchNorm2d", nn.BatchNorm2d(filters, eps=BN_EPS, momentum=BN_MOMENTUM)))
    act = make_activation(layer.get("activation"))
    if act is not None:
        parts.append(("activation", act))
    return nn.Sequential(OrderedDict(parts))


class Darknet(nn.Module):
    """Model built from cfg specs.

    ``forward(x)`` returns, in train mode, the list of raw maps ``(B, na, H, W, 5+nc)`` per level;
    in eval mode ``(inference tensor (B, N, 5+nc), list of raw maps)``.
    """

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.cfg = cfg.copy()
        self.names: list[str] = [str(k) for k in range(self.cfg.nc)]
        layers = self.cfg.layers
        modules = []
        for i, layer in enumerate(layers):
            t = layer.type
            if t == "convolutional":
                modules.append(_build_conv(layer, self.cfg.in_width(layer.inputs[0])))
            elif t == "route":
                modules.append(Route(layer.options["layers"]))
            elif t == "shortcut":
                modules.append(Shortcut(layer.options["from"]))
            elif t == "upsample":
                modules.append(nn.Upsample(scale_factor=layer.get("stride"), mode="nearest"))
            elif t == "maxpool":
                modules.append(nn.MaxPool2d(layer.get("size"), layer.get("stride"), layer.padding))
            elif t == "yolo":
                level = self.cfg.yolo_indices.index(i)
                anchors = torch.tensor(self.cfg.level_anchors()[level], dtype=torch.float32)
                modules.append(YOLOLayer(anchors, self.cfg.scales[i]))
        self.module_list = nn.ModuleList(modules)
        self.yolo_indices = self.cfg.yolo_indices
        # Outputs read by a layer other than the next one are kept until their last reader.
        last_use: dict[int, int] = {}
        for i, layer in enumerate(layers):
            for j in layer.inputs:
                if 0 <= j != i - 1:
                    last_use[j] = max(last_use.get(j, -1), i)
        self._keep = frozenset(last_use)
        self._free_after: dict[int, list[int]] = {}
        for j, last in last_use.items():
            self._free_after.setdefault(last, []).append(j)

    # ---------------------------------------------------------------- properties
    @property
    def yolo_layers(self) -> list[YOLOLayer]:
        return [self.module_list[i] for i in self.yolo_indices]

    @property
    def nc(self) -> int:
        return self.cfg.nc

    @property
    def stride(self) -> torch.Tensor:
        """Per-level strides, derived from the graph."""
        return torch.tensor([m.stride for m in self.yolo_layers])

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor):
        kept: dict[int, torch.Tensor] = {}
        raw: list[torch.Tensor] = []
        for i, (layer, module) in enumerate(zip(self.cfg.layers, self.module_list)):
            t = layer.type
            if t == "route":
                parts = [x if j == i - 1 else kept[j] for j in layer.inputs]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            elif t == "shortcut":
                j = layer.inputs[1]
                x = x + (x if j == i - 1 else kept[j])
            elif t == "yolo":
                raw.append(module(x))
            else:
                x = module(x)
            if i in self._keep:
                kept[i] = x
            for j in self._free_after.get(i, ()):
                del kept[j]
        if self.training:
            return raw
        return torch.cat([m.decode(r) for m, r in zip(self.yolo_layers, raw)], 1), raw

    # ---------------------------------------------------------------- editing helpers
    def conv_layers(self):
        """(index, nn.Sequential) for every convolutional layer."""
        for i, layer in enumerate(self.cfg.layers):
            if layer.type == "convolutional":
                yield i, self.module_list[i]

    @torch.no_grad()
    def fuse(self) -> "Darknet":
        """Fold every BatchNorm into its conv (in place) for inference; returns self."""
        for _, seq in self.conv_layers():
            if "BatchNorm2d" not in seq._modules:
                continue
            conv, bn = seq.Conv2d, seq.BatchNorm2d
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True).to(conv.weight)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            flush_subnormal_(fused.weight)  # a nearly-zero gamma must not leave slow subnormal weights
            flush_subnormal_(fused.bias)
            seq.Conv2d = fused
            del seq._modules["BatchNorm2d"]
        return self

    def fused_copy(self) -> "Darknet":
        """An inference copy with every BatchNorm folded into its conv, in eval mode; self is unchanged."""
        return copy.deepcopy(self).fuse().eval()

    def to_cfg(self) -> ModelCfg:
        """The cfg describing the model as it is now: current conv widths and anchors."""
        cfg = self.cfg.copy()
        for i, seq in self.conv_layers():
            cfg.layers[i].options["filters"] = seq.Conv2d.out_channels
            if "BatchNorm2d" not in seq._modules and cfg.layers[i].bn:
                cfg.layers[i].options["batch_normalize"] = 0  # fused
        flat, start = [], 0
        for i, m in zip(self.yolo_indices, self.yolo_layers):
            pairs = [tuple(float(v) for v in a) for a in m.anchors.detach().cpu().double().tolist()]
            flat += pairs
            cfg.layers[i].options["mask"] = list(range(start, start + len(pairs)))
            start += len(pairs)
        for i in self.yolo_indices:
            cfg.layers[i].options["anchors"] = [v for a in flat for v in a]
            if "num" in cfg.layers[i].options:
                cfg.layers[i].options["num"] = len(flat)
        return validate(cfg)
