"""`python -m sharpose.evaluate CONFIG CHECKPOINT [--set key=value ...] [--output-dir DIR]`.

Prints the metrics (and SHaRPose's early-exit rate and Q_thres sweep) and writes results_keypoints.json,
metrics.json and the sweep's CSV and PNG to the output directory (default: the config's output_dir).
"""
from __future__ import annotations

import argparse
import json

from sharpose.checkpoint import CheckpointError, CheckpointMismatch
from sharpose.data import DataError
from sharpose.engine.config import ConfigError, list_configs, load_config
from sharpose.evaluation.runner import evaluate, sweep_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sharpose.evaluate",
        description="Evaluate a checkpoint on a config's validation set: COCO AP/AR or MPII PCKh, "
                    "SHaRPose's early exits and Q_thres sweep.",
        epilog=f"shipped configs: {', '.join(list_configs())}",
    )
    parser.add_argument("config", help="shipped config name or YAML file")
    parser.add_argument("checkpoint", help="weights: this project's, or a released SHaRPose / ViTPose checkpoint")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. --set eval.flip_test=false (repeatable)")
    parser.add_argument("--output-dir", help="where the result files go (default: the config's output_dir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        report = evaluate(config, args.checkpoint, output_dir=args.output_dir, progress=not args.no_progress)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err.one_line() if isinstance(err, CheckpointMismatch) else err}\n")
    if report is None:
        return
    print(json.dumps(report["metrics"], indent=1))
    if "exit_rate" in report:
        print(f"early exit at Q_thres {report['qp_threshold']}: {report['exit_rate']:.4f} of the crops")
    if "sweep" in report:
        print(sweep_table(report["sweep"], report["metric"]))


if __name__ == "__main__":
    main()
