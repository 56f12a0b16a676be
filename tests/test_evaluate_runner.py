"""Evaluation runner: the full inference path scores ground truth perfectly; SHaRPose's early-exit rate
and Q_thres sweep from a single pass agree with running the model at each threshold; the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sharpose import create_model, save_checkpoint
from sharpose.engine.builders import build_val_dataset
from sharpose.engine.config import load_config
from sharpose.engine.distributed import DistContext
from sharpose.evaluate import main as evaluate_main
from sharpose.evaluation import coco_keypoint_metrics, decode_heatmaps
from sharpose.evaluation.inference import predict
from sharpose.evaluation.runner import evaluate_model
from sharpose.models import PoseModel, PoseOutput

from helpers import DATA_DIR

COCO_MINI = DATA_DIR / "coco-mini"
MPII_MINI = DATA_DIR / "mpii-mini"
CPU = DistContext(0, 1, torch.device("cpu"), owns_group=False)


def tiny_config(tmp_path, *overrides):
    return load_config("tiny", [f"data.root={COCO_MINI}", f"output_dir={tmp_path}",
                                "model.overrides.backend=reference", *overrides])


class GroundTruthModel(PoseModel):
    """A stub pose model answering each crop of the dataset with its target heatmaps (and a flipped
    crop with the flipped targets, so that flip test averages the target with itself)."""

    def __init__(self, dataset):
        super().__init__()
        items = [dataset[i] for i in range(len(dataset))]
        self.images = torch.stack([it["image"] for it in items])
        self.targets = torch.stack([it["target"] for it in items])
        self.flip_pairs = dataset.info.flip_pairs

    def forward(self, images):
        out = []
        for image in images:
            if (self.images == image).flatten(1).all(1).any():
                out.append(self.targets[(self.images == image).flatten(1).all(1)][0])
            else:  # a flipped crop
                match = (self.images.flip(3) == image).flatten(1).all(1)
                out.append(mirror_back(self.targets[match], self.flip_pairs)[0])
        return PoseOutput(torch.stack(out))


@pytest.mark.parametrize("flip_test", [False, True])
def test_ground_truth_through_the_evaluation_path_scores_ap_one(tmp_path, flip_test):
    config = tiny_config(tmp_path, f"eval.flip_test={str(flip_test).lower()}")
    dataset = build_val_dataset(config)
    assert len(dataset) == 12
    report = evaluate_model(GroundTruthModel(dataset), dataset, config, CPU, output_dir=tmp_path)
    assert report["metric"] == "AP" and report["num_samples"] == 12
    assert all(value == 1.0 for value in report["metrics"].values()), report["metrics"]
    results = json.loads((tmp_path / "results_keypoints.json").read_text())
    assert len(results) == 12 and set(results[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["AP"] == 1.0


def test_mpii_pckh_of_ground_truth(tmp_path):
    entries = json.loads((MPII_MINI / "annotations" / "test_mpii.json").read_text())
    heads = []
    for entry in entries:  # a head box 1/4 of the person's height wide, around the head top
        x, y = entry["joints"][9]
        size = 50.0 * entry["scale"]
        heads.append([x - size / 2, y, x + size / 2, y + size])
    (tmp_path / "heads.json").write_text(json.dumps(heads))
    overrides = [f"data.root={MPII_MINI}", "data.dataset=mpii", "data.val_ann=annotations/test_mpii.json",
                 "data.val_images=images", "data.input_size=[256, 256]", f"data.head_boxes_file={tmp_path}/heads.json"]
    config = load_config("tiny", overrides)
    dataset = build_val_dataset(config)
    report = evaluate_model(GroundTruthModel(dataset), dataset, config, CPU)
    assert report["metric"] == "PCKh"
    assert set(report["metrics"]) == {"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "PCKh", "PCKh@0.1"}
    assert all(value == 100.0 for value in report["metrics"].values()), report["metrics"]

    no_heads = load_config("tiny", overrides[:-1])
    assert evaluate_model(GroundTruthModel(dataset), dataset, no_heads, CPU)["metrics"] == {}


def mirror_back(heatmaps, flip_pairs):
    """The flipped crop's heatmaps in the unflipped crop, written out: swap each left/right pair of
    channels, reverse the width."""
    swapped = heatmaps.clone()
    for left, right in flip_pairs:
        swapped[:, left], swapped[:, right] = heatmaps[:, right], heatmaps[:, left]
    return swapped.flip(-1)


def flip_test_heatmaps(model, images, flip_pairs, coarse=False):
    """The model's final (or coarse) heatmaps averaged with the flipped crop's, computed directly."""
    def pick(out):
        return out.coarse_heatmaps if coarse else out.heatmaps
    return 0.5 * (pick(model(images)) + mirror_back(pick(model(images.flip(3))), flip_pairs))


def test_qthres_sweep_from_one_pass_matches_running_each_threshold(tmp_path, one_thread):
    torch.manual_seed(1)
    model = create_model("sharpose_small_256x192", embed_dim=64, depth=4, num_heads=4, input_size=(128, 96),
                         drop_path_rate=0.0, backend="reference").eval()
    config = tiny_config(tmp_path)
    dataset = build_val_dataset(config)
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    images = batch["image"]
    with torch.no_grad():
        model.qp_threshold = math.inf
        quality = torch.cat([model(images).quality, model(images.flip(3)).quality]).numpy()
    middle = float(np.median(quality))
    thresholds = [-math.inf, float(quality.min()), middle, float(quality.max()) + 1e-3, math.inf]
    config = tiny_config(tmp_path, f"eval.sweep_thresholds={thresholds}".replace("inf", ".inf"),
                         f"eval.qp_threshold={middle}", "eval.flip_test=true")
    report = evaluate_model(model, dataset, config, CPU, output_dir=tmp_path)

    rows = report["sweep"]
    assert [r["threshold"] for r in rows] == thresholds
    rates = [r["exit_rate"] for r in rows]
    assert rates[0] == 1.0 and rates[-1] == 0.0
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # fewer exits as the threshold rises
    assert rates[2] == np.mean(quality >= middle) and report["exit_rate"] == rates[2]
    assert model.qp_threshold == math.inf  # evaluation restored the model's threshold

    def decoded(heatmaps):
        return decode_heatmaps(heatmaps, batch["center"], batch["scale"], blur_kernel=11)

    def ap(keypoints):
        preds = [{"image_id": i, "keypoints": k, "box_score": s, "area": a}
                 for i, k, s, a in zip(batch["image_id"].tolist(), keypoints, batch["bbox_score"].tolist(),
                                       batch["area"].tolist())]
        return coco_keypoint_metrics(preds, config.data_path(config.data.val_ann))

    one_pass = predict(model, dataset, CPU, batch_size=8, workers=0, flip_test=True, blur_kernel=11)
    with torch.no_grad():
        coarse = decoded(flip_test_heatmaps(model, images, dataset.info.flip_pairs, coarse=True))
        fine = decoded(flip_test_heatmaps(model, images, dataset.info.flip_pairs))
        # the real early exit at the median threshold, the model run batch by batch as in deployment
        model.qp_threshold = middle
        early = decoded(torch.cat([flip_test_heatmaps(model, images[i:i + 8], dataset.info.flip_pairs)
                                   for i in range(0, len(images), 8)]))
    # -inf: every crop exits after the coarse stage; +inf: every crop is refined
    for threshold, direct, row in ((-math.inf, coarse, rows[0]), (middle, early, rows[2]), (math.inf, fine, rows[-1])):
        np.testing.assert_allclose(one_pass.at_threshold(threshold)[0], direct, rtol=0, atol=1e-3)
        assert row["metrics"] == ap(direct)
    assert report["metrics"] == rows[2]["metrics"]
    assert not np.allclose(coarse, fine, atol=1.0)  # the stages do differ

    csv = (tmp_path / "qthres_sweep.csv").read_text().splitlines()
    assert csv[0].startswith("threshold,exit_rate,AP,") and len(csv) == 1 + len(thresholds)
    assert (tmp_path / "qthres_sweep.png").stat().st_size > 1000


def test_evaluate_cli_with_detection_boxes(tmp_path, capsys, one_thread):
    torch.manual_seed(0)
    model = create_model("sharpose_small_256x192", embed_dim=64, depth=4, num_heads=4, input_size=(128, 96),
                         drop_path_rate=0.0, backend="reference")
    save_checkpoint(model, tmp_path / "tiny.pth")
    evaluate_main([
        "tiny", str(tmp_path / "tiny.pth"), "--no-progress", "--output-dir", str(tmp_path / "eval"),
        "--set", f"data.root={COCO_MINI}", "--set", "model.overrides.backend=reference",
        "--set", "eval.use_gt_bbox=false", "--set", "eval.det_bbox_thr=0.3",
        "--set", "eval.bbox_file=person_detection_results/test_coco_det_AP_H_56.json",
    ])
    out = capsys.readouterr().out
    assert '"AP"' in out and "early exit at Q_thres 0.99" in out and "Q_thres  exit rate" in out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_samples"] == 33  # detections with score >= 0.3
    assert len(report["sweep"]) == 6
    assert json.loads((tmp_path / "eval" / "results_keypoints.json").read_text())
