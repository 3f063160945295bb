"""Network-Slimming channel pruning over the cfg graph.

``graph`` (which convs are prunable, shortcut groups, channel origins and consumers), ``masks`` (pure
functions of BN gammas), ``absorb`` (constant absorption), ``surgery`` (compact cfg + weights and their
verification), ``cost`` (per-channel FLOPs and measured time: the weights of the cost-aware ranking),
``pipeline`` (the one driver), ``report`` (tables, JSON, chart), ``cli`` (the four prune scripts'
command line).
"""
from .cost import channel_costs, latency_weights, layer_flops, profile_layers
from .graph import PruneGraph, Segment, analyse, channel_origins, prunable_layers, sparsity_layers
from .masks import compute_masks, global_threshold, safe_ratio
from .pipeline import PrunePlan, PruneResult, estimate_cost, plan, prune, search_ratio
from .strategy import STRATEGIES, Strategy, get_strategy
from .surgery import PruneError, VerificationError, compact_cfg, compact_state, model_from_state, verify

__all__ = [
    "PruneGraph", "Segment", "analyse", "channel_origins", "prunable_layers", "sparsity_layers",
    "compute_masks", "global_threshold", "safe_ratio", "PrunePlan", "PruneResult", "estimate_cost",
    "plan", "prune", "search_ratio", "STRATEGIES", "Strategy", "get_strategy", "PruneError",
    "VerificationError", "compact_cfg", "compact_state", "model_from_state", "verify",
    "channel_costs", "latency_weights", "layer_flops", "profile_layers",
]
