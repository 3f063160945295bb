"""The command line shared by prune_yolov5s.py, shortcut_prune_yolov5s.py, slim_prune_yolov5s.py and
slim_prune_yolov5s_8x.py: parse flags, load, prune, evaluate, measure, report, write.

Each script is ``main(argv) = run(<strategy>, argv)``; only the ratio flags differ (``--percent`` for
strategies 1 and 2, ``--global_percent``/``--layer_keep`` for 3 and 8x), with the seed's defaults.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from models import load_cfg_file, load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from models.cfg import format_cfg
from models import check_cfg_matches

from .absorb import bn_key
from .masks import ranking_layers, validate_ratio
from .pipeline import PruneResult, prune, search_ratio
from .report import (gamma_quantiles, layer_rows, layer_table, metric_table, plot_channels,
                     sparsity_warning, write_json, write_text)
from .strategy import Strategy, get_strategy
from .surgery import model_from_state
from .graph import analyse

__all__ = ["build_parser", "run", "output_prefix", "output_paths", "evaluate_map"]

# The seed's defaults per strategy: (weights, ratio).
_DEFAULTS = {"1": ("weights/last_v6s_0.pt", 0.5), "2": ("weights/last_v6s.pt", 0.6),
             "3": ("weights/last_v6s.pt", 0.6), "8x": ("weights/last_v6s.pt", 0.6)}


def build_parser(strategy: "int | str | Strategy") -> argparse.ArgumentParser:
    s = get_strategy(strategy)
    weights, ratio = _DEFAULTS[s.name]
    p = argparse.ArgumentParser(description=f"Channel pruning, {s.label}.")
    p.add_argument("--cfg", default=None, help="model .cfg/.yaml; must match the checkpoint "
                   "(default: the checkpoint's own cfg)")
    p.add_argument("--data", default=None, help="dataset .yaml or .data (default: the built-in dataset)")
    p.add_argument("--weights", default=weights, help="sparsity-trained checkpoint (ours or upstream .pt)")
    p.add_argument("--img_size", "--img-size", "--img", dest="img_size", type=int, default=640,
                   help="evaluation, FLOPs and latency image size")
    ties = "kept (|gamma| >= threshold)" if s.inclusive else "removed (|gamma| > threshold survives)"
    ratio_help = (f"fraction of the ranked BN channels to remove, in [0, 1) (default {ratio}); the "
                  f"floor(N*p) smallest |gamma| go, values tied with the threshold are {ties}")
    if s.name in ("1", "2"):
        p.add_argument("--percent", type=float, default=None, metavar="P", help=ratio_help)
    else:
        p.add_argument("--global_percent", "--global-percent", dest="percent", type=float, default=None, metavar="P",
                       help=ratio_help)
        p.add_argument("--layer_keep", "--layer-keep", dest="layer_keep", type=float, default=0.01, metavar="K",
                       help="every layer keeps at least max(floor(C*layer_keep), 1) channels")
    p.add_argument("--target-flops", type=float, default=None,
                   help="instead of a ratio: keep at most this fraction of the FLOPs (searches the ratio)")
    p.add_argument("--target-params", type=float, default=None,
                   help="instead of a ratio: keep at most this fraction of the parameters")
    p.add_argument("--include-upsample", action="store_true",
                   help="also prune the convs that feed an upsample (exact thanks to absorption)")
    p.add_argument("--include-sppf", action="store_true", help="also prune the SPPF input conv")
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help=f"round every kept channel count up to a multiple of N (or the full width) "
                   f"by adding the largest remaining gammas (default {s.round_to}); CPU and GPU "
                   f"kernels run channel blocks of 8 or 16, a partly filled block costs a full one")
    p.add_argument("--cost-aware", action="store_true",
                   help="rank |gamma| divided by each layer's measured time per FLOP (relative to the "
                   "model's average, profiled at --img_size on --device over --latency-runs "
                   "forward passes) instead of |gamma|: at equal gamma, channels of slow layers go "
                   "first, so latency follows FLOPs")
    p.add_argument("--device", default="", help="cuda device (0, 0,1) or cpu")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16,
                   help="evaluation batch size")
    p.add_argument("--workers", type=int, default=2, help="evaluation data loader workers")
    p.add_argument("--out-dir", default=None, help="write cfg, weights and report here instead of "
                   "beside the inputs")
    p.add_argument("--no-eval", action="store_true", help="skip the mAP evaluations")
    p.add_argument("--latency-runs", type=int, default=20, help="timed forward passes per model")
    p.set_defaults(default_ratio=ratio, strategy=s.name)
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace, s: Strategy) -> None:
    """Flag errors as argparse errors (exit 2, message names the flag)."""
    targets = [f for f in ("target_flops", "target_params") if getattr(args, f) is not None]
    if len(targets) > 1:
        p.error("give either --target-flops or --target-params, not both")
    if targets and args.percent is not None:
        p.error(f"give either {s.ratio_flag} or --{targets[0].replace('_', '-')}, not both")
    for f in targets:
        v = getattr(args, f)
        if not 0.0 < v <= 1.0:
            p.error(f"--{f.replace('_', '-')} must be a fraction of the original in (0, 1], got {v}")
    if args.percent is not None:
        try:
            validate_ratio(args.percent, s.ratio_flag)
        except ValueError as e:
            p.error(str(e))
    if not 0.0 <= getattr(args, "layer_keep", 0.0) <= 1.0:
        p.error(f"--layer_keep must be in [0, 1], got {args.layer_keep}")
    if args.img_size <= 0:
        p.error(f"--img_size must be positive, got {args.img_size}")
    if args.round_to is not None and args.round_to < 1:
        p.error(f"--round-to must be a positive channel multiple, got {args.round_to}")
    if args.latency_runs < 1:
        p.error("--latency-runs must be at least 1")


# ------------------------------------------------------------------------------------ naming
def output_prefix(strategy: "int | str | Strategy", ratio: float, layer_keep: float | None = None) -> str:
    """The seed's file-name prefix: ``prune_<p>_`` (1, 2), ``prune_<p>_keep_<k>_`` (3),
    ``prune_<p>_keep_<k>_8x_`` (8x); floats as Python's ``str`` writes them."""
    s = get_strategy(strategy)
    p = str(float(ratio))
    if s.name in ("1", "2"):
        return f"prune_{p}_"
    k = str(float(layer_keep if layer_keep is not None else 0.01))
    return f"prune_{p}_keep_{k}_8x_" if s.name == "8x" else f"prune_{p}_keep_{k}_"


def output_paths(weights: str | Path, cfg: str | Path | None, prefix: str,
                 out_dir: str | Path | None = None) -> dict[str, Path]:
    """Where a run writes: the prefix goes on file names only, never on folders.

    Weights beside the input weights (or in ``out_dir``); the cfg beside an input ``.cfg`` (or in
    ``out_dir``), else beside the pruned weights as ``<pruned weights stem>.cfg``; the JSON report
    and the PNG chart beside the pruned weights with the same stem.
    """
    weights = Path(weights)
    w_out = Path(out_dir or weights.parent) / f"{prefix}{weights.name}"
    if cfg is not None and Path(cfg).suffix.lower() == ".cfg":
        c_out = Path(out_dir or Path(cfg).parent) / f"{prefix}{Path(cfg).name}"
    else:
        c_out = w_out.with_suffix(".cfg")
    return {"weights": w_out, "cfg": c_out, "json": w_out.with_suffix(".json"),
            "png": w_out.with_suffix(".png")}


def _refuse_overwrite(paths: dict[str, Path], inputs: Sequence[str | Path | None]) -> None:
    given = {Path(p).resolve() for p in inputs if p}
    for kind, path in paths.items():
        if path.resolve() in given:
            raise FileExistsError(f"the pruned {kind} would overwrite the input {path}; "
                                  f"choose another --out-dir")
    if len({p.resolve() for p in paths.values()}) != len(paths):
        raise FileExistsError(f"output paths collide: {sorted(map(str, paths.values()))}")


# ------------------------------------------------------------------------------------ measuring
def evaluate_map(model: torch.nn.Module, data: str | Path | None, img_size: int, batch_size: int,
                 workers: int) -> tuple[float, float]:
    """mAP@.5 and mAP@.5:.95 on the validation split with the project's evaluator (the one place
    pruning talks to evaluation)."""
    from utils.datasets import load_data_config
    from utils.evaluate import evaluate_dataset

    result = evaluate_dataset(model, load_data_config(data), img_size, batch_size, workers)
    return float(result.mAP50), float(result.mAP50_95)


def _measure(model: torch.nn.Module, img_size: int, runs: int) -> dict[str, float]:
    """Parameters, FLOPs and median latency (BN fused copy, batch 1) of one model."""
    from utils.torch_utils import count_flops, count_params, measure_latency

    # fuse() builds new convs and only reads the BN tensors, so a model sharing them is enough
    anchors = [m.anchors for m in model.yolo_layers]
    fused = model_from_state(model.to_cfg(), model.state_dict(), anchors=anchors).fuse()
    return {"params": count_params(model), "flops": count_flops(model, img_size),
            "latency_ms": measure_latency(fused, img_size, runs=runs, warmup=min(3, runs))}


# ------------------------------------------------------------------------------------ the run
def _load(args: argparse.Namespace, device: torch.device):
    ckpt = load_checkpoint(args.weights, cfg=args.cfg)
    model = model_from_checkpoint(ckpt, verbose=True, source=str(args.weights))
    if args.cfg is not None:
        check_cfg_matches(load_cfg_file(args.cfg), model.cfg, str(args.cfg), str(args.weights))
    return ckpt, model.float().eval().to(device)


def _cost_weights(model: torch.nn.Module, graph, img_size: int, runs: int) -> dict[int, float]:
    """Ranking weights of ``--cost-aware``: each conv's time per FLOP relative to the model's,
    profiled on a BN-fused copy at ``img_size`` on the model's device (fastest of ``runs`` per layer)."""
    from .cost import latency_weights, profile_layers

    anchors = [m.anchors for m in model.yolo_layers]
    fused = model_from_state(model.to_cfg(), model.state_dict(), anchors=anchors).fuse()
    weights = latency_weights(graph, profile_layers(fused, img_size, runs=runs), img_size)
    slow = max(weights, key=weights.get)
    print(f"--cost-aware: time per FLOP of a channel relative to the model's average, profiled at "
          f"{img_size} px: {min(weights.values()):.2f} to {weights[slow]:.2f} (layer {slow})")
    return weights


def _choose_ratio(args, s: Strategy, graph, state,
                  weights: dict[int, float] | None = None) -> tuple[float, dict | None]:
    kw = dict(layer_keep=getattr(args, "layer_keep", 0.0), include_upsample=args.include_upsample,
              include_sppf=args.include_sppf, round_to=args.round_to, weights=weights)
    for metric in ("flops", "params"):
        target = getattr(args, f"target_{metric}")
        if target is not None:
            ratio, got = search_ratio(graph, state, s, target, metric, args.img_size, **kw)
            print(f"--target-{metric} {target}: chose {s.ratio_flag} {ratio} "
                  f"(keeps {got:.4f} of the {metric} at {args.img_size} px)")
            return ratio, {"metric": metric, "target": target, "achieved": got}
    return (args.percent if args.percent is not None else args.default_ratio), None


def run(strategy: "int | str | Strategy", argv: Sequence[str] | None = None) -> int:
    """Run one prune script; returns the exit status (errors raise)."""
    from utils.torch_utils import select_device

    s = get_strategy(strategy)
    parser = build_parser(s)
    args = parser.parse_args(argv)
    _check_args(parser, args, s)
    layer_keep = getattr(args, "layer_keep", 0.0)
    device = select_device(args.device)

    ckpt, model = _load(args, device)
    stride = int(max(model.cfg.strides or [32]))
    if args.img_size % stride:
        parser.error(f"--img_size {args.img_size} must be a multiple of the model's largest stride {stride}")
    graph = analyse(model.to_cfg())
    state = model.state_dict()
    warning = sparsity_warning(ckpt.get("history") or [], s, str(args.weights),
                               graph.prunable(s, args.include_upsample, args.include_sppf))
    if warning:
        print(f"WARNING: {warning}")

    weights = _cost_weights(model, graph, args.img_size, args.latency_runs) if args.cost_aware else None
    ratio, target = _choose_ratio(args, s, graph, state, weights)
    prefix = output_prefix(s, ratio, layer_keep if s.name in ("3", "8x") else None)
    paths = output_paths(args.weights, args.cfg, prefix, args.out_dir)
    _refuse_overwrite(paths, [args.weights, args.cfg, args.data])  # before any expensive work

    t0 = time.perf_counter()
    result = prune(model, s, ratio, layer_keep, round_to=args.round_to, include_upsample=args.include_upsample,
                   include_sppf=args.include_sppf, weights=weights)
    prune_s = time.perf_counter() - t0
    _print_plan(result, s, state)
    print(f"verified: compact == absorbed at {result.verification['img_size']} px "
          f"(max relative difference {result.verification['max_rel_diff']:.2e}); "
          f"pruning took {prune_s:.3f} s")

    figures = _figures(args, model, result)
    rows = layer_rows(graph, result.masks, s, args.include_upsample, args.include_sppf)
    print(layer_table(rows))
    print(metric_table(figures, str(device)))
    entry = _history_entry(args, s, ratio, layer_keep, target, result, figures, prune_s)
    _write_outputs(paths, ckpt, result, entry, rows, args)
    return 0


def _write_outputs(paths: dict[str, Path], ckpt: dict, result: PruneResult, entry: dict,
                   rows: list[dict], args: argparse.Namespace) -> None:
    """Pruned cfg, self-describing checkpoint (history += entry), JSON report, channel chart."""
    write_text(paths["cfg"], format_cfg(result.model.to_cfg()))
    history = list(ckpt.get("history") or []) + [entry]
    save_checkpoint(paths["weights"], ckpt=make_checkpoint(result.model, history=history, opt=vars(args)))
    report = {**{k: v for k, v in entry.items() if k != "masks"},
              "outputs": {k: str(v) for k, v in paths.items()}, "layers": rows,
              "groups": [list(g) for g in result.plan.groups], "masks": entry["masks"]}
    write_json(paths["json"], report)
    label = result.plan.strategy.label
    plot_channels(rows, paths["png"], f"{label}, ratio {result.plan.ratio}: {Path(args.weights).name}")
    for kind in ("cfg", "weights", "json", "png"):
        print(f"wrote {paths[kind]}")


def _print_plan(result: PruneResult, s: Strategy, state: dict) -> None:
    p = result.plan
    ranked = ranking_layers(p.prunable, p.groups, s)
    quant = gamma_quantiles([state[bn_key(i, "weight")] for i in ranked])
    print(f"{s.label}: {len(p.prunable)} prunable convs, {len(p.groups)} shortcut groups; "
          f"|gamma| quantiles " + ", ".join(f"{k} {v:.3g}" for k, v in quant.items()))
    before = sum(int(m.numel()) for m in p.masks.values())
    after = sum(int(m.sum()) for m in p.masks.values())
    print(f"ratio {p.ratio}: {before - after} of {before} prunable channels removed "
          f"({(before - after) / max(before, 1):.1%}); safe ratio (no layer emptied by the threshold) "
          f"{p.safe_ratio:.4f}")
    if p.ratio > p.safe_ratio:
        print(f"WARNING: ratio {p.ratio} exceeds the safe ratio {p.safe_ratio:.4f}: the threshold "
              f"empties some layers, which keep only their per-layer minimum of channels")


def _figures(args, model, result: PruneResult) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if not args.no_eval:
        cfg = model.to_cfg()
        masked = model_from_state(cfg, result.masked_state(model.state_dict()), model.names,
                                  [m.anchors for m in model.yolo_layers])
        maps = {name: evaluate_map(m, args.data, args.img_size, args.batch_size, args.workers)
                for name, m in (("original", model), ("masked", masked), ("compact", result.model))}
        figures["mAP50"] = {k: v[0] for k, v in maps.items()}
        figures["mAP50_95"] = {k: v[1] for k, v in maps.items()}
    before = _measure(model, args.img_size, args.latency_runs)
    after = _measure(result.model, args.img_size, args.latency_runs)
    for key in ("params", "flops", "latency_ms"):
        figures[key] = {"before": before[key], "after": after[key], "ratio": after[key] / before[key]}
    return figures


def _history_entry(args, s: Strategy, ratio: float, layer_keep: float, target, result: PruneResult,
                   figures: dict, prune_s: float) -> dict:
    p = result.plan
    return {
        "step": "prune", "strategy": s.name, "ratio": float(ratio),
        "parent": str(Path(args.weights).resolve()),
        "settings": {"layer_keep": float(layer_keep), "round_to": p.round_to, "inclusive": s.inclusive,
                     "group_rule": s.group_rule, "include_upsample": bool(args.include_upsample),
                     "include_sppf": bool(args.include_sppf), "target": target,
                     "cost_aware": p.weights is not None,
                     "ranking_weights": None if p.weights is None else {str(i): w for i, w in p.weights.items()},
                     "img_size": args.img_size, "cfg": args.cfg, "data": args.data},
        "safe_ratio": p.safe_ratio,
        "figures": figures,
        "verification": result.verification,
        "prune_seconds": prune_s,
        "masks": {str(i): [bool(v) for v in m.tolist()] for i, m in sorted(p.masks.items())},
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
