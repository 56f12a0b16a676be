"""The throughput benchmark (sharpose.benchmark, bench/throughput.py) on tiny configurations."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpose import create_model
from sharpose.benchmark import (
    TINY_OVERRIDES,
    BenchmarkSettings,
    FlopCounter,
    flop_ratio_limit,
    format_table,
    mean_gflops,
    run_benchmark,
    threshold_for_exit_rate,
)

ROOT = Path(__file__).resolve().parent.parent
TINY_MODELS = ["sharpose_small_256x192", "vitpose_small_256x192"]
# fvcore is a dependency, but the GPU image lacks it: there the GFLOPs checks are skipped
requires_fvcore = pytest.mark.skipif(not FlopCounter.fvcore_available(), reason="fvcore is not installed")


def exits(quality: torch.Tensor, threshold: float) -> int:
    return int((quality >= threshold).sum())


@pytest.fixture(scope="module")
def tiny_result():
    settings = BenchmarkSettings(
        models=TINY_MODELS, batch_sizes=[2], exit_rates=[0.0, 0.5], warmup=1, iters=1,
        backends=["reference", "triton"], hf_peer=False, model_overrides=dict(TINY_OVERRIDES), progress=False,
    )
    return json.loads(json.dumps(run_benchmark(settings).to_json()))  # as a --json reader sees it


def test_records_one_per_combination(tiny_result):
    keys = [(r["model"], r["backend"], r["exit_rate"]) for r in tiny_result["records"]]
    assert sorted(keys, key=str) == sorted([
        ("vitpose_small_256x192", "sdpa", None),
        ("sharpose_small_256x192", "reference", 0.0), ("sharpose_small_256x192", "reference", 0.5),
        ("sharpose_small_256x192", "triton", 0.0), ("sharpose_small_256x192", "triton", 0.5),
    ], key=str)
    env = tiny_result["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "fp32" and env["torch"] == torch.__version__


def test_records_fields(tiny_result):
    ok = [r for r in tiny_result["records"] if r["status"] == "ok"]
    assert {r["backend"] for r in ok} == {"sdpa", "reference"}
    for r in ok:
        assert r["batch_size"] == 2 and r["mode"] == "eager" and len(r["times_ms"]) == 1
        assert isinstance(r["img_per_s"], float) and r["img_per_s"] > 0
        assert r["ms_per_batch"] == r["ms_min"] == pytest.approx(r["times_ms"][0])
        assert r["img_per_s"] == pytest.approx(2e3 / r["ms_per_batch"])
        assert r["tokens_per_image"] > 0
        assert r["gflops_per_image"] > 0 or not FlopCounter.fvcore_available()
        assert r["peak_mem_mib"] is None  # not attributable on the CPU
    # the Triton kernels are not timed on the CPU: reported, not crashed
    for r in tiny_result["records"]:
        if r["backend"] == "triton":
            assert r["status"] == "unavailable" and "CUDA" in r["reason"]


@requires_fvcore
def test_records_compare_with_vitpose(tiny_result):
    records = {(r["family"], r["backend"], r["exit_rate"]): r for r in tiny_result["records"]}
    vit = records[("vitpose", "sdpa", None)]
    assert vit["speedup_vs_vitpose"] == pytest.approx(1.0) and vit["flop_ratio_limit"] is None
    full, half = records[("sharpose", "reference", 0.0)], records[("sharpose", "reference", 0.5)]
    assert (full["achieved_exit_rate"], half["achieved_exit_rate"]) == (0.0, 0.5)
    assert full["qp_threshold"] == math.inf
    for r in (full, half):
        assert r["speedup_vs_vitpose"] == pytest.approx(r["img_per_s"] / vit["img_per_s"])
        assert r["speedup_vs_vitpose_min"] == pytest.approx(vit["ms_min"] / r["ms_min"])
        assert r["flop_ratio_limit"] == pytest.approx(vit["gflops_per_image"] / r["gflops_per_image"])
    assert half["gflops_per_image"] < full["gflops_per_image"] and half["tokens_per_image"] < full["tokens_per_image"]


def test_table_lists_reasons(tiny_result):
    from sharpose.benchmark import Record

    table = format_table([Record(**r) for r in tiny_result["records"]])
    assert table.count("\n| sharpose_small_256x192 |") == 4 and "unavailable [1]" in table
    assert "[1] the Triton kernels are timed on CUDA only" in table


def test_flop_arithmetic():
    assert mean_gflops(17.0, 6.0, 0.0) == 17.0 and mean_gflops(17.0, 6.0, 1.0) == 6.0
    assert mean_gflops(17.0, 6.0, 0.5) == pytest.approx(11.5)
    assert flop_ratio_limit(43.6, 32.7) == pytest.approx(1.333, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threshold_for_exit_rate_with_ties(dtype):
    quality = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.5, 0.5, 0.4, 0.4], dtype=dtype)
    # reachable exit counts: 0, 2, 4, 5, 7, 8; for 1 and 6 the two nearest are equally close: fewer win
    for rate, expected in [(0.0, 0), (0.25, 2), (0.5, 4), (1.0, 8), (0.125, 0), (0.75, 5), (0.875, 7)]:
        threshold = threshold_for_exit_rate(quality, rate)
        assert exits(quality, threshold) == expected, rate
        assert exits(quality.float(), threshold) == expected  # the threshold is one of the values itself
    assert threshold_for_exit_rate(quality, 0.0) == math.inf and threshold_for_exit_rate(quality, 1.0) == -math.inf
    with pytest.raises(ValueError):
        threshold_for_exit_rate(quality, 1.5)


@pytest.mark.parametrize("duplicated", [False, True])
def test_calibrated_model_exits_exactly(duplicated):
    """A real SHaRPose in eval mode, with the calibrated threshold, exits round(rate * B) samples;
    duplicated images give tied qualities in pairs, so every wanted count stays reachable."""
    model = create_model("sharpose_small_256x192", **TINY_OVERRIDES).eval()
    B = 8
    images = torch.randn(B // 2 if duplicated else B, 3, 256, 192)
    images = images.repeat_interleave(2, dim=0) if duplicated else images
    with torch.inference_mode():
        model.qp_threshold = math.inf
        quality = model(images).quality
        if duplicated:
            assert quality.unique().numel() <= B // 2
        for rate in (0.0, 0.25, 0.5, 1.0):
            model.qp_threshold = threshold_for_exit_rate(quality, rate)
            out = model(images)
            assert int((~out.refined).sum()) == round(rate * B), rate
            assert torch.equal(out.refined, quality < model.qp_threshold)


def test_cli_end_to_end(tmp_path):
    json_path, png_path = tmp_path / "out.json", tmp_path / "out.png"
    command = [
        sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--device", "cpu",
        "--models", ",".join(TINY_MODELS), "--batch-size", "2", "--exit-rate", "0,0.5", "--warmup", "1",
        "--iters", "1", "--no-hf", "--no-progress", "--flop-cache", str(tmp_path / "flops.json"),
        "--json", str(json_path), "--plot", str(png_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "| sharpose_small_256x192 | reference | eager | fixed | 2 | 0.50 |" in done.stdout
    result = json.loads(json_path.read_text())
    assert len(result["records"]) == 3 and all(r["status"] == "ok" for r in result["records"])
    assert result["environment"]["command"].startswith("python bench/throughput.py --tiny")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if FlopCounter.fvcore_available():
        assert json.loads((tmp_path / "flops.json").read_text())["entries"]  # the counts were cached


def test_cuda_graph_cases_say_why_they_cannot_run():
    """On the CPU every CUDA-graph case, with or without early exit, is reported as needing CUDA."""
    settings = BenchmarkSettings(
        models=["sharpose_small_256x192"], batch_sizes=[2], exit_rates=[0.0, 0.5], warmup=0, iters=1,
        modes=["cuda_graph"], backends=["reference"], hf_peer=False, model_overrides=dict(TINY_OVERRIDES),
        progress=False,
    )
    reasons = {r.exit_rate: (r.status, r.reason) for r in run_benchmark(settings).records}
    assert reasons[0.0] == ("unavailable", "CUDA graphs need a CUDA device")
    assert reasons[0.5] == ("unavailable", "CUDA graphs need a CUDA device")
