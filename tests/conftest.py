"""Test set-up: without a CUDA device the Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence here, at collection.
Markers: `gpu` tests are skipped (with the marker's reason) where there is no CUDA device;
`slow` marks tests of more than a few seconds on CPU (`-m "not slow"` for a quick run).
Crash isolation: under the Triton interpreter an out-of-bounds access aborts the process, so every
test that takes the `device` fixture runs its body in a forked child there; a crash fails that
test alone. (On a GPU, CUDA cannot be forked and the kernels run compiled.)
Hypothesis: with the CI environment variable set, the "ci" profile runs derandomised (the same
examples on every run) and never more than 25 examples per test.
"""
import os
import signal
import sys
import traceback

import pytest
import torch
from hypothesis import HealthCheck, settings


if not torch.cuda.is_available():
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


def _forked(pyfuncitem) -> None:
    """Run the test function in a forked child and replay its outcome (pass, fail, skip, crash)."""
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's teardown
        # the parent's OpenMP thread pool does not exist here: a parallel region would wait forever
        torch.set_num_threads(1)
        os.close(read_end)
        try:
            pyfuncitem.obj(**args)
            outcome = b"pass\n"
        except pytest.skip.Exception as skip:
            outcome = b"skip\n" + str(skip.msg).encode()
        except BaseException:
            outcome = b"fail\n" + traceback.format_exc().encode()
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(outcome)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    kind, _, detail = report.partition("\n")
    if kind == "pass":
        return
    if kind == "skip":
        pytest.skip(detail)
    if kind == "fail":
        pytest.fail(detail, pytrace=False)
    if os.WIFSIGNALED(status):
        pytest.fail(f"the test process crashed: {signal.Signals(os.WTERMSIG(status)).name}", pytrace=False)
    pytest.fail(f"the test process exited with status {os.WEXITSTATUS(status)} before reporting", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not torch.cuda.is_available() and hasattr(os, "fork") and "device" in pyfuncitem._fixtureinfo.argnames:
        _forked(pyfuncitem)
        return True
    return None


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
