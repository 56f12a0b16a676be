"""GPU-only checks of SHaRPose's control flow, one short run (bench/gpu_suite.sh calls it):

  1. the capturable forward (every sample refines, fixed budget) on CUDA under
     torch.cuda.set_sync_debug_mode("error"): any synchronising call, a host-to-device copy of
     Python data included, raises;
  2. GraphedSHaRPose (CUDA graphs around the one host sync) captured once and replayed at exit
     rates 0, 0.3 and 0.6 against the eager forward.

    python bench/gpu_checks.py [--batch-size 32] [--model sharpose_base_256x192]

Without a CUDA device it says so and exits 0. Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Callable

import torch

import sharpose.models.sharpose as sharpose_module
from sharpose import create_model
from sharpose.benchmark.calibration import threshold_for_exit_rate
from sharpose.models.graphs import GraphedSHaRPose
from sharpose.models.sharpose import SHaRPose

EXIT_RATES = (0.0, 0.3, 0.6)
# fp32 outputs of the same arithmetic on a different number of rows (GEMM blocking only)
RTOL, ATOL = 1e-4, 1e-5


def capturable_forward_never_syncs(model: SHaRPose, images: torch.Tensor) -> str:
    # the input finiteness check is the forward's one read; capture and tracing skip it, and so does this
    is_tracing = sharpose_module.is_tracing
    sharpose_module.is_tracing = lambda: True
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with model.exit_policy(qp_threshold=math.inf):
            assert model.capturable
            out = model(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        sharpose_module.is_tracing = is_tracing
    assert out.refined.all()
    return "no synchronising call"


def graphs_replay_like_eager(model: SHaRPose, images: torch.Tensor) -> str:
    with model.exit_policy(qp_threshold=math.inf):
        quality = model(images).quality
    graphed = GraphedSHaRPose(model, images.shape[0])
    lines = []
    for rate in EXIT_RATES:
        with model.exit_policy(qp_threshold=threshold_for_exit_rate(quality, rate)):
            expected = model(images)
            outs = [graphed(images) for _ in range(2)]  # the second replay finds the graphs' memory written
        for out in outs:
            assert torch.equal(out.refined, expected.refined), f"exit rate {rate}: refined differs"
            assert torch.equal(out.selected, expected.selected), f"exit rate {rate}: selected differs"
            for name in ("quality", "patch_scores", "coarse_heatmaps", "heatmaps"):
                torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=RTOL, atol=ATOL,
                                           msg=lambda m, n=name: f"exit rate {rate}, {n}: {m}")
        diff = (out.heatmaps - expected.heatmaps).abs().max().item()
        lines.append(f"exit rate {rate}: {int(out.refined.sum())}/{images.shape[0]} refined, "
                     f"max |heatmap diff| {diff:.2e}")
    return "; ".join(lines)


def run(name: str, check: Callable[[], str]) -> bool:
    try:
        print(f"ok      {name}: {check()}")
        return True
    except Exception:  # noqa: BLE001 - every check reports, then the exit status says
        print(f"FAILED  {name}\n{traceback.format_exc()}")
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sharpose_base_256x192")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_checks: skipped, no CUDA device (sync debug mode and CUDA graphs need one)")
        return 0
    passed = True
    with torch.inference_mode():
        for backend in ("triton", "reference"):
            torch.manual_seed(0)
            model = create_model(args.model, backend=backend).eval().cuda()
            images = torch.randn(args.batch_size, model.in_chans, *model.input_size, device="cuda")
            passed &= run(f"{backend}: capturable forward under sync debug mode 'error'",
                          lambda: capturable_forward_never_syncs(model, images))
            passed &= run(f"{backend}: CUDA graphs with early exit vs eager",
                          lambda: graphs_replay_like_eager(model, images))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
