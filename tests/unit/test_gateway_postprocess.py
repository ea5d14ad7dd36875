"""gateway/postprocess.py: kept rows gathered flat across images and split back per
image, in original pixels, with per-image scales."""
from __future__ import annotations

import numpy as np

from gateway import postprocess
from gateway.service import Frames


def frames(scales, sizes) -> Frames:
    n = len(scales)
    return Frames(np.zeros((n, 4, 4, 3), np.uint8), np.array(scales, np.float64),
                  np.array(sizes, np.float64))


def test_objects_split_per_image_with_their_own_scale():
    boxes = np.zeros((3, 4, 4), np.float32)
    boxes[0, :2] = [[10, 10, 20, 20], [0, 0, 700, 5]]
    boxes[2, 0] = [5, 5, 50, 50]
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.95, 0, 0, 0], [0.6, 0.3, 0, 0]], np.float32)
    classes = np.array([[0, 2, 1, 1], [5, 0, 0, 0], [-1, 80, 0, 0]], np.int32)
    count = np.array([3, 0, 2], np.int32)       # image 1 has no valid rows at all
    f = frames([[0.5, 0.5], [1, 1], [0.25, 0.5]], [[1280, 720], [10, 10], [100, 100]])
    out = postprocess.objects(boxes, scores, classes, count, f, 0.25, 2)
    assert [len(o) for o in out] == [2, 0, 2]   # limit 2 on image 0; 0.1 is under 0.25
    assert out[0][0] == {"label": "person", "class_id": 0, "score": 0.9,
                         "box": [20.0, 20.0, 40.0, 40.0]}
    assert out[0][1]["box"] == [0.0, 0.0, 1280.0, 10.0]          # clipped to the image
    assert out[2][0]["box"] == [20.0, 10.0, 100.0, 100.0]        # x / 0.25, y / 0.5, clipped
    assert [o["label"] for o in out[2]] == ["unknown", "unknown"]
    assert [o["class_id"] for o in out[2]] == [-1, 80]


def test_nothing_kept_gives_empty_lists():
    f = frames([[1, 1]] * 2, [[8, 8]] * 2)
    z = np.zeros((2, 5), np.float32)
    assert postprocess.objects(np.zeros((2, 5, 4), np.float32), z, z.astype(np.int32),
                               np.zeros(2, np.int32), f, 0.5, 10) == [[], []]
    assert postprocess.faces(np.zeros((2, 5, 4), np.float32), z, np.zeros((2, 5, 5, 2)),
                             np.zeros((2, 5, 3)), np.full(2, 5), f, 0.5, 10) == [[], []]


def test_faces_and_lines_map_landmarks_and_polygons():
    f = frames([[0.5, 0.5], [2, 2]], [[100, 100], [100, 100]])
    scores = np.array([[0.9, 0.2], [0.8, 0.7]], np.float32)
    lms = np.arange(2 * 2 * 5 * 2, dtype=np.float32).reshape(2, 2, 5, 2)
    emb = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    out = postprocess.faces(np.full((2, 2, 4), 10, np.float32), scores, lms, emb,
                            np.array([2, 2]), f, 0.5, 5)
    assert [len(o) for o in out] == [1, 2]
    assert out[0][0]["landmarks"][1] == [4.0, 6.0] and out[0][0]["box"] == [20.0] * 4
    assert out[1][1]["landmarks"][0] == [15.0, 15.5] and out[1][1]["embedding"] == [9, 10, 11]
    no_emb = postprocess.faces(np.zeros((2, 2, 4), np.float32), scores, lms, emb,
                               np.array([2, 2]), f, 0.5, 5, with_embeddings=False)
    assert no_emb[1][0]["embedding"] is None
    texts = np.array([[b"caf\xc3\xa9", b"x"], [b"a", b"b"]], dtype=object)
    lines = postprocess.text_lines(texts, np.full((2, 2, 8), 8, np.float32), scores,
                                   np.array([1, 2]), f, 0.5, 5)
    assert [[ln["text"] for ln in per] for per in lines] == [["café"], ["a", "b"]]
    assert lines[1][0]["polygon"] == [4.0] * 8
