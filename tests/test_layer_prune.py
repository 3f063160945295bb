"""Layer pruning: residual blocks found from the graph, ranked by their last conv's gammas, cut with
their constant absorbed, verified; the script, the combined --layers mode and the outputs."""
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import layer_prune_yolov5s
import slim_prune_yolov5s_8x
import utils.prune.cli as prune_cli
import utils.prune.layers as layers_mod
from models import (build_model, format_cfg, load_checkpoint, load_model, model_from_checkpoint, parse_cfg,
                    read_cfg, save_checkpoint)
from utils.prune import (PruneError, VerificationError, analyse, estimate_cost, find_blocks, layer_prune,
                         model_from_state, search_shortcuts, sparsity_layers)
from utils.prune.absorb import absorb, bn_key, mask_gammas
from utils.prune.fake import fake_sparsity_
from utils.prune.layers import (STEP, block_importance, max_removable, remove_blocks, renumber_history,
                                select_blocks)
from utils.prune.report import sparsity_warning
from utils.prune.strategy import get_strategy

from tests.conftest import ROOT

FAST = ["--no-eval", "--img_size", "64", "--device", "cpu", "--latency-runs", "1"]
MODELS = ["models/yolov5n.yaml", "models/yolov5n6.yaml"]


@pytest.fixture(scope="module")
def models():
    """Sparsity-trained-looking yolov5n and yolov5n6 (P6), 2 classes."""
    out = {}
    for name in MODELS:
        model = fake_sparsity_(build_model(name, nc=2), img_size=64).eval()
        model.names = ["a", "b"]
        out[name] = model
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory, models):
    """A yolov5n checkpoint with a sparsity step in its history."""
    folder = tmp_path_factory.mktemp("src")
    model = models["models/yolov5n.yaml"]
    path = folder / "last.pt"
    save_checkpoint(path, model, history=[{"step": "sparsity", "prune": 1, "layers": sparsity_layers(model.cfg, 1)}])
    return path, model


def _copy(src: Path, dst_dir: Path, name: str = "last.pt") -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / name)
    return dst_dir / name


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _error(capsys, script: str) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), lines
    return lines[0]


def _x(size=64, seed=3):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _max_rel(a_model, b_model, size=64, a_state=None):
    """Largest per-level max |difference| / max |a| of the raw outputs."""
    x = _x(size)
    ra = (torch.func.functional_call(a_model, a_state, (x,)) if a_state else a_model(x))[1]
    rb = b_model(x)[1]
    assert len(ra) == len(rb)
    return max(float((a - b).abs().max()) / float(a.abs().max()) for a, b in zip(ra, rb))


def _with_gammas(model, values: dict[int, float]):
    """A copy of ``model`` whose conv ``i`` has every BN gamma equal to ``values[i]``."""
    state = dict(model.state_dict())
    for i, v in values.items():
        state[bn_key(i, "weight")] = torch.full_like(state[bn_key(i, "weight")], v)
    return model_from_state(model.to_cfg(), {k: t.clone() for k, t in state.items()}, model.names)


# ------------------------------------------------------------------------------------ analysis
@pytest.mark.parametrize("name", MODELS)
def test_blocks_are_the_c3_bottlenecks(models, name):
    cfg = models[name].to_cfg()
    blocks = find_blocks(cfg)
    shortcuts = [i for i, l in enumerate(cfg.layers) if l.type == "shortcut"]
    assert [b.shortcut for b in blocks] == shortcuts  # every add of a YOLOv5 is a bottleneck's
    for b in blocks:
        a, last = b.convs
        assert cfg.layers[a].inputs == (b.source,) and cfg.layers[last].inputs == (a,)
        assert cfg.layers[a].get("size") == 1 and cfg.layers[last].get("size") == 3
        assert cfg.layers[b.shortcut].inputs == (last, b.source)
    # stages: a C3's blocks chain (each reads the previous add); yolov5n: backbone C3 n = 1, 2, 3, 1
    sizes = [sum(1 for b in blocks if b.stage == s) for s in sorted({b.stage for b in blocks})]
    assert sizes == ([1, 2, 3, 1] if name.endswith("n.yaml") else [1, 2, 3, 1, 1])


def test_importance_statistics_of_the_last_conv():
    g = torch.tensor([0.0, -3.0, 4.0, 0.0])
    blocks = [layers_mod.Block(shortcut=9, source=6, convs=(7, 8), stage=0)]
    state = {bn_key(8, "weight"): g, bn_key(7, "weight"): torch.ones(4) * 100}  # the first conv is not read
    assert block_importance(state, blocks, "rms") == {9: pytest.approx(2.5)}
    assert block_importance(state, blocks, "mean") == {9: pytest.approx(1.75)}
    assert block_importance(state, blocks, "max") == {9: pytest.approx(4.0)}
    with pytest.raises(ValueError, match="--importance"):
        block_importance(state, blocks, "median")


def test_the_least_important_blocks_go_and_every_c3_keeps_one(models):
    model = models["models/yolov5n.yaml"]
    blocks = find_blocks(model.to_cfg())
    # stages: [7], [16, 19], [28, 31, 34], [43]
    wanted = dict(zip([b.shortcut for b in blocks], [0.01, 0.05, 0.9, 0.1, 0.3, 0.2, 0.02]))
    tuned = _with_gammas(model, {b.last: wanted[b.shortcut] for b in blocks})
    importance = block_importance(tuned.state_dict(), blocks)
    assert importance == pytest.approx(wanted)
    pick = lambda n, empty=False: [b.shortcut for b in select_blocks(blocks, importance, n, empty)]
    assert pick(1) == [16]  # 0.01 and 0.02 are alone in their C3
    assert pick(3) == [16, 28, 34]
    assert pick(3, True) == [7, 16, 43]
    assert pick(max_removable(blocks)) == [16, 28, 34]  # 3 = 7 blocks - 4 C3 modules
    assert pick(7, True) == sorted(wanted)
    with pytest.raises(PruneError, match=r"--shortcuts 4 .* ask for --shortcuts 3 or fewer"):
        pick(4)
    result = layer_prune(tuned, 3, verify_img_size=64)
    assert [b.shortcut for b in result.removed] == [16, 28, 34]


# ------------------------------------------------------------------------------------ surgery
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [1, 3])
def test_removal_keeps_a_valid_graph_and_equals_the_absorbed_model(models, name, n):
    model = models[name]
    cfg = model.to_cfg()
    before = find_blocks(cfg)
    result = layer_prune(model, n, verify_img_size=64)
    assert len(find_blocks(result.cfg)) == len(before) - n
    assert len(result.cfg.layers) == len(cfg.layers) - 3 * n
    assert parse_cfg(format_cfg(result.cfg)) == result.cfg  # round trip
    rebuilt = build_model(parse_cfg(format_cfg(result.cfg)))  # builds from its text, runs
    rebuilt.load_state_dict(result.model.state_dict())
    assert _max_rel(result.model, rebuilt.eval()) == 0.0
    # independent of the pipeline: the absorbed reference from the source weights and the masks
    masks = {b.last: torch.zeros(cfg.channels[b.last], dtype=torch.bool) for b in result.removed}
    absorbed = absorb(analyse(cfg), model.state_dict(), masks)
    assert _max_rel(model, result.model, a_state=absorbed) <= 1e-5
    # the branch replaced by its constant (last-conv gammas zeroed): the readers are 1x1 convs, so
    # the absorption is exact everywhere (no padding border)
    assert _max_rel(model, result.model, a_state=mask_gammas(model.state_dict(), masks)) <= 1e-4
    # ...and the unpruned model differs: these gammas are not 0
    assert _max_rel(model, result.model) > 1e-3


def test_close_to_the_full_model_when_the_blocks_gammas_are_near_zero(models):
    model = models["models/yolov5n.yaml"]
    blocks = find_blocks(model.to_cfg())
    dead = [blocks[2], blocks[4]]  # one in C3 1, one in C3 2
    tuned = _with_gammas(model, {b.last: 1e-7 for b in dead})
    result = layer_prune(tuned, 2, verify_img_size=64)
    assert [b.shortcut for b in result.removed] == [b.shortcut for b in dead]
    assert _max_rel(tuned, result.model) <= 1e-4
    assert _max_rel(tuned, result.model, size=96) <= 1e-4


def test_allow_empty_lets_a_c3_lose_every_block(models):
    model = models["models/yolov5n.yaml"]
    blocks = find_blocks(model.to_cfg())
    with pytest.raises(PruneError, match="--allow-empty"):
        layer_prune(model, len(blocks), verify_img_size=64)
    result = layer_prune(model, len(blocks), allow_empty=True, verify_img_size=64)
    assert find_blocks(result.cfg) == []
    assert not [l for l in result.cfg.layers if l.type == "shortcut"]
    assert parse_cfg(format_cfg(result.cfg)) == result.cfg
    kept_stages = layer_prune(model, max_removable(blocks), verify_img_size=64)
    assert len({b.stage for b in find_blocks(kept_stages.cfg)}) == len({b.stage for b in blocks})


def test_remove_blocks_rewires_readers_of_a_removed_add(models):
    cfg = models["models/yolov5n.yaml"].to_cfg()
    blocks = find_blocks(cfg)
    stage = [b for b in blocks if b.stage == 2]  # three chained blocks
    new, index = remove_blocks(cfg, stage[:2])
    last = stage[2]
    # the remaining block now reads the C3's cv1 (the first block's source), which is right before it
    assert new.layers[index[last.shortcut]].inputs == (index[last.last], index[stage[0].source])
    assert index[last.convs[0]] == index[stage[0].source] + 1
    route = next(i for i, l in enumerate(cfg.layers) if l.type == "route" and last.shortcut in l.inputs)
    assert new.layers[index[route]].inputs[0] == index[last.shortcut]


def test_a_wrong_compact_model_is_refused(models, monkeypatch):
    real = layers_mod.reindex_state

    def corrupted(*a, **k):
        state = real(*a, **k)
        key = next(k for k in state if k.endswith("running_mean") and ".4." not in k)
        state[key] = state[key] + 1.0
        return state

    monkeypatch.setattr(layers_mod, "reindex_state", corrupted)
    with pytest.raises(VerificationError, match="does not reproduce the absorbed model"):
        layer_prune(models["models/yolov5n.yaml"], 1, verify_img_size=64)


# ------------------------------------------------------------------------------------ FLOPs target
@pytest.mark.parametrize("name", MODELS)
def test_target_flops_picks_the_fewest_blocks(models, name):
    model = models[name]
    cfg, state = model.to_cfg(), model.state_dict()
    full = estimate_cost(analyse(cfg), {}, 64)[1]

    def fraction(n):
        r = layer_prune(model, n, verify_img_size=64)
        return estimate_cost(analyse(r.cfg), {}, 64)[1] / full

    target = (fraction(1) + fraction(2)) / 2
    n, got = search_shortcuts(cfg, state, target, 64)
    assert n == 2 and got == pytest.approx(fraction(2), rel=1e-9)
    assert search_shortcuts(cfg, state, 1.0, 64) == (0, 1.0)
    with pytest.raises(PruneError, match=r"--target-flops 0.1 cannot be reached.*--allow-empty"):
        search_shortcuts(cfg, state, 0.1, 64)


# ------------------------------------------------------------------------------------ history
def test_renumber_history_follows_layer_pruning():
    history = [{"step": "sparsity", "layers": [1, 5, 6, 9]},
               {"step": STEP, "layer_map": {"1": 1, "4": 4, "9": 6}}]
    assert renumber_history(history)[0]["layers"] == [1, 6]
    assert history[0]["layers"] == [1, 5, 6, 9]  # the input is left as it was


# ------------------------------------------------------------------------------------ the script
def _run_layers(weights, *extra):
    return layer_prune_yolov5s.main(["--weights", str(weights), *extra, *FAST])


def test_script_writes_an_ordinary_model(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert _run_layers(weights, "--shortcuts", "2") == 0
    out = capsys.readouterr().out
    assert "verified: compact == absorbed" in out
    assert "WARNING" not in out  # sparsity-trained with --prune 1: every block's last conv regularised
    names = ["last.pt", "layer_2_last.cfg", "layer_2_last.json", "layer_2_last.png", "layer_2_last.pt"]
    assert _files(tmp_path) == names
    pruned = tmp_path / "layer_2_last.pt"
    model = load_model(pruned)  # what val.py, export.py and prune_detect.py use
    ckpt = load_checkpoint(pruned)
    assert model_from_checkpoint(ckpt).cfg == read_cfg(tmp_path / "layer_2_last.cfg")
    assert len(find_blocks(model.cfg)) == len(find_blocks(source[1].cfg)) - 2
    entry = ckpt["history"][-1]
    assert entry["step"] == "layer_prune" and entry["shortcuts"] == 2
    assert entry["parent"] == str(weights.resolve())
    assert len(entry["removed"]) == 2 and all("importance" in r for r in entry["removed"])
    assert len(entry["importance"]["blocks"]) == 7 and entry["importance"]["statistic"] == "rms"
    assert ckpt["history"][0]["step"] == "sparsity"
    report = json.loads((tmp_path / "layer_2_last.json").read_text())
    assert sum(r["removed"] for r in report["blocks"]) == 2
    assert report["figures"]["params"]["after"] < report["figures"]["params"]["before"]
    x = _x()
    with torch.no_grad():
        ref = model_from_state(source[1].to_cfg(), absorb(analyse(source[1].to_cfg()), source[1].state_dict(),
                               {r["layers"][1]: torch.zeros(source[1].cfg.channels[r["layers"][1]], dtype=torch.bool)
                                for r in entry["removed"]}))(x)[1]
        got = model.eval()(x)[1]
    assert all(float((a - b).abs().max()) <= 1e-4 * float(a.abs().max()) for a, b in zip(ref, got))


def test_target_flops_on_the_command_line(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert _run_layers(weights, "--target-flops", "0.95") == 0
    chosen = int(capsys.readouterr().out.split("chose --shortcuts ")[1].split()[0])
    report = json.loads((tmp_path / f"layer_{chosen}_last.json").read_text())
    assert report["settings"]["target"]["achieved"] <= 0.95 and chosen >= 1


@pytest.mark.parametrize("argv, says", [
    (["--shortcuts", "99"], "--shortcuts 99 asks for more residual blocks than can be removed"),
    (["--shortcuts", "7", "--allow-empty", "--importance", "max", "--shortcuts", "8"], "ask for --shortcuts 7"),
    (["--target-flops", "0.2"], "--target-flops 0.2 cannot be reached"),
])
def test_impossible_requests_are_one_sentence_and_write_nothing(source, tmp_path, capsys, argv, says):
    weights = _copy(source[0], tmp_path)
    assert _run_layers(weights, *argv) == 2
    assert says in _error(capsys, "layer_prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("argv", [[], ["--shortcuts", "1", "--target-flops", "0.9"], ["--shortcuts", "0"],
                                  ["--shortcuts", "1", "--importance", "median"]])
def test_flags_are_checked_at_parse_time(source, tmp_path, capsys, argv):
    weights = _copy(source[0], tmp_path)
    with pytest.raises(SystemExit) as e:
        _run_layers(weights, *argv)
    assert e.value.code == 2
    assert _files(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("failing", ["plot_blocks", "save_checkpoint"])
def test_a_failed_write_leaves_none_of_the_four_outputs(source, tmp_path, monkeypatch, capsys, failing):
    weights = _copy(source[0], tmp_path)
    real = getattr(prune_cli, failing)

    def full_disk(*a, **k):
        real(*a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(a[1] if failing == "plot_blocks" else a[0]))

    monkeypatch.setattr(prune_cli, failing, full_disk)
    assert _run_layers(weights, "--shortcuts", "1") == 2
    assert "no space left on the device" in _error(capsys, "layer_prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]


def test_a_verification_failure_writes_nothing(source, tmp_path, monkeypatch, capsys):
    real = layers_mod.reindex_state

    def corrupted(*a, **k):
        state = real(*a, **k)
        key = next(k for k in state if k.endswith("Conv2d.weight"))
        state[key] = state[key] * 1.5
        return state

    monkeypatch.setattr(layers_mod, "reindex_state", corrupted)
    weights = _copy(source[0], tmp_path)
    assert _run_layers(weights, "--shortcuts", "1") == 2
    assert "does not reproduce the absorbed model" in _error(capsys, "layer_prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]


# ------------------------------------------------------------------------------------ combinations
def test_combined_mode_prunes_blocks_then_channels(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), "--layers", "2", *FAST]) == 0
    stem = "prune_0.6_keep_0.01_8x_layer_2_last"
    assert _files(tmp_path) == ["last.pt"] + [f"{stem}.{e}" for e in ("cfg", "json", "png", "pt")]
    assert "WARNING" not in capsys.readouterr().out  # the sparsity step's layers are renumbered
    ckpt = load_checkpoint(tmp_path / f"{stem}.pt")
    steps = [h["step"] for h in ckpt["history"]]
    assert steps == ["sparsity", "layer_prune", "prune"]
    layer_entry, prune_entry = ckpt["history"][1:]
    assert layer_entry["shortcuts"] == 2 and layer_entry["figures"]["params"]["before"] > 0
    assert prune_entry["settings"]["layers"] == 2
    assert layer_entry["parent"] == prune_entry["parent"] == str(weights.resolve())
    # the same as the two steps one after the other (library), checked against the absorbed model
    layered = layer_prune(source[1], 2, verify_img_size=64).model
    keep = {int(i): torch.tensor(m) for i, m in prune_entry["masks"].items()}
    cfg = layered.to_cfg()
    reference = model_from_state(cfg, absorb(analyse(cfg), layered.state_dict(), keep))
    model = model_from_checkpoint(ckpt)
    assert _max_rel(reference, model.eval()) <= 1e-4
    assert len(find_blocks(model.cfg)) == 5


def test_combined_mode_refuses_too_many_blocks(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), "--layers", "9", *FAST]) == 2
    assert "--layers 9 asks for more residual blocks" in _error(capsys, "slim_prune_yolov5s_8x.py")
    assert _files(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("argv", [["--importance", "max"], ["--allow-empty"], ["--layers", "-1"]])
def test_block_flags_of_the_channel_scripts_need_layers(source, tmp_path, capsys, argv):
    weights = _copy(source[0], tmp_path)
    with pytest.raises(SystemExit) as e:
        slim_prune_yolov5s_8x.main(["--weights", str(weights), *argv, *FAST])
    assert e.value.code == 2 and "--layers" in capsys.readouterr().err
    assert _files(tmp_path) == ["last.pt"]


def test_fused_models_have_no_removable_blocks(models):
    fused = models["models/yolov5n.yaml"].fused_copy()
    assert find_blocks(fused.to_cfg()) == []
    with pytest.raises(PruneError, match="fused"):
        layer_prune(fused, 1)


def test_channel_pruning_a_layer_pruned_model_and_back(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert _run_layers(weights, "--shortcuts", "2") == 0
    layered = tmp_path / "layer_2_last.pt"
    assert slim_prune_yolov5s_8x.main(["--weights", str(layered), *FAST]) == 0
    both = load_checkpoint(tmp_path / "prune_0.6_keep_0.01_8x_layer_2_last.pt")
    assert [h["step"] for h in both["history"]] == ["sparsity", "layer_prune", "prune"]
    assert "WARNING" not in capsys.readouterr().out

    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), *FAST]) == 0
    channels = tmp_path / "prune_0.6_keep_0.01_8x_last.pt"
    assert _run_layers(channels, "--shortcuts", "3") == 0
    out = tmp_path / "layer_3_prune_0.6_keep_0.01_8x_last.pt"
    ckpt = load_checkpoint(out)
    assert [h["step"] for h in ckpt["history"]] == ["sparsity", "prune", "layer_prune"]
    model = load_model(out)
    assert len(find_blocks(model.cfg)) == 4
    with torch.no_grad():
        assert all(torch.isfinite(r).all() for r in model.eval()(_x())[1])


def test_renumbered_sparsity_layers_match_the_layer_pruned_model(source, tmp_path):
    weights = _copy(source[0], tmp_path)
    assert _run_layers(weights, "--shortcuts", "3") == 0
    ckpt = load_checkpoint(tmp_path / "layer_3_last.pt")
    model = model_from_checkpoint(ckpt)
    history = renumber_history(ckpt["history"])
    assert sorted(history[0]["layers"]) == sorted(sparsity_layers(model.cfg, 1))
    assert sparsity_warning(history, get_strategy("8x"), "w", sparsity_layers(model.cfg, 1)) is None


def test_sparsity_note_names_unregularised_blocks(models):
    cfg = models["models/yolov5n.yaml"].to_cfg()
    blocks = find_blocks(cfg)
    assert "not sparsity-trained" in layers_mod.sparsity_note([], "w.pt", blocks)
    off = [{"step": "sparsity", "sr": False, "layers": sparsity_layers(cfg, 1)}]
    assert "not sparsity-trained" in layers_mod.sparsity_note(off, "w.pt", blocks)
    assert layers_mod.sparsity_note([{"step": "sparsity", "layers": sparsity_layers(cfg, 1)}], "w.pt", blocks) is None
    note = layers_mod.sparsity_note([{"step": "sparsity", "layers": sparsity_layers(cfg, 0)}], "w.pt", blocks)
    assert f"the last convs of {len(blocks)} residual blocks" in note  # --prune 0 skips shortcut groups


def test_script_warns_without_sparsity_history(models, tmp_path, capsys):
    model = models["models/yolov5n.yaml"]
    save_checkpoint(tmp_path / "plain.pt", model)
    assert _run_layers(tmp_path / "plain.pt", "--shortcuts", "1") == 0
    assert "WARNING: " in capsys.readouterr().out


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """A tiny 5-class shapes dataset and a sparsity-trained-looking yolov5n checkpoint for it."""
    from utils.synthetic import make_shapes_dataset

    folder = tmp_path_factory.mktemp("five")
    root = make_shapes_dataset(folder / "shapes", n_train=8, n_val=4, img_size=64, seed=5, workers=1)
    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=5), img_size=64).eval()
    model.names = ["circle", "rectangle", "triangle", "cross", "ring"]
    weights = save_checkpoint(folder / "five.pt", model,
                              history=[{"step": "sparsity", "layers": sparsity_layers(model.cfg, 1)}])
    return root / "dataset.yaml", weights


def test_evaluation_prints_masked_and_compact_map(five, tmp_path, capsys):
    data, source_weights = five
    weights = _copy(source_weights, tmp_path, "five.pt")
    assert layer_prune_yolov5s.main(["--weights", str(weights), "--shortcuts", "1", "--data", str(data),
                                     "--img_size", "64", "--device", "cpu", "--latency-runs", "1",
                                     "--workers", "0", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "mAP@.5 (pruned gammas zeroed)" in out
    report = json.loads((tmp_path / "layer_1_five.json").read_text())
    for key in ("mAP50", "mAP50_95"):
        assert set(report["figures"][key]) == {"original", "masked", "compact"}
        maps = report["figures"][key]
        assert abs(maps["masked"] - maps["compact"]) <= 1e-6  # exact for YOLOv5 (1x1 readers)


def test_a_layer_pruned_model_finetunes_with_distillation(five, tmp_path):
    """prune_finetune.py takes the layer-pruned checkpoint and its own .cfg, and distils from the
    unpruned parent recorded in its history."""
    import prune_finetune

    data, source_weights = five
    weights = _copy(source_weights, tmp_path, "five.pt")
    assert _run_layers(weights, "--shortcuts", "2") == 0
    pruned = tmp_path / "layer_2_five.pt"
    teacher = load_checkpoint(pruned)["history"][-1]["parent"]
    assert teacher == str(weights.resolve())
    assert prune_finetune.main(["--weights", str(pruned), "--cfg", str(pruned.with_suffix(".cfg")),
                                "--data", str(data), "--img", "64", "--batch", "4", "--epochs", "1",
                                "--workers", "0", "--project", str(tmp_path), "--name", "ft", "--device", "cpu",
                                "--distill", "--t_weights", teacher]) == 0
    ck = load_checkpoint(tmp_path / "ft" / "weights" / "last.pt")
    assert [e["step"] for e in ck["history"]][-2:] == ["layer_prune", "finetune"]
    assert ck["history"][-1]["teacher"] == teacher
    assert ck["cfg"] == load_checkpoint(pruned)["cfg"]


RESIDUAL_WITH_3X3_READER = """
[net]
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=silu
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=silu
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=silu
[shortcut]
from=-3
activation=linear
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=silu
[convolutional]
filters=21
size=1
stride=1
activation=linear
[yolo]
mask=0,1,2
anchors=2,3, 4,5, 6,7
classes=2
"""


def test_a_3x3_reader_is_exact_inside_and_approximate_at_the_border():
    """Any graph, not only C3s: the block's add feeds a 3x3 conv. compact == absorbed exactly;
    against the model whose branch emits its constant (gammas zeroed) the zero padding of the
    3x3 reader sees 0 instead of the constant, so only the one-pixel border differs."""
    model = fake_sparsity_(build_model(parse_cfg(RESIDUAL_WITH_3X3_READER)), img_size=16).eval()
    blocks = find_blocks(model.to_cfg())
    assert [(b.shortcut, b.source, b.convs) for b in blocks] == [(3, 0, (1, 2))]
    with pytest.raises(PruneError, match="--allow-empty"):
        layer_prune(model, 1, verify_img_size=16)
    result = layer_prune(model, 1, allow_empty=True, verify_img_size=16)
    assert [l.type for l in result.cfg.layers] == ["convolutional", "convolutional", "convolutional", "yolo"]
    x = _x(16)
    with torch.no_grad():
        masked = torch.func.functional_call(model, result.masked_state(model.state_dict()), (x,))[1][0]
        absorbed = torch.func.functional_call(model, result.absorbed_state, (x,))[1][0]
        compact = result.model(x)[1][0]  # (1, na, H, W, no)
    scale = float(masked.abs().max())
    assert float((compact - absorbed).abs().max()) <= 1e-5 * scale
    inside = (compact - masked)[:, :, 1:-1, 1:-1]
    assert float(inside.abs().max()) <= 1e-4 * scale
    assert float((compact - masked).abs().max()) > 1e-3 * scale  # the border: the approximation


@pytest.mark.parametrize("layers, passed", [("2", True), ("0", False)])
def test_pipeline_passes_layers_to_the_prune_step(tmp_path, layers, passed):
    """LAYERS=N adds --layers N to step 3 (a stand-in interpreter records each step's command line
    and fails the prune step so the pipeline stops there)."""
    log = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\ncase "$1" in *prune_yolov5s*.py) exit 3 ;; esac\n')
    stub.chmod(0o755)
    name = f"pytest_layers_{os.getpid()}_{layers}"
    env = dict(os.environ, QUICK="1", NAME=name, PYTHON=str(stub), LAYERS=layers)
    try:
        r = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    finally:
        shutil.rmtree(ROOT / "runs" / "pipeline" / name, ignore_errors=True)
    assert r.returncode == 3 and "step 'prune' failed" in r.stderr
    prune_line = next(l for l in log.read_text().splitlines() if l.startswith("slim_prune_yolov5s_8x.py"))
    assert (f"--layers {layers}" in prune_line) is passed


def test_pipeline_refuses_a_layers_value_that_is_not_a_count(tmp_path):
    name = f"pytest_layers_bad_{os.getpid()}"
    env = dict(os.environ, QUICK="1", NAME=name, PYTHON=str(tmp_path / "never-run"), LAYERS="two")
    r = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "LAYERS=two" in r.stderr
    assert not (ROOT / "runs" / "pipeline" / name).exists()
