"""The Triton ops as PyTorch operators (`torch.library`), under the namespace `sharpose`.

Each Triton module registers its forward and backward launchers as `torch.ops.sharpose.*` custom
ops with a fake (shape-only) implementation and an autograd formula, so that `torch.compile`
keeps them in one graph and `torch.export` records them as calls. `torch.library.triton_op` (which
would let inductor see the kernels) is not used: its fake tracing launches the kernel on fake
tensors when the kernels are interpreted (TRITON_INTERPRET=1), which the CPU test suite needs.

Going through the dispatcher costs tens of microseconds of Python per call, about as long as a
small attention kernel runs on a GPU. So the public functions launch directly when nothing needs
to see the call (`dispatch_needed`), and use the registered op otherwise.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils._python_dispatch

NAMESPACE = "sharpose"


def tracing() -> bool:
    """Something records the calls instead of (or besides) running them: torch.compile or
    torch.export, a TorchScript trace, or a dispatch mode (fake tensors, a FLOP counter, ...).
    Tensor values cannot be read then."""
    return (
        torch.compiler.is_compiling()
        or torch.utils._python_dispatch.is_in_torch_dispatch_mode()
        or torch.jit.is_tracing()
    )


def dispatch_needed(*tensors: torch.Tensor) -> bool:
    """True when a call must go through the registered op: autograd has to record it (an input
    requires grad) or a trace does; else the launcher can run directly."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t.requires_grad:
                return True
    return tracing()


def define_op(
    name: str,
    impl: Callable,
    fake: Callable,
    *,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
) -> torch._ops.OpOverload:
    """Register `impl` as the functional op `sharpose::<name>` with its fake implementation and, when
    given, its autograd formula; return the op.

    An op is registered once per process: when its module is imported again (importlib.reload), the
    first registration stays, and its functions (those of the first import) keep working.
    """
    namespace = getattr(torch.ops, NAMESPACE)
    if not hasattr(namespace, name):
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
        op.register_fake(fake)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
    return getattr(namespace, name).default
