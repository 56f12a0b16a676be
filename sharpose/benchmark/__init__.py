"""Throughput of SHaRPose against ViTPose, side by side: the logic behind `bench/throughput.py` and
`sharpose bench`.

What is measured, per (model, backend, mode, resolution, batch, exit rate): images per second, ms per
batch, peak memory, GFLOPs per image (fvcore), mean tokens per image, the speed-up over ViTPose of
the same size and resolution measured in the same run, and the FLOP-ratio limit (the speed-up a
SHaRPose row would reach if time scaled with FLOPs).

How
- Random weights. Early exit is controlled by calibrating `qp_threshold` on the benchmark batch
  (`threshold_for_exit_rate`) and checked against the model's own `out.refined`.
- Precision: the model and the batch are converted to the dtype (`model.to(dtype)`), the way an
  inference deployment runs; autocast would re-cast the weights on every call and keep some ops in
  fp32, which measures something else. On the CPU only fp32 is meaningful.
- Timing: each timing is one forward under `torch.inference_mode()`, started on an idle device (CUDA
  events after a synchronize on GPU, `perf_counter` on CPU); warm-up rounds first; every case runs once
  per round, round-robin, so that drift (clocks, other load) hits all of them alike; the median round is
  reported, and the fastest one beside it.
- GFLOPs (`sharpose.flops.FlopCounter`): fvcore on a CPU float32 copy of each configuration, cached per
  configuration (optionally in a JSON file keyed by a hash of the model code). SHaRPose's figure is the
  mean over the achieved exit rate.
- Token budget: SHaRPose's `token_budget` ("fixed" | "adaptive") is passed to `create_model`; tokens per
  image are counted from the model's outputs (`selected`, `refined`), so an adaptive budget reports its
  own mean. GFLOPs are not given for it (its cost depends on the image, fvcore traces one).
- Peak memory (CUDA only): the `max_memory_allocated` rise during one eager forward, plus the model's
  own weights and the input batch. On the CPU the process's peak RSS cannot be attributed to one of the
  interleaved models, so none is reported.

Modules
- `records`: model names, modes and dtypes, the settings of a run, one record per case, the result.
- `calibration`: the `qp_threshold` for an exit rate, the achieved exit rate, tokens per image.
- `environment`: device, versions, commit and load of the machine a run happened on.
- `runners`: the HF VitPose peer, one runner per case, timing, peak memory, CUDA graph / compile modes.
- `core`: the `Benchmark` (build, calibrate, time round-robin), `run_benchmark`, the ViTPose comparison.
- `report`: the header and Markdown table, the JSON file, the plot.
- `training_step`: the training-step mode (`--train`): forward, loss, backward and AdamW step, as training
  runs them, timed round-robin like the inference cases.
- `cli`: the command line (`main(argv)`), behind `bench/throughput.py`, `sharpose bench` and
  `python -m sharpose.benchmark`.
"""
from sharpose.benchmark.calibration import exit_fraction, sharpose_tokens_per_image, threshold_for_exit_rate
from sharpose.benchmark.cli import main
from sharpose.benchmark.core import Benchmark, compare_with_vitpose, run_benchmark
from sharpose.benchmark.environment import environment_info
from sharpose.benchmark.records import (
    DTYPES,
    MODES,
    RESOLUTIONS,
    SIZES,
    TINY_OVERRIDES,
    TOKEN_BUDGETS,
    BenchmarkResult,
    BenchmarkSettings,
    Record,
    Unavailable,
    parse_model_name,
    select_models,
)
from sharpose.benchmark.report import format_header, format_table, plot, write_json
from sharpose.benchmark.training_step import run_training_benchmark
from sharpose.flops.cache import FlopCounter, default_flop_cache, flop_ratio_limit, mean_gflops
from sharpose.flops.published import published_gflops

__all__ = [
    "DTYPES",
    "MODES",
    "RESOLUTIONS",
    "SIZES",
    "TINY_OVERRIDES",
    "TOKEN_BUDGETS",
    "Benchmark",
    "BenchmarkResult",
    "BenchmarkSettings",
    "FlopCounter",
    "Record",
    "Unavailable",
    "compare_with_vitpose",
    "default_flop_cache",
    "environment_info",
    "exit_fraction",
    "flop_ratio_limit",
    "format_header",
    "format_table",
    "main",
    "mean_gflops",
    "parse_model_name",
    "plot",
    "published_gflops",
    "run_benchmark",
    "run_training_benchmark",
    "select_models",
    "sharpose_tokens_per_image",
    "threshold_for_exit_rate",
    "write_json",
]
