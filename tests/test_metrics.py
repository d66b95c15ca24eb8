import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from sklearn.metrics import confusion_matrix

from seqmtl.tasks.metrics import ConfusionMatrix, coco_detection_metrics, miou, top1

C = 5


def test_miou_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(C)
    preds, targets = [], []
    for _ in range(3):
        # class 4 never appears in pred nor target
        target = torch.randint(0, C - 1, (2, 17, 23), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        pred = torch.randint(0, C - 1, (2, 17, 23), generator=g)
        cm.update(pred, target)
        preds.append(pred.flatten())
        targets.append(target.flatten())
    cm.update(pred[0], target[0])  # an unbatched [H, W] update
    preds.append(pred[0].flatten())
    targets.append(target[0].flatten())
    p, t = torch.cat(preds).numpy(), torch.cat(targets).numpy()
    keep = t != 255
    ref = confusion_matrix(t[keep], p[keep], labels=list(range(C)))
    np.testing.assert_array_equal(cm.matrix.numpy(), ref)

    tp = np.diag(ref)
    union = ref.sum(0) + ref.sum(1) - tp
    out = miou(cm.matrix)
    assert out["iou_per_class"][C - 1] is None
    np.testing.assert_allclose(out["iou_per_class"][: C - 1], tp[:-1] / union[:-1])
    assert out["miou"] == pytest.approx((tp[:-1] / union[:-1]).mean())
    assert out["pixel_acc"] == pytest.approx(tp.sum() / ref.sum())


def test_miou_perfect() -> None:
    cm = ConfusionMatrix(C)
    target = torch.tensor([[0, 1, 255], [2, 2, 1]])
    cm.update(target.clone(), target)
    out = miou(cm.matrix)
    assert out["miou"] == 1.0 and out["pixel_acc"] == 1.0
    assert out["iou_per_class"] == [1.0, 1.0, 1.0, None, None]


# --- detection -------------------------------------------------------------------------------

# image_id -> [(category_id, [x, y, w, h])]; image 4 has no boxes, category 3 has no GT.
BOXES = {
    1: [(1, [10, 10, 50, 40]), (2, [100, 80, 60, 60]), (1, [200, 150, 80, 90])],
    2: [(2, [30, 40, 120, 100]), (1, [250, 20, 40, 70])],
    3: [(1, [50, 60, 90, 90])],
    4: [],
}
CROWD = (3, 2, [150, 150, 100, 100])  # image_id, category_id, bbox
N_GT = sum(len(v) for v in BOXES.values())


@pytest.fixture(scope="module")
def gt() -> COCO:
    anns = [
        {"image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, boxes in BOXES.items()
        for c, b in boxes
    ]
    i, c, b = CROWD
    anns.append({"image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 1})
    for k, a in enumerate(anns, 1):
        a["id"] = k
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 400, "height": 300} for i in BOXES],
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def preds(shift: float = 0.0, skip: tuple[int, ...] = (), score: float = 1.0) -> list[dict]:
    return [
        {
            "image_id": i,
            "category_id": c,
            "bbox": [x + shift * w, y + shift * h, w, h],
            "score": score,
        }
        for i, boxes in BOXES.items()
        if i not in skip
        for c, (x, y, w, h) in boxes
    ]


SUMMARY = ("map", "map50", "precision", "recall", "f1")


def test_detection_perfect(gt: COCO) -> None:
    out = coco_detection_metrics(gt, preds(), score_threshold=0.5)
    assert {k: out[k] for k in SUMMARY} == dict.fromkeys(SUMMARY, 1.0)
    # GT areas: five medium (32² to 96²), one large (12000), none small; no GT of category 3
    assert out["map_small"] is None and out["ap50_c3"] is None
    assert out["map_medium"] == pytest.approx(1.0) and out["map_large"] == pytest.approx(1.0)
    assert out["ap50_c1"] == pytest.approx(1.0) and out["ap50_c2"] == pytest.approx(1.0)


def test_detection_per_class_and_size(gt: COCO) -> None:
    # category 2 (a medium 60 x 60 box and the only large one, 120 x 100) gets no detections
    dets = [d for d in preds() if d["category_id"] == 1]
    out = coco_detection_metrics(gt, dets, score_threshold=0.5)
    assert out["ap50_c1"] == pytest.approx(1.0) and out["ap50_c2"] == 0.0
    assert out["map50"] == pytest.approx(0.5)  # the mean over the two categories with GT
    assert out["map_large"] == 0.0  # the only large box (12000 px², category 2) is missed


def test_detection_shifted(gt: COCO) -> None:
    small = coco_detection_metrics(gt, preds(shift=0.1), score_threshold=0.5)  # IoU .81/1.19
    assert small["map"] < 1.0 and small["map50"] == 1.0 and small["recall"] == 1.0
    big = coco_detection_metrics(gt, preds(shift=0.4), score_threshold=0.5)  # IoU .36/1.64
    assert big["map"] < small["map"] and big["map50"] < 1.0
    assert big["precision"] == big["recall"] == big["f1"] == 0.0


def test_detection_missing_image_and_hand_count(gt: COCO) -> None:
    fp = {"image_id": 4, "category_id": 3, "bbox": [0, 0, 20, 20]}
    dets = preds(skip=(2,))
    assert coco_detection_metrics(gt, dets, 0.5)["recall"] == pytest.approx((N_GT - 2) / N_GT)
    # a false positive below the threshold is not counted, one above it is
    low = coco_detection_metrics(gt, [*dets, {**fp, "score": 0.3}], 0.5)
    assert low["precision"] == 1.0
    high = coco_detection_metrics(gt, [*dets, {**fp, "score": 0.7}], 0.5)
    # hand count: TP = 6 - 2 = 4, FP = 1, #GT = 6
    assert high["precision"] == pytest.approx(4 / 5) and high["recall"] == pytest.approx(4 / 6)
    assert high["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))


def test_detection_duplicates_and_crowd(gt: COCO) -> None:
    i, c, b = CROWD
    dets = [
        *preds(),
        {**preds()[0], "score": 0.9},  # duplicate of a matched GT -> FP
        {"image_id": i, "category_id": c, "bbox": b, "score": 0.9},  # on the crowd box: ignored
    ]
    out = coco_detection_metrics(gt, dets, 0.5)
    assert out["precision"] == pytest.approx(N_GT / (N_GT + 1)) and out["recall"] == 1.0


def test_detection_no_predictions(gt: COCO) -> None:
    out = coco_detection_metrics(gt, [], score_threshold=0.5)
    assert {k: out[k] for k in SUMMARY} == dict.fromkeys(SUMMARY, 0.0)
    assert out["map_small"] is None and out["map_medium"] == out["map_large"] == 0.0
    assert out["ap50_c1"] == out["ap50_c2"] == 0.0 and out["ap50_c3"] is None
    below = coco_detection_metrics(gt, preds(score=0.1), score_threshold=0.5)
    assert below["precision"] == below["recall"] == 0.0 and below["map"] == 1.0


def test_top1() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, -1.0], [0.0, 0.1, 0.2], [3.0, 0.0, 0.0]])
    target = torch.tensor([1, 0, 0, 2])
    assert top1(logits, target) == 0.5
    assert top1(torch.tensor([1, 0, 2, 2]), target) == 0.75
