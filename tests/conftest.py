"""Test set-up: without a CUDA device the Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence here, at collection.
Markers: `gpu` tests are skipped (with the marker's reason) where there is no CUDA device;
`slow` marks tests of more than a few seconds on CPU (`-m "not slow"` for a quick run).
Hypothesis: with the CI environment variable set, the "ci" profile runs derandomised (the same
examples on every run) and never more than 25 examples per test.
"""
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist runs one worker process per core (pyproject.toml): torch threads beyond a worker's share
# of the cores would spin against the other workers
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=marker.kwargs.get("reason", "needs a CUDA device")))


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else the CPU under the interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core runner a 2-thread pool thrashes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
