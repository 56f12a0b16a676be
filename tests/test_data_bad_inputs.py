"""Bad data: every case gives an error naming the problem, or a documented, counted skip."""
import json
import shutil

import pytest
from torch.utils.data import DataLoader

from sharpose.data import Augmentation, CocoTopDownDataset, DataError, MpiiTopDownDataset

from helpers import DATA_DIR

COCO_MINI = DATA_DIR / "coco-mini"
ANN = json.loads((COCO_MINI / "annotations" / "test_coco.json").read_text())
DETS = json.loads((COCO_MINI / "person_detection_results" / "test_coco_det_AP_H_56.json").read_text())
IMAGES = COCO_MINI / "images"


def write(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def with_annotation(tmp_path, index: int, **changes) -> str:
    data = json.loads(json.dumps(ANN))
    data["annotations"][index].update(changes)
    return write(tmp_path, "ann.json", data)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="cannot read COCO annotation file .*nope.json"):
        CocoTopDownDataset(tmp_path / "nope.json", IMAGES)


def test_invalid_json(tmp_path):
    path = write(tmp_path, "ann.json", '{"images": [}')
    with pytest.raises(DataError, match="ann.json is not valid JSON: .* line 1 column 13"):
        CocoTopDownDataset(path, IMAGES)


def test_annotation_file_without_images_or_annotations(tmp_path):
    with pytest.raises(DataError, match="needs an 'images' list"):
        CocoTopDownDataset(write(tmp_path, "ann.json", {"annotations": []}), IMAGES)
    images_only = write(tmp_path, "info.json", {"images": ANN["images"]})
    with pytest.raises(DataError, match="info.json needs an 'annotations' list for GT boxes"):
        CocoTopDownDataset(images_only, IMAGES)
    # detections need only the image list (e.g. COCO test-dev's image info file)
    dets = COCO_MINI / "person_detection_results" / "test_coco_det_AP_H_56.json"
    assert len(CocoTopDownDataset(images_only, IMAGES, use_gt_bbox=False, bbox_file=dets)) == 118


def test_image_entry_without_size(tmp_path):
    data = json.loads(json.dumps(ANN))
    del data["images"][2]["width"]
    with pytest.raises(DataError, match=r"images\[2\] needs id, file_name, width and height"):
        CocoTopDownDataset(write(tmp_path, "ann.json", data), IMAGES)


def test_zero_area_box_is_skipped_and_counted(tmp_path):
    path = with_annotation(tmp_path, 0, bbox=[280.0, 44.0, 0.0, 120.0])
    ds = CocoTopDownDataset(path, IMAGES)
    assert len(ds) == 11
    assert ds.skipped == {"invalid_bbox": 1, "no_keypoints": 2}


def test_crowd_is_skipped_and_counted(tmp_path):
    ds = CocoTopDownDataset(with_annotation(tmp_path, 0, iscrowd=1), IMAGES)
    assert len(ds) == 11 and ds.skipped["crowd"] == 1


def test_non_numeric_box_names_the_annotation(tmp_path):
    path = with_annotation(tmp_path, 1, bbox=[1.0, "x", 3.0, 4.0])
    with pytest.raises(DataError, match="annotation id 198196 .*'bbox' is not a list of numbers"):
        CocoTopDownDataset(path, IMAGES)


def test_non_finite_box_names_the_annotation(tmp_path):
    path = with_annotation(tmp_path, 1, bbox=[1.0, float("nan"), 3.0, 4.0])
    with pytest.raises(DataError, match="annotation id 198196 .*'bbox' has non-finite values"):
        CocoTopDownDataset(path, IMAGES)


def test_wrong_keypoint_count_names_the_annotation(tmp_path):
    path = with_annotation(tmp_path, 0, keypoints=ANN["annotations"][0]["keypoints"][:-1])
    with pytest.raises(DataError, match="annotation id 442619 .*'keypoints' has 50 values, expected 51"):
        CocoTopDownDataset(path, IMAGES)


def test_keypoint_outside_image_is_unlabelled_and_counted(tmp_path):
    kpts = list(ANN["annotations"][0]["keypoints"])
    kpts[0:3] = [700.0, 10.0, 2]  # nose right of the 640 px wide image
    ds = CocoTopDownDataset(with_annotation(tmp_path, 0, keypoints=kpts), IMAGES)
    assert len(ds) == 12 and ds.skipped["keypoint_outside_image"] == 1
    assert ds.records.visible[0, 0] == 0 and ds.records.visible[0, 1] == 1
    assert ds[0]["target_weight"][0, 0] == 0


def test_missing_image_names_the_file(tmp_path):
    ds = CocoTopDownDataset(COCO_MINI / "annotations" / "test_coco.json", tmp_path)
    with pytest.raises(DataError, match="image file not found: .*000000000785.jpg \\(sample 0, image_id 785\\)"):
        ds[0]


def test_corrupt_image_names_the_file(tmp_path):
    for image in IMAGES.iterdir():
        shutil.copy(image, tmp_path)
    (tmp_path / "000000040083.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = CocoTopDownDataset(COCO_MINI / "annotations" / "test_coco.json", tmp_path)
    ds[0]
    with pytest.raises(DataError, match="cannot decode image file .*000000040083.jpg"):
        ds[1]


def test_dataloader_worker_error_is_readable(tmp_path):
    ds = CocoTopDownDataset(COCO_MINI / "annotations" / "test_coco.json", tmp_path)
    with pytest.raises(DataError, match="image file not found: .*000000000785.jpg"):
        next(iter(DataLoader(ds, batch_size=2, num_workers=1)))


def det_dataset(tmp_path, detections):
    return CocoTopDownDataset(
        COCO_MINI / "annotations" / "test_coco.json", IMAGES, use_gt_bbox=False,
        bbox_file=write(tmp_path, "dets.json", detections),
    )


def test_zero_area_detection_is_skipped_and_counted(tmp_path):
    dets = json.loads(json.dumps(DETS))
    dets[5]["bbox"][2] = 0.0
    ds = det_dataset(tmp_path, dets)
    assert len(ds) == 117 and ds.skipped == {"invalid_bbox": 1}


def test_detection_of_unknown_image_names_it(tmp_path):
    dets = json.loads(json.dumps(DETS))
    dets[7]["image_id"] = 999
    with pytest.raises(DataError, match="dets.json: detection 7: image_id 999 is not in the annotation file"):
        det_dataset(tmp_path, dets)


def test_detection_without_score_names_it(tmp_path):
    dets = json.loads(json.dumps(DETS))
    del dets[3]["score"]
    with pytest.raises(DataError, match="detection 3 needs category_id, image_id, bbox and a numeric score"):
        det_dataset(tmp_path, dets)


def test_empty_detection_file(tmp_path):
    with pytest.raises(DataError, match="dets.json must be a non-empty JSON list"):
        det_dataset(tmp_path, [])


def test_detection_mode_needs_a_file():
    with pytest.raises(ValueError, match="use_gt_bbox=False needs a bbox_file"):
        CocoTopDownDataset(COCO_MINI / "annotations" / "test_coco.json", IMAGES, use_gt_bbox=False)


def test_mpii_wrong_joint_count_names_the_entry(tmp_path):
    mpii = json.loads((DATA_DIR / "mpii-mini" / "annotations" / "test_mpii.json").read_text())
    mpii[2]["joints"] = mpii[2]["joints"][:15]
    path = write(tmp_path, "mpii.json", mpii)
    with pytest.raises(DataError, match=r"entry 2 \(.*\.jpg\): 'joints' has shape \(15, 2\), expected \(16, 2\)"):
        MpiiTopDownDataset(path, DATA_DIR / "mpii-mini" / "images")


def test_mpii_not_a_list(tmp_path):
    with pytest.raises(DataError, match="must be a JSON list of persons"):
        MpiiTopDownDataset(write(tmp_path, "mpii.json", {"a": 1}), tmp_path)


def test_mpii_missing_scale_names_the_entry(tmp_path):
    mpii = json.loads((DATA_DIR / "mpii-mini" / "annotations" / "test_mpii.json").read_text())
    del mpii[0]["scale"]
    with pytest.raises(DataError, match="entry 0 .*missing 'scale'"):
        MpiiTopDownDataset(write(tmp_path, "mpii.json", mpii), tmp_path)


def test_detections_cannot_be_augmented():
    dets = COCO_MINI / "person_detection_results" / "test_coco_det_AP_H_56.json"
    with pytest.raises(ValueError, match="augmentation needs keypoints"):
        CocoTopDownDataset(
            COCO_MINI / "annotations" / "test_coco.json", IMAGES, use_gt_bbox=False, bbox_file=dets,
            augmentation=Augmentation(),
        )
