"""IoU for tests: the project's one numpy IoU (export/boxes.py), for any array-likes."""
from __future__ import annotations

import numpy as np

from export.boxes import iou_matrix


def iou(a, b) -> np.ndarray:
    """[n,4] x [m,4] (or single boxes) x1,y1,x2,y2 -> [n,m] IoU."""
    return iou_matrix(np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4))
