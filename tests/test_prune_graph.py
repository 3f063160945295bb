"""Graph analysis: prune sets, shortcut groups, consumers and channel origins, for every model size."""
import pytest

from models.cfg import parse_cfg
from models import load_cfg_file
from utils.prune.graph import IMAGE, analyse, channel_origins, prunable_layers, sparsity_layers

# The original yolov5_prune's yolov5s v6 lists (our yaml translation lays the layers out in its cfg's order).
S_CBL = [0, 1, 2, 4, 5, 6, 9, 10, 11, 13, 14, 15, 17, 18, 21, 22, 23, 25, 26, 27, 29, 30, 32, 33, 36, 37,
         38, 40, 41, 42, 45, 46, 51, 52, 55, 57, 58, 59, 61, 62, 65, 67, 68, 69, 71, 75, 77, 79, 80, 81,
         83, 87, 89, 91, 92, 93, 95]
S1 = [0, 1, 2, 5, 9, 10, 11, 14, 17, 21, 22, 23, 26, 29, 32, 36, 37, 38, 41, 45, 51, 55, 57, 58, 59, 61,
      65, 67, 68, 69, 71, 75, 77, 79, 80, 81, 83, 87, 89, 91, 92, 93, 95]
GROUP_LAYERS = [4, 6, 13, 15, 18, 25, 27, 30, 33, 40, 42]
S_GROUPS = [(4, 6), (13, 15, 18), (25, 27, 30, 33), (40, 42)]


@pytest.fixture(scope="module")
def cfgs():
    return {n: load_cfg_file(f"models/yolov5{n}.yaml") for n in ("n", "s", "m", "l", "n6")}


def test_yolov5s_sets_match_the_original(cfgs):
    g = analyse(cfgs["s"])
    assert g.bn_convs == S_CBL
    assert g.detect_convs == [72, 84, 96]
    assert g.prunable(1) == S1 and len(S1) == 43
    s2 = sorted(S1 + GROUP_LAYERS)
    for strategy in (2, 3, "8x"):
        assert g.prunable(strategy) == s2 and len(s2) == 54
    assert g.groups == S_GROUPS
    assert prunable_layers(cfgs["s"], 1) == S1
    # S2 ranking population: 47 layers, 8,064 channels (the original's specification, 3.2)
    followers = {m for grp in g.groups for m in grp[1:]}
    ranked = [i for i in s2 if i not in followers]
    assert len(ranked) == 47 and sum(cfgs["s"].channels[i] for i in ranked) == 8064


def test_yolov5s_consumers_match_the_original(cfgs):
    g = analyse(cfgs["s"])
    expected = {0: (1,), 1: (2, 4), 4: (5, 9), 13: (14, 17, 21), 21: (22, 65, 67), 25: (26, 29, 32, 36),
                36: (37, 55, 57), 46: (51,), 52: (55, 57, 89, 91), 62: (65, 67, 77, 79), 71: (72, 75),
                83: (84, 87), 95: (96,)}
    for conv, consumers in expected.items():
        assert g.consumers[conv] == consumers, conv


def test_options_add_upsample_and_sppf_inputs(cfgs):
    g = analyse(cfgs["s"])
    base = set(g.prunable(2))
    assert set(g.prunable(2, {"upsample"})) - base == {52, 62}
    assert set(g.prunable(2, {"sppf"})) - base == {46}
    assert set(g.prunable(1, {"upsample", "sppf"})) - set(S1) == {46, 52, 62}
    both = g.prunable(1, {"upsample", "sppf"})
    assert prunable_layers(cfgs["s"], 1, include_upsample=True, include_sppf=True) == both
    assert "upsample" in g.role(52) and "maxpool" in g.role(46)
    assert g.role(52, 2, {"upsample"}).startswith("prunable") and g.role(46, 2, {"sppf"}).startswith("prunable")
    assert g.role(72) == "detect head"


@pytest.mark.parametrize("name,n_layers,s1,s2,groups", [
    ("n", 98, 43, 54, [(4, 6), (13, 15, 18), (25, 27, 30, 33), (40, 42)]),
    ("m", 127, 58, 76, [(4, 6, 9), (16, 18, 21, 24, 27), (34, 36, 39, 42, 45, 48, 51), (58, 60, 63)]),
    ("l", 156, 73, 98, None),
])
def test_other_sizes_match_the_original_table(cfgs, name, n_layers, s1, s2, groups):
    if name not in cfgs:
        cfgs[name] = load_cfg_file(f"models/yolov5{name}.yaml")
    cfg = cfgs[name]
    g = analyse(cfg)
    assert len(cfg.layers) == n_layers
    assert len(g.prunable(1)) == s1 and len(g.prunable("8x")) == s2
    if groups is not None:
        assert g.groups == groups
    else:  # l: cv1 + 3/6/9/3 bottleneck cv2 per backbone C3
        assert [len(grp) for grp in g.groups] == [4, 7, 10, 4]


def test_p6_groups_and_sets(cfgs):
    g = analyse(cfgs["n6"])
    assert len(g.detect_convs) == 4
    assert [len(grp) for grp in g.groups] == [2, 3, 4, 2, 2]  # C3s of depth 1, 2, 3, 1, 1
    s1, s2 = set(g.prunable(1)), set(g.prunable(2))
    assert s2 - s1 == {m for grp in g.groups for m in grp}
    ups = [i for i in g.convs if any(cfgs["n6"].layers[r].type == "upsample" for r in g.readers[i])]
    assert len(ups) == 3 and not s2 & set(ups)


def test_groups_share_width_and_every_member_reaches_a_shortcut(cfgs):
    for name, cfg in cfgs.items():
        g = analyse(cfg)
        shortcut_terms = {p for i, l in enumerate(cfg.layers) if l.type == "shortcut"
                          for seg in g.origins[i] for p in seg.producers}
        assert {m for grp in g.groups for m in grp} == shortcut_terms, name
        for grp in g.groups:
            assert len({cfg.channels[m] for m in grp}) == 1


def test_channel_origins_track_concat_offsets(cfgs):
    cfg = cfgs["s"]
    origins = channel_origins(cfg)
    sppf = origins[50]  # SPPF concat: the SPPF input conv four times (maxpool passes channels through)
    assert [s.terms for s in sppf] == [((46, 0),)] * 4 and sum(s.length for s in sppf) == 1024
    assert [(s.producers, s.length) for s in origins[54]] == [((52,), 256), ((36,), 256)]
    assert origins[19][0].producers == (18, 15, 13)  # a chain of two adds


def test_sparsity_layers_follow_prune_flag(cfgs):
    cfg = cfgs["s"]
    assert sparsity_layers(cfg, 0) == S1
    assert sparsity_layers(cfg, 1) == prunable_layers(cfg, 2)
    with pytest.raises(ValueError, match="--prune"):
        sparsity_layers(cfg, 2)


TOY = """
[net]
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=silu
[convolutional]
batch_normalize=1
filters=4
size=1
activation=silu
[convolutional]
batch_normalize=1
filters=4
size=1
activation=logistic
[route]
layers=-2,-1
[shortcut]
from=-4
[convolutional]
batch_normalize=1
filters=8
size=1
groups=8
activation=silu
[convolutional]
filters=18
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,13, 16,30, 33,23
classes=1
"""


def test_unaligned_add_sigmoid_and_grouped_consumers_are_excluded():
    cfg = parse_cfg(TOY)
    g = analyse(cfg)
    # layer 4 adds conv 0 (8 ch) to concat(conv 1, conv 2): conv 0's channel 4 meets conv 2's channel 0
    assert g.groups == [(0, 1, 2)]
    assert "unaligned" in g.fixed[0] and "unaligned" in g.fixed[1]
    assert "logistic" in g.fixed[2]
    assert "grouped" in g.fixed[5]
    assert g.prunable(2) == [] and g.prunable(1) == []
    assert g.origins[4][0].terms == ((1, 0), (0, 0)) and g.origins[4][1].terms == ((2, 0), (0, 4))
    assert IMAGE == -1
