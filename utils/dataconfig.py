"""Dataset descriptions and image lists: what a ``--data`` file says, with every path resolved.

Two description formats name the same thing (image sources, class count, class names): upstream YOLOv5
``.yaml`` files and Darknet ``.data`` files; :func:`load_data_config` turns either into a
:class:`DataConfig`. Each split (train, val and the optional held-out test) is a list of image sources:
image folders, ``.txt`` lists of image paths or image files, which :func:`list_image_files` expands.
The built-in synthetic dataset is generated on first use whenever its description is loaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from utils.errors import UserError
from utils.synthetic import BUILTIN_DATA, BUILTIN_YAML, builtin_params, ensure_builtin

__all__ = ["DataConfig", "DatasetError", "load_data_config", "list_image_files", "is_image", "IMG_FORMATS",
           "DATA_DIR", "SPLITS"]

IMG_FORMATS = ("bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp", "mpo", "pfm", "dng")
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SPLITS = ("train", "val", "test")
_MODEL_SUFFIXES = (".cfg", ".pt", ".pth", ".weights", ".onnx", ".engine", ".torchscript")
_FORMATS = "--data takes a .yaml (path/train/val/nc/names) or a Darknet .data file (classes/train/valid/names)"


class DatasetError(UserError, ValueError):
    """A dataset description, image list or label set that cannot be used as given.

    The message names the file (and line where there is one) and says what to do.
    """


@dataclass
class DataConfig:
    """What a dataset description says, with every path resolved.

    train/val/test: image sources, each an image folder, a ``.txt`` list of image paths or an image file;
    test is None when the description declares no held-out split.
    """
    source: Path
    root: Path
    train: list[Path]
    val: list[Path]
    test: list[Path] | None
    nc: int
    names: list[str]
    extra: dict = field(default_factory=dict)  # other keys of the description (e.g. download notes)


# --------------------------------------------------------------------------- finding and reading
def _find_description(path: str | Path | None) -> Path:
    """Resolve the --data argument to a description file (None/'builtin' -> the built-in dataset)."""
    if path is None or str(path) in ("", "builtin"):
        ensure_builtin()
        return BUILTIN_YAML
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (DATA_DIR / p).exists():
        p = DATA_DIR / p  # 'coco128.yaml' -> data/coco128.yaml
    if not p.exists():
        raise DatasetError(f"--data {path}: dataset description not found; {_FORMATS} "
                           f"(files in {DATA_DIR} can be named without the folder, e.g. --data coco128.yaml)")
    if p.is_dir():  # a dataset folder holding a single description, e.g. make_shapes_dataset's output
        found = sorted(p.glob("*.yaml")) + sorted(p.glob("*.data"))
        if len(found) != 1:
            raise DatasetError(f"--data {p}: a folder must hold exactly one .yaml/.data description, found "
                               f"{[f.name for f in found]}; pass the description file itself")
        p = found[0]
    return p.resolve()


def load_data_config(path: str | Path | None = None) -> DataConfig:
    """Read an upstream ``.yaml`` or Darknet ``.data`` dataset description (None: the built-in dataset).

    Model files (``.cfg``, model ``.yaml``, weights) given by mistake are refused with a message that says
    so; every split path must exist.
    """
    p = _find_description(path)
    if p.suffix.lower() in _MODEL_SUFFIXES:
        raise DatasetError(f"--data {p}: this is a model file ({p.suffix}), not a dataset description; {_FORMATS}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"--data {p}: cannot read it ({e}); {_FORMATS}") from e
    if text.lstrip().startswith("[net]") or "\n[convolutional]" in text:
        raise DatasetError(f"--data {p}: this is a Darknet model cfg, not a dataset description; "
                           f"pass it as --cfg and give --data a .yaml or .data dataset file")
    if p.suffix.lower() == ".data" or (p.suffix.lower() not in (".yaml", ".yml") and "classes" in text
                                       and "=" in text):
        return _darknet_config(p, text)
    return _yaml_config(p, text)


# --------------------------------------------------------------------------- upstream .yaml
def _yaml_config(p: Path, text: str) -> DataConfig:
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DatasetError(f"--data {p}: not valid yaml ({' '.join(str(e).split())}); fix the file") from e
    if not isinstance(d, dict):
        raise DatasetError(f"--data {p}: expected a mapping with path/train/val/nc/names; {_FORMATS}")
    if "train" not in d and ({"backbone", "head"} & set(d) or "depth_multiple" in d):
        raise DatasetError(f"--data {p}: this is a model yaml (backbone/head), not a dataset description; "
                           f"pass it as --cfg and give --data a dataset .yaml (path/train/val/nc/names)")
    for key in ("train", "val"):
        if not d.get(key):
            raise DatasetError(f"--data {p}: missing '{key}:'; add it (an image folder, a .txt list or a "
                               f"list of those, relative to 'path')")
    if d.get("synthetic"):
        _ensure_synthetic(p, d)
    root = _yaml_root(p, d)
    splits = {k: _split_paths(p, k, d.get(k), root) for k in SPLITS}
    names, nc = _names_and_nc(p, d.get("names"), d.get("nc"))
    extra = {k: v for k, v in d.items() if k not in ("path", *SPLITS, "nc", "names")}
    return DataConfig(p, root, splits["train"], splits["val"], splits["test"], nc, names, extra)


def _ensure_synthetic(p: Path, d: dict) -> None:
    """A description with a ``synthetic:`` block generates its data folder on first use."""
    rel = Path(str(d.get("path") or "."))
    try:
        ensure_builtin(rel if rel.is_absolute() else p.parent / rel, builtin_params(p))
    except (ValueError, TypeError) as e:  # unknown keys, out-of-range or mistyped generation arguments
        raise DatasetError(f"--data {p}: bad 'synthetic:' block ({e}); see utils/synthetic.py "
                           f"make_shapes_dataset for its arguments") from e


def _as_list(v) -> list[str]:
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _yaml_root(p: Path, d: dict) -> Path:
    """The dataset root: ``path`` relative to the description's folder, else to the current folder.

    The first candidate under which the train and val entries exist wins; the one used is printed when it
    is not the description's own folder, since it is then easy to pick up a different copy by accident.
    """
    rel = Path(str(d.get("path") or ""))
    if rel.is_absolute():
        return rel
    candidates = [(p.parent / rel).resolve(), (Path.cwd() / rel).resolve()]
    candidates = list(dict.fromkeys(candidates))
    entries = _as_list(d["train"]) + _as_list(d["val"])
    for c in candidates:
        if all((c / e).exists() for e in entries):
            if d.get("path") is not None:
                print(f"data: {p.name}: path '{rel}' -> {c}", flush=True)
            return c
    tried = " or ".join(str(c) for c in candidates)
    for c in candidates:
        if c.is_dir():
            return c  # exists but lacks a split: the split error below names it
    raise DatasetError(f"--data {p}: dataset root '{rel}' not found (looked for {tried}); "
                       f"see the comments in {p.name} for how to get and prepare the data")


def _split_paths(p: Path, key: str, value, root: Path) -> list[Path] | None:
    if value is None or value == "" or value == []:
        return None
    out = []
    for entry in _as_list(value):
        q = Path(entry)
        q = q if q.is_absolute() else root / q
        if not q.exists():
            raise DatasetError(f"--data {p}: {key} path not found: {q} (root {root}); "
                               f"see the comments in {p.name} for how to get and prepare the data")
        out.append(q)
    return out


def _names_list(p: Path, names) -> list[str] | None:
    """names given as a list or an {index: name} dict -> list (None when absent)."""
    if names is None:
        return None
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    if not isinstance(names, dict):
        raise DatasetError(f"--data {p}: names must be a list or a dict, got {type(names).__name__}; "
                           f"write names: ['a', 'b'] or names: {{0: a, 1: b}}")
    try:
        keys = sorted(int(k) for k in names)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"--data {p}: names dict keys must be class indices 0..nc-1, got "
                           f"{list(names)}") from e
    if keys != list(range(len(keys))):
        raise DatasetError(f"--data {p}: names dict keys must be 0..{len(keys) - 1} without gaps, got {keys}")
    return [str(names[k] if k in names else names[str(k)]) for k in keys]


def _names_and_nc(p: Path, names, nc) -> tuple[list[str], int]:
    """names as a list or an {index: name} dict; nc defaults to len(names) and must agree with it."""
    names = _names_list(p, names)
    if nc is None:
        if names is None:
            raise DatasetError(f"--data {p}: needs nc or names; add 'nc: <number of classes>'")
        nc = len(names)
    try:
        nc = int(nc)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"--data {p}: nc must be an integer, got {nc!r}") from e
    if nc < 1:
        raise DatasetError(f"--data {p}: nc must be >= 1, got {nc}")
    if names is None:
        names = [f"class{i}" for i in range(nc)]
    if len(names) != nc:
        raise DatasetError(f"--data {p}: nc={nc} but {len(names)} names are given; make them agree")
    return names, nc


# --------------------------------------------------------------------------- Darknet .data
def _darknet_options(p: Path, text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise DatasetError(f"{p}:{lineno}: expected key=value, got {line!r}; fix or comment out that line")
        k, v = (s.strip() for s in line.split("=", 1))
        opts[k] = v
    for key in ("classes", "train"):
        if key not in opts:
            raise DatasetError(f"--data {p}: missing '{key}='; add it")
    if not opts.get("valid", opts.get("val")):
        raise DatasetError(f"--data {p}: missing 'valid='; add the validation image list")
    return opts


def _darknet_config(p: Path, text: str) -> DataConfig:
    """Darknet ``key=value`` file: classes, train, valid, test (lists), names (file); other keys kept in extra."""
    if p.resolve() == BUILTIN_DATA.resolve():  # generated on first use; regenerated when out of date
        ensure_builtin()
    opts = _darknet_options(p, text)
    train = [_darknet_path(p, "train", opts["train"])]
    val = [_darknet_path(p, "valid", opts.get("valid", opts.get("val")))]
    test = [_darknet_path(p, "test", opts["test"])] if opts.get("test") else None
    names = None
    if opts.get("names"):
        names_file = _darknet_path(p, "names", opts["names"])
        try:
            lines = names_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"--data {p}: names={opts['names']}: cannot read {names_file} ({e}); "
                               f"it must be a text file with one class name a line") from e
        names = [s.strip() for s in lines if s.strip()]
    names, nc = _names_and_nc(p, names, opts["classes"])
    extra = {k: v for k, v in opts.items() if k not in ("classes", "train", "valid", "val", "test", "names")}
    return DataConfig(p, train[0].parent, train, val, test, nc, names, extra)


def _darknet_path(p: Path, key: str, value: str) -> Path:
    """Darknet paths are written relative to the folder the tools run from; try that, then near the file."""
    q = Path(value)
    if q.is_absolute():
        candidates = [q]
    else:
        here = p.resolve().parent
        candidates = list(dict.fromkeys(c.resolve() for c in (Path.cwd() / q, here / q, here.parent / q)))
    for c in candidates:
        if c.exists():
            return c
    raise DatasetError(f"--data {p}: {key}={value} not found (looked for "
                       f"{' or '.join(str(c) for c in candidates)}); see the comments in {p.name}")


# --------------------------------------------------------------------------- image lists
def is_image(path: str) -> bool:
    """Whether a file name has one of the image extensions the loader reads (IMG_FORMATS)."""
    return path.rsplit(".", 1)[-1].lower() in IMG_FORMATS


def _read_list_file(path: Path) -> list[str]:
    """Image paths listed in a .txt file, one a line.

    Lines starting with ./ or ../ are relative to the list's folder. Other relative lines follow the first
    of them: relative to the list's folder when that file exists there, else to the current folder (the
    Darknet habit of lists written from the tool's folder).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text image list ({e}); a .txt list holds one image path a line") from e
    lines = [s.strip() for s in text.splitlines()]
    lines = [s for s in lines if s and not s.startswith("#")]
    base = path.parent
    plain = next((s for s in lines if not os.path.isabs(s) and not s.startswith(("./", "../"))), None)
    plain_base = base if plain is None or (base / plain).exists() or not Path(plain).exists() else None
    out = []
    for s in lines:
        if os.path.isabs(s):
            out.append(s)
        elif s.startswith(("./", "../")):
            out.append(os.path.normpath(base / s))
        else:
            out.append(os.path.normpath(plain_base / s) if plain_base is not None else os.path.normpath(s))
    return out


def list_image_files(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """Image paths from folders (recursive, sorted), .txt lists and image files, in the order given."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*") if f.is_file() and is_image(f.name))
        elif p.is_file() and p.suffix.lower() == ".txt":
            files += [f for f in _read_list_file(p) if is_image(f)]
        elif p.is_file() and is_image(p.name):
            files.append(str(p))
        else:
            what = "does not exist" if not p.exists() else "is neither an image folder, a .txt list nor an image"
            raise DatasetError(f"{p}: {what}; a dataset split is an image folder, a .txt list of image paths "
                               f"or an image file ({', '.join(IMG_FORMATS)})")
    return files
