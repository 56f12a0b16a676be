"""Throughput of SHaRPose against ViTPose, side by side: the main job (random weights; the code is in
sharpose/benchmark/, and `sharpose bench` takes the same arguments).

    python bench/throughput.py                                   # Base pair at 256x192 and 384x288
    python bench/throughput.py --size all --batch-size 64,256 --json out.json --plot out.png
    python bench/throughput.py --models sharpose_base_256x192,vitpose_base_256x192 --exit-rate 0,0.5

Options in brief (`--help` for all): the models (--models, or --size and --resolution); --device,
--dtype, --batch-size; SHaRPose's --exit-rate, --backends and --token-budget; --warmup and --iters
rounds; --cuda-graphs and --compile as extra modes; --no-hf to leave out transformers' VitPose;
--json and --plot outputs; --flop-cache, --seed, --no-progress. --train times training steps instead
(forward, loss, backward, AdamW step; autocast in --dtype).
"""
from sharpose.benchmark.cli import main

raise SystemExit(main())
