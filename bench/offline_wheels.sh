#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package index and whose image has PyTorch, Triton,
# OpenCV, matplotlib, tqdm and PyYAML but not the rest of this project's needs (fvcore for the
# GFLOPs column, pycocotools for COCO metrics):
#
#   bash bench/offline_wheels.sh [DIR]          # here, with PyPI; DIR defaults to .whl
#
# and there, before `bash bench/gpu_suite.sh OUT` (which does this itself when .whl/ exists):
#
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
#
# PYTHON_VERSION (default 3.12) is the GPU machine's Python, for the one compiled wheel (pycocotools).
# fvcore and iopath publish source archives only: they are built here into pure-Python wheels.
set -euo pipefail

DIR=${1:-.whl}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"

# Pure-Python packages (any Python): fvcore and its needs that such images lack; pytest-xdist (with
# execnet) to run the GPU suite's tests in parallel.
"$PYTHON" -m pip wheel -q --no-deps -w "$DIR" fvcore==0.1.5.post20221221 iopath==0.1.10 yacs termcolor \
  pytest-xdist execnet
# pycocotools is compiled: the manylinux wheel for the machine's Python.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR" pycocotools
ls -1 "$DIR"
