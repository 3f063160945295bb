"""Exported detectors as models: one interface for ONNX, OpenVINO and TorchScript files.

:func:`load_backend` opens whatever ``--weights`` names: an ``.onnx`` file (onnxruntime), an
OpenVINO folder ``<stem>_openvino_model/`` or its ``.xml`` (openvino), or a ``.torchscript`` file;
it returns None for PyTorch checkpoints, which :func:`models.load_model` opens. Every backend is an
:class:`utils.onnx_backend.ExportedModel`: ``model(images) -> ((B, N, 5+nc), [])``, ``.stride``,
``.names``, ``.nc``, ``.fixed_shape`` / ``.fixed_batch`` for static graphs. Class names and strides
come from the metadata export.py writes (upstream YOLOv5's keys, so upstream exports load too).
The runtimes are optional dependencies: a missing one is one sentence naming what to install.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .sources import weights_file
from .onnx_backend import (ExportedModel, MissingDependencyError, OnnxModel, OnnxModelError, is_onnx,
                           read_metadata)

__all__ = ["weights_path", "OpenVinoModel", "TorchScriptModel", "load_backend", "backend_kind", "is_exported",
           "require_openvino", "openvino_core", "openvino_cpu_config", "BackendError"]

OPENVINO_SUFFIX = "_openvino_model"


class BackendError(OnnxModelError):
    """An exported model that cannot be opened as a detector; the message says what to do."""


def require_openvino() -> Any:
    """The openvino module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("openvino is not installed; it is needed to run OpenVINO models: "
                                     "pip install openvino") from None
    return openvino


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """One OpenVINO Core for the process, kept alive for as long as the compiled models that
    came from it (a Core destroyed before its compiled models can crash the process at exit
    or garbage collection)."""
    return require_openvino().Core()


def openvino_cpu_config(threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin's settings for every model we compile: float32 inference (on CPUs with
    AMX or AVX512-BF16 the plugin otherwise runs float32 models in bfloat16, which changes the
    outputs and finds no kernel for some int8 graphs) and, when given, the number of threads."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def backend_kind(path: str | Path) -> str | None:
    """'onnx', 'openvino', 'torchscript', or None for anything else (a PyTorch checkpoint)."""
    p = Path(path)
    if is_onnx(p):
        return "onnx"
    if p.suffix.lower() == ".torchscript":
        return "torchscript"
    if p.suffix.lower() == ".xml" or p.name.endswith(OPENVINO_SUFFIX) or (p.is_dir() and any(p.glob("*.xml"))):
        return "openvino"
    return None


def is_exported(path: str | Path) -> bool:
    return backend_kind(path) is not None


def weights_path(value: str | Path, flag: str = "--weights") -> Path:
    """:func:`utils.sources.weights_file`, except that an OpenVINO model folder is accepted too."""
    path = Path(value).expanduser()
    if path.is_dir() and backend_kind(path) == "openvino":
        return path
    if path.name.endswith(OPENVINO_SUFFIX) and not path.exists():
        raise FileNotFoundError(f"{flag} {value}: OpenVINO model folder not found; check the path")
    return weights_file(value, flag)


def _dim(value: Any) -> int | None:
    """A static dimension as int (OpenVINO partial shapes, ints); dynamic ones as None."""
    try:
        return int(value.get_length()) if hasattr(value, "get_length") and value.is_static else \
            (int(value) if isinstance(value, (int, np.integer)) and int(value) > 0 else None)
    except (TypeError, ValueError):
        return None


class OpenVinoModel(ExportedModel):
    """An OpenVINO IR detector (CPU plugin) with the eval-model interface."""

    kind = "OpenVINO"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        super().__init__(path, device)
        require_openvino()  # the one-sentence error when it is missing, even with a cached Core
        self.xml = _openvino_xml(self.path)
        core = openvino_core()
        try:
            compiled = core.compile_model(str(self.xml), "CPU", openvino_cpu_config(threads))
        except Exception as e:  # openvino raises RuntimeError subclasses with long texts
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"{self.xml}: OpenVINO cannot load the model ({detail}); export it again "
                               f"with export.py --format openvino") from None
        self.compiled, self.request = compiled, compiled.create_infer_request()
        shape = compiled.inputs[0].get_partial_shape()
        h, w = _dim(shape[2]), _dim(shape[3])
        self.fixed_shape = (h, w) if h and w else None
        self.fixed_batch = _dim(shape[0])
        out_shape = compiled.outputs[0].get_partial_shape()
        meta_file = _openvino_meta_file(self.xml)
        meta = _openvino_meta(meta_file)
        names, strides = read_metadata(meta, str(meta_file), _dim(out_shape[2]))
        self.names, self.stride, self.metadata = names, torch.tensor(strides), meta

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.compiled.outputs[0]]

    def __deepcopy__(self, memo: dict) -> "OpenVinoModel":
        """Copies share the compiled model (read-only); it cannot be pickled."""
        clone = OpenVinoModel.__new__(OpenVinoModel)
        ExportedModel.__init__(clone, self.path, self._device.device)
        for key in ("xml", "compiled", "request", "fixed_shape", "fixed_batch", "names", "stride", "metadata"):
            setattr(clone, key, getattr(self, key))
        clone.train(self.training)
        return clone


def _openvino_xml(path: Path) -> Path:
    """The .xml of an OpenVINO folder (or the .xml itself)."""
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise BackendError(f"{path}: expected one .xml model in the OpenVINO folder, found {len(xmls)}; "
                               f"give the .xml file")
        return xmls[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: OpenVINO model not found")
    if not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path.with_suffix('.bin')}: the weights of {path.name} are missing")
    return path


def _openvino_meta_file(xml: Path) -> Path:
    """``metadata.yaml`` in the model's folder, else ``<stem>.yaml`` beside the .xml (upstream's name)."""
    first = xml.parent / "metadata.yaml"
    return first if first.is_file() else xml.with_suffix(".yaml")


def _openvino_meta(file: Path) -> dict[str, str]:
    """The metadata YAML as strings like ONNX metadata; {} when absent."""
    if not file.is_file():
        return {}
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise BackendError(f"{file}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BackendError(f"{file}: expected a mapping with stride and names")
    return {str(k): repr(v) if not isinstance(v, str) else v for k, v in data.items()}


def _jit_load(path: str, **kw: Any) -> Any:
    """torch.jit.load without its deprecation warning (TorchScript is upstream's deployment format)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, **kw)


def _torchscript_config(text: str, path: Path) -> dict:
    """config.txt as upstream writes it (json; ``names`` keys are strings there) with int class ids."""
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        raise BackendError(f"{path}: its config.txt is not JSON; export it again with export.py") from None
    if isinstance(config.get("names"), dict):
        config["names"] = {int(k): v for k, v in config["names"].items()}
    return config


class TorchScriptModel(ExportedModel):
    """A traced ``.torchscript`` detector (upstream's ``config.txt`` metadata) on any torch device.
    The scripted module is ``.script`` (not ``.module``, which callers take for a DDP wrapper)."""

    kind = "TorchScript"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__(path, device)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: TorchScript file not found")
        extra = {"config.txt": ""}
        try:
            self.script = _jit_load(str(self.path), map_location=torch.device(device), _extra_files=extra)
        except RuntimeError as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"{self.path}: torch cannot load the TorchScript model ({detail}); export "
                               f"it again with export.py --format torchscript") from None
        config = _torchscript_config(extra["config.txt"], self.path)
        meta = {k: repr(v) if not isinstance(v, str) else v for k, v in config.items()}
        self.names, strides = read_metadata(meta, f"{self.path} config.txt", None)
        self.stride, self.metadata = torch.tensor(strides), meta
        shape = config.get("shape")
        self.half = next(iter(self.script.parameters()), torch.zeros(0)).dtype == torch.float16
        if shape and not config.get("dynamic", False):
            self.fixed_shape, self.fixed_batch = (int(shape[2]), int(shape[3])), int(shape[0])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Runs on ``x``'s device without a trip through numpy."""
        self._check_input(x)
        dtype = torch.float16 if self.half else torch.float32
        y = self.script(x.to(dtype))
        return y.to(x.dtype), []


def load_backend(path: str | Path, device: str | torch.device = "cpu",
                 threads: int | None = None) -> ExportedModel | None:
    """The exported model at ``path`` (see the module docstring); None for PyTorch checkpoints."""
    kind = backend_kind(path)
    if kind == "onnx":
        return OnnxModel(path, device, threads)
    if kind == "openvino":
        if torch.device(device).type == "cuda":
            print("note: OpenVINO models run on the CPU")
        return OpenVinoModel(path, "cpu", threads)
    if kind == "torchscript":
        if threads:
            torch.set_num_threads(int(threads))
        return TorchScriptModel(path, device)
    return None

