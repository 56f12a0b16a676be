"""Evaluation of a pose model on a config's validation set: COCO AP/AR or MPII PCKh, SHaRPose's
early-exit rate and its Q_thres sweep (paper Figure 6).

`evaluate(config, checkpoint)` is the `python -m sharpose.evaluate` entry point; `evaluate_model` scores
an in-memory model (used during training). Files written to the output directory: results_keypoints.json
(COCO results format, at the configured threshold), metrics.json and, for a SHaRPose sweep,
qthres_sweep.csv and qthres_sweep.png.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from sharpose.checkpoint import load_checkpoint
from sharpose.data import TopDownDataset, load_json
from sharpose.data.io import strict_json
from sharpose.engine.builders import build_model, build_val_dataset
from sharpose.engine.config import Config, ConfigError, check_files
from sharpose.engine.distributed import DistContext, setup_distributed, teardown_distributed
from sharpose.evaluation import (
    coco_results,
    evaluate_coco_results,
    load_coco,
    mpii_head_sizes,
    mpii_pckh,
    write_coco_results,
)
from sharpose.evaluation.inference import CropPredictions, predict
from sharpose.models import PoseModel


class Scorer:
    """Scores keypoints of a dataset pass: COCO AP (rescoring, OKS-NMS, COCOeval) or MPII PCKh."""

    def __init__(self, config: Config, dataset: TopDownDataset) -> None:
        self.config = config
        self.dataset = dataset
        if config.data.dataset == "coco":
            self.metric = "AP"
            self.coco = load_coco(config.data_path(config.data.val_ann))  # read once for every threshold
        else:
            self.metric = "PCKh"
            self.head_sizes = self._head_sizes()

    def _head_sizes(self) -> np.ndarray | None:
        path = self.config.data.head_boxes_file
        if path is None:
            return None
        boxes = np.asarray(load_json(self.config.data_path(path), "MPII head boxes file"), dtype=np.float64)
        if boxes.shape != (len(self.dataset), 4):
            raise ConfigError(f"{self.config.source}: data.head_boxes_file: expected {len(self.dataset)} "
                              f"boxes [x1, y1, x2, y2] (one per val entry), got shape {boxes.shape}")
        return mpii_head_sizes(boxes)

    def coco_results(self, predictions: CropPredictions, keypoints: np.ndarray) -> list[dict[str, Any]]:
        """Rescored, OKS-NMSed results in the COCO format."""
        poses = [
            {"image_id": i, "keypoints": k, "box_score": s, "area": a}
            for i, k, s, a in zip(predictions.image_ids, keypoints, predictions.box_scores, predictions.areas)
        ]
        return coco_results(poses, nms_thr=self.config.eval.nms_thr, vis_thr=self.config.eval.vis_thr)

    def score(self, predictions: CropPredictions, keypoints: np.ndarray) -> dict[str, float]:
        if self.metric == "AP":
            return evaluate_coco_results(self.coco_results(predictions, keypoints), self.coco)
        if self.head_sizes is None:
            return {}  # MPII without head boxes: predictions only
        records = self.dataset.records
        idx = predictions.indices
        return mpii_pckh(keypoints[..., :2], records.joints[idx], records.visible[idx], self.head_sizes[idx])


def evaluate_model(model: PoseModel, dataset: TopDownDataset, config: Config, ctx: DistContext, *,
                   output_dir: str | os.PathLike | None = None, sweep: bool = True,
                   progress: bool = False) -> dict[str, Any] | None:
    """Evaluate `model` (not DDP-wrapped; every process takes part) on `dataset`.

    Returns, on the main process (None elsewhere): 'metric' (the primary metric's name), 'metrics' (at
    the configured early-exit threshold), 'num_samples', 'time' and for SHaRPose 'qp_threshold',
    'exit_rate' and, with `sweep` and eval.sweep_thresholds, 'sweep': rows {threshold, exit_rate,
    metrics}. With `output_dir`, also writes the files listed in the module docstring.
    """
    start = time.perf_counter()
    ev = config.eval
    predictions = predict(model, dataset, ctx, batch_size=ev.batch_size, workers=config.data.workers,
                          flip_test=ev.flip_test, blur_kernel=ev.blur_kernel, amp=config.train.amp,
                          progress=progress)
    if predictions is None:
        return None
    scorer = Scorer(config, dataset)
    report: dict[str, Any] = {"metric": scorer.metric, "num_samples": len(predictions.indices)}
    threshold = ev.qp_threshold if ev.qp_threshold is not None else model.qp_threshold
    if predictions.quality is not None:  # a model with early exit
        report["qp_threshold"] = threshold
    keypoints, exit_rate = predictions.at_threshold(threshold)
    report["metrics"] = scorer.score(predictions, keypoints)
    if exit_rate is not None:
        report["exit_rate"] = exit_rate
    if sweep and predictions.quality is not None and ev.sweep_thresholds:
        report["sweep"] = [threshold_row(scorer, predictions, t) for t in ev.sweep_thresholds]
    report["time"] = time.perf_counter() - start
    if output_dir is not None:
        write_report(report, scorer, predictions, keypoints, Path(output_dir))
    return report


def threshold_row(scorer: Scorer, predictions: CropPredictions, threshold: float) -> dict[str, Any]:
    keypoints, exit_rate = predictions.at_threshold(threshold)
    return {"threshold": threshold, "exit_rate": exit_rate, "metrics": scorer.score(predictions, keypoints)}


def sweep_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The sweep as an aligned text table."""
    lines = [f"{'Q_thres':>8}  {'exit rate':>9}  {metric:>7}"]
    for row in rows:
        value = row["metrics"].get(metric, float("nan"))
        lines.append(f"{row['threshold']:>8.3f}  {row['exit_rate']:>9.3f}  {value:>7.4f}")
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]], metric: str, path: str | os.PathLike) -> None:
    """Metric and exit rate against Q_thres (finite thresholds; +-inf as dashed reference lines)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    finite = [r for r in rows if math.isfinite(r["threshold"])]
    fig = Figure(figsize=(6, 4), tight_layout=True)
    ax = fig.subplots()
    ax.set_xlabel("Q_thres")
    ax.set_ylabel(metric)
    ax.plot([r["threshold"] for r in finite], [r["metrics"].get(metric) for r in finite], "o-", color="C0",
            label=metric)
    for row in rows:
        if not math.isfinite(row["threshold"]):
            label = "all refined" if row["threshold"] > 0 else "all exit"
            ax.axhline(row["metrics"].get(metric), color="C0", linestyle="--", linewidth=0.8)
            ax.annotate(label, (0.01, row["metrics"].get(metric)), xycoords=("axes fraction", "data"), fontsize=8)
    rate = ax.twinx()
    rate.set_ylabel("exit rate")
    rate.set_ylim(-0.02, 1.02)
    rate.plot([r["threshold"] for r in finite], [r["exit_rate"] for r in finite], "s-", color="C1",
              label="exit rate")
    fig.legend(loc="lower left")
    fig.savefig(path, dpi=120)


def write_report(report: dict[str, Any], scorer: Scorer, predictions: CropPredictions, keypoints: np.ndarray,
                 output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    if scorer.metric == "AP":
        results_file = output_dir / "results_keypoints.json"
        write_coco_results(scorer.coco_results(predictions, keypoints), results_file)
        report["results_file"] = str(results_file)
    if "sweep" in report:
        rows = report["sweep"]
        with (output_dir / "qthres_sweep.csv").open("w", encoding="utf-8") as f:
            names = list(rows[0]["metrics"])
            f.write(",".join(["threshold", "exit_rate", *names]) + "\n")
            for row in rows:
                f.write(",".join(str(v) for v in [row["threshold"], row["exit_rate"], *row["metrics"].values()]) + "\n")
        if rows[0]["metrics"]:
            plot_sweep(rows, scorer.metric, output_dir / "qthres_sweep.png")
    # strict JSON: the sweep's +-inf thresholds as the strings "inf" / "-inf", other non-finite values as null
    rows = [{**row, "threshold": row["threshold"] if math.isfinite(row["threshold"]) else str(row["threshold"])}
            for row in report.get("sweep", [])]
    strict = strict_json({**report, **({"sweep": rows} if rows else {})})
    (output_dir / "metrics.json").write_text(json.dumps(strict, indent=1, allow_nan=False))


def evaluate(config: Config, checkpoint: str | os.PathLike, *, output_dir: str | os.PathLike | None = None,
             progress: bool = True) -> dict[str, Any] | None:
    """Load `checkpoint` (any format `load_checkpoint` reads) into the config's model and evaluate it on
    the config's validation set; files go to `output_dir` (default: the config's output_dir). Runs under
    torchrun too (each process takes a share); returns the report on the main process, None elsewhere."""
    check_files(config, training=False)
    ctx = setup_distributed()
    try:
        model = build_model(config)
        load_checkpoint(model, checkpoint)
        model.to(ctx.device)
        dataset = build_val_dataset(config)
        return evaluate_model(model, dataset, config, ctx, output_dir=output_dir or config.output_dir,
                              progress=progress)
    finally:
        teardown_distributed(ctx)
