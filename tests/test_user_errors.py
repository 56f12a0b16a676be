"""Every user mistake ends in one line naming the file, field or argument and what is valid (never a
traceback, a silent skip or a wrong answer), and nothing a user saved is lost or overwritten."""
from __future__ import annotations

import json
import os
import stat

import cv2
import pytest
import torch

from sharpose import create_model, save_checkpoint
from sharpose.engine.builders import build_val_dataset
from sharpose.engine.config import ConfigError, load_config
from sharpose.data import DataError, read_image
from sharpose.train import main as train_main
from sharpose.training import train
from sharpose.training.jsonlog import read_log

from helpers import DATA_DIR, run_cli

COCO_MINI = DATA_DIR / "coco-mini"
IMAGE = COCO_MINI / "images/000000196141.jpg"  # 640 x 480
SMALL = ["--model", "sharpose_small_256x192", "--set", "depth=1", "--set", "embed_dim=32", "--set", "num_heads=2"]




def assert_one_line(code: int, stderr: str, *expected: str) -> None:
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for text in expected:
        assert text in lines[0], lines[0]


# --- the demo and export commands ------------------------------------------------------------------------

def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    for name, content in [("text.pth", b"hello, this is not a checkpoint"), ("json.pth", b'{"a": 1}')]:
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli(capsys, "demo", IMAGE, *SMALL, "--checkpoint", tmp_path / name, "--out", tmp_path / "o.png")
        assert_one_line(code, err, f"cannot read checkpoint {tmp_path / name}")
        assert "weights_only" not in err  # PyTorch's advice to run the file's code is never passed on


def test_a_checkpoint_of_another_named_model_names_it(tmp_path, capsys):
    torch.save({"state_dict": create_model("vitpose_small_256x192").state_dict()}, tmp_path / "vitpose.pth")
    code, _, err = run_cli(capsys, "demo", IMAGE, "--model", "sharpose_small_256x192", "--checkpoint",
                       tmp_path / "vitpose.pth", "--out", tmp_path / "o.png")
    assert_one_line(code, err, "does not fit sharpose_small_256x192: ",
                    "it fits vitpose_small_256x192: pass --model vitpose_small_256x192")


@pytest.mark.parametrize("setting, expected", [
    ("depth=0", "depth=0 is not valid: expected a whole number >= 1"),
    ("alpha='big'", "alpha='big' is not valid: expected a number"),
    ("heatmap_size=(0, 0)", "heatmap_size=(0, 0) is not valid: expected (H, W)"),
    ("qp_threshold=nan", "qp_threshold='nan' is not valid: expected a number"),
])
def test_set_with_a_bad_value_names_the_setting(tmp_path, capsys, setting, expected):
    code, _, err = run_cli(capsys, "demo", IMAGE, "--model", "sharpose_small_256x192", "--set", setting,
                       "--out", tmp_path / "o.png")
    assert_one_line(code, err, "--set: ", expected)


@pytest.mark.parametrize("argv, expected", [
    (["demo", IMAGE, "--qp-threshold", "nan"], "--qp-threshold: expected a number (or -inf: every crop exits, "
                                                "inf: every crop is refined), got 'nan'"),
    (["demo", IMAGE, "--qp-threshold", "high"], "got 'high'"),
    (["export", "--model", "vitpose_small_256x192", "--format", "torchscript", "--batch-size", "0"],
     "--batch-size: expected a whole number >= 1, got '0'"),
])
def test_bad_numbers_on_the_command_line(capsys, argv, expected):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_line(code, err, expected)


def test_a_box_entirely_outside_the_image(tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", IMAGE, *SMALL, "--bbox", "700,10,50,80", "--out", tmp_path / "o.png")
    assert_one_line(code, err, "--bbox 700,10,50,80 lies entirely outside", "(640x429 pixels)")


def test_a_very_large_box_is_drawn(tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", IMAGE, *SMALL, "--bbox", "10,10,1e12,1e12", "--out", tmp_path / "o.png")
    assert code == 0, err
    assert cv2.imread(str(tmp_path / "o.png")).shape == (429, 640, 3)


def test_nan_detection_score_is_an_error_as_in_evaluation(tmp_path, capsys):
    detections = tmp_path / "det.json"
    detections.write_text('[{"image_id": 196141, "category_id": 1, "bbox": [250, 75, 170, 300], "score": NaN}]')
    code, _, err = run_cli(capsys, "demo", IMAGE, *SMALL, "--det-file", detections, "--out", tmp_path / "o.png")
    assert_one_line(code, err, f"detection 0 of {detections} has score nan: expected a finite number")


def test_a_truncated_jpeg_is_not_decoded_as_grey(tmp_path):
    data = IMAGE.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: the JPEG is truncated"):
        read_image(tmp_path / "cut.jpg")
    assert read_image(IMAGE).shape == (429, 640, 3)


def test_a_failed_demo_leaves_no_empty_folders(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    code, _, _ = run_cli(capsys, "demo", IMAGE, *SMALL, "--checkpoint", tmp_path / "bad.pth",
                     "--out", tmp_path / "new" / "deeper" / "o.png")
    assert code == 1
    assert not (tmp_path / "new").exists()


def test_a_rerun_with_fewer_people_leaves_no_stale_pictures(tmp_path, capsys):
    out = tmp_path / "o.png"
    (tmp_path / "o_person_notes.png").write_bytes(b"a user's file that only looks similar")
    boxes = ["--bbox", "250,75,170,300", "--bbox", "10,10,100,200", "--bbox", "300,200,100,100"]
    assert run_cli(capsys, "demo", IMAGE, *SMALL, *boxes, "--out", out)[0] == 0
    assert run_cli(capsys, "demo", IMAGE, *SMALL, *boxes[:2], "--out", out)[0] == 0
    assert sorted(p.name for p in tmp_path.glob("o_person*")) == ["o_person0.png", "o_person_notes.png"]


def test_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(create_model("vitpose_small_256x192", depth=1, embed_dim=32, num_heads=2), tmp_path / "w.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.pth").stat().st_mode) == 0o644


# --- training and evaluation ------------------------------------------------------------------------------

def tiny(tmp_path, *overrides):
    return load_config("tiny", [
        f"data.root={COCO_MINI}", f"output_dir={tmp_path / 'run'}", "train.eval_interval=0",
        "model.overrides={embed_dim: 32, depth: 1, num_heads: 2, input_size: [128, 96], backend: reference}",
        "train.batch_size=4", "train.log_interval=1", *overrides])


def coco_file(tmp_path, annotations):
    data = json.loads((COCO_MINI / "annotations/test_coco.json").read_text())
    data["annotations"] = annotations(data["annotations"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_an_empty_annotations_list(tmp_path, one_thread):
    path = coco_file(tmp_path, lambda anns: [])
    config = tiny(tmp_path, f"data.val_ann={path}", f"data.train_ann={path}", "train.max_iters=1")
    with pytest.raises(DataError, match="data.val_ann .*ann.json gives no usable person sample"):
        build_val_dataset(config)
    with pytest.raises(DataError, match="data.train_ann .*ann.json gives no usable person sample"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "latest.pth").exists()  # no untrained checkpoint


def test_dropped_annotations_are_counted_and_reported(tmp_path, capsys):
    def spoil(anns):
        anns[0]["area"] = -5.0
        anns[1]["image_id"] = 123456789
        anns[2]["bbox"] = [10, 10, -40, 50]
        return anns
    path = coco_file(tmp_path, spoil)
    dataset = build_val_dataset(tiny(tmp_path, f"data.val_ann={path}"))
    assert dataset.skipped["unknown_image"] == 1 and dataset.skipped["invalid_bbox"] >= 2
    note = capsys.readouterr().err
    assert f"{path}: {len(dataset)} samples; left out: " in note and "1 unknown_image" in note


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, one_thread, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest.pth").write_bytes(b"the first run's weights")
    argv = ["tiny", "--no-progress", *sum((["--set", o] for o in [
        f"data.root={COCO_MINI}", f"output_dir={tmp_path / 'run'}", "train.eval_interval=0",
        "train.max_iters=1", "train.log_interval=1",
        "model.overrides={embed_dim: 32, depth: 1, num_heads: 2, input_size: [128, 96], backend: reference}"]), [])]
    with pytest.raises(SystemExit) as exit_:
        train_main(argv)
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "already holds a run (latest.pth): continue it with --resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "latest.pth").read_bytes() == b"the first run's weights"

    (tmp_path / "run" / ".latest.pth.x1y2.tmp").write_bytes(b"a save killed mid-write")
    train_main([*argv, "--overwrite"])
    summary = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert summary["best_metric"] is None  # never evaluated: null, not -Infinity
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "latest.pth", "log.jsonl"]


def test_resume_drops_log_lines_of_redone_iterations_and_checks_the_batch_size(tmp_path, one_thread):
    train(tiny(tmp_path, "train.max_iters=2"), progress=False)
    log = tmp_path / "run" / "log.jsonl"
    with log.open("a") as f:  # iteration 3 logged, then killed before the next save
        f.write(json.dumps({"mode": "train", "iter": 3, "loss": 1.0}) + "\n")
    latest = tmp_path / "run" / "latest.pth"
    with pytest.raises(Exception, match=r"batch size 4; this run has 1 x 2: resume with the same "
                                         r"\(--set train.batch_size=4"):
        train(tiny(tmp_path, "train.max_iters=3", "train.batch_size=2"), resume=latest, progress=False)
    train(tiny(tmp_path, "train.max_iters=3"), resume=latest, progress=False)
    assert [r["iter"] for r in read_log(log) if r["mode"] == "train"] == [1, 2, 3]


def test_ctrl_c_in_training_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import sharpose.train as train_module

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest.pth").write_bytes(b"saved")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    with pytest.raises(SystemExit) as exit_:
        train_main(["tiny", "--set", f"output_dir={tmp_path / 'run'}", "--set", f"data.root={COCO_MINI}"])
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--resume {tmp_path / 'run' / 'latest.pth'}" in err


@pytest.mark.parametrize("setting, expected", [("depth=0", "depth=0 is not valid"),
                                               ("qp_threshold=.nan", r"qp_threshold=nan is not valid: expected a number \(not NaN\)")])
def test_config_model_settings_are_checked(tmp_path, setting, expected):
    with pytest.raises(ConfigError, match=expected):
        train(tiny(tmp_path, f"model.overrides.{setting}"), progress=False)


def test_metrics_json_is_strict_json(tmp_path, one_thread):
    from sharpose.engine.builders import build_model
    from sharpose.engine.distributed import DistContext
    from sharpose.evaluation.runner import evaluate_model

    config = tiny(tmp_path, "eval.sweep_thresholds=[-.inf, 0.5, .inf]")
    model = build_model(config)
    ctx = DistContext(0, 1, torch.device("cpu"), owns_group=False)
    evaluate_model(model, build_val_dataset(config), config, ctx, output_dir=tmp_path / "eval")
    text = (tmp_path / "eval" / "metrics.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert [row["threshold"] for row in report["sweep"]] == ["-inf", 0.5, "inf"]


def test_eval_with_a_checkpoint_of_another_model_is_one_line(tmp_path, capsys):
    from sharpose.evaluate import main as evaluate_main

    path = tmp_path / "vitpose.pth"
    save_checkpoint(create_model("vitpose_small_256x192", depth=1, embed_dim=32, num_heads=2), path)
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["tiny", str(path), "--set", f"data.root={COCO_MINI}", "--set", "eval.use_gt_bbox=true"])
    assert exit_.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"checkpoint {path} does not fit the model sharpose_small_256x192" in lines[0]
    assert "missing keys (e.g. " in lines[0] and "it was saved from vitpose_small_256x192(depth=1" in lines[0]
