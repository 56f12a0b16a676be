"""The `sharpose` command line: demo pictures and JSON, export round trips, one-line errors, help."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import DATA_DIR, run_cli
from sharpose import cli, create_model, save_checkpoint
from sharpose.data import warp_points
from sharpose.demo import PersonPrediction, crop_box
from sharpose.export import exportable, run_exported
from sharpose.visualize import (
    CENTRE,
    LEFT,
    RIGHT,
    SELECTED,
    PersonLayout,
    crop_to_panel,
    patch_rectangle,
    person_figure,
    upscale,
)

IMAGE = DATA_DIR / "coco-mini/images/000000196141.jpg"
IMAGE_ID = 196141
DET_FILE = DATA_DIR / "coco-mini/person_detection_results/test_coco_det_AP_H_56.json"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_ARGS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
PALETTE = {LEFT, RIGHT, CENTRE}


def gt_boxes(count: int) -> list[list[float]]:
    annotations = json.loads((DATA_DIR / "coco-mini/annotations/test_coco.json").read_text())["annotations"]
    return [a["bbox"] for a in annotations if a["image_id"] == IMAGE_ID and a["num_keypoints"] > 0][:count]


def bbox_args(boxes: list[list[float]]) -> list[str]:
    return [arg for box in boxes for arg in ("--bbox", ",".join(map(str, box)))]




def read_png(path: Path) -> np.ndarray:
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert picture is not None, f"{path} is not a readable PNG"
    return picture


def panel(picture: np.ndarray, layout: PersonLayout, index: int) -> np.ndarray:
    x, y = layout.panel_origin(index)
    h, w = layout.panel_size
    return picture[y : y + h, x : x + w]


def joints_drawn(picture: np.ndarray, points: np.ndarray) -> bool:
    """A joint colour within one pixel of each of the (x, y) `points` inside `picture` (a later joint's
    anti-aliased rim may cover a centre), and at least one such point."""
    h, w = picture.shape[:2]
    inside = [(x, y) for x, y in np.round(points).astype(int) if 1 <= x < w - 1 and 1 <= y < h - 1]
    return bool(inside) and all(
        any(tuple(int(c) for c in pixel) in PALETTE for pixel in picture[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3))
        for x, y in inside
    )


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------

def test_demo_named_model_writes_pictures_and_json(tmp_path, capsys):
    boxes = gt_boxes(2)
    out = tmp_path / "pose.png"
    code, stdout, stderr = run_cli(capsys, "demo", IMAGE, *bbox_args(boxes), "--model", "sharpose_small_256x192",
                               "--out", out, "--kpt-thr", 0)
    assert code == 0, stderr

    results = json.loads((tmp_path / "pose.json").read_text())
    assert json.loads(stdout) == results
    assert len(results) == 2
    for result, box in zip(results, boxes):
        assert result["image_id"] == IMAGE_ID and result["category_id"] == 1
        assert len(result["keypoints"]) == 51
        assert isinstance(result["quality"], float) and isinstance(result["refined"], bool)
        assert result["bbox"] == pytest.approx(box, abs=0.01)

    image = cv2.imread(str(IMAGE))
    scene = read_png(out)
    assert scene.shape == image.shape
    model_input = (256, 192)
    layout = PersonLayout(model_input, 3)
    for i, (result, box) in enumerate(zip(results, boxes)):
        picture = read_png(tmp_path / f"pose_person{i}.png")
        assert picture.shape[:2] == layout.size
        keypoints = np.array(result["keypoints"]).reshape(17, 3)
        *_, warp, crop = crop_box(image, box, model_input)
        crop_panel = upscale(crop)

        # (1) skeleton: a joint colour at each keypoint
        assert joints_drawn(panel(picture, layout, 0), crop_to_panel(warp_points(keypoints[:, :2], warp)))
        # (2) attention: JET colours blended over the whole crop
        attention = panel(picture, layout, 1).astype(float)
        assert np.abs(attention - crop_panel).mean() > 10
        # (3) selection: patch outlines, the unselected patches dimmed
        selection = panel(picture, layout, 2)
        assert result["refined"]
        assert (selection == SELECTED).all(axis=-1).sum() > 1000
        assert selection.astype(float).mean() < crop_panel.astype(float).mean()
        # the scene: the joints in image coordinates
        assert joints_drawn(scene, keypoints[:, :2])


def test_demo_vitpose_draws_only_the_skeleton_panel(tmp_path, capsys):
    out = tmp_path / "vit.png"
    code, _, stderr = run_cli(capsys, "demo", IMAGE, *bbox_args(gt_boxes(1)), "--model", "vitpose_small_256x192",
                          *TINY_ARGS, "--out", out, "--json", tmp_path / "other.json")
    assert code == 0, stderr
    assert read_png(tmp_path / "vit_person0.png").shape[:2] == PersonLayout((256, 192), 1).size
    (result,) = json.loads((tmp_path / "other.json").read_text())
    assert len(result["keypoints"]) == 51 and result["quality"] is None and result["refined"] is None


def test_demo_whole_image_without_boxes(tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "demo", IMAGE, "--model", "sharpose_small_256x192", *TINY_ARGS,
                               "--out", tmp_path / "whole.png", "--qp-threshold=-inf")
    assert code == 0, stderr
    (result,) = json.loads(stdout)
    height, width = cv2.imread(str(IMAGE)).shape[:2]
    assert result["bbox"] == [0, 0, width, height]
    assert result["refined"] is False  # every sample exits at Q_thres = -inf
    assert (tmp_path / "whole_person0.png").is_file()


def test_demo_detection_file_boxes_of_this_image(tmp_path, capsys):
    detections = json.loads(DET_FILE.read_text())
    expected = sum(d["image_id"] == IMAGE_ID and d["score"] >= 0.9 for d in detections)
    code, stdout, stderr = run_cli(capsys, "demo", IMAGE, "--det-file", DET_FILE, "--det-score-thr", 0.9,
                               "--model", "sharpose_small_256x192", *TINY_ARGS, "--out", tmp_path / "det.png")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert len(results) == expected > 1
    assert all(len(r["keypoints"]) == 51 for r in results)
    assert all((tmp_path / f"det_person{i}.png").is_file() for i in range(expected))


def test_person_figure_draws_every_overlay_on_a_black_crop():
    """On a black crop every non-black pixel of a panel is an overlay."""
    grid, input_size = (8, 6), (256, 192)
    keypoints = np.column_stack([np.linspace(20, 170, 17), np.linspace(30, 230, 17), np.ones(17)])
    person = PersonPrediction(
        box=(0, 0, 192, 256), box_score=1.0, center=np.zeros(2), scale=np.ones(2),
        warp=np.array([[1.0, 0, 0], [0, 1.0, 0]]), crop=np.zeros((*input_size, 3), np.uint8), keypoints=keypoints,
        quality=0.5, refined=True, patch_scores=np.arange(48, dtype=np.float32), selected=np.array([47, 0, 9]),
    )
    layout = PersonLayout(input_size, 3)
    picture = person_figure(0, person, grid, threshold=0.3)
    assert picture.shape[:2] == layout.size

    skeleton, attention, selection = (panel(picture, layout, i) for i in range(3))
    assert joints_drawn(skeleton, crop_to_panel(keypoints[:, :2]))
    assert (attention.max(axis=-1) > 0).all()  # the colour map covers the whole crop
    assert not np.array_equal(attention[:64, :64], attention[-64:, -64:])  # lowest vs highest score
    outlined = (selection == SELECTED).all(axis=-1)
    for patch in range(48):
        x0, y0, x1, y1 = patch_rectangle(patch, grid, selection.shape)
        if patch in person.selected:
            assert outlined[(y0 + y1) // 2, x0] and outlined[y0, (x0 + x1) // 2]
        elif all(max(abs(patch // 6 - s // 6), abs(patch % 6 - s % 6)) > 1 for s in person.selected):
            assert not outlined[y0:y1, x0:x1].any()  # away from the selected patches: nothing drawn


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------

EXPORT_FORMATS = [
    "torchscript",
    "exported-program",
    pytest.param("onnx", marks=pytest.mark.skipif(
        not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")),
        reason="ONNX export needs the onnx and onnxruntime packages (pip install onnx onnxruntime)")),
]


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
@pytest.mark.parametrize("name", ["sharpose_small_256x192", "vitpose_small_256x192"])
def test_export_round_trip(tmp_path, capsys, name, fmt):
    model = create_model(name, **TINY)
    save_checkpoint(model, tmp_path / "tiny.pth")
    out = tmp_path / "exported"
    code, stdout, stderr = run_cli(capsys, "export", "--model", name, *TINY_ARGS, "--checkpoint", tmp_path / "tiny.pth",
                               "--format", fmt, "--out", out, "--batch-size", 2)
    assert code == 0, stderr
    assert "max |exported - eager|" in stdout

    wrapped = exportable(model)
    images = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        expected = wrapped(images)
    actual = run_exported(fmt, out, images)
    assert len(actual) == len(expected) == (5 if name.startswith("sharpose") else 1)
    for want, got in zip(expected, actual):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_export_fails_when_outputs_differ_beyond_tolerance(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "export", "--model", "vitpose_small_256x192", *TINY_ARGS,
                          "--format", "torchscript", "--out", tmp_path / "m.pt", "--atol", -1)
    assert code == 1
    assert "differs from the eager model" in stderr.splitlines()[-1]


# ---------------------------------------------------------------------------------------------------
# errors: one line, non-zero exit, a traceback only with --debug
# ---------------------------------------------------------------------------------------------------

def wrong_arch_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "other.pth"
    save_checkpoint(create_model("sharpose_small_256x192", depth=2, embed_dim=32, num_heads=2), path)
    return path


def plain_state_dict(tmp_path: Path) -> Path:
    path = tmp_path / "plain.pth"
    torch.save(create_model("vitpose_small_256x192", **TINY).state_dict(), path)
    return path


def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "broken.jpg"
    path.write_text("not a JPEG")
    return path


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "out.png"


DEMO = ["--model", "sharpose_small_256x192", *TINY_ARGS]
ERROR_CASES = {
    "missing image": (lambda t: ["demo", t / "nowhere.jpg"], "does not exist"),
    "unreadable image": (lambda t: ["demo", not_an_image(t), "--out", t / "o.png"], "cannot decode image file"),
    "bad bbox": (lambda t: ["demo", IMAGE, "--bbox", "10,20,30"], "bad box '10,20,30'"),
    "unknown model": (lambda t: ["demo", IMAGE, "--model", "sharpose_base_256x129"],
                      "unknown model 'sharpose_base_256x129'; did you mean sharpose_base_256x192?"),
    "missing checkpoint": (lambda t: ["demo", IMAGE, "--checkpoint", t / "none.pth"], "none.pth does not exist"),
    "wrong checkpoint": (
        lambda t: ["demo", IMAGE, *DEMO, "--checkpoint", wrong_arch_checkpoint(t), "--out", t / "o.png"],
        "mis-shaped keys (e.g. "),
    "plain state dict of another model": (
        lambda t: ["demo", IMAGE, *DEMO, "--checkpoint", plain_state_dict(t), "--out", t / "o.png"],
        "was it saved from another model? pass the matching --model"),
    "unwritable output": (lambda t: ["demo", IMAGE, *DEMO, "--out", under_a_file(t)], "cannot write --out"),
    "not a png": (lambda t: ["demo", IMAGE, *DEMO, "--out", t / "o.jpg"], "must be a .png file"),
    "export without a model": (lambda t: ["export", "--format", "onnx"], "--model"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line(tmp_path, capsys, case):
    make_argv, expected = ERROR_CASES[case]
    code, _, stderr = run_cli(capsys, *make_argv(tmp_path))
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sharpose: error: ") and expected in lines[0]
    assert "Traceback" not in stderr


def test_wrong_checkpoint_names_the_model_it_came_from(tmp_path, capsys):
    argv = ERROR_CASES["wrong checkpoint"][0](tmp_path)
    _, _, stderr = run_cli(capsys, *argv)
    assert "does not fit sharpose_small_256x192: " in stderr
    assert "pass --model sharpose_small_256x192 --set depth=2 --set embed_dim=32 --set num_heads=2" in stderr


@pytest.mark.parametrize("case", ["unreadable image", "wrong checkpoint", "unwritable output"])
def test_debug_shows_the_traceback(tmp_path, capsys, case):
    code, _, stderr = run_cli(capsys, *ERROR_CASES[case][0](tmp_path), "--debug")
    assert code == 1
    assert "Traceback (most recent call last)" in stderr
    assert stderr.strip().splitlines()[-1].startswith("sharpose: error: ")


def test_error_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sharpose", "demo", str(tmp_path / "nowhere.jpg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sharpose: error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_forwarded_command_missing_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(cli.FORWARDED, "bench", ("sharpose.no_such_module", "benchmarks"))
    code, _, stderr = run_cli(capsys, "bench", "--size", "base")
    assert code == 1
    assert stderr.strip() == ("sharpose: error: 'sharpose bench' is not available in this version: "
                              "sharpose.no_such_module has no main(argv)")


# ---------------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------------

def test_help_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "sharpose", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("demo", "export", "flops", "train", "eval", "bench"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", ["demo", "export", "flops", "train", "eval", "bench"])
def test_subcommand_help(capsys, command):
    code, stdout, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "usage:" in stdout


def test_flops_table_of_one_model(capsys):
    code, stdout, _ = run_cli(capsys, "flops", "--model", "vitpose_small_256x192")
    assert code == 0
    assert "| vitpose_small_256x192 | classic | 24.29M |" in stdout
