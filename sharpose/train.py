"""`python -m sharpose.train CONFIG [--resume PATH] [--set key=value ...]` (under torchrun for several GPUs).

CONFIG is a shipped config name (see `sharpose.engine.config.list_configs()`) or a YAML file.
"""
from __future__ import annotations

import argparse
import json
import sys

from sharpose.checkpoint import CheckpointError
from sharpose.data import DataError
from sharpose.engine.config import ConfigError, list_configs, load_config
from sharpose.training import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sharpose.train",
        description="Train a SHaRPose or ViTPose model as a config says "
                    "(under torchrun for several GPUs / nodes).",
        epilog=f"shipped configs: {', '.join(list_configs())}",
    )
    parser.add_argument("config", help="shipped config name or YAML file")
    parser.add_argument("--resume", metavar="PATH", help="continue from a latest.pth training checkpoint")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        summary = train(config, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    if summary is not None:
        json.dump({k: v for k, v in summary.items() if k != "last_eval"}, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
