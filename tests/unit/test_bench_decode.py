"""perf/bench_decode.py around the timing: arguments, the timing loop, the report table, the
codec runner. The DALI GPU ("mixed") benchmark itself needs a CUDA host: pending here."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from perf import bench_decode, decode_images, decode_parity

codec = decode_parity.reference_codec()   # imaging: the shared codec


def test_defaults_per_device():
    cpu = bench_decode.parse_args([])
    assert (cpu.device, cpu.batch, cpu.threads, cpu.frame) == ("cpu", [1, 8, 32], 1, (640, 640))
    assert cpu.sizes == ["1280x720", "4032x3024"]
    gpu = bench_decode.parse_args(["--device", "mixed", "--frame", "512x384"])
    assert (gpu.batch, gpu.threads, gpu.frame) == ([1, 2, 4, 8, 16, 32, 64], 4, (384, 512))


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--batch", "a,b"], ["--sizes", "999x1"],
                                  ["--frame", "640"], ["--device", "gpu"]])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        bench_decode.parse_args(argv)


def test_measure_runs_warmup_then_until_time_and_count():
    calls = []
    ticks = itertools.count(0.0, 0.25)           # each clock read advances 0.25 s
    images, wall, cpu = bench_decode.measure(lambda: calls.append(1), 8, seconds=1.0, min_runs=2,
                                             warmup=2, clock=lambda: next(ticks), cpu=lambda: 5.0)
    runs = len(calls) - 2
    assert runs >= 2 and images == 8 * runs and wall >= 1.0 and cpu == 0.0


def test_table_lines_up_paths_and_ratio():
    rows = [bench_decode.Result("codec", "1280x720", 1, 100, 1.0, 0.5),
            bench_decode.Result("dali-cpu", "1280x720", 1, 50, 1.0, 1.0),
            bench_decode.Result("codec", "1280x720", 8, 80, 1.0, 1.0)]
    lines = bench_decode.table(rows).splitlines()
    assert "dali-cpu/codec per CPU-s" in lines[0]
    first = lines[1].split()
    assert first[:2] == ["1280x720", "1"] and first[2:6] == ["100.0", "200.0", "50.0", "50.0"]
    assert first[-1] == "0.25"                    # 50 / 200 images per CPU-second
    assert lines[2].split()[-1] == "-"            # no DALI row at batch 8
    only_gpu = bench_decode.table([bench_decode.Result("dali-mixed", "4032x3024", 64, 640, 2.0, 1.0)])
    assert "codec" not in only_gpu and "320.0" in only_gpu


def test_codec_runner_fills_every_slot_as_decode_into_does():
    data = decode_images.bench_photos()["1280x720"]
    out = np.zeros((3, 640, 640, 3), np.uint8)
    bench_decode.codec_runner(data, (640, 640), 3, out)()
    header = codec.read_header(data, max_pixels=1 << 28, max_side=1 << 15)
    ref = np.empty((640, 640, 3), np.uint8)
    codec.decode_into(data, header, codec.plan_letterbox(*header.size, 640, 640), ref)
    assert all(np.array_equal(out[i], ref) for i in range(3))


def test_bench_photos_are_the_sizes_they_claim():
    for name, data in decode_images.bench_photos().items():
        header = codec.read_header(data, max_pixels=1 << 28, max_side=1 << 15)
        assert f"{header.width}x{header.height}" == name and header.kind == "jpeg"
