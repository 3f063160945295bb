"""models/scaling.py and scripts/scaled_cfg.py: a width-scaled model with a given model's FLOPs."""
import subprocess
import sys

import pytest
import yaml

from models import CfgError, build_model, save_checkpoint
from models.scaling import matched_width, model_at_width, width_for_flops, width_yaml
from tests.conftest import ROOT
from utils.torch_utils import count_flops

YOLOV5N = ROOT / "models" / "yolov5n.yaml"


def test_width_for_flops_picks_the_closest_step():
    steps = lambda w: round(w * 8) / 8  # noqa: E731  (FLOPs move in steps, like channels in multiples of 8)
    assert width_for_flops(steps, 0.5) == pytest.approx(0.5, abs=1 / 16)
    assert abs(steps(width_for_flops(steps, 0.3)) - 0.3) <= 1 / 16


def test_width_yaml_changes_only_the_width():
    text = width_yaml(ROOT / "models" / "yolov5s.yaml", 0.31234, "why")
    assert text.startswith("# yolov5s.yaml with width_multiple 0.3123 (why)")
    doc, orig = yaml.safe_load(text), yaml.safe_load((ROOT / "models" / "yolov5s.yaml").read_text())
    assert doc.pop("width_multiple") == 0.3123
    orig.pop("width_multiple")
    assert doc == orig


def test_width_scaling_needs_an_upstream_yaml(tmp_path):
    cfg = tmp_path / "m.cfg"
    cfg.write_text("[net]\n")
    with pytest.raises(CfgError, match="upstream model .yaml"):
        width_yaml(cfg, 0.5)
    bad = tmp_path / "m.yaml"
    bad.write_text("nc: 2\n")
    with pytest.raises(CfgError, match="no width_multiple"):
        matched_width(bad, 1e6, lambda m: count_flops(m, 64))


def test_matched_width_finds_the_width_of_a_known_model():
    nc = 3

    def flops(w):
        return count_flops(model_at_width(YOLOV5N, w, nc), 64)
    target = flops(0.125)
    assert flops(0.0625) < target < flops(0.25)
    width, found = matched_width(YOLOV5N, target, lambda m: count_flops(m, 64), nc)
    assert found == target == flops(width)  # found exactly (channels step by 8)
    assert width <= 0.125  # the narrowest width with those FLOPs
    assert model_at_width(YOLOV5N, width, nc).nc == nc


def test_scaled_cfg_cli_matches_a_checkpoint(tmp_path):
    (tmp_path / "small.yaml").write_text(width_yaml(YOLOV5N, 0.125))
    model = build_model(tmp_path / "small.yaml", nc=2)
    save_checkpoint(tmp_path / "small.pt", model)
    out = tmp_path / "scaled.yaml"
    r = subprocess.run([sys.executable, "scripts/scaled_cfg.py", "--cfg", str(YOLOV5N), "--match",
                        str(tmp_path / "small.pt"), "--img", "64", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ratio 1.000" in r.stdout
    scaled = build_model(out, nc=2)
    assert count_flops(scaled, 64) == count_flops(model, 64)
    r = subprocess.run([sys.executable, "scripts/scaled_cfg.py", "--cfg", str(YOLOV5N), "--match",
                        str(tmp_path / "missing.pt"), "--img", "64", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.pt" in r.stderr
