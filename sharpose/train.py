"""`python -m sharpose.train CONFIG [--resume PATH | --overwrite] [--set key=value ...]` (under torchrun for
several GPUs).

CONFIG is a shipped config name (see `sharpose.engine.config.list_configs()`) or a YAML file. An output_dir that
holds an earlier run is refused unless the run resumes it or is told to overwrite it. Ctrl-C stops with
exit code 130 and says how to resume. The summary printed at the end is strict JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sharpose.checkpoint import CheckpointError, CheckpointMismatch
from sharpose.data import DataError
from sharpose.engine.config import ConfigError, list_configs, load_config
from sharpose.training import train
from sharpose.training.jsonlog import strict_json


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
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output_dir that holds an earlier run (its files are deleted)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    config = None
    try:
        config = load_config(args.config, args.overrides)
        summary = train(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err.one_line() if isinstance(err, CheckpointMismatch) else err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"interrupted; {resume_hint(config)}\n")
    if summary is not None:
        summary = strict_json({k: v for k, v in summary.items() if k != "last_eval"})
        json.dump(summary, sys.stdout, indent=1, allow_nan=False)
        print()


def resume_hint(config: object) -> str:
    """How to continue an interrupted run, from what it saved."""
    if config is None:
        return "nothing was trained"
    latest = Path(config.output_dir) / "latest.pth"
    if latest.is_file():
        return (f"continue from the last save ({latest}, written every train.checkpoint_interval iterations, "
                f"or at each epoch end when that is 0) with --resume {latest}")
    return (f"nothing was saved yet ({latest} is written after train.checkpoint_interval iterations, or at the "
            "first epoch end when that is 0); run the command again")


if __name__ == "__main__":
    main()
