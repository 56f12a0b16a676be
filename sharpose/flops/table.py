"""Parameter and FLOP table (fvcore) of the named models and the alpha sweep of paper Table 6, beside
the released code's counts and the papers' figures. Printed by `sharpose flops` and bench/flops.py."""
from __future__ import annotations

from collections.abc import Sequence

import sharpose
from sharpose.flops.counting import count_gflops, count_params
from sharpose.flops.published import ALPHA_SWEEP, PAPER, RELEASED_SHARPOSE, RELEASED_VITPOSE

NOTES = """\
Counted with fvcore at batch 1: a multiply-add is one FLOP; attention matmuls, layer norms and
interpolations counted as fvcore does. SHaRPose rows count a sample that runs both stages; "exit after
coarse" counts a sample whose quality reaches the threshold.
Why SHaRPose's figures are lower than the released code's:
- both stages: our fine stage patch-embeds only the fine children of the selected patches and runs the
  reuse block only on their parents; the released code does both for every patch, then discards the
  unselected ones (e.g. Base 256x192: 112 fine patch embeddings and 28 reuse MLPs fewer, -0.20 GFLOPs).
- exit after coarse: the released code runs the decoder a second time on exited samples' coarse tokens.
ViTPose-B simple: docs/design.md lists 85.81M / 17.17 GFLOPs, the figures of a 1x1 final conv; the released
config (final_conv_kernel=3), mmpose's head and HF's VitPoseSimpleDecoder use a 3x3 conv, as we do."""


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def model_row(name: str, decoder: str) -> str:
    """One table row: our counts of `name` (with ViTPose's `decoder`) beside the released and paper figures."""
    # the published tables differ by family: SHaRPose's has an early-exit column, ViTPose's a decoder choice
    is_sharpose = name.startswith("sharpose")
    model = sharpose.create_model(name, **({} if is_sharpose else {"decoder": decoder}))
    if is_sharpose:
        released_params, released_gflops, released_exit = RELEASED_SHARPOSE[name]
        released_params_m, exit_ours = released_params / 1e6, count_gflops(model, refine=False)
        decoder = "tokens"
    else:
        released_params_m, released_gflops = RELEASED_VITPOSE[(name, decoder)]
        released_exit = exit_ours = None
    paper = PAPER.get(name, (None, None))[1] if decoder != "simple" else None
    return (
        f"| {name} | {decoder} | {count_params(model) / 1e6:.2f}M | {released_params_m:.2f}M | "
        f"{count_gflops(model):.2f} | {released_gflops:.2f} | {fmt(paper, '.1f')} | {fmt(exit_ours)} "
        f"| {fmt(released_exit)} |"
    )


def model_table(names: Sequence[str] | None = None) -> list[str]:
    """Markdown rows for `names` (default: every named model; ViTPose-B 256x192 with both decoders)."""
    rows = [
        "| model | decoder | params (ours) | params (released) | GFLOPs (ours) | GFLOPs (released) | GFLOPs (paper) "
        "| exit after coarse (ours) | exit after coarse (released) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names or sharpose.list_models():
        decoders = ["classic", "simple"] if name == "vitpose_base_256x192" else ["classic"]
        rows.extend(model_row(name, decoder) for decoder in decoders)
    return rows


def alpha_table() -> list[str]:
    rows = ["| model | alpha | GFLOPs (ours) | GFLOPs (released) | GFLOPs (paper) |", "|---|---|---|---|---|"]
    for (name, alpha), (released, paper) in ALPHA_SWEEP.items():
        ours = count_gflops(sharpose.create_model(name, alpha=alpha))
        rows.append(f"| {name} | {alpha} | {ours:.2f} | {released:.2f} | {paper:.1f} |")
    return rows


def flops_report(names: Sequence[str] | None = None) -> str:
    """The model table, then (for the full set of models only) the alpha sweep, then the notes."""
    parts = ["\n".join(model_table(names))]
    if not names:
        parts.append("Alpha sweep (paper Table 6), all samples refined:\n" + "\n".join(alpha_table()))
    parts.append(NOTES)
    return "\n\n".join(parts)
