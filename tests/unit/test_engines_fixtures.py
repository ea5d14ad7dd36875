"""The engine tests' small ONNX models and throw-away repository (tests/support/engines.py)
are valid and batch-dynamic."""
from __future__ import annotations

import numpy as np

from tests.support.engines import tinydet_onnx, tinyface_onnx


def test_tiny_models_are_valid_and_batch_dynamic():
    import onnx
    import onnxruntime as ort

    for build, feed_name, outs in ((tinyface_onnx, "faces", ["embeddings"]), (tinydet_onnx, "images", ["scores", "classes"])):
        m = build()
        onnx.checker.check_model(m, full_check=True)
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for b in (1, 3):
            res = sess.run(outs, {feed_name: np.zeros((b, 16, 16, 3), np.uint8)})
            assert all(r.shape[0] == b for r in res)
