"""Under the Triton interpreter a kernel test that crashes the process (an out-of-bounds access
aborts it) fails alone: the other tests still run and report (tests/conftest.py forks them)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent

CASES = '''
import os
import pytest

def test_crashes(device):
    os.abort()

def test_fails(device):
    assert 1 == 2

def test_skips(device):
    pytest.skip("a reason")

def test_passes(device):
    assert device.type == "cpu"
'''


@pytest.mark.skipif(torch.cuda.is_available() or not hasattr(os, "fork"),
                    reason="isolation applies to interpreted kernels on a machine without CUDA")
def test_a_crash_fails_one_test(tmp_path):
    (tmp_path / "test_cases.py").write_text(CASES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    summary = proc.stdout.strip().splitlines()[-1]
    assert "2 failed, 1 passed, 1 skipped" in summary, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "crashed: SIGABRT" in proc.stdout
