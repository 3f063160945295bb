"""Network-Slimming channel pruning over the cfg graph.

``options`` (the settings of one run as a frozen value), ``strategy`` (the four strategies as
data), ``graph`` (which convs are prunable, shortcut groups, channel origins and consumers),
``masks`` (pure functions of BN gammas), ``absorb`` (constant absorption), ``surgery`` (compact
cfg + weights and their verification), ``cost`` (per-conv FLOPs and parameters, per-channel costs
and measured time: the weights of the cost-aware ranking), ``pipeline`` (the one driver),
``report`` (tables, JSON, chart), ``layers`` (layer pruning: whole residual blocks removed),
``cli`` (the command line of the four prune scripts and of layer_prune_yolov5s.py), ``errors``.
"""
from .cost import channel_costs, conv_cost, estimate_cost, latency_weights, layer_flops, profile_layers
from .errors import OptionError, PruneError, VerificationError
from .graph import PruneGraph, Segment, analyse, channel_origins, prunable_layers, sparsity_layers
from .layers import Block, LayerResult, find_blocks, layer_prune, max_removable, search_shortcuts
from .masks import compute_masks, global_threshold, safe_ratio
from .options import EXTRA_LAYERS, PruneOptions, Target
from .pipeline import PrunePlan, PruneResult, plan, prune, search_ratio
from .report import gamma_quantiles
from .strategy import STRATEGIES, Strategy, get_strategy
from .surgery import compact_cfg, compact_state, model_from_state, verify

__all__ = [
    "PruneGraph", "Segment", "analyse", "channel_origins", "prunable_layers", "sparsity_layers",
    "compute_masks", "global_threshold", "safe_ratio", "gamma_quantiles", "PruneOptions", "Target",
    "EXTRA_LAYERS", "PrunePlan", "PruneResult", "estimate_cost", "plan", "prune", "search_ratio",
    "STRATEGIES", "Strategy", "get_strategy", "PruneError", "VerificationError", "OptionError",
    "compact_cfg", "compact_state", "model_from_state", "verify",
    "channel_costs", "conv_cost", "latency_weights", "layer_flops", "profile_layers",
    "Block", "LayerResult", "find_blocks", "layer_prune", "max_removable", "search_shortcuts",
]
