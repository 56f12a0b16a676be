"""SHaRPose trains and evaluates on MPII (16 joints, PCKh) end to end, on the bundled mpii-mini, and the
MPII mistakes a user can make get one clear message.

mpii-mini has no head boxes (MPII ships them in mpii_gt_val.mat, which is not bundled), so these tests
write stand-in head boxes around each head top: they exercise the PCKh pipeline, not the official numbers.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from sharpose.engine.config import ConfigError, load_config
from sharpose.data import MPII
from sharpose.evaluate import main as evaluate_main
from sharpose.evaluation.runner import evaluate
from sharpose.training import pose_loss, train
from sharpose.training.jsonlog import read_log

from helpers import DATA_DIR

MPII_MINI = DATA_DIR / "mpii-mini"
PCKH_KEYS = {"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "PCKh", "PCKh@0.1"}


def stand_in_head_boxes(path):
    entries = json.loads((MPII_MINI / "annotations" / "test_mpii.json").read_text())
    boxes = []
    for entry in entries:  # a square of 1/4 of the person's height below the head top
        x, y = entry["joints"][MPII.keypoint_names.index("head_top")]
        side = 50.0 * entry["scale"]
        boxes.append([x - side / 2, y, x + side / 2, y + side])
    path.write_text(json.dumps(boxes))
    return path


def mpii_overrides(tmp_path, heads=True, keypoints=16):
    model = f"{{embed_dim: 64, depth: 2, num_heads: 4, input_size: [128, 128], num_keypoints: {keypoints}, " \
            "drop_path_rate: 0.0, backend: reference}"
    overrides = [f"data.root={MPII_MINI}", "data.dataset=mpii", "data.train_ann=annotations/test_mpii.json",
                 "data.val_ann=annotations/test_mpii.json", "data.train_images=images", "data.val_images=images",
                 "data.input_size=[128, 128]", f"model.overrides={model}", f"output_dir={tmp_path / 'run'}",
                 "train.batch_size=5", "train.epochs=2", "train.eval_interval=1", "train.log_interval=1",
                 "train.quality_start_epoch=0", "eval.batch_size=5", "eval.sweep_thresholds=[]"]
    if heads:
        overrides.append(f"data.head_boxes_file={stand_in_head_boxes(tmp_path / 'heads.json')}")
    return overrides


def test_sharpose_trains_and_evaluates_on_mpii(tmp_path, one_thread):
    config = load_config("tiny", mpii_overrides(tmp_path))
    summary = train(config, progress=False)
    assert summary["iterations"] == 2 and summary["best_checkpoint"] is not None
    log = read_log(tmp_path / "run" / "log.jsonl")
    train_records = [r for r in log if r["mode"] == "train"]
    # the quality loss ran (from epoch 0) with MPII's 16 OKS constants
    assert all(math.isfinite(r["quality_loss"]) for r in train_records) and len(train_records) == 2
    assert [set(r) >= PCKH_KEYS for r in log if r["mode"] == "val"] == [True, True]
    report = evaluate(config, tmp_path / "run" / "latest.pth", output_dir=tmp_path / "eval", progress=False)
    assert report["metric"] == "PCKh" and set(report["metrics"]) == PCKH_KEYS
    assert all(0.0 <= v <= 100.0 for v in report["metrics"].values())


def test_quality_loss_uses_the_datasets_oks_constants():
    from sharpose.models import create_model

    model = create_model("sharpose_small_256x192", embed_dim=64, depth=2, num_heads=4, input_size=(128, 128),
                         num_keypoints=16, backend="reference").train()
    batch = {"target": torch.zeros(2, 16, 32, 32), "target_weight": torch.ones(2, 16, 1),
             "joints": torch.rand(2, 16, 3) * 128, "scale": torch.ones(2, 2)}
    loss = pose_loss(model(torch.randn(2, 3, 128, 128)), batch, quality_lambda=1.0, input_size=(128, 128),
                     sigmas=MPII.sigmas)
    assert torch.isfinite(loss.total)


def test_a_17_keypoint_model_on_mpii_is_refused(tmp_path):
    config = load_config("tiny", mpii_overrides(tmp_path, keypoints=17))
    with pytest.raises(ConfigError, match="predicts 17 keypoints but data.dataset mpii has 16: set "
                                          "model.overrides.num_keypoints: 16"):
        evaluate(config, tmp_path / "whatever.pth", progress=False)


def test_mpii_without_head_boxes_says_what_pckh_needs(tmp_path, capsys):
    argv = ["tiny", str(tmp_path / "none.pth"), *sum((["--set", o] for o in mpii_overrides(tmp_path, heads=False)), [])]
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(argv)
    assert exit_.value.code != 0
    message = capsys.readouterr().err
    assert "data.head_boxes_file is not set: MPII's PCKh divides each error by the person's head size" in message
    assert len(message.strip().splitlines()) == 1
