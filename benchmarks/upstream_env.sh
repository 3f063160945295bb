#!/usr/bin/env bash
# Make a separate virtual environment with upstream YOLOv5 v7.0 (the PyPI package yolov5==7.0.14) for the
# side-by-side throughput benchmark (benchmarks/bench_throughput.py). The toolkit never imports it.
#
#   bash benchmarks/upstream_env.sh            # creates .venv-upstream (git-ignored) next to .venv
#   UPSTREAM_VENV=/tmp/y5 BASE_VENV=.venv bash benchmarks/upstream_env.sh
#
# The new environment sees the toolkit environment's packages through a .pth file, so both sides of the
# comparison run the very same torch, torchvision, numpy and OpenCV builds; only what upstream needs on top
# (pandas, seaborn, ultralytics, ...) is installed into it. Upstream's own opencv-python wheel is removed
# again so that the headless OpenCV of the base environment is the one imported (same build, no libGL).
# Exit status 0 when `import yolov5` works afterwards; anything else means upstream is not available.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_VENV="${BASE_VENV:-$ROOT/.venv}"
UPSTREAM_VENV="${UPSTREAM_VENV:-$ROOT/.venv-upstream}"
UPSTREAM_SPEC="${UPSTREAM_SPEC:-yolov5==7.0.14}"
PY="$UPSTREAM_VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import yolov5, torch, cv2" 2>/dev/null; then
    echo "upstream environment ready: $UPSTREAM_VENV ($("$PY" -c 'import yolov5; print(yolov5.__version__)'))"
    exit 0
fi
if [ ! -x "$BASE_VENV/bin/python" ]; then
    echo "no toolkit environment at $BASE_VENV (run 'make test' first)" >&2
    exit 1
fi

base_site="$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
base_python="$("$BASE_VENV/bin/python" -c 'import sys; print(sys._base_executable)')"
"$base_python" -m venv "$UPSTREAM_VENV"
up_site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Appended after the environment's own site-packages: what is installed here wins, the rest is shared.
echo "$base_site" > "$up_site/_toolkit_base.pth"

"$PY" -m pip install -q --disable-pip-version-check "$UPSTREAM_SPEC"
# Upstream's utils/general.py imports pkg_resources, which setuptools dropped after 80; torch's metadata asks
# for setuptools >= 77, so an older one goes in without dependency resolution (torch does not use it to run).
"$PY" -c "import pkg_resources" 2>/dev/null ||
    "$PY" -m pip install -q --disable-pip-version-check --no-deps "setuptools<70"
if "$PY" -m pip show -q opencv-python >/dev/null 2>&1; then
    "$PY" -m pip uninstall -q -y opencv-python
fi
"$PY" -c "import yolov5, torch, cv2; print('upstream environment ready:', '$UPSTREAM_VENV', '(yolov5', yolov5.__version__, ', torch', torch.__version__, ', cv2', cv2.__version__ + ')')"
