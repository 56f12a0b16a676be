"""The Triton ops as PyTorch operators (`torch.library`), under the namespace `sharpose`.

Each Triton module registers its forward and backward launchers as `torch.ops.sharpose.*` custom
ops with a fake (shape-only) implementation and an autograd formula, so that `torch.compile`
keeps them in one graph and `torch.export` records them as calls. `torch.library.triton_op` (which
would let inductor see the kernels) is not used: its fake tracing launches the kernel on fake
tensors when the kernels are interpreted (TRITON_INTERPRET=1), which the CPU test suite needs.

Going through the dispatcher costs tens of microseconds of Python per call, about as long as a
small attention kernel runs on a GPU, and several times that with an autograd formula. So a
`KernelOp` takes the registered op only when a trace records the call; in eager mode it runs the
same forward, context and backward functions as a `torch.autograd.Function` when an input needs a
gradient, and the plain implementation otherwise (`call_path` says which).
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


# How a call of a Triton op runs (`call_path`)
LAUNCH = "launch"  # nothing records it: the launcher directly
AUTOGRAD = "autograd"  # eager, an input needs a gradient: a torch.autograd.Function
TRACED = "traced"  # a trace records it: the registered op


def call_path(*inputs: object) -> str:
    """LAUNCH, AUTOGRAD or TRACED for a call on `inputs` (those that are not tensors, which the op's
    checks then name, need no gradient)."""
    if tracing():
        return TRACED
    if torch.is_grad_enabled():
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                return AUTOGRAD
    return LAUNCH


class KernelOp:
    """One Triton op: registered as `sharpose::<name>` (with its fake implementation and, when
    given, its autograd formula) and callable as `op(*args)`, which picks the cheapest path that
    records what must be recorded (see the module docstring). `op.registered` is the OpOverload.

    An op is registered once per process: when its module is imported again (importlib.reload), the
    first registration stays, and its functions (those of the first import) keep working.
    """

    def __init__(
        self,
        name: str,
        impl: Callable,
        fake: Callable,
        *,
        backward: Callable | None = None,
        setup_context: Callable | None = None,
    ) -> None:
        namespace = getattr(torch.ops, NAMESPACE)
        if not hasattr(namespace, name):
            op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
            op.register_fake(fake)
            if backward is not None:
                op.register_autograd(backward, setup_context=setup_context)
        self.registered: torch._ops.OpOverload = getattr(namespace, name).default
        self.impl = impl
        self.function = None if backward is None else _autograd_function(name, impl, backward, setup_context)

    def __call__(self, *args):
        return self.run(call_path(*args), *args)

    def run(self, path: str, *args):
        """Run on the path (`call_path`) the caller has already chosen."""
        if path == TRACED:
            return self.registered(*args)
        if path == AUTOGRAD and self.function is not None:
            return self.function.apply(*args)
        return self.impl(*args)


def _autograd_function(name: str, impl: Callable, backward: Callable, setup_context: Callable) -> type:
    """A `torch.autograd.Function` over the functions registered as the op's autograd formula.

    Its forward takes `ctx` and calls `setup_context` itself: with a separate `setup_context`
    staticmethod, `Function.apply` binds the arguments through `inspect.signature` on every call,
    which would cost more than the rest of the call."""

    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    return type(f"{name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
    })
