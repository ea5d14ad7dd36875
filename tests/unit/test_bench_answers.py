"""`make bench-answers`' own logic on the fake Triton (the run itself needs a tritonserver):
what it times is what the route served, in each format; its verdicts and table."""
from __future__ import annotations

import numpy as np

from perf import bench_answers
from tests.support.fakes import VectorFake, app_client
from tests.support.images import noise_jpeg


def test_the_capture_renders_exactly_what_each_format_served():
    with app_client(VectorFake()) as client:
        caps = bench_answers._capture(client, client.app.state.service, "/v1/faces",
                                      [noise_jpeg(320, 240, seed=i) for i in range(3)])
        assert client.app.state.service.render.__name__ == "render"    # unwrapped again
    assert list(caps) == ["json", "json+base64", "msgpack"]
    for name, (body, build, outputs, answer) in caps.items():
        assert answer.name == name and "embeddings" in outputs
        assert answer.dumps(build(answer.vectors)) == body
    sizes = {name: len(c[0]) for name, c in caps.items()}
    assert sizes["msgpack"] < sizes["json+base64"] < sizes["json"]
    cpu = bench_answers._render_cpu_ms(caps, renders=2, rounds=2)
    assert set(cpu) == set(caps) and all(v >= 0 for v in cpu.values())


def test_verdicts_and_table_follow_the_ratios():
    row = {"route": "/v1/faces", "images": 16, "faces": 288,
           "bytes": {"json": 1000, "json+base64": 270, "msgpack": 300},
           "render_cpu_ms": {"json": 10.0, "json+base64": 2.0, "msgpack": 3.5}}
    verdicts = bench_answers._verdicts([row])
    assert verdicts == {"/v1/faces x16 bytes": True, "/v1/faces x16 render cpu": False}
    text = bench_answers.table_text({"rows": [row]})
    assert "| `/v1/faces` x16 (288 faces) bytes | 1,000 | 270 | 300 | 0.27x | 0.30x |" in text
    assert "| `/v1/faces` x16 (288 faces) render CPU ms | 10.000 | 2.000 | 3.500 | 0.20x | 0.35x |" in text


def test_group_photos_differ_and_decode():
    import cv2

    a, b = bench_answers.group_photo(0), bench_answers.group_photo(1)
    assert a != b
    img = cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (1200, 1600, 3)
