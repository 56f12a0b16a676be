"""Backend selection and the device checks shared by the Triton ops."""
import pytest
import torch

import kernels
from kernels import device as kernel_device

CPU = torch.device("cpu")


def test_resolve_backend_names():
    assert kernels.resolve_backend("reference", CPU) == "reference"
    assert kernels.resolve_backend("auto", CPU) == "reference"
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        kernels.resolve_backend("cuda", CPU)


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="got tensors on cpu.*TRITON_INTERPRET=1"):
        kernels.resolve_backend("triton", CPU)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="attention \\(Triton\\) got tensors on cpu"):
        kernels.attention(q, q, q)


@pytest.fixture
def versions(monkeypatch):
    """Pretend other package versions: {"triton": (3, 6), ...}; the verdict is kept once known, so forget it."""
    def pretend(found: dict[str, tuple[int, int]]) -> None:
        monkeypatch.setattr(kernel_device, "_version", lambda package: found[package])
        monkeypatch.setattr(kernel_device, "_interpreter_verdict", [])

    return pretend


@pytest.mark.parametrize("triton_version, numpy_version, works", [
    ((3, 6), (2, 4), False),
    ((3, 6), (2, 3), True),
    ((3, 7), (2, 5), True),
])
def test_interpreter_incompatibility_is_named(monkeypatch, versions, triton_version, numpy_version, works):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    versions({"triton": triton_version, "numpy": numpy_version})
    if works:
        kernel_device.check_kernel_device(CPU, "attention")
    else:
        with pytest.raises(RuntimeError, match="attention: .*needs numpy < 2.4 or triton >= 3.7"):
            kernel_device.check_kernel_device(CPU, "attention")


def test_version_parsing_ignores_local_and_dev_suffixes(monkeypatch):
    monkeypatch.setattr(kernel_device.importlib.metadata, "version", lambda package: "2.13.0+cpu")
    assert kernel_device._version("torch") == (2, 13)
    monkeypatch.setattr(kernel_device.importlib.metadata, "version", lambda package: "3.7rc1")
    assert kernel_device._version("triton") == (3, 7)
