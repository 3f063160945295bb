"""Import upstream YOLOv5 v6.x / v7.0 ``.pt`` files without upstream code.

Upstream checkpoints are pickles of upstream classes (``models.yolo.DetectionModel``,
``models.common.C3``, ...). Unpickling normally imports and runs whatever a file names, so we read
them through a restricted unpickler: the upstream model classes map to inert stand-ins (plain
``nn.Module`` holders with no behaviour), a short list of torch layers, tensor rebuilders and
stdlib containers is allowed, plus exactly the numpy globals that unstripped training checkpoints
hold (arrays, dtypes, scalars). Every other global is refused before anything is called.

The architecture is then rebuilt from the pickled module tree alone: each layer's ``f`` (inputs)
and its submodules' tensor shapes give the block list, so models whose ``yaml`` is stale (pruned
models saved in upstream format) import as well. :func:`models.translate.emit` lays the blocks out
as cfg layers and names the cfg layer of every upstream module, which is how weights are copied.
Anchors come from ``Detect.anchors`` (stride units there, pixels here), i.e. as trained.
"""
from __future__ import annotations

import collections
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .build import load_state
from .cfg import CfgError
from .checkpoint import CheckpointError, make_checkpoint, to_plain
from .darknet import BN_EPS, Darknet
from .translate import (Block, C3Block, ConcatBlock, ConvBlock, ConvSpec, DetectBlock, SPPFBlock,
                        UpsampleBlock, emit, upstream_to_ours_key)

__all__ = [
    "UpstreamError", "RESTRICTED_PICKLE", "load_upstream_pickle", "find_upstream_model",
    "upstream_to_model", "import_upstream",
]


class UpstreamError(CheckpointError):
    """An upstream YOLOv5 file cannot be imported; the message names the file and the reason."""


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something the restricted unpickler does not do; nothing was run."""


class RefusedGlobal(RefusedPickle):
    """The pickle names a global outside the allow-list; nothing from it was imported or called."""

    def __init__(self, module: str, name: str, reason: str = ""):
        self.module, self.name = module, name
        super().__init__(reason or f"refused to load the global '{module}.{name}'")


# ---------------------------------------------------------------------------------------------
# inert stand-ins for the upstream classes
# ---------------------------------------------------------------------------------------------
class _Inert(nn.Module):
    """Holds an upstream module's pickled state (submodules, tensors, attributes). No forward."""

    upstream_name = "?"

    def extra_repr(self) -> str:
        return f"upstream {self.upstream_name}"


class UpstreamModel(_Inert):
    upstream_name = "models.yolo.DetectionModel"


class UpstreamDetect(_Inert):
    upstream_name = "models.yolo.Detect"


class UpstreamConv(_Inert):
    upstream_name = "models.common.Conv"


class UpstreamC3(_Inert):
    upstream_name = "models.common.C3"


class UpstreamBottleneck(_Inert):
    upstream_name = "models.common.Bottleneck"


class UpstreamSPPF(_Inert):
    upstream_name = "models.common.SPPF"


class UpstreamConcat(_Inert):
    upstream_name = "models.common.Concat"


def _standin_table() -> dict[tuple[str, str], type]:
    """(module, name) -> stand-in class; one subclass per upstream name so the file's own class
    name (``Model`` or ``DetectionModel``, with or without the pip package's ``yolov5.`` prefix)
    is known after loading."""
    bases = {("yolo", "Model"): UpstreamModel, ("yolo", "DetectionModel"): UpstreamModel,
             ("yolo", "Detect"): UpstreamDetect, ("common", "Conv"): UpstreamConv,
             ("common", "C3"): UpstreamC3, ("common", "Bottleneck"): UpstreamBottleneck,
             ("common", "SPPF"): UpstreamSPPF, ("common", "Concat"): UpstreamConcat}
    table = {}
    for prefix in ("models", "yolov5.models"):
        for (module, name), base in bases.items():
            full = f"{prefix}.{module}"
            table[(full, name)] = type(name, (base,), {"upstream_name": f"{full}.{name}",
                                                       "__module__": __name__})
    return table


_STANDINS = _standin_table()

# ---------------------------------------------------------------------------------------------
# the allow-list
# ---------------------------------------------------------------------------------------------
_TORCH_CLASSES = {
    ("torch.nn.modules.conv", "Conv2d"): nn.Conv2d,
    ("torch.nn.modules.batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
    ("torch.nn.modules.batchnorm", "SyncBatchNorm"): nn.SyncBatchNorm,  # DDP runs with --sync-bn
    ("torch.nn.modules.activation", "SiLU"): nn.SiLU,
    ("torch.nn.modules.activation", "LeakyReLU"): nn.LeakyReLU,
    ("torch.nn.modules.activation", "ReLU"): nn.ReLU,
    ("torch.nn.modules.activation", "Hardswish"): nn.Hardswish,
    ("torch.nn.modules.activation", "Mish"): nn.Mish,
    ("torch.nn.modules.linear", "Identity"): nn.Identity,
    ("torch.nn.modules.container", "Sequential"): nn.Sequential,
    ("torch.nn.modules.container", "ModuleList"): nn.ModuleList,
    ("torch.nn.modules.upsampling", "Upsample"): nn.Upsample,
    ("torch.nn.modules.pooling", "MaxPool2d"): nn.MaxPool2d,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
if hasattr(torch._utils, "_rebuild_parameter_with_state"):
    _TORCH_CLASSES[("torch._utils", "_rebuild_parameter_with_state")] = (
        torch._utils._rebuild_parameter_with_state)

# Storage classes by name (torch's own unpickler wrapper resolves most of them before us).
_STORAGES = {"FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage",
             "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
             "UntypedStorage"}

_TORCH_DTYPES = {"float16", "half", "float32", "float", "float64", "double", "bfloat16", "uint8",
                 "int8", "int16", "short", "int32", "int", "int64", "long", "bool", "complex64",
                 "complex128"}

_BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": bytearray, "complex": complex,
             "slice": slice}

# numpy globals of pickled arrays, dtypes and scalars (best_fitness, results in last.pt files).
_NUMPY_MULTIARRAY = ("_reconstruct", "scalar")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``; only text codecs allowed."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8", "ascii"):
        raise RefusedGlobal("_codecs", "encode", f"refused _codecs.encode with codec {encoding!r}")
    return text.encode(encoding)


_METHOD_NAMES = ("forward", "forward_fuse", "fuseforward")


def _method_ref(obj: Any, name: str) -> str:
    """Stand-in for ``getattr``: fused upstream Convs pickle ``forward = self.forward_fuse``.

    Only that case is accepted (a method name on a stand-in); the result is an inert marker.
    A general ``getattr`` would let a pickle reach arbitrary objects, so everything else is refused.
    """
    if isinstance(obj, _Inert) and name in _METHOD_NAMES:
        return f"<upstream method {name}>"
    raise RefusedGlobal("builtins", "getattr",
                        f"refused builtins.getattr({type(obj).__name__}, {name!r})")


def _numpy_global(module: str, name: str) -> Any:
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY_MULTIARRAY:
        return getattr(core.multiarray, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        obj = getattr(getattr(np, "dtypes", None), name, None)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            return obj
    raise RefusedGlobal(module, name)


_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def resolve_global(module: str, name: str) -> Any:
    """The object an allowed pickle global stands for; :class:`RefusedGlobal` for any other."""
    module = _PY2_NAMES.get(module, module)  # protocol-2 pickles use Python 2 module names
    key = (module, name)
    if key in _STANDINS:
        return _STANDINS[key]
    if key in _TORCH_CLASSES:
        return _TORCH_CLASSES[key]
    if module == "torch":
        if name in _STORAGES and hasattr(torch, name):
            return getattr(torch, name)
        if name in _TORCH_DTYPES:
            return getattr(torch, name)
    if module == "builtins":
        if name in _BUILTINS:
            return _BUILTINS[name]
        if name == "getattr":
            return _method_ref
    if key == ("_codecs", "encode"):
        return _latin1_encode
    if module == "numpy" or module.startswith("numpy."):
        return _numpy_global(module, name)
    if module.startswith(("models.", "yolov5.models.", "utils.", "yolov5.utils.")):
        raise RefusedGlobal(module, name,
                            f"the upstream class '{module}.{name}' is not supported: only YOLOv5 "
                            f"v6.x/v7.0 detection models built from Conv, C3, Bottleneck, SPPF, "
                            f"nn.Upsample, Concat and Detect can be imported")
    raise RefusedGlobal(module, name)


_NOT_INSTANCES = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                  types.ModuleType)


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler whose ``find_class`` consults only :func:`resolve_global`.

    It is the pure-Python unpickler so that BUILD can be guarded too: the C one would let a
    pickle set attributes (e.g. ``__defaults__``) on an allowed class or function, changing it for
    the whole process. Here state may only be set on instances. Upstream pickles are small (the
    tensors' bytes are read by torch, not by the unpickler), so speed does not matter.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        return resolve_global(module, name)

    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, _NOT_INSTANCES):
            raise RefusedPickle(f"refused to set attributes on "
                                f"{getattr(target, '__module__', '?')}."
                                f"{getattr(target, '__qualname__', type(target).__name__)}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _restricted_load(file, **kwargs) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) subclasses ``pickle_module.Unpickler``: its find_class maps names
# containing "Storage" to a dtype marker itself and passes every other global to ours through
# super(); ``pickle_module.load`` reads the legacy (pre-zip) format's headers.
RESTRICTED_PICKLE = types.ModuleType("yolov5_prune_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler
RESTRICTED_PICKLE.load = _restricted_load
RESTRICTED_PICKLE.UnpicklingError = pickle.UnpicklingError


# ---------------------------------------------------------------------------------------------
# reading the file
# ---------------------------------------------------------------------------------------------
def load_upstream_pickle(path: str | Path) -> Any:
    """Unpickle an upstream ``.pt`` through the restricted unpickler (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise UpstreamError(f"{path}: weights file not found; check the path given to --weights")
    if path.stat().st_size == 0:
        raise UpstreamError(f"{path}: the weights file is empty; write or download it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=RESTRICTED_PICKLE)
    except RefusedPickle as e:
        raise UpstreamError(f"{path}: {e}; nothing from the file was executed. Only YOLOv5 "
                            f"v6.x/v7.0 model checkpoints (or this toolkit's own) can be loaded."
                            ) from None
    except RuntimeError as e:
        if "pickle_module" not in str(e):
            raise _unreadable(path, e) from None
        raise UpstreamError(f"{path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which rules out the "
                            f"restricted importer for upstream files; unset it to import this "
                            f"file") from None
    except Exception as e:  # truncated zip, foreign format, TorchScript archive, ...
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> UpstreamError:
    reason = (str(e).splitlines() or [""])[0].split(". ")[0][:160]
    if len(reason) < 12:  # KeyError(32) and the like say nothing by their message alone
        reason = f"{type(e).__name__} {reason}".strip()
    return UpstreamError(f"{path}: not a readable PyTorch checkpoint ({reason}); the file may be "
                         f"truncated or written by another program; write or download it again")


def find_upstream_model(obj: Any, where: str = "file") -> tuple[UpstreamModel, str]:
    """The pickled model to use and which entry it came from (``"ema"`` preferred over ``"model"``)."""
    if isinstance(obj, UpstreamModel):
        return obj, "model"
    if isinstance(obj, dict):
        for key in ("ema", "model"):
            if isinstance(obj.get(key), UpstreamModel):
                return obj[key], key
        keys = sorted(str(k) for k in obj)[:10]
        raise UpstreamError(f"{where}: no YOLOv5 model in this checkpoint (keys: {keys}); pass a "
                            f"YOLOv5 v6.x/v7.0 checkpoint or one written by this toolkit")
    raise UpstreamError(f"{where}: holds a {type(obj).__name__}, not a YOLOv5 checkpoint; pass a "
                        f"YOLOv5 v6.x/v7.0 checkpoint or one written by this toolkit")


# ---------------------------------------------------------------------------------------------
# module tree -> blocks
# ---------------------------------------------------------------------------------------------
_ACTIVATIONS = {nn.SiLU: "SiLU", nn.Identity: "linear", nn.ReLU: "relu", nn.Hardswish: "hardswish",
                nn.Mish: "mish"}


def _activation(act: nn.Module | None, where: str) -> str:
    """cfg activation name of an upstream ``Conv.act`` module."""
    if act is None:
        return "linear"
    if type(act) is nn.LeakyReLU:
        if abs(act.negative_slope - 0.1) > 1e-12:
            raise UpstreamError(f"{where}: LeakyReLU({act.negative_slope}) has no cfg equivalent "
                                f"(the cfg 'leaky' activation has slope 0.1)")
        return "leaky"
    if type(act) in _ACTIVATIONS:
        return _ACTIVATIONS[type(act)]
    raise UpstreamError(f"{where}: activation {type(act).__name__} is not supported")


def _square(value, what: str, where: str) -> int:
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(set(vals)) != 1 or not isinstance(vals[0], int):
        raise UpstreamError(f"{where}: {what} {value} is not supported (square integers only)")
    return vals[0]


def _conv_spec(m: nn.Module, where: str) -> ConvSpec:
    """ConvSpec of an upstream ``Conv`` (conv + bn + act, or a fused conv with bias)."""
    conv = m._modules.get("conv")
    if not isinstance(conv, nn.Conv2d):
        raise UpstreamError(f"{where}: Conv without a Conv2d")
    k = _square(conv.kernel_size, "kernel size", where)
    s = _square(conv.stride, "stride", where)
    p = _square(conv.padding, "padding", where)
    if _square(conv.dilation, "dilation", where) != 1:
        raise UpstreamError(f"{where}: dilated convolutions are not supported")
    bn = m._modules.get("bn")
    c2 = int(conv.weight.shape[0])
    if bn is None:
        if conv.bias is None:
            raise UpstreamError(f"{where}: Conv has neither BatchNorm nor bias")
    else:
        if not isinstance(bn, _BatchNorm):
            raise UpstreamError(f"{where}: 'bn' is a {type(bn).__name__}, not a BatchNorm")
        if conv.bias is not None:
            raise UpstreamError(f"{where}: Conv with both bias and BatchNorm is not supported")
        if bn.weight is None or bn.running_mean is None or int(bn.running_mean.numel()) != c2:
            raise UpstreamError(f"{where}: BatchNorm does not match its conv's {c2} channels")
        if abs(float(bn.eps) - BN_EPS) > 1e-9:
            print(f"WARNING: {where}: BatchNorm eps {bn.eps:g} differs from YOLOv5's {BN_EPS:g}; "
                  f"outputs will differ slightly from the original")
    act = _activation(m._modules.get("act"), where)
    return ConvSpec(c2, k, s, p, int(conv.groups), act, bn is not None)


def _c3_block(m: nn.Module, f, where: str) -> C3Block:
    bottlenecks = list(m._modules["m"]) if "m" in m._modules else []
    if not bottlenecks or not all(isinstance(b, UpstreamBottleneck) for b in bottlenecks):
        raise UpstreamError(f"{where}: C3 without Bottleneck modules")
    adds = {bool(getattr(b, "add", False)) for b in bottlenecks}
    if len(adds) != 1:
        raise UpstreamError(f"{where}: C3 mixes bottlenecks with and without shortcut")
    pairs = [(_conv_spec(b.cv1, f"{where}.m.{j}.cv1"), _conv_spec(b.cv2, f"{where}.m.{j}.cv2"))
             for j, b in enumerate(bottlenecks)]
    return C3Block(f, _conv_spec(m.cv1, f"{where}.cv1"), _conv_spec(m.cv2, f"{where}.cv2"),
                   _conv_spec(m.cv3, f"{where}.cv3"), pairs, adds.pop())


def _sppf_block(m: nn.Module, f, where: str) -> SPPFBlock:
    pool = m._modules.get("m")
    if not isinstance(pool, nn.MaxPool2d):
        raise UpstreamError(f"{where}: SPPF without a MaxPool2d")
    k = _square(pool.kernel_size, "maxpool size", where)
    if _square(pool.stride, "maxpool stride", where) != 1 or \
            _square(pool.padding, "maxpool padding", where) != k // 2 or k % 2 == 0:
        raise UpstreamError(f"{where}: SPPF maxpool must be odd-sized, stride 1, padding k//2")
    return SPPFBlock(f, _conv_spec(m.cv1, f"{where}.cv1"), _conv_spec(m.cv2, f"{where}.cv2"), k)


def _upsample_block(m: nn.Upsample, f, where: str) -> UpsampleBlock:
    sf = m.scale_factor
    sf = sf[0] if isinstance(sf, (tuple, list)) and len(set(sf)) == 1 else sf
    if m.mode != "nearest" or m.size is not None or not isinstance(sf, (int, float)) \
            or float(sf) != int(sf):
        raise UpstreamError(f"{where}: only integer nearest-neighbour upsampling is supported")
    return UpsampleBlock(f, int(sf))


def _stored_strides(detect: nn.Module, model: nn.Module) -> torch.Tensor | None:
    """Per-level strides upstream computed at build time (``Detect.stride``, else ``Model.stride``)."""
    stride = getattr(detect, "stride", None)
    stride = getattr(model, "stride", None) if stride is None else stride
    return None if stride is None else torch.as_tensor(stride).float().flatten()


def _detect_block(m: nn.Module, model: nn.Module, where: str) -> DetectBlock:
    """Detect block with the trained anchors converted from stride units to pixels."""
    convs = list(m._modules["m"]) if "m" in m._modules else []
    anchors = m._buffers.get("anchors")
    stride = _stored_strides(m, model)
    if not convs or anchors is None or stride is None:
        raise UpstreamError(f"{where}: Detect needs its convs, 'anchors' buffer and 'stride'")
    anchors = anchors.float()
    if anchors.dim() != 3 or anchors.shape[0] != len(convs) or stride.numel() != len(convs):
        raise UpstreamError(f"{where}: {len(convs)} detection convs, anchors of shape "
                            f"{tuple(anchors.shape)} and {stride.numel()} strides do not agree")
    nc = int(m.nc)
    pixels = anchors * stride.view(-1, 1, 1)  # float32, as upstream's anchor_grid
    levels = [[(float(w), float(h)) for w, h in level] for level in pixels.tolist()]
    filters = []
    for j, c in enumerate(convs):
        if not isinstance(c, nn.Conv2d) or c.bias is None or _square(c.kernel_size, "kernel", where) != 1:
            raise UpstreamError(f"{where}.m.{j}: detection convs must be 1x1 Conv2d with bias")
        need = len(levels[j]) * (5 + nc)
        if c.weight.shape[0] != need:
            raise UpstreamError(f"{where}.m.{j}: {c.weight.shape[0]} outputs, expected "
                                f"{len(levels[j])} anchors x (5 + {nc} classes) = {need}")
        filters.append(int(c.weight.shape[0]))
    return DetectBlock(list(m.f), nc, levels, filters)


def model_blocks(model: nn.Module, where: str = "upstream model") -> list[Block]:
    """Block list of a pickled upstream model, widths read from the tensors."""
    seq = model._modules.get("model")
    if not isinstance(seq, (nn.Sequential, nn.ModuleList)):
        raise UpstreamError(f"{where}: the model has no layer list 'model'")
    blocks: list[Block] = []
    for k, m in enumerate(seq):
        at = f"{where}: layer model.{k} ({type(m).__name__})"
        if getattr(m, "i", k) != k or not hasattr(m, "f"):
            raise UpstreamError(f"{at}: missing or inconsistent 'i'/'f' attributes")
        f = m.f
        if isinstance(m, UpstreamConv):
            blocks.append(ConvBlock(f, _conv_spec(m, at)))
        elif isinstance(m, UpstreamC3):
            blocks.append(_c3_block(m, f, at))
        elif isinstance(m, UpstreamSPPF):
            blocks.append(_sppf_block(m, f, at))
        elif isinstance(m, nn.Upsample):
            blocks.append(_upsample_block(m, f, at))
        elif isinstance(m, UpstreamConcat):
            if getattr(m, "d", 1) != 1:
                raise UpstreamError(f"{at}: Concat along dimension {m.d} is not supported")
            blocks.append(ConcatBlock(list(f)))
        elif isinstance(m, UpstreamDetect):
            blocks.append(_detect_block(m, model, at))
        else:
            raise UpstreamError(f"{at}: this module type cannot be translated")
    return blocks


# ---------------------------------------------------------------------------------------------
# blocks + weights -> our model
# ---------------------------------------------------------------------------------------------
def upstream_to_model(model: nn.Module, where: str = "upstream model") -> tuple[Darknet, dict[str, int]]:
    """Our :class:`Darknet` equivalent of a pickled upstream model, weights copied (float32).

    Returns the model and the map {upstream module name: cfg layer index}.
    """
    blocks = model_blocks(model, where)
    if not isinstance(blocks[0], ConvBlock):
        raise UpstreamError(f"{where}: the first layer must be a Conv (it reads the image)")
    ch = int(model.model[0].conv.weight.shape[1]) * blocks[0].conv.g  # input image channels
    try:
        cfg, keymap = emit(blocks, ch=ch, path=f"{where} [architecture]")
    except CfgError as e:
        raise UpstreamError(f"{where}: the layers do not form a valid network ({e})") from None
    ours = Darknet(cfg)
    detect_k = next(k for k, b in enumerate(blocks) if isinstance(b, DetectBlock))
    want = _stored_strides(model.model[detect_k], model).tolist()
    if [float(s) for s in ours.stride.tolist()] != want:
        raise UpstreamError(f"{where}: strides derived from the layers {ours.stride.tolist()} differ "
                            f"from the stored ones {want}")
    ignored = {f"model.{detect_k}.anchors", f"model.{detect_k}.anchor_grid"}
    mapped, unmapped = {}, []
    for key, t in model.state_dict().items():
        new = upstream_to_ours_key(key, keymap)
        if new is None:
            if key not in ignored:
                unmapped.append(key)
            continue
        mapped[new] = t.float() if t.is_floating_point() else t
    if unmapped:
        raise UpstreamError(f"{where}: {len(unmapped)} tensors have no place in the rebuilt network "
                            f"(e.g. {unmapped[0]})")
    try:
        load_state(ours, mapped, where, hint="The layer widths stored in the file are inconsistent.")
    except CheckpointError as e:
        raise UpstreamError(str(e)) from None
    return ours, keymap


def _names(model: nn.Module, ckpt: Any, nc: int, where: str) -> list[str]:
    """Class names as a list (upstream stores a list, or a dict {index: name} since v7.0)."""
    names = getattr(model, "names", None)
    if names is None and isinstance(ckpt, dict):
        names = ckpt.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    names = [str(n) for n in names] if isinstance(names, (list, tuple)) else []
    if len(names) != nc:
        if names:
            print(f"WARNING: {where}: {len(names)} class names for {nc} classes; numbering the rest")
        names = (names + [str(k) for k in range(len(names), nc)])[:nc]
    return names


def import_upstream(path: str | Path, verbose: bool = True) -> dict:
    """Read an upstream YOLOv5 v6.x/v7.0 ``.pt`` file and return a checkpoint dict in our format."""
    path = Path(path)
    where = str(path)
    obj = load_upstream_pickle(path)
    upstream, which = find_upstream_model(obj, where)
    try:
        model, _ = upstream_to_model(upstream, where)
    except UpstreamError as e:
        raise UpstreamError(f"{e}; only YOLOv5 v6.x/v7.0 detection models built from Conv, C3, SPPF, "
                            f"nn.Upsample, Concat and Detect can be imported") from None
    nc = model.nc
    model.names = _names(upstream, obj, nc, where)
    hyp = getattr(upstream, "hyp", None)
    if not isinstance(hyp, dict) and isinstance(obj, dict) and isinstance(obj.get("opt"), dict):
        hyp = obj["opt"].get("hyp")
    entry = {"step": "import", "source": where, "upstream_class": _class_name(obj, upstream),
             "weights": which}
    if isinstance(obj, dict):
        entry.update({f"upstream_{k}": to_plain(obj[k]) for k in ("epoch", "date") if k in obj})
    ckpt = make_checkpoint(model, hyp=to_plain(hyp) if isinstance(hyp, dict) else None,
                           history=[entry])
    if verbose:
        both = isinstance(obj, dict) and obj.get("model") is not None and obj.get("ema") is not None
        print(f"{where}: imported upstream YOLOv5 checkpoint, {which} weights"
              f"{' (preferred over model)' if both else ''}: {len(model.cfg.layers)} cfg layers, "
              f"nc={nc}, strides {[int(s) for s in model.stride.tolist()]}")
    return ckpt


def _class_name(obj: Any, model: nn.Module) -> str:
    return type(model).upstream_name if isinstance(model, _Inert) else type(obj).__name__
