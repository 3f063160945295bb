"""The command line shared by prune_yolov5s.py, shortcut_prune_yolov5s.py, slim_prune_yolov5s.py and
slim_prune_yolov5s_8x.py: parse flags, load, prune, evaluate, measure, report, write.

Each script is ``main(argv) = run(<strategy>, argv)`` under :func:`utils.errors.cli_main`; the
strategy decides the ratio flag (``--percent`` or ``--global_percent``), whether ``--layer_keep``
exists, the default weights and ratio of the original yolov5_prune, and the output file prefix.
Every range is checked at parse time; every problem the user can fix (missing or mismatched files,
classes that differ from the dataset's, an unreachable target, an unwritable folder, a runtime that
is not installed) ends the run as one sentence, and writes nothing. The four outputs are written
all-or-nothing.

``--target-latency R`` / ``--target-ms T`` prune to a latency measured on ``--runtime`` (torch,
onnxruntime, openvino) with ``--threads`` (see :mod:`utils.prune.latency`); the profile that guides
the search is cached (``--profile``). ``--sweep`` prints candidate prunes for several targets of one
kind and writes nothing. ``--latency-aware`` stands for the latency options that ran fastest at equal
FLOPs (``PruneOptions.LATENCY_AWARE``: ``--cost-aware --round-to 16 --include-upsample --include-sppf``);
a part given explicitly wins (``--round-to 8``, ``--no-include-sppf``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from terminaltables import AsciiTable

from models import (Darknet, check_cfg_matches, format_cfg, load_cfg_file, load_checkpoint,
                    make_checkpoint, model_from_checkpoint, save_checkpoint)
from utils.dataconfig import DataConfig, load_data_config
from utils.errors import nonneg_int, parse_number, positive_int
from utils.evaluate import evaluate_dataset
from utils.fileio import remove_stale_temps, staged_outputs, temp_name
from utils.general import check_img_size
from utils.torch_utils import count_flops, count_params, measure_latency, select_device

from .absorb import bn_key
from .cost import latency_weights, profile_layers
from .errors import PruneError
from .graph import PruneGraph, analyse
from .latency import (MAX_ITERATIONS, Bench, Comparison, LatencyChoice, LatencyProfile, LatencyUnreachable,
                      check_runtime, compare, load_or_measure_profile, meet_latency)
from .layers import (STATISTICS, LayerResult, block_rows, block_table, find_blocks, history_entry, layer_prefix,
                     layer_prune, plot_blocks, renumber_history, search_shortcuts, sparsity_note)
from .masks import ranking_layers
from .options import RUNTIMES, LatencyTarget, PruneOptions, Target, validate_ratio
from .pipeline import PruneResult, Unreachable, prune, search_ratio
from .report import (gamma_quantiles, layer_rows, layer_table, metric_table, plot_channels, sparsity_warning,
                     write_json)
from .strategy import Strategy, get_strategy
from .surgery import model_from_state

__all__ = ["build_parser", "resolve_latency_aware", "run", "output_prefix", "output_paths", "evaluate_map",
           "build_layer_parser", "run_layers"]

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
    v = parse_number(float, text)
    if v == 1.0:
        raise argparse.ArgumentTypeError("1 keeps every channel of every layer, so nothing would be pruned; "
                                         "give the per-layer minimum share below 1, for example 0.01")
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not a share in (0, 1) of each layer's channels; "
                                         f"for example --layer_keep 0.01")
    return v


def _target(text: str) -> float:
    """argparse type of --target-flops/--target-params: a fraction in (0, 1]."""
    v = parse_number(float, text)
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
    p.add_argument("--target-flops", type=_target, default=None, nargs="?", const=KIND_ONLY,
                   help="instead of a ratio: keep at most this fraction of the FLOPs (searches the ratio)")
    p.add_argument("--target-params", type=_target, default=None, nargs="?", const=KIND_ONLY,
                   help="instead of a ratio: keep at most this fraction of the parameters")
    _add_latency_flags(p)
    _add_latency_aware_flags(p, s)
    p.add_argument("--device", default="", help="cuda device (0, 0,1) or cpu")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=16,
                   help="evaluation batch size")
    p.add_argument("--workers", type=nonneg_int, default=2, help="evaluation data loader workers")
    p.add_argument("--out-dir", default=None, help="write cfg, weights and report here instead of "
                   "beside the inputs")
    p.add_argument("--no-eval", action="store_true", help="skip the mAP evaluations")
    p.add_argument("--latency-runs", type=positive_int, default=20, help="timed forward passes per model (on "
                   "a --runtime: round-robin rounds of one pass of each model)")
    p.add_argument("--layers", type=nonneg_int, default=0, metavar="N", help="first remove the N least "
                   "important residual blocks (layer pruning, as layer_prune_yolov5s.py --shortcuts N), then "
                   "prune channels of the result; a target then refers to the layer-pruned model")
    _add_block_flags(p)
    p.set_defaults(strategy=s.name, **({} if s.uses_layer_keep else {"layer_keep": 0.0}))
    return p


def _add_latency_aware_flags(p: argparse.ArgumentParser, s: Strategy) -> None:
    """--latency-aware and its four parts (each part's --no- form overrides it)."""
    parts = " ".join(PruneOptions.latency_flags())
    p.add_argument("--latency-aware", action="store_true",
                   help=f"prune for CPU latency: the same as {parts} (every part applies to every strategy; "
                   f"on a sparsity-trained yolov5s at 0.45 of the FLOPs, 1 thread, it ran in 0.45/0.43 of the "
                   f"original's time at 320/640 px against 0.52/0.48 with the defaults); a part given explicitly wins "
                   f"(--round-to 8, --no-cost-aware, --no-include-sppf). Sparsity-train with train_sparsity.py "
                   f"--include-upsample --include-sppf so that the extra convs are regularised")
    p.add_argument("--include-upsample", action=argparse.BooleanOptionalAction, default=None,
                   help="also prune the convs that feed an upsample (exact thanks to absorption); "
                   "default off (on with --latency-aware)")
    p.add_argument("--include-sppf", action=argparse.BooleanOptionalAction, default=None,
                   help="also prune the SPPF input conv; default off (on with --latency-aware)")
    p.add_argument("--round-to", type=positive_int, default=None, metavar="N",
                   help=f"round every kept channel count up to a multiple of N (or the full width) "
                   f"by adding the largest remaining gammas (default {s.round_to}; "
                   f"{PruneOptions.LATENCY_AWARE['round_to']} with --latency-aware); CPU and GPU "
                   f"kernels run channel blocks of 8 or 16, a partly filled block costs a full one")
    p.add_argument("--cost-aware", action=argparse.BooleanOptionalAction, default=None,
                   help="rank |gamma| divided by each layer's measured time per FLOP (relative to the "
                   "model's average, profiled at --img_size on --device over --latency-runs "
                   "forward passes) instead of |gamma|: at equal gamma, channels of slow layers go "
                   "first, so latency follows FLOPs; default off (on with --latency-aware)")


def resolve_latency_aware(args: argparse.Namespace) -> dict[str, Any]:
    """Fill in the four parts of ``--latency-aware`` on ``args`` (an explicit flag wins; without
    it every part is off / the strategy's default, as in the original yolov5_prune); returns the
    parts that the flag set, for the log."""
    names = tuple(PruneOptions.LATENCY_AWARE)
    given = {k: getattr(args, k, None) for k in names}
    parts = PruneOptions.latency_settings(bool(getattr(args, "latency_aware", False)), **given)
    for name, value in parts.items():
        setattr(args, name, value)
    return {k: v for k, v in parts.items() if given[k] is None and v not in (None, False)}


def _apply_latency_aware(args: argparse.Namespace) -> None:
    """:func:`resolve_latency_aware`, and with --latency-aware a line saying what it turned on."""
    implied = resolve_latency_aware(args)
    if args.latency_aware:
        flags = PruneOptions.LATENCY_FLAGS
        on = [flags[k] + ("" if v is True else f" {v}") for k, v in implied.items()]
        explicit = [flags[k] for k in PruneOptions.LATENCY_AWARE if k not in implied]
        print(f"--latency-aware: {' '.join(on) or 'no part'}"
              + (f" (given explicitly: {', '.join(explicit)})" if explicit else ""))


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace, s: Strategy) -> None:
    """Conflicting flags as argparse errors (exit 2, the message names the flags)."""
    targets = [k for k in TARGET_KINDS if getattr(args, f"target_{k}") is not None]
    if len(targets) > 1:
        p.error(f"give either --target-{targets[0]} or --target-{targets[1]}, not both (one target per run)")
    if targets and args.percent is not None:
        p.error(f"give either {s.ratio_flag} or --target-{targets[0]}, not both")
    if not args.layers and (args.allow_empty or args.importance != "rms"):
        p.error("--allow-empty and --importance choose the residual blocks of --layers N; give --layers too")
    _check_latency_args(p, args, targets[0] if targets else None)


def _options(args: argparse.Namespace, s: Strategy, weights: dict[int, float] | None) -> PruneOptions:
    target = next((Target(m, getattr(args, f"target_{m}")) for m in ("flops", "params")
                   if isinstance(getattr(args, f"target_{m}"), float)), None)
    ratio = args.percent if args.percent is not None else s.default_ratio
    return PruneOptions.make(s, ratio, include_upsample=args.include_upsample, include_sppf=args.include_sppf,
                             layer_keep=args.layer_keep, round_to=args.round_to, weights=weights,
                             target=target, latency_aware=args.latency_aware)


# ------------------------------------------------------------------------------------ latency targets
class _KindOnly:
    """The value of a --target-* flag given without one: it names the kind of the --sweep values
    (not a string, so argparse does not pass it through the flag's type)."""

    def __repr__(self) -> str:
        return "KIND_ONLY"


KIND_ONLY = _KindOnly()
TARGET_KINDS = ("flops", "params", "latency", "ms")


def _positive_float(text: str) -> float:
    v = parse_number(float, text)
    if not v > 0.0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{v} is not a positive number of milliseconds; for example 5")
    return v


def _sweep_values(text: str) -> list[float]:
    """argparse type of --sweep: comma-separated positive numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers; "
                                         f"for example --sweep 0.8,0.6,0.4")
    if not values or any(not v > 0.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more positive targets, for example 0.8,0.6,0.4")
    return values


def _add_latency_flags(p: argparse.ArgumentParser) -> None:
    """--target-latency, --target-ms and the flags of where latency is measured, and --sweep."""
    p.add_argument("--target-latency", type=_target, default=None, nargs="?", const=KIND_ONLY, metavar="R",
                   help="instead of a ratio: run in at most this fraction of the original's measured latency "
                   "on --runtime (batch 1; searched on a measured per-layer profile, then proven by timing "
                   "both models round-robin)")
    p.add_argument("--target-ms", type=_positive_float, default=None, nargs="?", const=KIND_ONLY, metavar="T",
                   help="instead of a ratio: run in at most T milliseconds on --runtime (batch 1)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="where latency is measured: torch (eager), onnxruntime or openvino (default torch)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="threads the latency timing pins the runtime to (default 1)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="latency profile JSON to reuse (or to write when missing); default "
                   "runs/profiles/<architecture>_<runtime>_<device>_t<threads>_<img>.json")
    p.add_argument("--latency-iterations", type=positive_int, default=MAX_ITERATIONS, metavar="N",
                   help=f"searches at most (default {MAX_ITERATIONS}), each tightened by the observed miss of the one before")
    p.add_argument("--sweep", type=_sweep_values, default=None, metavar="T1,T2,...",
                   help="print a table of candidate prunes, one per target of the kind a --target-* flag "
                   "(given without a value) names, and write nothing")


def _check_latency_args(p: argparse.ArgumentParser, args: argparse.Namespace, kind: str | None) -> None:
    value = getattr(args, f"target_{kind}") if kind else None
    if args.sweep is not None:
        if kind is None:
            p.error("--sweep needs the kind of its targets: add --target-latency, --target-ms, --target-flops "
                    "or --target-params without a value")
        if value is not KIND_ONLY:
            p.error(f"--sweep lists the targets: give --target-{kind} without a value")
        if kind in ("flops", "params", "latency") and any(v > 1.0 for v in args.sweep):
            p.error(f"--sweep with --target-{kind}: every value is a fraction of the original in (0, 1]")
    elif value is KIND_ONLY:
        p.error(f"--target-{kind} needs a value (only with --sweep may it be given alone)")
    if args.profile is not None and Path(args.profile).is_dir():
        p.error(f"--profile {args.profile} is a folder; give a .json file")


def _wants_bench(args: argparse.Namespace) -> bool:
    """Latency is measured on a runtime with a latency target, a sweep, or --runtime / --threads."""
    return any(v is not None for v in (args.target_latency, args.target_ms, args.sweep, args.runtime,
                                      args.threads))


def _needs_profile(args: argparse.Namespace, bench: Bench | None) -> bool:
    """A latency profile is read or measured for a latency target (or sweep) and for --cost-aware on a runtime."""
    return bench is not None and (args.target_latency is not None or args.target_ms is not None or args.cost_aware)


def _bench(args: argparse.Namespace, device: torch.device) -> Bench:
    return Bench(args.runtime or "torch", str(device), args.threads or 1, args.img_size)


def _latency_target(args: argparse.Namespace, bench: Bench, value: float | None = None) -> LatencyTarget | None:
    """The run's latency target (``value`` instead of the flag's, for a sweep); None without one."""
    kind = "latency" if args.target_latency is not None else "ms" if args.target_ms is not None else None
    if kind is None:
        return None
    return LatencyTarget(kind, value if value is not None else getattr(args, f"target_{kind}"),
                         bench.runtime, bench.threads)


def _profile(args: argparse.Namespace, model: Darknet, bench: Bench) -> tuple[LatencyProfile, Path]:
    runs = max(1, min(5, args.latency_runs))
    t0 = time.perf_counter()
    profile, path, reused = load_or_measure_profile(model, bench, args.profile, runs)
    if reused:
        print(f"latency profile: reused {path} ({bench.describe()}, {bench.img_size} px)")
    else:
        print(f"latency profile: measured {len(profile.layers)} convs on {bench.describe()} at {bench.img_size} px "
              f"in {time.perf_counter() - t0:.1f} s, wrote {path} (pass --profile {path} to reuse it)")
    return profile, path


def _meet_latency(args: argparse.Namespace, model: Darknet, options: PruneOptions, target: LatencyTarget,
                  bench: Bench, profile: LatencyProfile) -> LatencyChoice:
    return meet_latency(model, options, target, bench, profile, args.latency_runs, args.latency_iterations,
                        log=print)


def _prune_to_latency(args: argparse.Namespace, model: Darknet, options: PruneOptions, target: LatencyTarget,
                      bench: Bench, profile: LatencyProfile,
                      profile_path: Path) -> tuple[PruneOptions, PruneResult, Comparison, dict, dict]:
    """(options with the ratio found, compact model, its timing, the target's record, the latency record)."""
    choice = _meet_latency(args, model, options, target, bench, profile)
    _print_latency(target, choice, bench)
    record = {"metric": target.kind, "target": target.value, "achieved": choice.observed, "met": choice.met}
    return (choice.options, choice.result, choice.comparison, record,
            choice.record(target, bench, profile_path))


def _print_latency(target: LatencyTarget, choice: LatencyChoice, bench: Bench) -> None:
    r = choice.comparison.record()
    o, c, q = r["original_ms"], r["compact_ms"], r["ratio"]
    print(f"{target.flag} {target.value:g} {'met' if choice.met else 'MISSED'} on {bench.describe()}, "
          f"{bench.img_size} px, {r['rounds']} round-robin rounds: original {o['median']:.3f} ms "
          f"(min {o['min']:.3f}, max {o['max']:.3f}), compact {c['median']:.3f} ms (min {c['min']:.3f}, "
          f"max {c['max']:.3f}), ratio {q['median']:.3f} (IQR {q['q25']:.3f}-{q['q75']:.3f})")
    if not choice.met:
        print(f"WARNING: {target.flag} {target.value:g} was missed after {len(choice.iterations)} searches "
              f"(measured {target.describe(choice.observed)}); the run keeps the last model; rerun with more "
              f"--latency-runs or --latency-iterations on a quieter machine")


def _sweep(args: argparse.Namespace, model: Darknet, options: PruneOptions, data: DataConfig | None,
           bench: Bench, profile: LatencyProfile | None) -> int:
    """One candidate prune per --sweep target, printed as a table; nothing is written."""
    kind = next(k for k in TARGET_KINDS if getattr(args, f"target_{k}") is not None)
    profile = profile if kind in ("latency", "ms") else None
    full = (count_params(model), count_flops(model, args.img_size))
    rows = [[f"--target-{kind}", "Ratio", "Params kept", "FLOPs kept", f"Latency ({bench.runtime}, ms)",
             "Latency ratio", "Met", "mAP@.5 (masked)", "mAP@.5:.95 (masked)"]]
    for value in args.sweep:
        try:
            result, cmp, met = _sweep_candidate(args, model, options, bench, kind, value, profile)
        except (Unreachable, LatencyUnreachable) as e:
            rows.append([f"{value:g}", "unreachable", f"best reachable {e.best:.3f}"] + [""] * 6)
            continue
        masked = (None, None) if data is None else evaluate_map(_masked_model(model, result), data, args.img_size,
                                                                args.batch_size, args.workers)
        rows.append([f"{value:g}", f"{result.plan.ratio}", f"{count_params(result.model) / full[0]:.3f}",
                     f"{count_flops(result.model, args.img_size) / full[1]:.3f}",
                     f"{cmp.compact_median:.3f} / {cmp.original_median:.3f}", f"{cmp.ratio:.3f}",
                     "yes" if met else "no", *("-" if m is None else f"{m:.4f}" for m in masked)])
    print(AsciiTable(rows).table)
    print(f"sweep: {len(args.sweep)} candidate prunes measured on {bench.describe()} at {args.img_size} px; "
          f"no model, cfg or report was written (a sweep is for choosing: rerun with one --target-{kind} "
          f"value to write the pruned model)")
    return 0


def _sweep_candidate(args: argparse.Namespace, model: Darknet, options: PruneOptions, bench: Bench, kind: str,
                     value: float, profile: LatencyProfile | None) -> tuple[PruneResult, Comparison, bool]:
    """(compact model, its round-robin timing, whether the target was met) of one --sweep value."""
    if profile is not None:
        choice = _meet_latency(args, model, options, _latency_target(args, bench, value), bench, profile)
        return choice.result, choice.comparison, choice.met
    ratio, _ = search_ratio(analyse(model.to_cfg()), model.state_dict(), replace(options, target=Target(kind, value)),
                            args.img_size)
    result = prune(model, options.with_ratio(ratio))
    return result, compare(model, result.model, bench, args.latency_runs), True


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


def _cost_weights(model: Darknet, graph: PruneGraph, img_size: int, runs: int,
                  profile: LatencyProfile | None = None) -> dict[int, float]:
    """Ranking weights of ``--cost-aware``: each conv's time per FLOP relative to the model's, from
    the runtime's latency ``profile`` when there is one, else profiled eagerly on a BN-fused copy at
    ``img_size`` on the model's device (fastest of ``runs`` per layer)."""
    times = profile.layer_times() if profile is not None else profile_layers(model.fused_copy(), img_size, runs=runs)
    weights = latency_weights(graph, times, img_size)
    slow = max(weights, key=weights.get)
    where = f"the {profile.key['runtime']} latency profile" if profile is not None else "PyTorch"
    print(f"--cost-aware: time per FLOP of a channel relative to the model's average, from {where} at "
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
    _apply_latency_aware(args)
    device = select_device(args.device)
    ckpt, model = _load(args, device)
    args.img_size = check_img_size(args.img_size, int(max(model.cfg.strides or [32])), "--img_size")[0]
    bench = _bench(args, device) if _wants_bench(args) else None
    if bench is not None:
        check_runtime(bench)  # a missing runtime package ends the run before any work
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
    if args.sweep is None:
        _checked_paths(args, s, options)  # provisional names: an unwritable folder fails before any work
    profile = _profile(args, model, bench) if _needs_profile(args, bench) else (None, None)
    if args.cost_aware:
        options = _options(args, s, _cost_weights(model, graph, args.img_size, args.latency_runs, profile[0]))
    if args.sweep is not None:
        return _sweep(args, model, options, data, bench, profile[0])
    state = model.state_dict()
    latency_target = _latency_target(args, bench) if bench is not None else None
    if latency_target is not None:
        options, result, comparison, target, latency = _prune_to_latency(args, model, options, latency_target,
                                                                          bench, *profile)
    else:
        options, target = _choose_ratio(options, graph, state, args.img_size)
        result, comparison, latency = prune(model, options), None, None
    prune_s = result.timings["total"]  # the prune of the chosen ratio, without the latency search
    paths = _checked_paths(args, s, options)  # the file names carry the ratio
    _print_result(result, state, prune_s)
    figures = _figures(args, data, model, result, bench, comparison)
    latency = _latency_record(figures, bench, latency)
    rows = layer_rows(graph, result.masks, s, options.extra)
    print(layer_table(rows))
    print(metric_table(figures, bench.describe() if bench is not None else str(device)))
    entry = _history_entry(args, options, target, result, figures, prune_s, latency)
    if layered is not None:
        ckpt["history"][-1]["figures"] = _layer_figures(args, data, source, layered)
        entry["settings"]["layers"] = args.layers
    _write_outputs(paths, ckpt, result, entry, rows, args)
    return 0


def _print_result(result: PruneResult, state: dict, prune_s: float) -> None:
    _print_plan(result, state)
    print(f"verified: compact == absorbed at {result.verification['img_size']} px "
          f"(max relative difference {result.verification['max_rel_diff']:.2e}); "
          f"pruning took {prune_s:.3f} s")


def _latency_record(figures: dict[str, Any], bench: Bench | None, latency: dict | None) -> dict | None:
    """The history's latency record: the latency target's, else (with --runtime / --threads alone) the
    round-robin measurement that :func:`_figures` left under ``"comparison"``, else None."""
    measured = figures.pop("comparison", None)
    if latency is None and measured is not None:
        latency = {"runtime": bench.runtime, "device": bench.device, "threads": bench.threads,
                   "img_size": bench.img_size, **measured}
    return latency


def _checked_paths(args: argparse.Namespace, s: Strategy, options: PruneOptions) -> dict[str, Path]:
    """The output paths of ``options``' ratio, refused when they would overwrite an input or cannot be written."""
    prefix = s.file_prefix(options.ratio, options.layer_keep) + (layer_prefix(args.layers) if args.layers else "")
    paths = output_paths(args.weights, args.cfg, prefix, args.out_dir)
    _refuse_overwrite(paths, [args.weights, args.cfg, args.data])
    _check_writable(paths)
    return paths


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
              f"empties some layers, which keep only their per-layer minimum of channels; a prune this deep "
              f"can remove much of what the model knew, so expect to finetune long, and compare with the smaller "
              f"model trained from scratch (README: Which pruning to use)")


def _masked_model(model: Darknet, result: PruneResult) -> Darknet:
    """The full-size model with the pruned gammas zeroed (evaluated as "masked")."""
    return model_from_state(model.to_cfg(), result.masked_state(model.state_dict()), model.names,
                            [m.anchors for m in model.yolo_layers])


def _figures(args: argparse.Namespace, data: DataConfig | None, model: Darknet, result: PruneResult,
             bench: Bench | None = None, comparison: Comparison | None = None) -> dict[str, Any]:
    """mAP (original, masked, compact), parameters, FLOPs and latency before and after. With a
    ``bench`` the latency is the round-robin ``comparison`` on its runtime (measured here when None;
    its record is under ``"comparison"``), else the median of --latency-runs eager passes each."""
    figures: dict[str, Any] = {}
    if data is not None:
        maps = {name: evaluate_map(m, data, args.img_size, args.batch_size, args.workers)
                for name, m in (("original", model), ("masked", _masked_model(model, result)),
                                ("compact", result.model))}
        figures["mAP50"] = {k: v[0] for k, v in maps.items()}
        figures["mAP50_95"] = {k: v[1] for k, v in maps.items()}
    if bench is None:
        before = _measure(model, args.img_size, args.latency_runs)
        after = _measure(result.model, args.img_size, args.latency_runs)
    else:
        comparison = comparison or compare(model, result.model, bench, args.latency_runs)
        figures["comparison"] = comparison.record()
        before = {"params": count_params(model), "flops": count_flops(model, args.img_size),
                  "latency_ms": comparison.original_median}
        after = {"params": count_params(result.model), "flops": count_flops(result.model, args.img_size),
                 "latency_ms": comparison.compact_median}
    for key in ("params", "flops", "latency_ms"):
        figures[key] = {"before": before[key], "after": after[key], "ratio": after[key] / before[key]}
    if bench is not None:
        figures["latency_ms"]["ratio"] = comparison.ratio  # the median of the paired per-round ratios
    return figures


def _history_entry(args: argparse.Namespace, options: PruneOptions, target: dict | None, result: PruneResult,
                   figures: dict, prune_s: float, latency: dict | None = None) -> dict:
    p, s = result.plan, options.strategy
    return {
        "step": "prune", "strategy": s.name, "ratio": float(options.ratio),
        "parent": str(Path(args.weights).resolve()),
        "settings": {"layer_keep": float(options.layer_keep), "round_to": options.round_to,
                     "inclusive": s.inclusive, "group_rule": s.group_rule,
                     "include_upsample": options.include_upsample, "include_sppf": options.include_sppf,
                     "target": target, "cost_aware": options.cost_aware,
                     "latency_aware": options.latency_aware,
                     "ranking_weights": (None if p.weights is None
                                         else {str(i): w for i, w in p.weights.items()}),
                     "img_size": args.img_size, "cfg": args.cfg, "data": args.data},
        "safe_ratio": p.safe_ratio,
        "figures": figures,
        "latency": latency,
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
