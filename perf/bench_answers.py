"""`make bench-answers`: bytes per answer and gateway CPU to render it, JSON floats vs JSON
base64 vs msgpack, side by side in ONE run, on real Triton outputs.

    python -m perf.bench_answers [--renders 40] [--rounds 5] [--out FILE]

One tritonserver serves the derived CPU repository of the default models of /v1/faces and
/v1/embed/image (the route table names them); the gateway app runs in this process on the
real Fleet (gateway/app.py). Each case (a route, 1 or 16 images) is requested once in each
format through the app, with Service.render wrapped to capture what the route renders: its
build over the real Triton outputs. Then, per format:
- bytes: the body the gateway served in that format (checked equal to a render of the capture);
- render CPU: CPU time of this thread over `renders` renders of the capture, build and
  serialise, which is what Service.render runs (in the pool for big answers); the formats
  interleaved round by round, median of `rounds` rounds.
Images "of faces": group photos made of the astronaut and zidane.jpg (real faces, real SCRFD
detections when its real weights are exported; the faces per image are printed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from contract import REPO_ROOT
from contract.routes import route_table

from .processes import BenchError

WORK = REPO_ROOT / "build" / "bench-answers"
ROUTES = ("faces", "embed/image")
BATCHES = (1, 16)
TARGET = 0.3          # msgpack <= 0.3x JSON floats, bytes and render CPU


def group_photo(i: int) -> bytes:
    """A 1600x1200 JPEG of 4x3 tiles, each a real photo with faces (the astronaut, zidane.jpg,
    their mirror images), in an order and scale that differ with `i`."""
    import cv2
    from skimage import data

    from export.samples import ultralytics_photo

    faces = [data.astronaut(), ultralytics_photo("zidane.jpg")[:, 300:1100]]
    tiles = []
    for t in range(12):
        img = faces[(t + i) % 2]
        img = img[:, ::-1] if (t * 7 + i) % 3 == 0 else img
        tiles.append(cv2.resize(np.ascontiguousarray(img), (400, 400), interpolation=cv2.INTER_AREA))
    rows = [np.concatenate(tiles[r * 4:(r + 1) * 4], axis=1) for r in range(3)]
    mosaic = np.concatenate(rows, axis=0)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(mosaic[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise BenchError("could not encode the group photo")
    return buf.tobytes()


def cpu_line() -> str:
    from serving.cpu_machine import cpu_flags, native_bf16

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "unknown")
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"CPU: {model}; flags: {' '.join(shown) or 'none of avx2/avx512'}; " \
           f"avx512_bf16: {'yes' if native_bf16(flags) else 'no'}"


def _capture(client, svc, path: str, files: list[bytes]) -> dict:
    """One request per format; {format name: (served body, build, outputs, answer)}."""
    from gateway.responses import FORMATS

    original = svc.render
    seen: list = []

    async def recording(build, outputs, answer):
        seen.append((build, outputs, answer))
        return await original(build, outputs, answer)

    svc.render = recording
    out = {}
    try:
        for fmt in FORMATS:
            headers = {"accept": fmt.media_type}
            params = {"embedding_format": "base64" if fmt.name == "json+base64" else "float"}
            multipart = [("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(files)]
            r = client.post(path, files=multipart, headers=headers, params=params)
            if r.status_code != 200:
                raise BenchError(f"{path} answered {r.status_code}: {r.text[:300]}")
            build, outputs, answer = seen.pop()
            if answer is not fmt:
                raise BenchError(f"{path}: asked for {fmt.name}, rendered {answer.name}")
            out[fmt.name] = (r.content, build, outputs, answer)
    finally:
        svc.render = original
    return out


def _render_cpu_ms(captures: dict, renders: int, rounds: int) -> dict[str, float]:
    """Median over rounds of this thread's CPU ms per render, formats interleaved."""
    times: dict[str, list[float]] = {name: [] for name in captures}
    for _ in range(rounds):
        for name, (_, build, _, answer) in captures.items():
            t0 = time.thread_time()
            for _ in range(renders):
                answer.dumps(build(answer.vectors))
            times[name].append((time.thread_time() - t0) / renders * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def run(renders: int, rounds: int) -> dict:
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from serving import profiles
    from serving.tritonserver import TritonServer, free_port

    table = route_table()
    models = {name: table.route(name).default.model for name in ROUTES}
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        derived = profiles.derive("cpu", dest=WORK / "repo", models=list(models.values()))
    except profiles.ProfileError as exc:
        raise BenchError(f"{exc} (make export-onnx)") from exc
    photos = [group_photo(i) for i in range(max(BATCHES))]
    server = TritonServer(derived.path, free_port(), free_port(), free_port(), log_path=WORK / "triton.log")
    rows = []
    print(cpu_line(), flush=True)
    print(f"starting Triton ({derived.path}: {', '.join(models.values())}) ...", flush=True)
    server.start(600)
    try:
        app = create_app(GatewaySettings(triton_grpc=server.grpc_url, startup_wait_s=30,
                                         triton_timeout_s=300, max_images=max(BATCHES)))
        with TestClient(app) as client:
            svc = app.state.service
            for name in ROUTES:
                for n in BATCHES:
                    caps = _capture(client, svc, table.route(name).path, photos[:n])
                    for fmt, (body, build, _, answer) in caps.items():
                        if len(answer.dumps(build(answer.vectors))) != len(body):
                            raise BenchError(f"{name} {fmt}: the capture renders another answer than served")
                    cpu = _render_cpu_ms(caps, renders, rounds)
                    reference = json.loads(caps["json"][0])
                    faces = sum(len(r.get("faces", ())) for r in reference["results"])
                    row = {"route": table.route(name).path, "images": n, "faces": faces if name == "faces" else None,
                           "bytes": {f: len(c[0]) for f, c in caps.items()}, "render_cpu_ms": cpu}
                    rows.append(row)
                    _print_row(row)
    finally:
        server.stop()
    return {"cpu": cpu_line(), "renders": renders, "rounds": rounds, "rows": rows,
            "targets": _verdicts(rows)}


def _print_row(row: dict) -> None:
    b, c = row["bytes"], row["render_cpu_ms"]
    what = f"{row['route']} x{row['images']}" + (f" ({row['faces']} faces)" if row["faces"] is not None else "")
    print(f"{what:34s}" + "".join(f"  {f:>11s} {b[f]:>10,d} B {c[f]:8.3f} ms" for f in b), flush=True)


def _verdicts(rows: list[dict]) -> dict[str, bool]:
    out = {}
    for row in rows:
        key = f"{row['route']} x{row['images']}"
        out[key + " bytes"] = row["bytes"]["msgpack"] <= TARGET * row["bytes"]["json"]
        out[key + " render cpu"] = row["render_cpu_ms"]["msgpack"] <= TARGET * row["render_cpu_ms"]["json"]
    return out


def table_text(result: dict) -> str:
    """The markdown table docs/perf.md carries."""
    lines = ["| answer | JSON floats | JSON base64 | msgpack | base64 / floats | msgpack / floats |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        b, c = row["bytes"], row["render_cpu_ms"]
        what = f"`{row['route']}` x{row['images']}" + (f" ({row['faces']} faces)" if row["faces"] is not None else "")
        lines.append(f"| {what} bytes | {b['json']:,} | {b['json+base64']:,} | {b['msgpack']:,} | "
                     f"{b['json+base64'] / b['json']:.2f}x | {b['msgpack'] / b['json']:.2f}x |")
        lines.append(f"| {what} render CPU ms | {c['json']:.3f} | {c['json+base64']:.3f} | {c['msgpack']:.3f} | "
                     f"{c['json+base64'] / c['json']:.2f}x | {c['msgpack'] / c['json']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_answers", description=__doc__.splitlines()[0])
    p.add_argument("--renders", type=int, default=40, help="renders per format per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "reports" / "bench_answers.json")
    a = p.parse_args(argv)
    try:
        result = run(a.renders, a.rounds)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(table_text(result))
    print()
    for key, met in result["targets"].items():
        print(f"  [{'met' if met else 'NOT met'}] msgpack {key} <= {TARGET}x JSON floats")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"report: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
