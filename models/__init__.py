"""Model side of yolov5-prune: cfg I/O, the model builder, yaml translation, checkpoints.

Modules, each importing only those above it:

- ``cfg``: cfg text <-> typed layer specs; ``darknet``: the model built from them;
  ``translate``: upstream model yaml / blocks -> cfg;
- ``checkpoint``: our file format (make, save atomically with a checksum, read, verify);
- ``build``: description -> model (``build_model``, ``model_from_checkpoint``, ``check_cfg_matches``);
- ``upstream``: restricted import of upstream YOLOv5 ``.pt`` files;
- ``weights``: open any weights file (``load_checkpoint``, ``load_model``).
"""
from .build import (build_model, check_cfg_matches, initialize, load_cfg_file, load_state,
                    model_from_checkpoint)
from .cfg import CfgError, Layer, ModelCfg, format_cfg, parse_cfg, read_cfg, validate
from .checkpoint import (FORMAT, CheckpointError, atomic_save, is_checkpoint, make_checkpoint,
                         read_checkpoint, save_checkpoint, state_checksum, to_plain, verify_checksum)
from .darknet import Darknet, YOLOLayer, make_activation
from .translate import yaml_to_cfg
from .upstream import UpstreamError, import_upstream
from .weights import load_checkpoint, load_model

_initialize = initialize  # the name utils/engine.py has imported so far

__all__ = [
    "CfgError", "CheckpointError", "Darknet", "FORMAT", "Layer", "ModelCfg", "UpstreamError",
    "YOLOLayer", "atomic_save", "build_model", "check_cfg_matches", "format_cfg", "import_upstream",
    "initialize", "is_checkpoint", "load_cfg_file", "load_checkpoint", "load_model", "load_state",
    "make_activation", "make_checkpoint", "model_from_checkpoint", "parse_cfg", "read_cfg",
    "read_checkpoint", "save_checkpoint", "state_checksum", "to_plain", "validate",
    "verify_checksum", "yaml_to_cfg",
]
