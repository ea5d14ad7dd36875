"""perf.bench_ocr on a handful of lines: the tool runs and its variants differ as measured."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from perf import bench_ocr  # noqa: E402


def test_bench_ocr_reads_rendered_lines_in_each_variant(ppocr_exports, tmp_path, capsys):
    assert bench_ocr.main(["--lines", "4", "--sizes", "20", "--gaps", "2.2", "--variants", "buckets,chunks-320",
                           "--reports", str(tmp_path)]) == 0
    (report,) = tmp_path.iterdir()
    res = json.loads((report / "results.json").read_text())
    assert res["buckets"]["lines"] == res["chunks-320"]["lines"] == 4
    assert res["buckets"]["exact"] == 4                      # every line, spaces included
    assert res["chunks-320"]["calls"] == res["chunks-320"]["pages"]   # one call: every chunk is 320 px
    assert "| buckets | 4/4 (100%)" in capsys.readouterr().out
    assert bench_ocr.main(["--variants", "nope"]) == 2
