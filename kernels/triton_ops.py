"""The Triton backend: the same op names and signatures as `kernels.reference`."""
from kernels.fused_attention import attention
from kernels.token_composition import compose_tokens, compose_tokens_padded

__all__ = ["attention", "compose_tokens", "compose_tokens_padded"]
