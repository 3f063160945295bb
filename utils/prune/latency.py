"""Latency on the runtime the model will run on: a measured per-layer profile, the ratio that meets
a latency target, and the round-robin measurement that proves it.

**Runners.** :func:`make_runner` turns a module into a callable that runs one forward pass (batch
1, synchronised) and returns its milliseconds: eagerly in PyTorch (``torch``), or exported with
``torch.onnx.export`` (opset 17, fixed batch 1, the module's first output) and run by ONNX Runtime
(``onnxruntime``) or OpenVINO (``openvino``, CPU) pinned to ``threads`` threads. Every time this
module takes goes through :func:`make_runner`, so a test can replace it with a deterministic one.

**Profile.** The cost of a width is measured, not guessed: every conv of the architecture (conv +
activation, BN folded) is timed as a single-layer model at its real input resolution, at
:data:`PROFILE_FRACTIONS` of its input and output widths, on the runtime; identical layer shapes
are timed once. A layer's time at other widths is interpolated linearly in its FLOPs fraction
``(cin' * cout') / (cin * cout)`` between those points and (0, 0) (each point has the runtime's
per-call overhead, the time of a trivial graph, subtracted). The time outside the convs (concat,
upsample, max-pool, the detection decode), the whole original model's time minus the convs' sum, is
taken as fixed, so a prediction errs on the slow side. The profile is a JSON file keyed by runtime,
device, threads, image size and an architecture hash (:func:`architecture_hash`); a key mismatch
is an error, never a silent re-use.

**Search.** :func:`meet_latency` bisects the ratio whose *predicted* latency meets the goal
(:func:`~utils.prune.pipeline.bisect_ratio`), builds that compact model, and times it against the
original round-robin (:func:`compare`: per round one pass of each, the order alternating; the
median of the paired per-round ratios is the measured ratio, spread as quartiles and min/max). A
miss (or a model more than :data:`CLOSE_ENOUGH` under the target: pruned far more than asked)
maps the profile's predictions onto the measurements (:func:`recalibrated_goal`), aims
:data:`TIGHTEN_MARGIN` under the target after a miss, and searches again, a few times at most; the
least-pruned model that met the target is kept. The target is declared unreachable only when the smallest model the per-layer floors allow, measured,
still misses it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from models import Darknet, ModelCfg, make_activation
from utils.backends import openvino_cpu_config
from utils.errors import UserError
from utils.fileio import atomic_write_text

from .errors import PruneError
from .graph import analyse
from .options import RUNTIMES, LatencyTarget, PruneOptions
from .pipeline import PruneResult, Unreachable, bisect_ratio, prune
from .surgery import channel_counts

__all__ = ["RUNTIMES", "PROFILE_FRACTIONS", "Bench", "RuntimeUnavailable", "LatencyProfile", "Comparison",
           "LatencyChoice", "LatencyUnreachable", "make_runner", "check_runtime", "pinned_threads", "architecture_hash",
           "default_profile_path", "measure_profile", "load_or_measure_profile", "compare", "meet_latency",
           "spread"]

PROFILE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of each conv's input and output widths
PROFILE_VERSION = 1
ONNX_OPSET = 17
# A miss tightens the predicted goal by the miss and this much more, so that a miss by the channel
# rounding or by noise does not repeat in the next search.
TIGHTEN_MARGIN = 0.02
CLOSE_ENOUGH = 0.10  # a model this share (or less) under the target ends the search
MAX_ITERATIONS = 3   # searches (models built and measured) at most, unless the caller says otherwise
_PACKAGES = {"onnxruntime": ("onnxruntime", "pip install onnxruntime"),
             "openvino": ("openvino", "pip install openvino")}

Runner = Callable[[], float]  # one forward pass, returns its milliseconds


class RuntimeUnavailable(UserError, RuntimeError):
    """The runtime asked for is not installed or cannot run on the device asked for."""


@dataclass(frozen=True)
class Bench:
    """Where latency is measured: ``runtime`` on ``device`` with ``threads`` threads at ``img_size``."""

    runtime: str = "torch"
    device: str = "cpu"
    threads: int = 1
    img_size: int = 640

    def key(self, cfg: ModelCfg) -> dict[str, Any]:
        """The facts a profile is only valid for."""
        return {"version": PROFILE_VERSION, "runtime": self.runtime, "device": self.device,
                "threads": self.threads, "img_size": self.img_size, "architecture": architecture_hash(cfg),
                "fractions": list(PROFILE_FRACTIONS)}

    def describe(self) -> str:
        return f"{self.runtime} on {self.device}, {self.threads} thread{'s' * (self.threads != 1)}"


# ------------------------------------------------------------------------------------ runners
def check_runtime(bench: Bench) -> None:
    """Raise :class:`RuntimeUnavailable` (one sentence naming the package) unless ``bench`` can run."""
    if bench.runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"--runtime {bench.runtime!r} is not known (known: {', '.join(RUNTIMES)})")
    if bench.runtime in _PACKAGES:
        module, install = _PACKAGES[bench.runtime]
        try:
            __import__(module)
        except ImportError:
            raise RuntimeUnavailable(f"--runtime {bench.runtime} needs the {module} package, which is not "
                                     f"installed: {install} (or choose another --runtime)") from None
    if bench.runtime == "openvino" and not bench.device.startswith("cpu"):
        raise RuntimeUnavailable("--runtime openvino is timed on the CPU; pass --device cpu")
    if bench.runtime == "onnxruntime" and bench.device.startswith("cuda"):
        import onnxruntime
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeUnavailable("--runtime onnxruntime on a CUDA --device needs the onnxruntime-gpu "
                                     "package: pip install onnxruntime-gpu (or pass --device cpu)")


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``threads`` for the duration (restored afterwards): every
    timing here runs under it, so torch runs on the bench's threads and exporting does not compete
    with ONNX Runtime or OpenVINO for more."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _FirstOutput(nn.Module):
    """The module's first output only (a detector in eval mode returns (inference, raw maps))."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _onnx_bytes(module: nn.Module, shape: Sequence[int]) -> bytes:
    """``module`` (on the CPU, eval mode) as an ONNX graph with a fixed input ``shape``."""
    net = _FirstOutput(module).cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(*shape),), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["images"], output_names=["output"], do_constant_folding=True)
    return buffer.getvalue()


def _torch_runner(module: nn.Module, shape: Sequence[int], bench: Bench) -> Runner:
    device = torch.device(bench.device)
    net = module.to(device).eval()
    x = torch.rand(*shape, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def run() -> float:
        t = time.perf_counter()
        net(x)
        sync()
        return (time.perf_counter() - t) * 1000.0
    return run


def _onnxruntime_runner(module: nn.Module, shape: Sequence[int], bench: Bench) -> Runner:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = bench.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if bench.device.startswith("cuda") else ["CPUExecutionProvider"]
    session = ort.InferenceSession(_onnx_bytes(module, shape), options, providers=providers)
    feed = {session.get_inputs()[0].name: torch.rand(*shape).numpy()}

    def run() -> float:
        t = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - t) * 1000.0
    return run


def _openvino_runner(module: nn.Module, shape: Sequence[int], bench: Bench) -> Runner:
    import openvino
    core = openvino.Core()
    with tempfile.TemporaryDirectory() as folder:  # read_model takes a path; the compiled model is in memory
        path = Path(folder) / "model.onnx"
        path.write_bytes(_onnx_bytes(module, shape))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", openvino_cpu_config(bench.threads))
    request = compiled.create_infer_request()
    x = torch.rand(*shape).numpy()

    def run() -> float:
        t = time.perf_counter()
        request.infer({0: x})
        return (time.perf_counter() - t) * 1000.0
    return run


_RUNNERS: dict[str, Callable[[nn.Module, Sequence[int], Bench], Runner]] = {
    "torch": _torch_runner, "onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner}


def make_runner(module: nn.Module, shape: Sequence[int], bench: Bench) -> Runner:
    """A callable that runs ``module`` once on ``bench`` with an input of ``shape`` (batch 1) and
    returns the milliseconds it took. ``module`` may be moved to the bench's device."""
    return _RUNNERS[bench.runtime](module, shape, bench)


def _fastest(run: Runner, runs: int, warmup: int = 1) -> float:
    """The fastest of ``runs`` timed calls (other work on the machine only ever adds time)."""
    for _ in range(warmup):
        run()
    return min(run() for _ in range(max(runs, 1)))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, minimum and maximum of ``values``."""
    v = sorted(float(x) for x in values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": statistics.median(v), "q25": q[0], "q75": q[2], "min": v[0], "max": v[-1]}


# ------------------------------------------------------------------------------------ the profile
def architecture_hash(cfg: ModelCfg) -> str:
    """SHA-256 of what decides the speed of ``cfg``: its layers, their options and widths, and the
    input channels (not the anchors or the class names, which only change numbers, not shapes)."""
    layers = [[layer.type, {k: v for k, v in sorted(layer.options.items()) if k not in ("anchors", "mask")}]
              for layer in cfg.layers]
    text = json.dumps([cfg.in_channels, layers], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def default_profile_path(cfg: ModelCfg, bench: Bench, folder: str | Path = "runs/profiles") -> Path:
    """``runs/profiles/<architecture hash>_<runtime>_<device>_t<threads>_<img>.json``."""
    device = bench.device.replace(":", "")
    return Path(folder) / (f"{architecture_hash(cfg)[:12]}_{bench.runtime}_{device}_t{bench.threads}_"
                           f"{bench.img_size}.json")


def _conv_shape(cfg: ModelCfg, i: int, img_size: int) -> tuple[int, int, int]:
    """(input width, output width, input side in pixels) of conv ``i`` at ``img_size``."""
    j = cfg.layers[i].inputs[0]
    scale = 1.0 if j < 0 else cfg.scales[j]
    return cfg.in_width(j), cfg.channels[i], int(round(img_size / scale))


def _conv_module(cfg: ModelCfg, i: int, cin: int, cout: int) -> nn.Module:
    """Conv ``i`` of ``cfg`` (BN folded into a bias) with its activation, at ``cin`` -> ``cout`` widths."""
    layer = cfg.layers[i]
    conv = nn.Conv2d(cin, cout, layer.get("size"), layer.get("stride"), layer.padding,
                     groups=layer.get("groups"), bias=True)
    act = make_activation(layer.get("activation"))
    return nn.Sequential(conv) if act is None else nn.Sequential(conv, act)


@dataclass
class LatencyProfile:
    """Measured milliseconds of one architecture on one bench (see the module docstring).

    ``layers``: conv -> ``[[cin, cout, ms above the per-call overhead], ...]``; ``model_ms``: the
    whole original model (median); ``overhead_ms``: one call of a trivial graph.
    """

    key: dict[str, Any]
    model_ms: float
    overhead_ms: float
    layers: dict[int, list[list[float]]] = field(default_factory=dict)

    def layer_ms(self, i: int, cin: int, cout: int) -> float:
        """Conv ``i``'s time at ``cin`` -> ``cout``, linear in its FLOPs fraction between profile points."""
        points = self.layers.get(i)
        if not points:
            raise PruneError(f"the latency profile has no times for conv {i}; measure it again")
        full = max(points, key=lambda p: p[0] * p[1])
        u_of = lambda p: (p[0] * p[1]) / (full[0] * full[1])  # noqa: E731 - the FLOPs fraction
        curve = sorted({(0.0, 0.0), *((u_of(p), float(p[2])) for p in points)})
        u = min(cin * cout / (full[0] * full[1]), 1.0)
        for (u0, t0), (u1, t1) in zip(curve, curve[1:]):
            if u <= u1:
                return t0 if u1 == u0 else t0 + (t1 - t0) * (u - u0) / (u1 - u0)
        return curve[-1][1]

    def predict_ms(self, counts: Mapping[int, tuple[int, int, int, int]]) -> tuple[float, float]:
        """(predicted ms of the compact model, predicted ms of the original) from
        :func:`~utils.prune.surgery.channel_counts`; the time outside the convs is held fixed."""
        full = sum(self.layer_ms(i, c[0], c[2]) for i, c in counts.items())
        rest = max(self.model_ms - full, 0.0)
        return rest + sum(self.layer_ms(i, c[1], c[3]) for i, c in counts.items()), rest + full

    def layer_times(self) -> dict[int, float]:
        """conv -> its milliseconds at the profiled architecture's own widths."""
        return {i: self.layer_ms(i, *max(((p[0], p[1]) for p in pts), key=lambda w: w[0] * w[1]))
                for i, pts in self.layers.items()}

    def fraction(self, counts: Mapping[int, tuple[int, int, int, int]]) -> float:
        """Predicted latency of the compact model as a fraction of the original's."""
        compact, original = self.predict_ms(counts)
        return compact / original if original > 0 else 1.0

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "model_ms": self.model_ms, "overhead_ms": self.overhead_ms,
                           "layers": {str(i): p for i, p in sorted(self.layers.items())}}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LatencyProfile":
        data = json.loads(text)
        return cls(data["key"], float(data["model_ms"]), float(data["overhead_ms"]),
                   {int(i): [list(map(float, p)) for p in pts] for i, pts in data["layers"].items()})


def _median_ms(run: Runner, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    return statistics.median(run() for _ in range(max(runs, 1)))


def measure_profile(model: Darknet, bench: Bench, runs: int = 5,
                    fractions: Sequence[float] = PROFILE_FRACTIONS) -> LatencyProfile:
    """Time every conv of ``model``'s architecture at ``fractions`` of its widths on ``bench``
    (fastest of ``runs`` calls each; identical shapes once) and the whole model (median)."""
    cfg = model.to_cfg()
    with pinned_threads(bench.threads):
        overhead = _fastest(make_runner(nn.Conv2d(1, 1, 1), (1, 1, 1, 1), bench), runs)
        shape = (1, cfg.in_channels, bench.img_size, bench.img_size)
        model_ms = _median_ms(make_runner(model.fused_copy(), shape, bench), runs)
        layers = _profile_convs(cfg, bench, runs, fractions, overhead)
    return LatencyProfile(bench.key(cfg), model_ms, overhead, layers)


def _profile_convs(cfg: ModelCfg, bench: Bench, runs: int, fractions: Sequence[float],
                   overhead: float) -> dict[int, list[list[float]]]:
    """conv -> [[cin, cout, ms above ``overhead``], ...] at ``fractions`` of its widths."""
    timed: dict[tuple, float] = {}
    layers: dict[int, list[list[float]]] = {}
    for i, layer in enumerate(cfg.layers):
        if layer.type != "convolutional":
            continue
        cin, cout, side = _conv_shape(cfg, i, bench.img_size)
        grouped = layer.get("groups") != 1  # widths of grouped convs move together: timed at full width
        points = []
        for f in ((1.0,) if grouped else fractions):
            ci, co = (cin, cout) if grouped else (max(1, round(f * cin)), max(1, round(f * cout)))
            key = (ci, co, side, layer.get("size"), layer.get("stride"), layer.padding, layer.get("groups"),
                   layer.get("activation"))
            if key not in timed:
                run = make_runner(_conv_module(cfg, i, ci, co), (1, ci, side, side), bench)
                timed[key] = max(_fastest(run, runs) - overhead, 0.0)
            points.append([ci, co, timed[key]])
        layers[i] = points
    return layers


def _key_difference(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(set(found) | set(wanted))
    return ", ".join(f"{k} {found.get(k)!r} (this run: {wanted.get(k)!r})" for k in keys
                     if found.get(k) != wanted.get(k))


def load_or_measure_profile(model: Darknet, bench: Bench, path: str | Path | None = None,
                            runs: int = 5) -> tuple[LatencyProfile, Path, bool]:
    """(profile, its file, whether it was reused): read ``path`` (default :func:`default_profile_path`)
    when it exists and its key matches this model and bench, else measure and write it there."""
    cfg = model.to_cfg()
    path = Path(path) if path is not None else default_profile_path(cfg, bench)
    key = bench.key(cfg)
    if path.is_file():
        try:
            profile = LatencyProfile.from_json(path.read_text())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PruneError(f"--profile {path} is not a latency profile ({type(e).__name__}: {e}); "
                             f"delete it or give another file to measure a new one") from None
        if profile.key != key:
            raise PruneError(f"--profile {path} was measured for another setting: "
                             f"{_key_difference(profile.key, key)}; give another --profile file "
                             f"(or delete it to measure again)")
        return profile, path, True
    profile = measure_profile(model, bench, runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, profile.to_json())
    return profile, path, False


# ------------------------------------------------------------------------------------ measuring
@dataclass(frozen=True)
class Comparison:
    """Round-robin milliseconds of the original and the compact model, round by round."""

    original_ms: tuple[float, ...]
    compact_ms: tuple[float, ...]

    @property
    def ratios(self) -> list[float]:
        return [c / o if o > 0 else float("inf") for o, c in zip(self.original_ms, self.compact_ms)]

    @property
    def ratio(self) -> float:
        """Median of the paired per-round ratios compact / original."""
        return statistics.median(self.ratios)

    @property
    def original_median(self) -> float:
        return statistics.median(self.original_ms)

    @property
    def compact_median(self) -> float:
        return statistics.median(self.compact_ms)

    def record(self) -> dict[str, Any]:
        return {"rounds": len(self.original_ms), "original_ms": spread(self.original_ms),
                "compact_ms": spread(self.compact_ms), "ratio": spread(self.ratios)}


def compare(original: Darknet, compact: Darknet, bench: Bench, rounds: int = 20, warmup: int = 2) -> Comparison:
    """Time BN-fused copies of both models on ``bench``, one pass of each per round, alternating
    which goes first, so drifting machine load hits both alike."""
    shape = (1, original.cfg.in_channels, bench.img_size, bench.img_size)
    a, b = [], []
    with pinned_threads(bench.threads):
        run_a = make_runner(original.fused_copy(), shape, bench)
        run_b = make_runner(compact.fused_copy(), shape, bench)
        for _ in range(warmup):
            run_a(), run_b()
        for r in range(max(rounds, 1)):
            if r % 2:
                tb = run_b()
                ta = run_a()
            else:
                ta = run_a()
                tb = run_b()
            a.append(ta)
            b.append(tb)
    return Comparison(tuple(a), tuple(b))


# ------------------------------------------------------------------------------------ the search
class LatencyUnreachable(PruneError):
    """Even the smallest model the per-layer floors allow misses the latency target (measured);
    ``best`` is its measured value in the target's unit."""

    def __init__(self, message: str, best: float):
        super().__init__(message)
        self.best = best


@dataclass
class LatencyChoice:
    """The compact model :func:`meet_latency` settled on, its measurement and the search's steps."""

    options: PruneOptions
    result: PruneResult
    comparison: Comparison
    observed: float  # in the target's unit (fraction or ms)
    met: bool
    iterations: list[dict[str, float]]

    def record(self, target: LatencyTarget, bench: Bench, profile: str | Path | None = None) -> dict[str, Any]:
        """What the report and the checkpoint history keep."""
        return {"kind": target.kind, "flag": target.flag, "value": target.value, "runtime": bench.runtime,
                "device": bench.device, "threads": bench.threads, "img_size": bench.img_size,
                "met": self.met, "achieved": self.observed, **self.comparison.record(),
                "iterations": self.iterations, "profile": None if profile is None else str(profile)}


def _reachable(target: LatencyTarget, observed: float) -> float:
    """A target value just above ``observed`` (rounded up to 3 decimals), for error messages."""
    return math.ceil(observed * 1000) / 1000


def _unreachable(target: LatencyTarget, options: PruneOptions, bench: Bench, ratio: float,
                 cmp: Comparison) -> LatencyUnreachable:
    best = target.observed(cmp.compact_median, cmp.ratio)
    return LatencyUnreachable(
        f"{target.flag} {target.value:g} cannot be reached on {bench.describe()}: the smallest model the "
        f"per-layer floors allow ({options.strategy.ratio_flag} {ratio}) runs in {cmp.ratio:.3f} of the "
        f"original's time ({cmp.compact_median:.3f} ms against {cmp.original_median:.3f} ms, median of "
        f"{len(cmp.ratios)} rounds), so ask for {target.flag} {_reachable(target, best)} or more (or add "
        f"--include-upsample / --include-sppf)", best)


def recalibrated_goal(target: float, predicted: float, measured: float) -> float:
    """The predicted fraction that should measure ``target``: the profile's predictions mapped onto
    measurements by the line through the original (predicted 1, measured 1) and the last model
    built (``predicted``, ``measured``). Falls back to ``target`` when that model was not smaller."""
    if predicted >= 1.0 or measured >= 1.0:
        return target
    slope = (1.0 - measured) / (1.0 - predicted)
    return min(max(1.0 - (1.0 - target) / slope, 1e-6), 1.0)


def meet_latency(model: Darknet, options: PruneOptions, target: LatencyTarget, bench: Bench,
                 profile: LatencyProfile, rounds: int = 20, max_iterations: int = MAX_ITERATIONS,
                 log: Callable[[str], None] = lambda line: None) -> LatencyChoice:
    """Prune ``model`` (left unchanged) to the least-pruned model that runs within ``target`` on
    ``bench`` (see the module docstring): each model built is measured; a miss, or a model more than
    :data:`CLOSE_ENOUGH` under the target, recalibrates the predicted goal
    (:func:`recalibrated_goal`) and searches again. Raises :class:`LatencyUnreachable` when the
    smallest model allowed, measured, misses; after ``max_iterations`` models the best one that met
    the target is returned (or the last one, with ``met=False``)."""
    graph = analyse(model.to_cfg())
    state = model.state_dict()
    predicted = lambda masks: profile.fraction(channel_counts(graph, masks))  # noqa: E731
    goal = target.goal(profile.model_ms)
    iterations: list[dict[str, float]] = []
    best: LatencyChoice | None = None
    for _ in range(max(max_iterations, 1)):
        try:
            ratio, fraction = bisect_ratio(graph, state, options, predicted, goal)
            floor = False
        except Unreachable as e:
            ratio, fraction, floor = e.ratio, e.fraction, True
        if any(it["ratio"] == ratio for it in iterations):
            break  # the recalibrated goal leads back to a model already measured
        chosen = options.with_ratio(ratio)
        result = prune(model, chosen)
        cmp = compare(model, result.model, bench, rounds)
        observed = target.observed(cmp.compact_median, cmp.ratio)
        iterations.append({"ratio": ratio, "goal": goal, "predicted": fraction, "measured_ratio": cmp.ratio,
                           "compact_ms": cmp.compact_median, "original_ms": cmp.original_median})
        log(f"{target.flag} {target.value:g}: {options.strategy.ratio_flag} {ratio} predicts {fraction:.3f} "
            f"of the original's time, measured {cmp.ratio:.3f} ({cmp.compact_median:.3f} ms against "
            f"{cmp.original_median:.3f} ms on {bench.describe()})")
        met = observed <= target.value
        if met and (best is None or observed > best.observed):
            best = LatencyChoice(chosen, result, cmp, observed, True, iterations)
        if met and observed >= target.value * (1.0 - CLOSE_ENOUGH):
            break
        if not met and floor:
            raise _unreachable(target, options, bench, ratio, cmp)
        wanted = target.goal(cmp.original_median) * (1.0 if met else 1.0 - TIGHTEN_MARGIN)
        goal = recalibrated_goal(wanted, fraction, cmp.ratio)
    if best is not None:
        return best  # its iterations are the list above: every model the search measured
    return LatencyChoice(chosen, result, cmp, observed, False, iterations)
