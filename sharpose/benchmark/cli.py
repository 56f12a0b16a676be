"""Throughput of SHaRPose against ViTPose, side by side (random weights; see sharpose/benchmark/).

    python bench/throughput.py                                   # Base pair at 256x192 and 384x288
    python bench/throughput.py --size all --batch-size 64,256 --json out.json --plot out.png
    python bench/throughput.py --models sharpose_base_256x192,vitpose_base_256x192 --exit-rate 0,0.5
    python bench/throughput.py --train --resolution 256x192 --batch-size 64   # training steps instead
    sharpose bench --size small --no-hf                          # the same arguments, from the sharpose command

SHaRPose runs with each backend ("reference"; "triton" on CUDA) at each exit rate (the quality
threshold is calibrated on the benchmark batch so that round(rate * B) samples exit); ViTPose uses
PyTorch SDPA; transformers' VitPose joins as an outside peer when it is installed.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sharpose.benchmark.core import run_benchmark
from sharpose.benchmark.records import (
    DTYPES,
    MODES,
    RESOLUTIONS,
    TINY_OVERRIDES,
    TOKEN_BUDGETS,
    BenchmarkSettings,
    select_models,
)
from sharpose.benchmark.report import format_header, format_table, plot, write_json
from sharpose.benchmark.training_step import run_training_benchmark
from sharpose.flops.cache import default_flop_cache

DEFAULT_EXIT_RATES = [0.0, 0.3, 0.6]


def comma_list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",") if item.strip()]

    return parse


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=comma_list(str), help="comma list of model names (overrides --size)")
    parser.add_argument("--size", choices=("small", "base", "all"), default="base")
    parser.add_argument("--resolution", type=comma_list(str), default=list(RESOLUTIONS),
                        help="comma list among 256x192,384x288 (default both)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default cuda when available, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="default fp32 on CPU, bf16 on GPU")
    parser.add_argument("--batch-size", type=comma_list(int), help="comma list (default 8 on CPU, 64,256 on GPU)")
    parser.add_argument("--exit-rate", type=comma_list(float),
                        help="fractions of the batch exiting after the coarse stage (default 0,0.3,0.6)")
    parser.add_argument("--backends", type=comma_list(str),
                        help="SHaRPose backends (default reference, plus triton on CUDA)")
    parser.add_argument("--token-budget", type=comma_list(str), default=["fixed"],
                        help=f"SHaRPose token budgets among {','.join(TOKEN_BUDGETS)} (default fixed)")
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default 1 on CPU, 5 on GPU)")
    parser.add_argument("--iters", type=int, help="timed rounds, median reported (default 5 on CPU, 20 on GPU)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time each case replayed from CUDA graphs (early exit: around its one host sync)")
    parser.add_argument("--compile", action="store_true",
                        help="also time each case under torch.compile (static shapes, compiled while preparing)")
    parser.add_argument("--no-hf", action="store_true", help="leave out transformers' VitPose peer")
    parser.add_argument("--train", action="store_true",
                        help="time training steps instead (forward, loss, backward, AdamW step; autocast in "
                             "--dtype, float32 weights; every SHaRPose sample runs both stages, as in training)")
    parser.add_argument("--json", type=Path, help="write every record and the environment here")
    parser.add_argument("--plot", type=Path, help="write a PNG of throughput against exit rate here")
    parser.add_argument("--flop-cache", default=str(default_flop_cache()),
                        help="JSON file caching fvcore counts ('none' to disable; default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: one narrow block
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    on_gpu = torch.device(args.device).type == "cuda"
    unknown = set(args.resolution) - set(RESOLUTIONS)
    if unknown:
        sys.exit(f"unknown resolution {sorted(unknown)}; expected among {RESOLUTIONS}")
    unknown = set(args.token_budget) - set(TOKEN_BUDGETS)
    if unknown:
        sys.exit(f"unknown token budget {sorted(unknown)}; expected among {TOKEN_BUDGETS}")
    if args.train and (args.cuda_graphs or args.compile or args.exit_rate is not None):
        sys.exit("--train times eager training steps with no early exit: leave out --cuda-graphs, --compile "
                 "and --exit-rate")
    modes = ["eager"] + ["cuda_graph"] * args.cuda_graphs + ["compile"] * args.compile
    return BenchmarkSettings(
        models=args.models or select_models(args.size, args.resolution),
        device=args.device,
        dtype=args.dtype or ("bf16" if on_gpu else "fp32"),
        batch_sizes=args.batch_size or ([64, 256] if on_gpu else [8]),
        exit_rates=DEFAULT_EXIT_RATES if args.exit_rate is None else args.exit_rate,
        warmup=args.warmup if args.warmup is not None else (5 if on_gpu else 1),
        iters=args.iters if args.iters is not None else (20 if on_gpu else 5),
        backends=args.backends or (["reference", "triton"] if on_gpu else ["reference"]),
        modes=[m for m in MODES if m in modes],
        token_budgets=args.token_budget,
        hf_peer=not (args.no_hf or args.train),
        model_overrides=dict(TINY_OVERRIDES) if args.tiny else {},
        flop_cache=None if args.flop_cache == "none" else Path(args.flop_cache),
        seed=args.seed,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark on the command line `argv`; returns the exit code.

    argv None: this process's own arguments (bench/throughput.py); a list: arguments forwarded by the
    `sharpose bench` command, whose name `prog` then defaults to.
    """
    if prog is None and argv is not None:
        prog = "sharpose bench"
    args = parse_args(argv, prog)
    settings = settings_from_args(args)
    start = time.perf_counter()
    result = (run_training_benchmark if args.train else run_benchmark)(settings)
    command = prog.split() if prog else ["python", "bench/throughput.py"]
    result.environment["command"] = " ".join(command + (sys.argv[1:] if argv is None else argv))
    result.environment["wall_s"] = round(time.perf_counter() - start, 1)
    print(format_header(result))
    print(f"batch sizes {settings.batch_sizes}, warm-up {settings.warmup}, iters {settings.iters} "
          f"(median), models interleaved; wall {result.environment['wall_s']} s")
    print(format_table(result.records))
    for note in result.notes:
        print(f"note: {note}")
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0

