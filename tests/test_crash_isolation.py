"""A kernel that crashes its process is one failed test, not the end of the run.

Under the Triton interpreter an out-of-bounds access reads or writes host memory directly, and
past the mapped pages the process dies (SIGSEGV) with no Python exception to catch. The suite runs
in pytest-xdist worker processes (pyproject.toml): a worker that dies has its test reported as
failed and a new worker runs the rest. Shown here on a planted out-of-bounds kernel, run with the
project's own pytest configuration and one worker, whose replacement finishes the run.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "pyproject.toml"

PLANTED = '''
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch
import triton
import triton.language as tl


@triton.jit
def _copy_from(src, dst, offset):
    cols = tl.arange(0, 16)
    tl.store(dst + cols, tl.load(src + offset + cols))  # no mask: reads wherever offset points


def test_out_of_bounds_read():
    src, dst = torch.zeros(16), torch.empty(16)
    _copy_from[(1,)](src, dst, 1 << 40)


def test_in_bounds_read():
    src, dst = torch.arange(32.0), torch.empty(16)
    _copy_from[(1,)](src, dst, 8)
    assert torch.equal(dst, src[8:24])
'''


@pytest.mark.slow
def test_a_crashing_kernel_is_one_failed_test(tmp_path):
    (tmp_path / "test_planted.py").write_text(textwrap.dedent(PLANTED))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(PROJECT_CONFIG), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-n", "1", str(tmp_path / "test_planted.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 1, report  # tests failed (not 2 = interrupted, not a signal)
    assert "1 failed, 1 passed" in report, report
    assert "crashed while running" in report and "test_out_of_bounds_read" in report, report
