"""Parameter and FLOP table (fvcore) for the eight models and the alpha sweep of paper Table 6,
beside the released code's counts and the papers' figures.

    python bench/flops.py
"""
from __future__ import annotations

import argparse

import sharpose
from sharpose.flops import count_gflops, count_params
from sharpose.published import ALPHA_SWEEP, PAPER, RELEASED_SHARPOSE, RELEASED_VITPOSE


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def model_table() -> list[str]:
    rows = [
        "| model | decoder | params (ours) | params (released) | GFLOPs (ours) | GFLOPs (released) | GFLOPs (paper) "
        "| exit after coarse (ours) | exit after coarse (released) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sharpose.list_models():
        decoders = ["classic", "simple"] if name == "vitpose_base_256x192" else ["classic"]
        for decoder in decoders:
            is_sharpose = name.startswith("sharpose")
            model = sharpose.create_model(name, **({} if is_sharpose else {"decoder": decoder}))
            params = count_params(model)
            if is_sharpose:
                released_params, released_gflops, released_exit = RELEASED_SHARPOSE[name]
                released_params_m, exit_ours = released_params / 1e6, count_gflops(model, refine=False)
                decoder = "tokens"
            else:
                released_params_m, released_gflops = RELEASED_VITPOSE[(name, decoder)]
                released_exit = exit_ours = None
            paper = PAPER.get(name, (None, None))[1] if decoder != "simple" else None
            rows.append(
                f"| {name} | {decoder} | {params / 1e6:.2f}M | {released_params_m:.2f}M | {count_gflops(model):.2f} "
                f"| {released_gflops:.2f} | {fmt(paper, '.1f')} | {fmt(exit_ours)} | {fmt(released_exit)} |"
            )
    return rows


def alpha_table() -> list[str]:
    rows = ["| model | alpha | GFLOPs (ours) | GFLOPs (released) | GFLOPs (paper) |", "|---|---|---|---|---|"]
    for (name, alpha), (released, paper) in ALPHA_SWEEP.items():
        ours = count_gflops(sharpose.create_model(name, alpha=alpha))
        rows.append(f"| {name} | {alpha} | {ours:.2f} | {released:.2f} | {paper:.1f} |")
    return rows


NOTES = """\
Counted with fvcore at batch 1: a multiply-add is one FLOP; attention matmuls, layer norms and
interpolations counted as fvcore does. SHaRPose rows count a sample that runs both stages; "exit after
coarse" counts a sample whose quality reaches the threshold.
Why SHaRPose's figures are lower than the released code's:
- both stages: our fine stage patch-embeds only the fine children of the selected patches and runs the
  reuse block only on their parents; the released code does both for every patch, then discards the
  unselected ones (e.g. Base 256x192: 112 fine patch embeddings and 28 reuse MLPs fewer, -0.20 GFLOPs).
- exit after coarse: the released code runs the decoder a second time on exited samples' coarse tokens.
ViTPose-B simple: DESIGN.md lists 85.81M / 17.17 GFLOPs, the figures of a 1x1 final conv; the released
config (final_conv_kernel=3), mmpose's head and HF's VitPoseSimpleDecoder use a 3x3 conv, as we do."""


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("\n".join(model_table()))
    print()
    print("Alpha sweep (paper Table 6), all samples refined:")
    print("\n".join(alpha_table()))
    print()
    print(NOTES)


if __name__ == "__main__":
    main()
