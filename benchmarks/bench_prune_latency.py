"""Does a pruned model get as much faster as it gets smaller? CPU latency vs FLOPs of pruned yolov5s.

    python benchmarks/bench_prune_latency.py                      # yolov5s, artificially sparse gammas
    python benchmarks/bench_prune_latency.py --weights runs/train/s_sparsity/weights/last.pt
    python benchmarks/bench_prune_latency.py --sizes 320 --rounds 10 --no-torch-pruning

Two tables per image size, every figure measured in this one process:

* **strategies**: each pruning strategy (1, 2, 3, 8x) at two ratios with its default settings:
  parameters, FLOPs (``utils.torch_utils.count_flops``) and the CPU latency ratio compact/original.
* **at a FLOPs target** (default 50%, the ratio found by ``search_ratio``): what each option gives
  (``--round-to``, ``--include-upsample --include-sppf``, ``--cost-aware``), next to a uniformly
  narrowed model (every layer keeps the same share, multiples of 8) and Torch-Pruning's
  Network-Slimming pruner (``BNScalePruner`` with ``BNScaleImportance``, global ranking, detection
  convs ignored, pruning ratio bisected to the same FLOPs) when ``torch-pruning`` is installed.
  Columns ``kept sN`` give the share of channels kept at each stride: which layers a method cuts.

Latency: batch 1, BN fused, torch on one thread, eval mode, no grad. All models of one image size
are timed round-robin (one forward each per round, the starting model rotating), so a load change
on a shared machine hits all of them alike; a model's latency ratio is the median over rounds of
its time divided by the original's time in the same round. Without ``--weights`` the model is a
freshly initialised yolov5s whose BN gammas look sparsity-trained (``fake_sparsity_``: 60% of every
layer's gammas scaled by 0.01): the accuracy of such a model means nothing, its speed does.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from machine import cpu_name, write_report  # benchmarks/ is on sys.path when these run

ROOT = Path(__file__).resolve().parents[1]
TP_VERSION = "1.6.1"
STRATEGY_KEEP = {"1": 0.0, "2": 0.0, "3": 0.01, "8x": 0.01}


# ------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average": list(load) if load else None, "python": platform.python_version()}


# ------------------------------------------------------------------------------------ models
def source_model(weights: str | None, cfg: str, nc: int):
    """The model to prune: a checkpoint, or ``cfg`` with artificially sparse gammas."""
    from models import build_model, load_model
    from utils.prune.fake import fake_sparsity_

    if weights:
        return load_model(weights, device="cpu").float().eval()
    return fake_sparsity_(build_model(cfg, nc=nc)).eval()


def masks_model(model, graph, masks):
    """The compact model for arbitrary masks, built as the pipeline builds it (absorb, cut)."""
    from utils.prune.absorb import absorb
    from utils.prune.surgery import compact_cfg, compact_state, model_from_state

    state = absorb(graph, model.state_dict(), masks)
    return model_from_state(compact_cfg(graph.cfg, masks), compact_state(graph, state, masks), model.names,
                            [m.anchors for m in model.yolo_layers])


def uniform_masks(graph, state, share: float, multiple: int = 8) -> dict:
    """Every prunable conv (upsample and SPPF inputs included) keeps ``share`` of its channels,
    rounded up to ``multiple``, the largest gammas; a shortcut group as one unit."""
    import torch
    from utils.prune.absorb import bn_key
    from utils.prune.masks import group_score, round_up

    prunable = set(graph.prunable("3", {"upsample", "sppf"}))
    units = graph.prunable_groups("3", {"upsample", "sppf"})
    grouped = {m for g in units for m in g}
    units = units + [(i,) for i in sorted(prunable - grouped)]
    masks = {}
    for unit in units:
        score = group_score([state[bn_key(m, "weight")] for m in unit])
        count = round_up(max(int(round(share * score.numel())), 1), score.numel(), multiple)
        mask = torch.zeros(score.numel(), dtype=torch.bool)
        mask[score.topk(count).indices] = True
        for m in unit:
            masks[m] = mask
    return masks


def bisect(fraction: Callable[[float], float], target: float, lo: float, hi: float, steps: int,
           decreasing: bool = True, closest: bool = False) -> float:
    """For a monotone ``fraction``: the ``x`` in [lo, hi] at the boundary where ``fraction(x) <=
    target``, on the side that meets the target, or (``closest``) on the side nearer to it."""
    seen: dict[float, float] = {}
    for _ in range(steps):
        mid = (lo + hi) / 2
        seen[mid] = fraction(mid)
        if (seen[mid] <= target) == decreasing:
            hi = mid
        else:
            lo = mid
    meets, misses = (hi, lo) if decreasing else (lo, hi)
    if closest and meets in seen and misses in seen:
        return min((meets, misses), key=lambda x: abs(seen[x] - target))
    return meets


def cfg_flops(cfg, img_size: int) -> float:
    """FLOPs of the model a cfg describes (cfg arithmetic, no forward pass)."""
    from utils.prune import analyse, estimate_cost

    return float(estimate_cost(analyse(cfg), {}, img_size)[1])


# ------------------------------------------------------------------------------------ Torch-Pruning
def import_torch_pruning():
    """``torch_pruning`` or None, with a message saying why the comparison is skipped."""
    try:
        import torch_pruning as tp
    except ImportError:
        print(f"NOTE: torch-pruning is not installed: the comparison with Torch-Pruning is skipped "
              f"(install it for this benchmark only: .venv/bin/pip install torch-pruning=={TP_VERSION})")
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("torch-pruning")  # the module's own __version__ lags behind releases
    except PackageNotFoundError:
        installed = getattr(tp, "__version__", "unknown")
    if installed != TP_VERSION:
        print(f"NOTE: torch-pruning {installed} installed; the reference figures used {TP_VERSION}")
    return tp


def tp_prune(tp, model, graph, ratio: float, round_to: int | None):
    """Torch-Pruning's Network-Slimming pruner on a copy of ``model``: global ranking of group BN
    scales (its defaults: mean over a group, mean-normalised), detection convs ignored. Returns the
    pruned model rebuilt as a plain Darknet (same tensors, so it runs exactly our forward)."""
    import torch
    from utils.prune.surgery import model_from_state

    pruned = copy.deepcopy(model).eval()
    ignored = [pruned.module_list[i].Conv2d for i in graph.detect_convs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BNScalePruner(
            pruned, torch.rand(1, 3, 128, 128), importance=tp.importance.BNScaleImportance(),
            global_pruning=True, pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to)
        pruner.step()
    return model_from_state(pruned.to_cfg(), pruned.state_dict(), model.names,
                            [m.anchors for m in model.yolo_layers])


def tp_at_flops(tp, model, graph, target: float, img_size: int, round_to: int | None, steps: int = 12):
    """Torch-Pruning's pruning ratio bisected so that the model keeps at most ``target`` of the FLOPs."""
    full = cfg_flops(graph.cfg, img_size)
    meets: dict[float, object] = {}  # only the latest model that meets the target is kept

    def fraction(ratio: float) -> float:
        pruned = tp_prune(tp, model, graph, ratio, round_to)
        got = cfg_flops(pruned.cfg, img_size) / full
        if got <= target:
            meets.clear()
            meets[ratio] = pruned
        return got

    ratio = bisect(fraction, target, 0.0, 0.95, steps)
    return (meets[ratio] if ratio in meets else tp_prune(tp, model, graph, ratio, round_to)), ratio


# ------------------------------------------------------------------------------------ variants
def strategy_variants(model, ratios: Sequence[float]) -> list[dict]:
    """Each strategy at each ratio with its default settings."""
    from utils.prune import PruneOptions, prune

    out = []
    for s in ("1", "2", "3", "8x"):
        for r in ratios:
            res = prune(model, PruneOptions(s, r, STRATEGY_KEEP[s]))
            out.append({"table": "strategies", "label": f"strategy {s}, ratio {r}", "strategy": s,
                        "ratio": r, "model": res.model, "masks": res.masks})
    return out


# (label, strategy, round_to, include upsample/sppf, cost-aware)
OPTIONS = [
    ("3 (default)", "3", None, False, False),
    ("8x (default)", "8x", None, False, False),
    ("3 --round-to 16", "3", 16, False, False),
    ("3 --round-to 32", "3", 32, False, False),
    ("3 --round-to 16 --include-upsample --include-sppf", "3", 16, True, False),
    ("3 --cost-aware", "3", None, False, True),
    ("3 --cost-aware --round-to 16 --include-upsample --include-sppf", "3", 16, True, True),
    ("8x --latency-aware", "8x", 16, True, True),  # the parts of PruneOptions.LATENCY_AWARE
]
RECOMMENDED = OPTIONS[-1][0]  # --latency-aware: the lowest latency at a given FLOPs budget


def target_variants(model, graph, target: float, img_size: int, weights: dict, tp, tp_cache: dict) -> list[dict]:
    """The variants of the FLOPs-target table at ``img_size``.

    ``weights``: the cost-aware ranking weights profiled at this size. ``tp_cache``: Torch-Pruning
    models by round_to (FLOPs fractions do not depend on the image size, so they are pruned once).
    """
    from utils.prune import PruneOptions, Target, estimate_cost, prune, search_ratio

    state = model.state_dict()
    out = []
    for label, s, round_to, inc, cost in OPTIONS:
        options = PruneOptions.make(s, layer_keep=STRATEGY_KEEP[s], round_to=round_to, include_upsample=inc,
                                    include_sppf=inc, weights=weights if cost else None,
                                    target=Target("flops", target))
        ratio, _ = search_ratio(graph, state, options, img_size)
        res = prune(model, options.with_ratio(ratio))
        out.append({"table": "target", "label": f"ours: {label}", "strategy": s, "ratio": ratio,
                    "model": res.model, "masks": res.masks})
    full = cfg_flops(graph.cfg, img_size)
    share = bisect(lambda f: estimate_cost(graph, uniform_masks(graph, state, f), img_size)[1] / full,
                   target, 0.05, 1.0, 12, decreasing=False, closest=True)
    um = uniform_masks(graph, state, share)
    out.insert(0, {"table": "target", "label": "uniform width (multiples of 8)", "strategy": "-",
                   "ratio": round(share, 4), "model": masks_model(model, graph, um), "masks": um})
    if tp is not None:
        for round_to in (None, 16):
            if round_to not in tp_cache:
                tp_cache[round_to] = tp_at_flops(tp, model, graph, target, img_size, round_to)
            tm, tr = tp_cache[round_to]
            label = "Torch-Pruning BNScalePruner" + (f", round_to={round_to}" if round_to else "")
            out.insert(1 + (round_to is not None), {"table": "target", "label": label, "strategy": "tp",
                                                    "ratio": round(tr, 4), "model": tm, "masks": None})
    return out


# ------------------------------------------------------------------------------------ measuring
def round_robin(models: Sequence, img_size: int, rounds: int, warmup: int) -> list[list[float]]:
    """Seconds per forward: ``times[m][r]`` for model ``m`` in round ``r`` (one forward each per
    round, the first model of a round rotating)."""
    import torch

    x = torch.rand(1, 3, img_size, img_size)
    times = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            for _ in range(warmup):
                m(x)
        for r in range(rounds):
            gc.collect()
            gc.disable()
            try:
                for k in range(len(models)):
                    j = (k + r) % len(models)
                    t = time.perf_counter()
                    models[j](x)
                    times[j].append(time.perf_counter() - t)
            finally:
                gc.enable()
    return times


def stride_shares(graph, masks) -> dict[str, float]:
    """Share of output channels kept by the non-detection convs at each stride."""
    cfg = graph.cfg
    before: dict[int, int] = {}
    after: dict[int, int] = {}
    for i in graph.convs:
        if i in graph.detect_convs:
            continue
        s = int(cfg.scales[i])
        before[s] = before.get(s, 0) + cfg.channels[i]
        after[s] = after.get(s, 0) + (int(masks[i].sum()) if masks and i in masks else cfg.channels[i])
    return {f"s{s}": after[s] / before[s] for s in sorted(before)}


def measure(original, variants: list[dict], img_size: int, rounds: int, warmup: int) -> list[dict]:
    """Rows: parameters, FLOPs, latency of every variant against ``original`` at ``img_size``."""
    from utils.prune import analyse
    from utils.torch_utils import count_flops, count_params

    models = [original.fused_copy()] + [v["model"].fused_copy() for v in variants]
    times = round_robin(models, img_size, rounds, warmup)
    base = times[0]
    p0, f0 = count_params(original), count_flops(original, img_size)
    graph = analyse(original.to_cfg())
    rows = [{"table": "original", "label": "original", "strategy": "-", "ratio": 0.0, "params": p0,
             "params_ratio": 1.0, "flops": f0, "flops_ratio": 1.0, "latency_ms": statistics.median(base) * 1e3,
             "latency_ratio": 1.0, "latency_ratio_of_medians": 1.0, "kept": stride_shares(graph, None)}]
    for v, t in zip(variants, times[1:]):
        p, f = count_params(v["model"]), count_flops(v["model"], img_size)
        masks = v["masks"] if v["masks"] is not None else _channel_masks(graph, v["model"])
        rows.append({"table": v["table"], "label": v["label"], "strategy": v["strategy"], "ratio": v["ratio"],
                     "params": p, "params_ratio": p / p0, "flops": f, "flops_ratio": f / f0,
                     "latency_ms": statistics.median(t) * 1e3,
                     "latency_ratio": statistics.median(a / b for a, b in zip(t, base)),
                     "latency_ratio_of_medians": statistics.median(t) / statistics.median(base),
                     "kept": stride_shares(graph, masks)})
    return rows


def profile_summary(graph, profile: dict, img_size: int) -> dict:
    """Where the original model's time goes: conv ms per GFLOP at each stride (1x1 and 3x3 apart)
    and the share of the time of the layers without conv FLOPs."""
    from utils.prune.cost import layer_flops

    flops = layer_flops(graph.cfg, img_size)
    total = sum(profile.values())
    by: dict[str, list[float]] = {}
    for i, f in flops.items():
        key = f"s{int(graph.cfg.scales[i])} k{graph.cfg.layers[i].get('size')}"
        t, fl = by.get(key, [0.0, 0.0])
        by[key] = [t + profile.get(i, 0.0), fl + f]
    others: dict[str, float] = {}
    for i, t in profile.items():
        kind = graph.cfg.layers[i].type
        if kind != "convolutional":
            others[kind] = others.get(kind, 0.0) + t / total
    order = sorted(by, key=lambda k: (int(k.split()[0][1:]), k))
    return {"conv_ms_per_gflop": {k: by[k][0] * 1e3 / (by[k][1] / 1e9) for k in order},
            "time_share_without_conv_flops": others, "profiled_total_ms": total * 1e3}


def _channel_masks(graph, compact) -> dict:
    """Stand-in masks (only the counts matter) for a model pruned elsewhere."""
    import torch

    return {i: torch.arange(graph.cfg.channels[i]) < compact.cfg.channels[i] for i in graph.convs}


# ------------------------------------------------------------------------------------ output
def format_table(rows: list[dict], title: str) -> str:
    from terminaltables import GithubFlavoredMarkdownTable

    strides = list(rows[0]["kept"])
    data = [["model", "ratio", "params", "FLOPs", "FLOPs ratio", "latency ms", "latency ratio",
             "latency / FLOPs", *[f"kept {s}" for s in strides]]]
    for r in rows:
        data.append([r["label"], f"{r['ratio']:g}", f"{r['params'] / 1e6:.2f} M ({r['params_ratio']:.3f})",
                     f"{r['flops'] / 1e9:.2f} G", f"{r['flops_ratio']:.3f}", f"{r['latency_ms']:.1f}",
                     f"{r['latency_ratio']:.3f}", f"{r['latency_ratio'] / r['flops_ratio']:.2f}",
                     *[f"{r['kept'][s]:.2f}" for s in strides]])
    table = GithubFlavoredMarkdownTable(data)
    table.title = title
    return f"{title}\n\n{table.table}"


def comparison(rows: list[dict], aim: float) -> dict:
    """Our option for latency at a FLOPs budget (--latency-aware) against Torch-Pruning at the FLOPs target."""
    ours = next(r for r in rows if r["label"] == f"ours: {RECOMMENDED}")
    tp = next((r for r in rows if r["label"] == "Torch-Pruning BNScalePruner"), None)
    out = {"ours": ours["label"], "ours_latency_ratio": ours["latency_ratio"], "ours_flops_ratio": ours["flops_ratio"],
           "aim": aim, "meets_aim": ours["latency_ratio"] <= aim}
    if tp is not None:
        out.update(torch_pruning_latency_ratio=tp["latency_ratio"], torch_pruning_flops_ratio=tp["flops_ratio"],
                   below_torch_pruning=ours["latency_ratio"] < tp["latency_ratio"])
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", default=str(ROOT / "models" / "yolov5s.yaml"), help="model without --weights")
    p.add_argument("--weights", default=None, help="a sparsity-trained checkpoint instead of artificial gammas")
    p.add_argument("--nc", type=int, default=80, help="classes of the model without --weights")
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="image sizes")
    p.add_argument("--ratios", type=float, nargs=2, default=[0.3, 0.6], help="the two ratios of the strategy table")
    p.add_argument("--target-flops", type=float, default=0.5, help="FLOPs fraction of the comparison table")
    p.add_argument("--aim", type=float, default=None,
                   help="latency ratio aimed at, at the FLOPs target (default 1.15 x the target)")
    p.add_argument("--rounds", type=int, default=30, help="round-robin repetitions per image size")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per model before the rounds")
    p.add_argument("--profile-runs", type=int, default=10,
                   help="forwards of the per-layer profile (--cost-aware; the prune scripts use --latency-runs)")
    p.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning comparison")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "prune_latency.json"))
    opt = p.parse_args(argv)
    if opt.rounds < 1 or opt.warmup < 0 or opt.profile_runs < 1:
        p.error("--rounds and --profile-runs must be >= 1, --warmup >= 0")
    if not 0.0 < opt.target_flops < 1.0:
        p.error(f"--target-flops must be in (0, 1), got {opt.target_flops}")
    if opt.weights and not Path(opt.weights).is_file():
        p.error(f"--weights {opt.weights}: file not found")
    if any(s <= 0 or s % 32 for s in opt.sizes):
        p.error(f"--sizes must be positive multiples of 32, got {opt.sizes}")
    opt.aim = round(1.15 * opt.target_flops, 4) if opt.aim is None else opt.aim
    return opt


def bench_size(model, graph, img_size: int, opt, strategy_rows: list[dict], tp, tp_cache: dict) -> dict:
    """Both tables at one image size."""
    from utils.prune.cost import latency_weights, profile_layers

    t0 = time.perf_counter()
    profile = profile_layers(model.fused_copy(), img_size, runs=opt.profile_runs)
    weights = latency_weights(graph, profile, img_size)
    variants = strategy_rows + target_variants(model, graph, opt.target_flops, img_size, weights, tp, tp_cache)
    t1 = time.perf_counter()
    rows = measure(model, variants, img_size, opt.rounds, opt.warmup)
    print(f"{img_size} px: pruning {t1 - t0:.0f} s, {opt.rounds} rounds of {len(rows)} models "
          f"{time.perf_counter() - t1:.0f} s", flush=True)
    return {"rows": rows, "profile_summary": profile_summary(graph, profile, img_size),
            "ranking_weights": {str(i): w for i, w in sorted(weights.items())},
            "layer_profile_ms": {str(i): t * 1e3 for i, t in sorted(profile.items())},
            "comparison": comparison(rows, opt.aim)}


def main(argv: Sequence[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    opt = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from utils.prune import analyse

    start = time.perf_counter()
    tp = None if opt.no_torch_pruning else import_torch_pruning()
    model = source_model(opt.weights, opt.cfg, opt.nc)
    graph = analyse(model.to_cfg())
    info = machine_info()
    strategy_rows = strategy_variants(model, opt.ratios)
    report = {"machine": info, "shared_machine_note": "timed on a machine shared with other jobs; "
              "ratios are paired per round, absolute ms vary with the load",
              "settings": {k: v for k, v in vars(opt).items()}, "sizes": {}}
    tp_cache: dict = {}
    tables = []
    for size in opt.sizes:
        result = bench_size(model, graph, size, opt, strategy_rows, tp, tp_cache)
        report["sizes"][str(size)] = result
        rows = result["rows"]
        tables.append(format_table([r for r in rows if r["table"] in ("original", "strategies")],
                                   f"{size} px: strategies at ratios {opt.ratios[0]:g} and {opt.ratios[1]:g}"))
        tables.append(format_table([rows[0]] + [r for r in rows if r["table"] == "target"],
                                   f"{size} px: at {opt.target_flops:g} of the FLOPs"))
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    source = opt.weights or f"{Path(opt.cfg).name} with artificially sparse gammas (fake_sparsity_)"
    print(f"\nCPU latency of pruned models: {source}; {info['cpu']} ({info['cores']} cores, "
          f"{info['cpu_capability']}), torch {info['torch']} on 1 thread, batch 1, BN fused; "
          f"median over {opt.rounds} round-robin rounds, ratios paired per round. The machine is shared "
          f"with other jobs (load average {info['load_average'][0]:.1f} at the start): absolute ms vary, "
          f"ratios are what to read.\n")
    print("\n\n".join(tables))
    print()
    for size, result in report["sizes"].items():
        ps = result["profile_summary"]
        convs = ", ".join(f"{k} {v:.1f}" for k, v in ps["conv_ms_per_gflop"].items())
        rest = ", ".join(f"{k} {v:.1%}" for k, v in ps["time_share_without_conv_flops"].items())
        print(f"{size} px, original model: conv ms per GFLOP by stride and kernel: {convs}; "
              f"time in layers without conv FLOPs: {rest}")
    for size, result in report["sizes"].items():
        c = result["comparison"]
        tp_part = (f", Torch-Pruning {c['torch_pruning_latency_ratio']:.3f} at FLOPs {c['torch_pruning_flops_ratio']:.3f}: "
                   f"{'below' if c['below_torch_pruning'] else 'NOT below'} Torch-Pruning"
                   if "torch_pruning_latency_ratio" in c else " (Torch-Pruning not measured)")
        print(f"{size} px: ours ({RECOMMENDED}) latency ratio {c['ours_latency_ratio']:.3f} at FLOPs "
              f"{c['ours_flops_ratio']:.3f}{tp_part}; aim {c['aim']}: {'met' if c['meets_aim'] else 'not met'}")
    report["seconds"] = time.perf_counter() - start
    write_report(opt.json, report, f" ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
