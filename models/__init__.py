"""Model side of yolov5-prune: cfg I/O, the model builder, yaml translation, checkpoints."""
from .cfg import CfgError, Layer, ModelCfg, format_cfg, parse_cfg, read_cfg
from .checkpoint import (CheckpointError, atomic_save, build_model, load_cfg_file, load_checkpoint,
                         load_model, make_checkpoint, model_from_checkpoint, save_checkpoint)
from .darknet import Darknet, YOLOLayer
from .upstream import UpstreamError, import_upstream

__all__ = [
    "CfgError", "CheckpointError", "Darknet", "Layer", "ModelCfg", "YOLOLayer", "atomic_save",
    "build_model", "format_cfg", "load_cfg_file", "load_checkpoint", "load_model",
    "make_checkpoint", "model_from_checkpoint", "parse_cfg", "read_cfg", "save_checkpoint",
    "UpstreamError", "import_upstream",
]
