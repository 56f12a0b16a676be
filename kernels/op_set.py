"""The op set: the functions every backend module provides (`kernels.ops_for`), and the module
defining the Triton version of each. `kernels.reference` defines all of them in plain PyTorch."""

TRITON_MODULES = {
    "attention": "kernels.fused_attention",
    "attention_with_score": "kernels.fused_attention",
    "compose_tokens": "kernels.token_composition",
    "compose_tokens_padded": "kernels.token_composition",
    "varlen_attention": "kernels.varlen_fused_attention",
}
OPS = tuple(TRITON_MODULES)
