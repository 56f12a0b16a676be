"""COCO keypoint scoring: published reference numbers and the full encode -> decode -> AP path."""
import json

import numpy as np
import pytest
import torch

from sharpose.data import CocoTopDownDataset, DataError
from sharpose.evaluation import (
    STATS_NAMES,
    coco_keypoint_metrics,
    coco_results,
    decode_heatmaps,
    evaluate_coco_results,
    write_coco_results,
)

from helpers import DATA_DIR

COCO_MINI = DATA_DIR / "coco-mini"
ANN = COCO_MINI / "annotations" / "test_coco.json"
EXPECTED = json.loads((COCO_MINI / "expected_metrics.json").read_text())
ALIGNMENT = EXPECTED["mmpose_1x_test_topdown_alignment"]


def assert_stats(result: dict, expected: dict) -> None:
    assert list(result) == list(STATS_NAMES)
    for name in STATS_NAMES:
        assert result[name] == pytest.approx(expected[name], abs=1e-9), name


def example_predictions() -> list[dict]:
    preds = json.loads((COCO_MINI / "predictions" / "example_coco_preds.json").read_text())
    return [
        {
            "image_id": p["image_id"],
            "keypoints": p["keypoints"],
            "box_score": p["score"],
            "area": float(np.prod(np.array(p["scale"]) * 200.0)),
        }
        for p in preds
    ]


def test_example_predictions_as_scored_by_cocoeval():
    # the file's scores used as they are, no NMS: plain COCOeval of the results file
    result = coco_keypoint_metrics(example_predictions(), ANN, rescore=False, nms_thr=None)
    assert_stats(result, EXPECTED["xtcocoapi_example_coco_preds"]["computed_pycocotools"])
    assert result["AP"] == pytest.approx(0.8608896054440609, abs=1e-12)


def alignment_predictions(x_factor, y_factor, score_factor, box_score):
    """mmpose's test_topdown_alignment recipe: perturbed GT of every annotation, file order."""
    preds = []
    for i, ann in enumerate(json.loads(ANN.read_text())["annotations"]):
        kpts = np.array(ann["keypoints"], dtype=np.float32).reshape(17, 3)
        kpts[:, 0] *= x_factor(i)
        kpts[:, 1] *= y_factor(i)
        kpts[:, 2] *= score_factor(i)
        w, h = ann["bbox"][2:]
        area = (w * 1.25) * (h * 1.25)
        preds.append({"image_id": ann["image_id"], "keypoints": kpts, "box_score": box_score(i), "area": area})
    return preds


def test_mmpose_alignment_case1_rescoring_and_oks_nms():
    # Seven poses have every labelled keypoint at v=2, so all get score 0.98 * 1.6 exactly: their
    # order (and AP .75 / AP / AP (M) / AP (L)) comes from tie-breaking. mmpose keeps ties in
    # descending input order in its NMS keep list, and COCOeval sorts stably; coco_results does the
    # same. (An inexact mean would break the tie by rounding noise: AP 0.5304 or 0.5259.)
    preds = alignment_predictions(lambda i: 0.98, lambda i: 1.02, lambda i: 0.8, lambda i: np.float32(0.98))
    assert_stats(coco_keypoint_metrics(preds, ANN), ALIGNMENT["case1_bbox_keypoint_oks_nms"]["published"])


def test_mmpose_alignment_case2_custom_score_and_oks_nms():
    # mmpose 1.x's 'bbox_rle' score (box + mean + max keypoint score) is computed here, in float32 as
    # mmpose does, and passed as the box score without rescoring.
    preds = alignment_predictions(lambda i: 0.98, lambda i: 1.02, lambda i: 0.8, lambda i: np.float32(0.98))
    for p in preds:
        s = p["keypoints"][:, 2]
        p["box_score"] = float(p["box_score"] + np.mean(s) + np.max(s))
    result = coco_keypoint_metrics(preds, ANN, rescore=False)
    assert_stats(result, ALIGNMENT["case2_bbox_rle_oks_nms"]["published"])


def test_mmpose_alignment_case3_soft_oks_nms():
    first = alignment_predictions(
        lambda i: 1 - i / 100, lambda i: 1 + i / 100, lambda i: 1 - i / 100, lambda i: np.float32(1.0)
    )
    second = alignment_predictions(
        lambda i: 1 + i / 100, lambda i: 1 - i / 100, lambda i: 1 - 2 * i / 100,
        lambda i: np.float32(1.0) * np.float32(1 - 2 * i / 100),
    )
    preds = [p for pair in zip(first, second) for p in pair]  # per image, by instance id
    results = coco_results(preds, soft_nms=True)
    assert len(results) == 28  # soft-NMS keeps every pose here (at most 10 per image)
    result = coco_keypoint_metrics(preds, ANN, soft_nms=True)
    assert_stats(result, ALIGNMENT["case3_bbox_keypoint_soft_oks_nms"]["published"])


def test_hard_nms_suppresses_duplicates():
    preds = alignment_predictions(lambda i: 1.0, lambda i: 1.0, lambda i: 1.0, lambda i: 1.0)
    duplicated = preds + [dict(p, box_score=0.5) for p in preds]
    assert len(coco_results(duplicated)) == 14
    assert len(coco_results(duplicated, nms_thr=None)) == 28


@pytest.mark.parametrize("input_size, sigma, kernel", [((256, 192), 2.0, 11), ((384, 288), 3.0, 17)])
def test_ground_truth_through_encode_decode_scores_ap_one(input_size, sigma, kernel):
    ds = CocoTopDownDataset(ANN, COCO_MINI / "images", input_size=input_size, sigma=sigma)
    items = [ds[i] for i in range(len(ds))]
    keypoints = decode_heatmaps(
        torch.stack([it["target"] for it in items]),
        torch.stack([it["center"] for it in items]),
        torch.stack([it["scale"] for it in items]),
        blur_kernel=kernel,
    )
    visible = ds.records.visible > 0
    error = np.linalg.norm(keypoints[..., :2] - ds.records.joints, axis=-1)[visible]
    assert np.median(error) < 0.01  # sub-pixel exact away from the crop border
    preds = [
        {"image_id": it["image_id"], "keypoints": kp, "box_score": it["bbox_score"], "area": it["area"]}
        for it, kp in zip(items, keypoints)
    ]
    result = coco_keypoint_metrics(preds, ANN)
    assert all(value == 1.0 for value in result.values()), result


def test_results_file_round_trip(tmp_path):
    results = coco_results(example_predictions(), rescore=False, nms_thr=None)
    path = tmp_path / "result_keypoints.json"
    write_coco_results(results, path)
    loaded = json.loads(path.read_text())
    assert loaded[0].keys() == {"image_id", "category_id", "keypoints", "score"}
    assert len(loaded[0]["keypoints"]) == 51
    assert evaluate_coco_results(loaded, ANN)["AP"] == pytest.approx(0.8608896054440609, abs=1e-12)


def test_bad_predictions_are_named():
    preds = example_predictions()
    with pytest.raises(ValueError, match="no predictions"):
        coco_keypoint_metrics([], ANN)
    with pytest.raises(ValueError, match="image ids not in the annotation file: \\[123\\]"):
        coco_keypoint_metrics([dict(preds[0], image_id=123)], ANN)
    with pytest.raises(ValueError, match="prediction 1 .* needs a positive 'area'"):
        coco_keypoint_metrics([preds[0], {k: v for k, v in preds[1].items() if k != "area"}], ANN)
    with pytest.raises(ValueError, match="prediction 0 needs image_id, box_score and 17 x 3 keypoints"):
        coco_keypoint_metrics([dict(preds[0], keypoints=[1.0] * 50)], ANN)
    with pytest.raises(ValueError, match="non-finite"):
        coco_keypoint_metrics([dict(preds[0], keypoints=[float("nan")] * 51)], ANN)


def test_bad_annotation_file_is_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="broken.json is not valid JSON"):
        coco_keypoint_metrics(example_predictions(), bad)
