"""The training engine's pieces: TrainConfig and its generated flags, argument validation, device
errors, weights that do not fit, stale temporary files, and the methods (sparsity, distillation)
exercised through the engine's own optimizer step."""
import argparse
import dataclasses
import errno
from pathlib import Path

import pytest
import torch
import yaml

from models import build_model, make_checkpoint, save_checkpoint
from utils.hyp import load_hyp
from utils.distill import Distiller
from utils.engine import (STEP_GROUPS, Hook, TrainConfig, Trainer, TrainError, add_config_args, config_from_args,
                          resume_config, weight_fit)
from utils.errors import UserError
from utils.prune.sparsity import SparsityHook, sparsity_form
from utils.torch_utils import DeviceError, select_device

NAMES = ["circle", "rectangle", "triangle", "cross", "ring"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from utils.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=16, n_val=8, img_size=64,
                               seed=3, workers=1)
    return root / "dataset.yaml"


@pytest.fixture(scope="module")
def no_warmup_hyp(tmp_path_factory) -> Path:
    """The default hyperparameters without warm-up: the first step has the full lr and accumulation."""
    hyp = dict(load_hyp(None), warmup_epochs=0.0)
    path = tmp_path_factory.mktemp("hyp") / "hyp.yaml"
    path.write_text(yaml.safe_dump(hyp))
    return path


def _config(tiny_data, tmp_path, **kw) -> TrainConfig:
    base = dict(data=str(tiny_data), cfg="models/yolov5n.yaml", img=64, batch_size=8, workers=0,
                noautoanchor=True, project=str(tmp_path), name="run", device="cpu", epochs=1)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ TrainConfig
def _parser(*groups) -> argparse.ArgumentParser:
    return add_config_args(argparse.ArgumentParser(), groups)


def test_config_is_frozen_and_declares_every_flag_once():
    c = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3
    flags = [f for fl in dataclasses.fields(TrainConfig) for f in fl.metadata["flags"]]
    assert len(flags) == len(set(flags))
    ns = _parser("train", "sparsity", "finetune").parse_args([])
    assert config_from_args(ns) == TrainConfig()  # generated defaults are the declared ones


@pytest.mark.parametrize("argv,field,value", [
    (["--img-size", "320"], "img", 320), (["--imgsz", "320"], "img", 320), (["--img", "320"], "img", 320),
    (["--batch", "4"], "batch_size", 4), (["--batch-size", "4"], "batch_size", 4),
    (["--resume"], "resume", True), (["--resume", "x/last.pt"], "resume", "x/last.pt"),
    (["--cache"], "cache", "ram"), (["--local-rank", "1"], "local_rank", 1),
    (["--allow-partial"], "allow_partial", True), (["--allow-unlabelled"], "allow_unlabelled", True),
    (["--channels-last"], "channels_last", True),
    (["-sr"], "sr", True), (["--sparsity-regularization"], "sr", True), (["--s", "0.01"], "scale", 0.01),
    (["--t_weight", "t.pt"], "t_weights", "t.pt"), (["--t-weights", "t.pt"], "t_weights", "t.pt"),
    (["--t-cfg", "t.cfg"], "t_cfg", "t.cfg"),
])
def test_upstream_flag_names_and_aliases(argv, field, value):
    c = config_from_args(_parser("train", "sparsity", "finetune").parse_args(argv))
    assert getattr(c, field) == value


def test_script_groups_and_fixed_fields():
    import prune_finetune
    import train
    import train_sparsity
    assert not hasattr(_parser("train").parse_args([]), "scale")
    with pytest.raises(SystemExit):
        train.parse_args(["-sr"])
    assert train_sparsity.parse_args(["-sr"]).sr
    c = prune_finetune.parse_args(["--weights", "x.pt"])
    assert c.keep_anchors and c.keep_names and isinstance(c, TrainConfig)
    assert not train.parse_args([]).keep_anchors


def test_help_lists_every_flag(capsys):
    import train_sparsity
    with pytest.raises(SystemExit) as e:
        train_sparsity.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--img-size", "--batch-size", "--sr-per-image", "--allow-partial", "--channels-last", "-sr"):
        assert flag in out


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(TrainError, match="--epochs 0"):
        TrainConfig(epochs=0)
    with pytest.raises(TrainError, match="--optimizer"):
        TrainConfig(optimizer="RMSprop")
    with pytest.raises(ValueError, match="--label-smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_checkpoint_records_the_options_of_its_step():
    c = TrainConfig(sr=True, distill=True)
    assert "scale" not in c.to_dict(STEP_GROUPS["train"]) and "distill" not in c.to_dict(STEP_GROUPS["train"])
    assert c.to_dict(STEP_GROUPS["sparsity"])["sr"] is True and "distill" not in c.to_dict(STEP_GROUPS["sparsity"])
    assert c.to_dict(STEP_GROUPS["finetune"])["distill"] is True
    assert TrainConfig.from_dict(c.to_dict(STEP_GROUPS["train"]))[0].sr is False  # missing: the default


def test_config_dict_loads_with_weights_only(tmp_path):
    c = TrainConfig(resume="a/last.pt", cache="ram", data="d.yaml")
    torch.save({"opt": c.to_dict()}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["opt"]
    assert TrainConfig.from_dict(back) == (c, [])


def test_old_options_with_unknown_and_missing_keys():
    old = {k: v for k, v in TrainConfig(epochs=7).to_dict().items() if k not in ("allow_partial", "channels_last")}
    old.update(save_dir="runs/train/exp", some_old_flag=1)
    c, unknown = TrainConfig.from_dict(old)
    assert c.epochs == 7 and c.allow_partial is False and c.channels_last is False
    assert unknown == ["save_dir", "some_old_flag"]


def test_resume_replaces_the_saved_config(tmp_path):
    model = build_model("models/yolov5n.yaml", nc=5)
    saved = dict(TrainConfig(epochs=9, batch_size=4, device="cpu", workers=3).to_dict(), save_dir="x", old=1)
    last = tmp_path / "exp" / "weights" / "last.pt"
    save_checkpoint(last, ckpt=make_checkpoint(model, epoch=0, optimizer={"state": {}, "param_groups": []},
                                               opt=saved))
    given = TrainConfig(resume=str(last), workers=1)
    config, ckpt = resume_config(given)
    assert config == dataclasses.replace(TrainConfig.from_dict(saved)[0], resume=str(last), workers=1)
    assert given.resume == str(last) and given.epochs == 100  # the caller's config is untouched
    finished = tmp_path / "done.pt"
    save_checkpoint(finished, ckpt=make_checkpoint(model, epoch=-1, opt=saved))
    with pytest.raises(TrainError, match="finished"):
        resume_config(TrainConfig(resume=str(finished)))


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("argv,flag", [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"), (["--batch", "0"], "--batch"),
    (["--nbs", "0"], "--nbs"), (["--workers", "-1"], "--workers"), (["--img", "0"], "--img"),
    (["--patience", "-1"], "--patience"), (["--freeze", "-2"], "--freeze"),
    (["--save-period", "-5"], "--save-period"), (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "-0.1"], "--label-smoothing"), (["--scale", "-1"], "--scale"),
    (["--prune", "2"], "--prune"), (["--sr-local-keep", "1.5"], "--sr-local-keep"),
    (["--epochs", "two"], "--epochs"), (["--max-train-images", "-3"], "--max-train-images"),
])
def test_bad_values_stop_at_the_command_line(argv, flag, capsys):
    import train_sparsity
    with pytest.raises(SystemExit) as e:
        train_sparsity.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_img_is_rounded_to_the_stride_by_the_shared_rule(tiny_data, tmp_path, caplog):
    trainer = Trainer(_config(tiny_data, tmp_path, img=70))
    trainer._prepare_data()
    assert trainer.imgsz == 96 and trainer.config.img == 70


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda:0", "0", "0,1"])
def test_cuda_device_without_cuda(device):
    with pytest.raises(DeviceError, match="--device cpu") as e:
        select_device(device)
    assert "--device" in str(e.value) and isinstance(e.value, UserError)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "0;1"])
def test_malformed_device(device):
    with pytest.raises(DeviceError, match="--device cpu"):
        select_device(device)


def test_device_error_is_one_line_exit_2(tiny_data, tmp_path, capsys):
    import train
    assert train.main(["--device", "gpu", "--data", str(tiny_data), "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: --device")


@pytest.mark.parametrize("flag", ["--weights", "--data", "--cfg", "--hyp"])
def test_missing_files_are_one_sentence(flag, tiny_data, tmp_path, capsys):
    import train
    argv = ["--data", str(tiny_data), "--img", "64", "--epochs", "1", "--workers", "0", "--project",
            str(tmp_path), "--cfg", "models/yolov5n.yaml", "--noautoanchor"]
    missing = str(tmp_path / ("nothing.yaml" if flag != "--weights" else "nothing.pt"))
    assert train.main(argv + [flag, missing]) == 2
    err = capsys.readouterr().err
    assert "nothing." in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_read_only_project(tiny_data, tmp_path, capsys, monkeypatch):
    """A folder the user may not write to (simulated: root may write anywhere) is one sentence."""
    import train
    ro = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if ro in (self, *self.parents):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert train.main(["--data", str(tiny_data), "--project", str(ro), "--cfg", "models/yolov5n.yaml",
                       "--img", "64", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_stale_temporary_saves_are_removed(tiny_data, tmp_path):
    wdir = tmp_path / "run" / "weights"
    wdir.mkdir(parents=True)
    stale = wdir / ".best.pt.4194300.abcd1234.tmp"  # a writer killed with -9
    stale.write_bytes(b"partial")
    (wdir / "last.pt").write_bytes(b"keep")
    Trainer(_config(tiny_data, tmp_path, exist_ok=True))
    assert not stale.exists() and (wdir / "last.pt").exists()


# ------------------------------------------------------------------------------ weights that do not fit
def _weights(tmp_path: Path, yaml_name: str, nc: int, history: list) -> Path:
    model = build_model(f"models/{yaml_name}", nc=nc)
    model.names = NAMES[:nc] if nc <= 5 else [str(i) for i in range(nc)]
    return save_checkpoint(tmp_path / f"{yaml_name}.{nc}.pt", model, history=history)


PRUNED = [{"step": "prune", "parent": "sparse.pt"}]


def test_weights_of_another_model_are_refused(tiny_data, tmp_path, capsys):
    import train
    w = _weights(tmp_path, "yolov5n.yaml", 5, PRUNED)
    argv = ["--weights", str(w), "--cfg", "models/yolov5s.yaml", "--data", str(tiny_data), "--img", "64",
            "--batch", "8", "--epochs", "1", "--workers", "0", "--noautoanchor", "--project", str(tmp_path)]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "do not fit models/yolov5s.yaml" in err and "--allow-partial" in err and str(w) in err
    fit = weight_fit(torch.load(w, weights_only=True)["model"], build_model("models/yolov5s.yaml", nc=5))
    assert f"{fit.total} tensors, {len(fit.misfits)} do not fit" in err and len(fit.misfits) > 100
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp" / "weights" / "last.pt").exists()


def test_allow_partial_warns_and_drops_the_history(tiny_data, tmp_path):
    w = _weights(tmp_path, "yolov5n.yaml", 5, PRUNED)
    trainer = Trainer(_config(tiny_data, tmp_path, weights=str(w), cfg="models/yolov5s.yaml", allow_partial=True))
    assert trainer.history == []  # the weights were not loaded in full: no inherited 'prune' step
    assert trainer.model.cfg.channels != build_model("models/yolov5n.yaml", nc=5).cfg.channels


def test_matching_cfg_keeps_history_and_weights(tiny_data, tmp_path):
    w = _weights(tmp_path, "yolov5n.yaml", 5, PRUNED)
    trainer = Trainer(_config(tiny_data, tmp_path, weights=str(w), cfg="models/yolov5n.yaml"))
    assert [e["step"] for e in trainer.history] == ["prune"]
    src = torch.load(w, weights_only=True)["model"]
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v.cpu(), src[k]), k


def test_other_classes_are_ordinary_transfer_learning(tiny_data, tmp_path, capsys):
    w = _weights(tmp_path, "yolov5n.yaml", 2, PRUNED)
    trainer = Trainer(_config(tiny_data, tmp_path, weights=str(w)))
    assert trainer.model.nc == 5 and trainer.model.names == NAMES
    assert [e["step"] for e in trainer.history] == ["prune"]  # everything outside the head was loaded
    assert "re-initialised for 5 classes" in capsys.readouterr().out


# ------------------------------------------------------------------------------ methods through the engine
class ControlledLoss:
    """Detection loss replaced by ``sum(G_i * gamma_i)``: the data gradient of gamma_i is G_i per micro-batch."""

    def __init__(self, trainer: Trainer, layers: list[int], grads: dict[int, torch.Tensor]):
        self.build_targets = trainer.compute_loss.build_targets
        self.gammas = {i: trainer.model.module_list[i].BatchNorm2d.weight for i in layers}
        self.grads = grads

    def __call__(self, preds, targets):
        loss = sum(p.sum() for p in preds) * 0.0  # keeps every parameter in the graph, gradient 0
        for i, g in self.grads.items():
            loss = loss + (g * self.gammas[i]).sum()
        return loss, torch.zeros(3)


class Spy(Hook):
    """Records the gradients the optimizer step will use, the lr/momentum and the weights after the step."""

    def __init__(self, layers):
        self.layers, self.grads, self.after, self.groups, self.steps = layers, [], [], [], 0

    def _w(self, trainer, i):
        return trainer.model.module_list[i].BatchNorm2d.weight

    def after_backward(self, trainer, n_micro, n_images):
        self.grads.append({i: self._w(trainer, i).grad.clone() for i in self.layers})
        self.before = {i: self._w(trainer, i).detach().clone() for i in self.layers}
        self.groups.append(dict(trainer.optimizer.param_groups[0]))
        self.steps += 1

    def after_step(self, trainer, n_micro, n_images):
        self.after.append({i: self._w(trainer, i).detach().clone() for i in self.layers})


def _method_trainer(tiny_data, tmp_path, hyp, **kw) -> Trainer:
    trainer = Trainer(_config(tiny_data, tmp_path, hyp=str(hyp), noval=True, **kw))
    trainer._prepare_data()
    trainer._build_optimization()
    return trainer


@pytest.mark.parametrize("nbs,steps,n_micro", [(32, 1, 2), (8, 2, 1)])
def test_sgd_penalty_once_per_step_after_unscale_and_clip(tiny_data, tmp_path, no_warmup_hyp, nbs, steps,
                                                          n_micro):
    """16 images, batch 8: 2 micro-batches; nbs 32 accumulates both into one step, nbs 8 steps twice."""
    torch.manual_seed(0)
    trainer = _method_trainer(tiny_data, tmp_path, no_warmup_hyp, nbs=nbs, optimizer="SGD")
    layers = [i for i, seq in trainer.model.conv_layers() if "BatchNorm2d" in seq._modules][:6]
    grads = {i: 100 * torch.randn_like(trainer.model.module_list[i].BatchNorm2d.weight) for i in layers}
    trainer.compute_loss = ControlledLoss(trainer, layers, grads)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)  # AMP-like scaling
    s = 0.01
    hook = trainer.register(SparsityHook(layers, scale=s, form=sparsity_form("SGD")))
    spy = trainer.register(Spy(layers))
    w0 = {i: trainer.model.module_list[i].BatchNorm2d.weight.detach().clone() for i in layers}
    trainer._train_epoch(0)
    assert hook.applied == steps == spy.steps
    data = {i: n_micro * g for i, g in grads.items()}  # accumulated, unscaled data gradient
    norm = torch.cat([g.flatten() for g in data.values()]).norm()
    clip = min(1.0, 10.0 / (float(norm) + 1e-6))
    assert clip < 0.1  # clipping is active, so adding before it would be visible
    for i in layers:  # first step: the clipped data gradient plus exactly one k * s * sign(gamma)
        expect = data[i] * clip + n_micro * s * torch.sign(w0[i])
        assert torch.allclose(spy.grads[0][i], expect, rtol=1e-4, atol=1e-7), i
    lr, m = spy.groups[0]["lr"], spy.groups[0]["momentum"]
    for i in layers:  # the optimizer used that gradient (nesterov SGD, first step: (1 + m) * grad)
        assert torch.allclose(spy.after[0][i], w0[i] - lr * (1 + m) * spy.grads[0][i], atol=1e-6), i


@pytest.mark.parametrize("optimizer", ["AdamW", "Adam"])
def test_adam_penalty_is_a_decoupled_soft_threshold(tiny_data, tmp_path, no_warmup_hyp, optimizer):
    torch.manual_seed(0)
    trainer = _method_trainer(tiny_data, tmp_path, no_warmup_hyp, nbs=32, optimizer=optimizer)
    layers = [i for i, seq in trainer.model.conv_layers() if "BatchNorm2d" in seq._modules][:6]
    grads = {i: torch.zeros_like(trainer.model.module_list[i].BatchNorm2d.weight) for i in layers}
    trainer.compute_loss = ControlledLoss(trainer, layers, grads)  # no data gradient: Adam leaves gamma
    w = trainer.model.module_list[layers[0]].BatchNorm2d.weight
    with torch.no_grad():
        w[:4] = torch.tensor([1e-4, -1e-4, 0.5, -0.5])
    s = 0.05
    hook = trainer.register(SparsityHook(layers, scale=s, form=sparsity_form(optimizer)))
    spy = trainer.register(Spy(layers))
    w0 = {i: trainer.model.module_list[i].BatchNorm2d.weight.detach().clone() for i in layers}
    trainer._train_epoch(0)
    assert hook.applied == 1 == spy.steps
    for i in layers:
        assert torch.count_nonzero(spy.grads[0][i]) == 0, "the penalty must not go through Adam's gradient"
    group = spy.groups[0]  # the gammas' group: lr * k (2 micro-batches) * s / (1 - beta1)
    threshold = group["lr"] * 2 * s / (1 - group["betas"][0])
    for i in layers:
        expect = torch.sign(w0[i]) * (w0[i].abs() - threshold).clamp(min=0)
        assert torch.allclose(spy.after[0][i], expect, atol=1e-7), i
    v = w.detach()[:4].tolist()
    assert v[0] == 0.0 and v[1] == 0.0  # below the threshold: exactly zero
    assert v[2] == pytest.approx(0.5 - threshold) and v[3] == pytest.approx(-0.5 + threshold)


def test_distillation_term_reaches_backward(tiny_data, tmp_path, no_warmup_hyp):
    """With the detection loss zeroed, every gradient comes from the registered Distiller's term."""
    torch.manual_seed(0)
    trainer = _method_trainer(tiny_data, tmp_path, no_warmup_hyp)
    teacher = build_model("models/yolov5n.yaml", nc=5)
    trainer.compute_loss = ControlledLoss(trainer, [], {})  # detection term 0, build_targets kept
    trainer.register(Distiller(teacher, mode=2, soft_weight=1.0, box_weight=1.0))
    imgs, targets, _, _ = next(iter(trainer.loader))
    trainer.model.train()
    _, named = trainer._forward_backward(imgs, targets)
    assert named["soft"] > 0
    g = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert g and max(float(x.abs().max()) for x in g) > 0


def test_allow_unlabelled_reaches_both_loaders(tiny_data, tmp_path, monkeypatch):
    import utils.engine as engine
    seen = []
    original = engine.create_dataloader

    def spy(*args, **kw):
        seen.append((kw.get("prefix"), kw.get("allow_unlabelled")))
        return original(*args, **kw)

    monkeypatch.setattr(engine, "create_dataloader", spy)
    Trainer(_config(tiny_data, tmp_path, name="a", allow_unlabelled=True))._prepare_data()
    Trainer(_config(tiny_data, tmp_path, name="b"))._prepare_data()
    assert seen == [("train: ", True), ("val: ", True), ("train: ", False), ("val: ", False)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_is_an_explicit_opt_in(tiny_data, tmp_path, no_warmup_hyp, channels_last):
    trainer = _method_trainer(tiny_data, tmp_path, no_warmup_hyp, channels_last=channels_last)
    formats = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                       and not args[0].is_contiguous()))
    imgs, targets, _, _ = next(iter(trainer.loader))
    trainer.model.train()
    trainer._forward_backward(imgs, targets)
    assert formats == [channels_last]


def test_ctrl_c_mid_epoch_exits_130_and_keeps_last_pt(tiny_data, tmp_path, monkeypatch, capsys):
    import train
    import utils.engine as engine
    from models import load_checkpoint, model_from_checkpoint
    original = engine.Trainer._forward_backward

    def interrupted(self, imgs, targets):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, imgs, targets)

    monkeypatch.setattr(engine.Trainer, "_forward_backward", interrupted)
    argv = ["--data", str(tiny_data), "--cfg", "models/yolov5n.yaml", "--img", "64", "--batch", "8",
            "--epochs", "2", "--workers", "0", "--noautoanchor", "--noval", "--project", str(tmp_path),
            "--name", "cut"]
    assert train.main(argv) == 130
    wdir = tmp_path / "cut" / "weights"
    ckpt = load_checkpoint(wdir / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None  # resumable
    model_from_checkpoint(ckpt)
    assert not list(wdir.glob(".*.tmp"))


@pytest.mark.filterwarnings("ignore:Detected call of")  # the skipped step
def test_decoupled_penalty_skips_a_step_that_amp_skipped(tiny_data, tmp_path, no_warmup_hyp):
    """Inf gradients: the scaler skips the optimizer step, so the soft-threshold must not run either."""
    trainer = _method_trainer(tiny_data, tmp_path, no_warmup_hyp, nbs=32, optimizer="AdamW")
    layers = [i for i, seq in trainer.model.conv_layers() if "BatchNorm2d" in seq._modules][:2]
    grads = {i: torch.full_like(trainer.model.module_list[i].BatchNorm2d.weight, float("inf")) for i in layers}
    trainer.compute_loss = ControlledLoss(trainer, layers, grads)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    hook = trainer.register(SparsityHook(layers, scale=1.0, form="decoupled"))
    w0 = trainer.model.module_list[layers[0]].BatchNorm2d.weight.detach().clone()
    trainer._train_epoch(0)
    assert trainer.stepped is False and hook.applied == 0
    assert torch.equal(trainer.model.module_list[layers[0]].BatchNorm2d.weight.detach(), w0)


def test_the_average_is_evaluated_and_saved_without_subnormals(tiny_data, tmp_path, no_warmup_hyp):
    """Each epoch's end flushes the EMA's subnormal values (left by weights held at zero) before
    evaluating and saving it."""
    trainer = _method_trainer(tiny_data, tmp_path, no_warmup_hyp)
    trainer._train_epoch(0)
    bn = next(seq.BatchNorm2d for _, seq in trainer.ema.ema.conv_layers() if "BatchNorm2d" in seq._modules)
    with torch.no_grad():
        bn.weight[:3] = torch.tensor([1e-40, -1e-39, 1e-30])  # two subnormals and a small normal value
    trainer._end_epoch(0)
    assert bn.weight[:2].tolist() == [0.0, 0.0] and bn.weight[2].item() == pytest.approx(1e-30)
    saved = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=False)["ema"]
    tiny = torch.finfo(torch.float32).tiny
    assert not any(((v != 0) & (v.abs() < tiny)).any() for v in saved.values() if v.dtype.is_floating_point)
