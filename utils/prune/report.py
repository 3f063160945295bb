"""What a pruning run reports: the metric table, the per-layer table, a JSON file and a bar chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from terminaltables import AsciiTable

from utils.fileio import atomic_write_text

from .graph import PruneGraph
from .strategy import Strategy
from .surgery import channel_counts

__all__ = ["layer_rows", "metric_table", "layer_table", "write_json", "plot_channels",
           "sparsity_warning", "gamma_quantiles"]


def layer_rows(graph: PruneGraph, masks: Mapping[int, torch.Tensor], strategy: Strategy,
               extra: Iterable[str] = ()) -> list[dict]:
    """One row per conv: layer, role, input and output channels before/after.

    ``extra``: the extra-layer options of the run (see :data:`~utils.prune.options.EXTRA_LAYERS`).
    """
    counts = channel_counts(graph, masks)
    extra = frozenset(extra)
    return [{"layer": i, "role": graph.role(i, strategy, extra),
             "in_before": counts[i][0], "in_after": counts[i][1],
             "before": counts[i][2], "after": counts[i][3]} for i in graph.convs]


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "map":
        return f"{value:.6f}"
    if kind == "int":
        return f"{value:,}"
    if kind == "gflops":
        return f"{value / 1e9:.2f} G"
    if kind == "ms":
        return f"{value:.1f} ms"
    return str(value)


def metric_table(figures: Mapping[str, Any], device: str = "") -> str:
    """The original yolov5_prune's table (Metric | Before | After); Before = the original model, After = compact.

    ``figures`` keys: ``mAP50``/``mAP50_95`` as ``{"original", "masked", "compact"}``, and
    ``params``/``flops``/``latency_ms`` as ``{"before", "after"}``.
    """
    rows = [["Metric", "Before", "After"]]
    for key, label in (("mAP50", "mAP@.5"), ("mAP50_95", "mAP@.5:.95")):
        m = figures.get(key) or {}
        rows.append([label, _fmt(m.get("original"), "map"), _fmt(m.get("compact"), "map")])
        if m.get("masked") is not None:
            rows.append([f"{label} (pruned gammas zeroed)", _fmt(m.get("masked"), "map"), ""])
    for key, label, kind in (("params", "Parameters", "int"), ("flops", "FLOPs", "gflops"),
                             ("latency_ms", f"Inference{' (' + device + ')' if device else ''}", "ms")):
        m = figures.get(key) or {}
        rows.append([label, _fmt(m.get("before"), kind), _fmt(m.get("after"), kind)])
    return AsciiTable(rows).table


def layer_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-layer channel table (every conv)."""
    data = [["Layer", "Role", "In before", "In after", "Out before", "Out after"]]
    data += [[str(r["layer"]), r["role"], str(r["in_before"]), str(r["in_after"]),
              str(r["before"]), str(r["after"])] for r in rows]
    return AsciiTable(data).table


def write_json(path: str | Path, report: Mapping[str, Any]) -> Path:
    """The report as indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")


def plot_channels(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Bar chart of output channels per conv, before and after (PNG, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [str(r["layer"]) for r in rows]
    x = range(len(rows))
    fig = Figure(figsize=(max(8.0, 0.18 * len(rows)), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, [r["before"] for r in rows], color="#c8c8c8", label="before")
    ax.bar(x, [r["after"] for r in rows], color="#1f77b4", label="after")
    ax.set_xticks(list(x))
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_xlabel("conv layer")
    ax.set_ylabel("output channels")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")  # the format by name: staged outputs have a temporary suffix
    return path


def sparsity_warning(history: Sequence[Mapping[str, Any]], strategy: Strategy, weights: str,
                     prunable: Sequence[int] | None = None) -> str | None:
    """A warning when the checkpoint was never sparsity-trained, or for another layer set."""
    steps = [h for h in history or [] if isinstance(h, Mapping) and h.get("step") == "sparsity"]
    if not steps:
        return (f"{weights} has no sparsity-training step in its history; channels of a model whose "
                f"gammas were never pushed toward 0 carry information, and pruning them usually costs "
                f"much accuracy (run train_sparsity.py --prune {strategy.sparsity_set} first)")
    last = steps[-1]
    if last.get("sr") is False or last.get("scale") == 0:
        return (f"{weights} went through train_sparsity.py without the penalty (-sr off or --scale 0); "
                f"its gammas were not pushed toward 0")
    if "prune" in last and int(last["prune"]) != strategy.sparsity_set:
        return (f"{weights} was sparsity-trained with --prune {last['prune']}, but {strategy.label} "
                f"prunes the --prune {strategy.sparsity_set} layer set; some pruned layers were not "
                f"regularised")
    if prunable is not None and last.get("layers") is not None:
        missing = sorted(set(prunable) - {int(i) for i in last["layers"]})
        if missing:
            return (f"{weights}: {len(missing)} layers pruned here were not sparsity-regularised "
                    f"(e.g. layer {missing[0]})")
    return None


def gamma_quantiles(gammas: Sequence[torch.Tensor],
                    qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    """Quantiles of |gamma| over the given layers (shows at a glance whether sparsity worked):
    ``{"q10": ..., "q50": ...}`` with keys in whole percent (``q0`` is the minimum, ``q100`` the
    maximum). No gammas: every quantile is 0.0."""
    values = (torch.cat([g.detach().abs().flatten().float().cpu() for g in gammas]) if len(gammas)
              else torch.zeros(1))
    return {f"q{round(q * 100)}": float(values.quantile(q)) for q in qs}
