"""The training engine end to end at tiny scale: train.py, resume, DDP, train_sparsity.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import load_checkpoint, load_model
from tests.conftest import ROOT
from utils.engine import Hook

TINY = ["--img", "64", "--batch", "8", "--workers", "0", "--cfg", "models/yolov5n.yaml",
        "--noautoanchor"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from utils.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=16, n_val=8, img_size=64,
                               seed=3, workers=1)
    return root / "dataset.yaml"


def _train(argv, **kw):
    import train
    return train.main(argv)


def test_train_one_epoch_writes_checkpoints(tiny_data, tmp_path):
    import train
    assert train.main(TINY + ["--data", str(tiny_data), "--epochs", "1", "--project", str(tmp_path),
                              "--name", "run"]) == 0
    run = tmp_path / "run"
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "metrics.json"):
        assert (run / f).exists(), f
    ckpt = torch.load(run / "weights/last.pt", weights_only=True)
    assert ckpt["history"][-1]["step"] == "train"
    assert ckpt["optimizer"] is None and ckpt["epoch"] == -1  # stripped at the end
    model = load_model(run / "weights/best.pt")
    assert model.names == ["circle", "rectangle", "triangle", "cross", "ring"]
    assert len((run / "results.csv").read_text().strip().splitlines()) == 2


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tiny_data, tmp_path):
    """2 epochs in one go == 1 epoch, crash, --resume for the second (same weights)."""
    from train import parse_args
    from utils.engine import run_training
    args = TINY + ["--data", str(tiny_data), "--epochs", "2", "--project", str(tmp_path), "--seed", "1"]
    run_training(parse_args(args + ["--name", "full"]))

    class CrashInSecondEpoch(Hook):
        def after_epoch(self, trainer, epoch, row):
            if epoch == 1:
                raise _Stop

    def crash_in_second_epoch(trainer):
        trainer.register(CrashInSecondEpoch())

    with pytest.raises(_Stop):
        run_training(parse_args(args + ["--name", "cut"]), configure=crash_in_second_epoch)
    last = tmp_path / "cut" / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0  # the last good checkpoint is usable
    run_training(parse_args(["--resume", str(last)]))
    assert [e["step"] for e in load_checkpoint(last)["history"]] == ["train"]  # one entry for the run
    a = torch.load(tmp_path / "full" / "weights" / "last.pt", weights_only=True)["model"]
    b = torch.load(last, weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test on Linux")
def test_ddp_two_gloo_processes(tiny_data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29517", "train.py", *TINY, "--data", str(tiny_data), "--epochs", "1",
           "--device", "cpu", "--project", str(tmp_path), "--name", "ddp"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["ddp"]  # rank 0 alone writes
    assert sorted(p.name for p in (tmp_path / "ddp" / "weights").iterdir()) == ["best.pt", "last.pt"]


def test_sparsity_training_shrinks_gammas(tiny_data, tmp_path):
    import train_sparsity
    from utils.prune.graph import prunable_layers

    def mean_gamma(run):
        ck = torch.load(tmp_path / run / "weights" / "last.pt", weights_only=True)
        layers = ck["history"][-1]["layers"]
        sd = ck["model"]
        return torch.cat([sd[f"module_list.{i}.BatchNorm2d.weight"].abs() for i in layers]).mean(), ck

    base = TINY + ["--data", str(tiny_data), "--epochs", "1", "--project", str(tmp_path), "--seed", "2",
                   "--noval"]
    assert train_sparsity.main(base + ["--name", "s0", "-sr", "--scale", "0"]) == 0
    assert train_sparsity.main(base + ["--name", "s1", "-sr", "--scale", "0.05"]) == 0
    g0, _ = mean_gamma("s0")
    g1, ck = mean_gamma("s1")
    assert g1 < g0
    entry = ck["history"][-1]
    assert entry["step"] == "sparsity" and entry["sr"] and entry["scale"] == 0.05 and entry["prune"] == 1
    assert entry["sr_form"] == "gradient"  # SGD: the penalty went into the gradient
    model = load_model(tmp_path / "s1" / "weights" / "last.pt")
    assert entry["layers"] == prunable_layers(model.cfg, 3)
    for f in ("gamma_hist.png", "gamma_layers.png"):
        assert (tmp_path / "s1" / f).exists()
    header = (tmp_path / "s1" / "results.csv").read_text().splitlines()[0]
    assert "sparsity/gamma_lt_0.01" in header and "sparsity/safe_ratio" in header
    assert "sparsity/pile" in header and "sparsity/bimodal" in header


def test_sparsity_prune0_selects_strategy1_layers(tiny_data, tmp_path):
    import train_sparsity
    from utils.prune.graph import prunable_layers
    assert train_sparsity.main(TINY + ["--data", str(tiny_data), "--epochs", "1", "--project",
                                       str(tmp_path), "--name", "p0", "-sr", "--prune", "0",
                                       "--noval"]) == 0
    ck = torch.load(tmp_path / "p0" / "weights" / "last.pt", weights_only=True)
    model = load_model(tmp_path / "p0" / "weights" / "last.pt")
    assert ck["history"][-1]["layers"] == prunable_layers(model.cfg, 1)
    assert len(prunable_layers(model.cfg, 1)) < len(prunable_layers(model.cfg, 3))


@pytest.mark.parametrize("argv,flag", [(["--prune", "2"], "--prune"), (["--scale", "-1"], "--scale")])
def test_sparsity_bad_flags(argv, flag, capsys):
    import train_sparsity
    with pytest.raises(SystemExit):
        train_sparsity.parse_args(["-sr"] + argv)
    assert flag in capsys.readouterr().err
