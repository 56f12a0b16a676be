"""The Triton backend: the same op names and signatures as `kernels.reference`."""
from kernels.fused_attention import attention

__all__ = ["attention"]
