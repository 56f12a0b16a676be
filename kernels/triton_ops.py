"""The Triton backend: the same op names and signatures as `kernels.reference`."""
from kernels.fused_attention import attention
from kernels.token_composition import compose_tokens, compose_tokens_padded
from kernels.varlen_fused_attention import varlen_attention

__all__ = ["attention", "compose_tokens", "compose_tokens_padded", "varlen_attention"]
