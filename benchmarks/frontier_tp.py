"""Torch-Pruning's Network-Slimming pruner on the project's training engine (frontier benchmark only).

    python benchmarks/frontier_tp.py sparsity --weights runs/frontier/base/weights/best.pt --reg 0.03 \
        --img 160 --epochs 15 --optimizer AdamW --hyp data/hyps/hyp.finetune.yaml --project runs/frontier \
        --name tp_sparse --exist-ok
    python benchmarks/frontier_tp.py prune --weights runs/frontier/tp_sparse/weights/last.pt \
        --target-flops 0.5 --img 160 --out runs/frontier/tp_prune_f0.5/pruned.pt

``sparsity``: the engine of ``train_sparsity.py`` (same flags, loop, EMA and checkpoints) with
Torch-Pruning's own regulariser instead of ours: ``BNScalePruner.regularize`` after every backward
(after gradient clipping, before the optimizer step: the engine's ``after_backward`` seam, where our
``-sr`` hook sits). It adds ``reg * sign(gamma)`` to the gradient of every BatchNorm weight (all of
them: Torch-Pruning has no notion of prunable layers), once per optimizer step.

``prune``: ``BNScalePruner`` with ``BNScaleImportance`` (global ranking, detection convs ignored)
at the pruning ratio bisected so the model keeps at most ``--target-flops`` of its FLOPs, saved as
one of our checkpoints (cfg text + weights) that ``prune_finetune.py`` finetunes like ours.

``torch-pruning`` is a benchmark-only dependency: ``.venv/bin/pip install torch-pruning==1.6.1``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from bench_prune_latency import TP_VERSION, cfg_flops, tp_at_flops  # noqa: E402
from models import load_checkpoint, load_model, make_checkpoint, save_checkpoint  # noqa: E402
from utils.engine import Hook, Trainer, add_train_args, config_from_args, run_training  # noqa: E402
from utils.errors import UserError, cli_main, open_fraction  # noqa: E402
from utils.prune import analyse  # noqa: E402
from utils.torch_utils import de_parallel  # noqa: E402

__all__ = ["require_torch_pruning", "regulariser", "prune_to_flops", "main"]


def require_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or a UserError that says how to install it."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise UserError(f"torch-pruning is not installed; install it for this benchmark only: "
                        f".venv/bin/pip install torch-pruning=={TP_VERSION}") from None
    return tp


def regulariser(tp: Any, model: torch.nn.Module, reg: float) -> Any:
    """Torch-Pruning's BNScalePruner for ``model`` (detection convs ignored), built in eval mode so
    that tracing the graph leaves the BatchNorm statistics alone."""
    ignored = [model.module_list[i].Conv2d for i in analyse(model.cfg).detect_convs]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BNScalePruner(model, torch.rand(1, 3, 64, 64, device=device),
                                         importance=tp.importance.BNScaleImportance(), reg=reg,
                                         global_pruning=True, ignored_layers=ignored)
    model.train(was_training)
    return pruner


class TorchPruningRegulariser(Hook):
    """Engine hook: builds the pruner when training starts, regularises after each backward."""

    def __init__(self, tp: Any, reg: float) -> None:
        self.tp, self.reg, self.pruner = tp, reg, None

    def before_train(self, trainer: Trainer) -> None:
        self.pruner = regulariser(self.tp, de_parallel(trainer.model), self.reg)

    def after_backward(self, trainer: Trainer, n_micro: int, n_images: int) -> None:
        self.pruner.regularize(de_parallel(trainer.model))


def configure_sparsity(reg: float):
    """Engine configuration: Torch-Pruning's regulariser in the after-backward seam."""
    tp = require_torch_pruning()

    def configure(trainer: Trainer) -> None:
        trainer.register(TorchPruningRegulariser(tp, reg))
        trainer.history_extra.update({"sr": True, "scale": reg, "regulariser": f"torch-pruning {TP_VERSION} "
                                      "BNScalePruner.regularize (all BatchNorm layers)"})
    return configure


def prune_to_flops(weights: str | Path, target: float, img: int, out: str | Path) -> dict:
    """Prune ``weights`` with Torch-Pruning to at most ``target`` of the FLOPs; save ``out``."""
    tp = require_torch_pruning()
    model = load_model(weights, device="cpu", verbose=False)
    graph = analyse(model.cfg)
    pruned, ratio = tp_at_flops(tp, model, graph, target, img, round_to=None)
    kept = cfg_flops(pruned.cfg, img) / cfg_flops(graph.cfg, img)
    entry = {"step": "prune", "method": f"torch-pruning {TP_VERSION} BNScalePruner", "weights": str(weights),
             "ratio": ratio, "target": {"metric": "flops", "target": target}, "img": img,
             "figures": {"flops": {"ratio": kept}}}
    history = list(load_checkpoint(weights, verbose=False).get("history") or [])
    save_checkpoint(out, ckpt=make_checkpoint(pruned, history=history + [entry]))
    print(f"Torch-Pruning: pruning ratio {ratio:.4f} keeps {kept:.3f} of the FLOPs at {img} px; saved {out}")
    if kept > target + 0.02:
        print(f"WARNING: Torch-Pruning could not reach {target:g} of the FLOPs (equal BN scales are never "
              f"ranked below each other: is {weights} sparsity-trained?)")
    return entry


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("sparsity", help="sparsity training with Torch-Pruning's regulariser")
    add_train_args(sp)
    sp.add_argument("--reg", type=float, default=0.003, help="BNScalePruner's reg (L1 strength on BN gammas)")
    pp = sub.add_parser("prune", help="prune to a FLOPs fraction with BNScalePruner")
    pp.add_argument("--weights", required=True, help="sparsity-trained checkpoint")
    pp.add_argument("--target-flops", type=open_fraction, required=True, help="fraction of the FLOPs to keep")
    pp.add_argument("--img", type=int, default=640, help="image size the FLOPs are counted at")
    pp.add_argument("--out", required=True, help="the pruned checkpoint to write")
    return p.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    if opt.command == "sparsity":
        reg = opt.reg
        del opt.reg, opt.command
        run_training(config_from_args(opt), step="sparsity", configure=configure_sparsity(reg))
    else:
        torch.set_num_threads(1)
        prune_to_flops(opt.weights, opt.target_flops, opt.img, opt.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
