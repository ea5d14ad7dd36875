"""`make bench-encoded` (python -m perf.bench_encoded) at its smallest: one tritonserver of
zero-time stand-ins with the real decode step and pipelines, three real gateways. It must
exit 0, print every table with sane values (what the kernel counted agrees with what the
gateway says it sent; the frame is 640x640x3 bytes; encoded sends the file), and leave no
process behind."""
from __future__ import annotations

import json
import re

from tests.support import processes
from tests.support.polling import wait_for
from tests.support.triton import require_triton

FRAME_BYTES = 640 * 640 * 3


def _table(text: str, first: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    head, rows = cells(lines[start]), []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, cells(line))))
    return rows


def _num(text: str) -> float:
    return float(text.replace(",", "").rstrip("x"))


def test_bench_encoded_prints_its_tables(tmp_path, monkeypatch, capsys):
    """Its entry point in this process (what the make target runs, less an interpreter start)."""
    from perf import bench_encoded

    require_triton()
    tag = processes.new_tag()
    monkeypatch.setenv(processes.TAG, tag)        # inherited by every process it starts
    try:
        rc = bench_encoded.main(["--sizes", "1280x720", "--seconds", "0.3", "--concurrency", "1",
                                 "--requests", "2", "--step-seconds", "0.1", "--decode-batch", "1",
                                 "--bls-batch", "1", "--work", str(tmp_path)])
    finally:
        wait_for(lambda: not processes.tagged(tag), 20, "every process the bench started to exit")
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    assert re.search(r"^CPU: .+, avx512_bf16 (yes|no), \d+ usable cores$", out, re.M), out
    wire = {r["mode"]: r for r in _table(out, "photo")}
    assert set(wire) == {"pixels-wire", "pixels-shm", "encoded"}
    jpeg = _num(wire["encoded"]["file B"])
    assert _num(wire["pixels-wire"]["metric B/img"]) == FRAME_BYTES
    assert _num(wire["encoded"]["metric B/img"]) == jpeg           # the client's file, unchanged
    for mode in ("pixels-wire", "encoded"):                       # the kernel saw what was claimed
        assert 1.0 <= _num(wire[mode]["kernel B/img (gateway->Triton)"]) / _num(wire[mode]["metric B/img"]) < 1.05
    assert _num(wire["pixels-shm"]["kernel B/img (gateway->Triton)"]) < 4096   # a region name, no frame
    load = {r["mode"]: r for r in _table(out, "mode")}
    assert set(load) == {"pixels-wire", "pixels-shm", "encoded"}
    for r in load.values():
        assert int(r["requests"]) > 0 and r["errors"] == "0", r
        assert 0 < _num(r["p50 ms"]) <= _num(r["p95 ms"]) and _num(r["img/s"]) > 0, r
        assert _num(r["gateway CPU ms"]) > 0 and _num(r["tritonserver+stubs CPU ms"]) > 0, r
    steps = {r["step"]: r for r in _table(out, "step")}
    assert set(steps) == {"decode 1280x720", "faces", "ocr"}
    for r in steps.values():
        assert r["batch"] == "1" and _num(r["img/s"]) > 0 and _num(r["img/s per core"]) > 0, r
    assert re.search(r"^\| encoded \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", out, re.M), out
    assert len(re.findall(r"^  \[(met|NOT met)\] ", out, re.M)) == 4, out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"] and len(report["orchestration"]) == 2
