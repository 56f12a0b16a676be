"""The Triton backend: the op set (`kernels.op_set`) with the names and signatures of `kernels.reference`."""
import importlib

from kernels.op_set import OPS, TRITON_MODULES

__all__ = list(OPS)

globals().update({name: getattr(importlib.import_module(TRITON_MODULES[name]), name) for name in OPS})
