"""The command line shared by prune_yolov5s.py, shortcut_prune_yolov5s.py, slim_prune_yolov5s.py and
slim_prune_yolov5s_8x.py: parse flags, load, prune, evaluate, measure, report, write.

Each script is ``main(argv) = run(<strategy>, argv)`` under :func:`utils.errors.cli_main`; the
strategy decides the ratio flag (``--percent`` or ``--global_percent``), whether ``--layer_keep``
exists, the default weights and ratio of the original yolov5_prune, and the output file prefix.
Every range is checked at parse time; every problem the user can fix (missing or mismatched files,
classes that differ from the dataset's, an unreachable target, an unwritable folder) ends the run
before the pruning work, as one sentence. The four outputs are written all-or-nothing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models import (Darknet, check_cfg_matches, format_cfg, load_cfg_file, load_checkpoint,
                    make_checkpoint, model_from_checkpoint, save_checkpoint)
from utils.dataconfig import DataConfig, load_data_config
from utils.errors import nonneg_int, positive_int
from utils.evaluate import evaluate_dataset
from utils.fileio import remove_stale_temps, staged_outputs, temp_name
from utils.general import check_img_size
from utils.torch_utils import count_flops, count_params, measure_latency, select_device

from .absorb import bn_key
from .cost import latency_weights, profile_layers
from .errors import PruneError
from .graph import PruneGraph, analyse
from .layers import (STATISTICS, LayerResult, block_rows, block_table, find_blocks, history_entry, layer_prefix,
                     layer_prune, plot_blocks, renumber_history, search_shortcuts, sparsity_note)
from .masks import ranking_layers
from .options import PruneOptions, Target, validate_ratio
from .pipeline import PruneResult, prune, search_ratio
from .report import (gamma_quantiles, layer_rows, layer_table, metric_table, plot_channels, sparsity_warning,
                     write_json)
from .strategy import Strategy, get_strategy
from .surgery import model_from_state

__all__ = ["build_parser", "run", "output_prefix", "output_paths", "evaluate_map", "build_layer_parser",
           "run_layers"]

# ------------------------------------------------------------------------------------ flags
def _ratio_type(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return validate_ratio(float(text), flag)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1) of the channels to remove "
                                             f"(1 would remove every channel); for example {flag} 0.5")
    return parse


def _layer_keep(text: str) -> float:
    """argparse type of --layer_keep: (0, 1); 1 would keep every channel and prune nothing."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if v == 1.0:
        raise argparse.ArgumentTypeError("1 keeps every channel of every layer, so nothing would be pruned; "
                                         "give the per-layer minimum share below 1, for example 0.01")
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not a share in (0, 1) of each layer's channels; "
                                         f"for example --layer_keep 0.01")
    return v


def _target(text: str) -> float:
    """argparse type of --target-flops/--target-params: a fraction in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not a fraction of the original in (0, 1]; for example 0.5")
    return v


def build_parser(strategy: "int | str | Strategy") -> argparse.ArgumentParser:
    s = get_strategy(strategy)
    p = argparse.ArgumentParser(description=f"Channel pruning, {s.label}.")
    p.add_argument("--cfg", default=None, help="model .cfg/.yaml; must match the checkpoint "
                   "(default: the checkpoint's own cfg)")
    p.add_argument("--data", default=None, help="dataset .yaml or .data (default: the built-in dataset)")
    p.add_argument("--weights", default=s.default_weights,
                   help="sparsity-trained checkpoint (ours or upstream .pt)")
    p.add_argument("--img_size", "--img-size", "--img", dest="img_size", type=int, default=640,
                   help="evaluation, FLOPs and latency image size (rounded up to the model's stride)")
    p.add_argument(s.ratio_flag, *([] if s.ratio_flag == "--percent" else ["--global-percent"]), dest="percent",
                   type=_ratio_type(s.ratio_flag), default=None, metavar="P",
                   help=f"fraction of the ranked BN channels to remove, in [0, 1) (default {s.default_ratio}); "
                   f"the floor(N*p) smallest |gamma| go, values tied with the threshold are {s.ties}")
    if s.uses_layer_keep:
        p.add_argument("--layer_keep", "--layer-keep", dest="layer_keep", type=_layer_keep, default=0.01,
                       metavar="K", help="every layer keeps at least max(floor(C*K), 1) channels; K in (0, 1)")
    p.add_argument("--target-flops", type=_target, default=None,
                   help="instead of a ratio: keep at most this fraction of the FLOPs (searches the ratio)")
    p.add_argument("--target-params", type=_target, default=None,
                   help="instead of a ratio: keep at most this fraction of the parameters")
    p.add_argument("--include-upsample", action="store_true",
                   help="also prune the convs that feed an upsample (exact thanks to absorption)")
    p.add_argument("--include-sppf", action="store_true", help="also prune the SPPF input conv")
    p.add_argument("--round-to", type=positive_int, default=None, metavar="N",
                   help=f"round every kept channel count up to a multiple of N (or the full width) "
                   f"by adding the largest remaining gammas (default {s.round_to}); CPU and GPU "
                   f"kernels run channel blocks of 8 or 16, a partly filled block costs a full one")
    p.add_argument("--cost-aware", action="store_true",
                   help="rank |gamma| divided by each layer's measured time per FLOP (relative to the "
                   "model's average, profiled at --img_size on --device over --latency-runs "
                   "forward passes) instead of |gamma|: at equal gamma, channels of slow layers go "
                   "first, so latency follows FLOPs")
    p.add_argument("--device", default="", help="cuda device (0, 0,1) or cpu")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=16,
                   help="evaluation batch size")
    p.add_argument("--workers", type=nonneg_int, default=2, help="evaluation data loader workers")
    p.add_argument("--out-dir", default=None, help="write cfg, weights and report here instead of "
                   "beside the inputs")
    p.add_argument("--no-eval", action="store_true", help="skip the mAP evaluations")
    p.add_argument("--latency-runs", type=positive_int, default=20, help="timed forward passes per model")
    p.add_argument("--layers", type=nonneg_int, default=0, metavar="N", help="first remove the N least "
                   "important residual blocks (layer pruning, as layer_prune_yolov5s.py --shortcuts N), then "
                   "prune channels of the result; a target then refers to the layer-pruned model")
    _add_block_flags(p)
    p.set_defaults(strategy=s.name, **({} if s.uses_layer_keep else {"layer_keep": 0.0}))
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace, s: Strategy) -> None:
    """Conflicting flags as argparse errors (exit 2, the message names the flags)."""
    targets = [f for f in ("target_flops", "target_params") if getattr(args, f) is not None]
    if len(targets) > 1:
        p.error("give either --target-flops or --target-params, not both")
    if targets and args.percent is not None:
        p.error(f"give either {s.ratio_flag} or --{targets[0].replace('_', '-')}, not both")
    if not args.layers and (args.allow_empty or args.importance != "rms"):
        p.error("--allow-empty and --importance choose the residual blocks of --layers N; give --layers too")


def _options(args: argparse.Namespace, s: Strategy, weights: dict[int, float] | None) -> PruneOptions:
    target = next((Target(m, getattr(args, f"target_{m}")) for m in ("flops", "params")
                   if getattr(args, f"target_{m}") is not None), None)
    ratio = args.percent if args.percent is not None else s.default_ratio
    return PruneOptions.make(s, ratio, include_upsample=args.include_upsample, include_sppf=args.include_sppf,
                             layer_keep=args.layer_keep, round_to=args.round_to, weights=weights,
                             target=target)


# ------------------------------------------------------------------------------------ naming
def output_prefix(strategy: "int | str | Strategy", ratio: float, layer_keep: float | None = None) -> str:
    """The original yolov5_prune's file-name prefix of ``strategy`` (see :meth:`Strategy.file_prefix`)."""
    return get_strategy(strategy).file_prefix(ratio, layer_keep)


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
            raise PruneError(f"the pruned {kind} would overwrite the input {path}; choose another --out-dir")
    if len({p.resolve() for p in paths.values()}) != len(paths):
        raise PruneError(f"output paths collide: {sorted(map(str, paths.values()))}; choose another --out-dir")


def _check_writable(paths: dict[str, Path]) -> None:
    """Fail before the pruning work when an output folder cannot be written (a probe file is made
    and removed in the nearest existing folder; no folder is created yet)."""
    for folder in sorted({p.parent for p in paths.values()}):
        existing = next(f for f in (folder, *folder.parents) if f.exists() or f == f.parent)
        if not existing.is_dir():
            raise PruneError(f"{existing} is a file, so {folder} cannot be created; choose another --out-dir")
        probe = temp_name(existing / "write-test")
        try:
            probe.open("xb").close()
            probe.unlink()
        except OSError as e:
            raise PruneError(f"cannot write the outputs into {existing} ({e.strerror or e}); "
                             f"choose a writable folder with --out-dir") from e
        if existing == folder:
            remove_stale_temps(folder)  # left by a killed run


# ------------------------------------------------------------------------------------ inputs
def _load(args: argparse.Namespace, device: torch.device) -> tuple[dict, Darknet]:
    ckpt = load_checkpoint(args.weights, cfg=args.cfg)
    model = model_from_checkpoint(ckpt, verbose=True, source=str(args.weights))
    if args.cfg is not None:
        check_cfg_matches(load_cfg_file(args.cfg), model.cfg, str(args.cfg), str(args.weights))
    return ckpt, model.float().eval().to(device)


def _data_config(args: argparse.Namespace, model: Darknet) -> DataConfig | None:
    """The evaluation dataset (None with --no-eval), checked against the model before any pruning."""
    if args.no_eval:
        return None
    data = load_data_config(args.data)
    if data.nc != model.nc:
        raise PruneError(f"{args.weights} detects {model.nc} classes but --data {data.source} has {data.nc}: "
                         f"pass the dataset the model was trained on, or --no-eval to skip the mAP evaluation")
    if not data.val:
        raise PruneError(f"--data {data.source} has no 'val' split to evaluate on; add one, or pass --no-eval")
    return data


# ------------------------------------------------------------------------------------ measuring
def evaluate_map(model: torch.nn.Module, data: DataConfig | str | Path | None, img_size: int, batch_size: int,
                 workers: int) -> tuple[float, float]:
    """mAP@.5 and mAP@.5:.95 on the validation split with the project's evaluator (the one place
    pruning talks to evaluation)."""
    result = evaluate_dataset(model, data, img_size, batch_size, workers)
    return float(result.mAP50), float(result.mAP50_95)


def _measure(model: Darknet, img_size: int, runs: int) -> dict[str, float]:
    """Parameters, FLOPs and median latency (BN fused copy, batch 1) of one model."""
    return {"params": count_params(model), "flops": count_flops(model, img_size),
            "latency_ms": measure_latency(model.fused_copy(), img_size, runs=runs, warmup=min(3, runs))}


def _cost_weights(model: Darknet, graph: PruneGraph, img_size: int, runs: int) -> dict[int, float]:
    """Ranking weights of ``--cost-aware``: each conv's time per FLOP relative to the model's,
    profiled on a BN-fused copy at ``img_size`` on the model's device (fastest of ``runs`` per layer)."""
    weights = latency_weights(graph, profile_layers(model.fused_copy(), img_size, runs=runs), img_size)
    slow = max(weights, key=weights.get)
    print(f"--cost-aware: time per FLOP of a channel relative to the model's average, profiled at "
          f"{img_size} px: {min(weights.values()):.2f} to {weights[slow]:.2f} (layer {slow})")
    return weights


def _choose_ratio(options: PruneOptions, graph: PruneGraph, state: dict,
                  img_size: int) -> tuple[PruneOptions, dict | None]:
    """``options`` with the ratio that meets its target (unchanged without one), and the target's record."""
    target = options.target
    if target is None:
        return options, None
    ratio, got = search_ratio(graph, state, options, img_size)
    print(f"{target.flag} {target.fraction}: chose {options.strategy.ratio_flag} {ratio} "
          f"(keeps {got:.4f} of the {target.metric} at {img_size} px)")
    return options.with_ratio(ratio), {"metric": target.metric, "target": target.fraction, "achieved": got}


# ------------------------------------------------------------------------------------ the run
def run(strategy: "int | str | Strategy", argv: Sequence[str] | None = None) -> int:
    """Run one prune script; returns the exit status (errors raise; :func:`utils.errors.cli_main`
    turns the user's into one sentence)."""
    s = get_strategy(strategy)
    parser = build_parser(s)
    args = parser.parse_args(argv)
    _check_args(parser, args, s)
    device = select_device(args.device)
    ckpt, model = _load(args, device)
    args.img_size = check_img_size(args.img_size, int(max(model.cfg.strides or [32])), "--img_size")[0]
    data = _data_config(args, model)  # before any pruning work: the classes must match
    source = model
    layered, ckpt = _layer_step(args, model, ckpt)  # --layers N: blocks first, then channels of the result
    model = layered.model if layered is not None else model
    graph = analyse(model.to_cfg())
    options = _options(args, s, None)
    prunable = graph.prunable(s, options.extra)
    warning = sparsity_warning(renumber_history(ckpt.get("history") or []), s, str(args.weights), prunable)
    if warning:
        print(f"WARNING: {warning}")
    if args.cost_aware:
        options = _options(args, s, _cost_weights(model, graph, args.img_size, args.latency_runs))
    state = model.state_dict()
    options, target = _choose_ratio(options, graph, state, args.img_size)
    prefix = s.file_prefix(options.ratio, options.layer_keep) + (layer_prefix(args.layers) if args.layers else "")
    paths = output_paths(args.weights, args.cfg, prefix, args.out_dir)
    _refuse_overwrite(paths, [args.weights, args.cfg, args.data])  # before any expensive work
    _check_writable(paths)

    t0 = time.perf_counter()
    result = prune(model, options)
    prune_s = time.perf_counter() - t0
    _print_plan(result, state)
    print(f"verified: compact == absorbed at {result.verification['img_size']} px "
          f"(max relative difference {result.verification['max_rel_diff']:.2e}); "
          f"pruning took {prune_s:.3f} s")

    figures = _figures(args, data, model, result)
    rows = layer_rows(graph, result.masks, s, options.extra)
    print(layer_table(rows))
    print(metric_table(figures, str(device)))
    entry = _history_entry(args, options, target, result, figures, prune_s)
    if layered is not None:
        ckpt["history"][-1]["figures"] = _layer_figures(args, data, source, layered)
        entry["settings"]["layers"] = args.layers
    _write_outputs(paths, ckpt, result, entry, rows, args)
    return 0


def _write_outputs(paths: dict[str, Path], ckpt: dict, result: PruneResult, entry: dict,
                   rows: list[dict], args: argparse.Namespace) -> None:
    """Pruned cfg, self-describing checkpoint (history += entry), JSON report and channel chart,
    all-or-nothing: staged beside their targets and moved into place only when all four are written."""
    history = list(ckpt.get("history") or []) + [entry]
    report = {**{k: v for k, v in entry.items() if k != "masks"},
              "outputs": {k: str(v) for k, v in paths.items()}, "layers": rows,
              "groups": [list(g) for g in result.plan.groups], "masks": entry["masks"]}
    title = f"{result.plan.strategy.label}, ratio {result.plan.ratio}: {Path(args.weights).name}"
    kinds = ("cfg", "weights", "json", "png")
    with staged_outputs([paths[k] for k in kinds]) as staged:
        tmp = {k: staged[paths[k]] for k in kinds}
        tmp["cfg"].write_text(format_cfg(result.model.to_cfg()))
        save_checkpoint(tmp["weights"], ckpt=make_checkpoint(result.model, history=history, opt=vars(args)))
        write_json(tmp["json"], report)
        plot_channels(rows, tmp["png"], title)
    for kind in kinds:
        print(f"wrote {paths[kind]}")


def _print_plan(result: PruneResult, state: dict) -> None:
    p = result.plan
    ranked = ranking_layers(p.prunable, p.groups, p.strategy)
    quant = gamma_quantiles([state[bn_key(i, "weight")] for i in ranked])
    print(f"{p.strategy.label}: {len(p.prunable)} prunable convs, {len(p.groups)} shortcut groups; "
          f"|gamma| quantiles " + ", ".join(f"{k} {v:.3g}" for k, v in quant.items()))
    before = sum(int(m.numel()) for m in p.masks.values())
    after = sum(int(m.sum()) for m in p.masks.values())
    print(f"ratio {p.ratio}: {before - after} of {before} prunable channels removed "
          f"({(before - after) / max(before, 1):.1%}); safe ratio (no layer emptied by the threshold) "
          f"{p.safe_ratio:.4f}")
    if p.ratio > p.safe_ratio:
        print(f"WARNING: ratio {p.ratio} exceeds the safe ratio {p.safe_ratio:.4f}: the threshold "
              f"empties some layers, which keep only their per-layer minimum of channels")


def _figures(args: argparse.Namespace, data: DataConfig | None, model: Darknet,
             result: PruneResult) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if data is not None:
        cfg = model.to_cfg()
        masked = model_from_state(cfg, result.masked_state(model.state_dict()), model.names,
                                  [m.anchors for m in model.yolo_layers])
        maps = {name: evaluate_map(m, data, args.img_size, args.batch_size, args.workers)
                for name, m in (("original", model), ("masked", masked), ("compact", result.model))}
        figures["mAP50"] = {k: v[0] for k, v in maps.items()}
        figures["mAP50_95"] = {k: v[1] for k, v in maps.items()}
    before = _measure(model, args.img_size, args.latency_runs)
    after = _measure(result.model, args.img_size, args.latency_runs)
    for key in ("params", "flops", "latency_ms"):
        figures[key] = {"before": before[key], "after": after[key], "ratio": after[key] / before[key]}
    return figures


def _history_entry(args: argparse.Namespace, options: PruneOptions, target: dict | None, result: PruneResult,
                   figures: dict, prune_s: float) -> dict:
    p, s = result.plan, options.strategy
    return {
        "step": "prune", "strategy": s.name, "ratio": float(options.ratio),
        "parent": str(Path(args.weights).resolve()),
        "settings": {"layer_keep": float(options.layer_keep), "round_to": options.round_to,
                     "inclusive": s.inclusive, "group_rule": s.group_rule,
                     "include_upsample": options.include_upsample, "include_sppf": options.include_sppf,
                     "target": target, "cost_aware": options.cost_aware,
                     "ranking_weights": (None if p.weights is None
                                         else {str(i): w for i, w in p.weights.items()}),
                     "img_size": args.img_size, "cfg": args.cfg, "data": args.data},
        "safe_ratio": p.safe_ratio,
        "figures": figures,
        "verification": result.verification,
        "prune_seconds": prune_s,
        "masks": {str(i): [bool(v) for v in m.tolist()] for i, m in sorted(p.masks.items())},
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------ layer pruning
def _add_block_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the residual-block choice (layer_prune_yolov5s.py and the combined ``--layers`` mode)."""
    p.add_argument("--allow-empty", action="store_true", help="let a C3 module lose all its residual "
                   "blocks (default: each keeps its most important one)")
    p.add_argument("--importance", choices=list(STATISTICS), default="rms",
                   help="block importance from the |gamma| of the block's last conv, whose output the residual "
                   "add receives: rms (default; grows with the change removing the block makes), mean or max")


def build_layer_parser() -> argparse.ArgumentParser:
    """The command line of layer_prune_yolov5s.py (the common flags of the prune scripts)."""
    p = argparse.ArgumentParser(description="Layer pruning: remove the least important residual blocks "
                                "(the bottlenecks inside C3 modules).")
    p.add_argument("--cfg", default=None, help="model .cfg/.yaml; must match the checkpoint "
                   "(default: the checkpoint's own cfg)")
    p.add_argument("--data", default=None, help="dataset .yaml or .data (default: the built-in dataset)")
    p.add_argument("--weights", default=get_strategy("3").default_weights,
                   help="sparsity-trained checkpoint (ours or upstream .pt)")
    p.add_argument("--img_size", "--img-size", "--img", dest="img_size", type=int, default=640,
                   help="evaluation, FLOPs and latency image size (rounded up to the model's stride)")
    p.add_argument("--shortcuts", type=positive_int, default=None, metavar="N",
                   help="remove the N least important residual blocks")
    p.add_argument("--target-flops", type=_target, default=None, help="instead of --shortcuts: remove the "
                   "fewest blocks that keep at most this fraction of the FLOPs")
    _add_block_flags(p)
    p.add_argument("--device", default="", help="cuda device (0, 0,1) or cpu")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=16,
                   help="evaluation batch size")
    p.add_argument("--workers", type=nonneg_int, default=2, help="evaluation data loader workers")
    p.add_argument("--out-dir", default=None, help="write cfg, weights and report here instead of "
                   "beside the inputs")
    p.add_argument("--no-eval", action="store_true", help="skip the mAP evaluations")
    p.add_argument("--latency-runs", type=positive_int, default=20, help="timed forward passes per model")
    return p


def run_layers(argv: Sequence[str] | None = None) -> int:
    """Run layer_prune_yolov5s.py; returns the exit status (errors raise, as in :func:`run`)."""
    parser = build_layer_parser()
    args = parser.parse_args(argv)
    if (args.shortcuts is None) == (args.target_flops is None):
        parser.error("give either --shortcuts N or --target-flops F (one of the two)")
    device = select_device(args.device)
    ckpt, model = _load(args, device)
    args.img_size = check_img_size(args.img_size, int(max(model.cfg.strides or [32])), "--img_size")[0]
    data = _data_config(args, model)
    warning = sparsity_note(ckpt.get("history") or [], str(args.weights), find_blocks(model.to_cfg()))
    if warning:
        print(f"WARNING: {warning}")
    target = None
    if args.target_flops is not None:
        n, got = search_shortcuts(model.to_cfg(), model.state_dict(), args.target_flops, args.img_size,
                                  args.allow_empty, args.importance)
        print(f"--target-flops {args.target_flops}: chose --shortcuts {n} "
              f"(keeps {got:.4f} of the FLOPs at {args.img_size} px)")
        args.shortcuts, target = n, {"metric": "flops", "target": args.target_flops, "achieved": got}
    paths = output_paths(args.weights, args.cfg, layer_prefix(args.shortcuts), args.out_dir)
    _refuse_overwrite(paths, [args.weights, args.cfg, args.data])  # before any expensive work
    _check_writable(paths)
    result = _layer_prune(args, model, args.shortcuts, "--shortcuts")
    entry = history_entry(result, args.weights, _layer_settings(args, target),
                          _layer_figures(args, data, model, result), result.timings["total"])
    _write_layer_outputs(paths, ckpt, result, entry, args)
    return 0


def _layer_prune(args: argparse.Namespace, model: Darknet, n: int, flag: str) -> LayerResult:
    """Remove ``n`` blocks (verified) and print the block table."""
    result = layer_prune(model, n, args.allow_empty, args.importance, flag=flag)
    print(block_table(block_rows(result), result.statistic))
    v = result.verification
    print(f"layer pruning: removed {len(result.removed)} of {len(result.blocks)} residual blocks; verified: "
          f"compact == absorbed at {v['img_size']} px (max relative difference {v['max_rel_diff']:.2e}); "
          f"took {result.timings['total']:.3f} s")
    return result


def _layer_step(args: argparse.Namespace, model: Darknet, ckpt: dict) -> tuple[LayerResult | None, dict]:
    """The combined mode (``--layers N``): the blocks removed first, and ``ckpt`` with the step in its
    history (its figures are added after the channel step); (None, ckpt) without ``--layers``."""
    if not args.layers:
        return None, ckpt
    layered = _layer_prune(args, model, args.layers, "--layers")
    entry = history_entry(layered, args.weights, _layer_settings(args, None), {}, layered.timings["total"])
    return layered, {**ckpt, "history": list(ckpt.get("history") or []) + [entry]}


def _layer_settings(args: argparse.Namespace, target: dict | None) -> dict:
    return {"allow_empty": bool(args.allow_empty), "importance": args.importance, "target": target,
            "img_size": args.img_size, "cfg": args.cfg, "data": args.data}


def _layer_figures(args: argparse.Namespace, data: DataConfig | None, model: Darknet,
                   result: LayerResult) -> dict[str, Any]:
    """mAP of the original, masked (removed blocks' last-conv gammas zeroed) and compact models,
    parameters, FLOPs and latency; printed as the metric table."""
    figures = _figures(args, data, model, result)
    print(f"layer pruning ({len(result.removed)} residual blocks removed):")
    print(metric_table(figures, str(next(model.parameters()).device)))
    return figures


def _write_layer_outputs(paths: dict[str, Path], ckpt: dict, result: LayerResult, entry: dict,
                         args: argparse.Namespace) -> None:
    """Layer-pruned cfg, checkpoint (history += entry), JSON report and block chart, all-or-nothing."""
    history = list(ckpt.get("history") or []) + [entry]
    rows = block_rows(result)
    report = {**entry, "outputs": {k: str(v) for k, v in paths.items()}, "blocks": rows}
    title = f"layer pruning, {len(result.removed)} residual blocks removed: {Path(args.weights).name}"
    kinds = ("cfg", "weights", "json", "png")
    with staged_outputs([paths[k] for k in kinds]) as staged:
        tmp = {k: staged[paths[k]] for k in kinds}
        tmp["cfg"].write_text(format_cfg(result.model.to_cfg()))
        save_checkpoint(tmp["weights"], ckpt=make_checkpoint(result.model, history=history, opt=vars(args)))
        write_json(tmp["json"], report)
        plot_blocks(rows, tmp["png"], title)
    for kind in kinds:
        print(f"wrote {paths[kind]}")
