"""The naive baseline the field started from, for `make bench-gateway` to beat.

Per request: PIL decode at full size, PIL letterbox, float32 normalisation on the CPU,
an NCHW float tensor (4.9 MB at 640x640) sent to Triton over HTTP, JSON by the stdlib.
Synchronous handlers in FastAPI's thread pool, one tritonclient.http client per thread.

The committed models take uint8 NHWC (normalisation is inside the graph), so the
benchmark adds one scratch python-backend model, `<target>_fp32`, that accepts the
float tensor and hands it to the SAME target model by BLS: both paths reach the same
Triton and the same model; the baseline pays for its float tensor on the wire.

    python -m perf.baseline_naive --triton-http 127.0.0.1:8000 --port 8090
"""

import argparse
import io
import json
import threading
from pathlib import Path

import numpy as np

from contract import defaults

ADAPTER_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 16
input [ {{ name: "images" data_type: TYPE_FP32 dims: [ 3, {h}, {w} ] }} ]
output [
  {{ name: "boxes" data_type: TYPE_FP32 dims: [ 100, 4 ] }},
  {{ name: "scores" data_type: TYPE_FP32 dims: [ 100 ] }},
  {{ name: "classes" data_type: TYPE_INT32 dims: [ 100 ] }},
  {{ name: "num_detections" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
parameters {{ key: "target" value {{ string_value: "{target}" }} }}
"""

ADAPTER_MODEL = '''"""Bench-only: float32 NCHW [0,1] -> uint8 NHWC -> the target model (BLS)."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

OUTPUTS = ["boxes", "scores", "classes", "num_detections"]


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.target = cfg["parameters"]["target"]["string_value"]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        sizes = [len(x) for x in xs]
        x = np.concatenate(xs)
        u8 = np.ascontiguousarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1))
        res = pb_utils.InferenceRequest(model_name=self.target, requested_output_names=OUTPUTS,
                                        inputs=[pb_utils.Tensor("images", u8)]).exec()
        if res.has_error():
            return [pb_utils.InferenceResponse(error=res.error()) for _ in requests]
        outs = {n: pb_utils.get_output_tensor_by_name(res, n).as_numpy() for n in OUTPUTS}
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(k, v[start:start + n]) for k, v in outs.items()]))
            start += n
        return responses
'''


def write_adapter(repository: Path, target: str = "yolo", frame: tuple[int, int] = (640, 640)) -> str:
    """Add the `<target>_fp32` adapter model to a (scratch) repository; returns its name."""
    name = f"{target}_fp32"
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(
        ADAPTER_CONFIG.format(name=name, target=target, h=frame[0], w=frame[1]))
    (folder / "1" / "model.py").write_text(ADAPTER_MODEL)
    return name


def create_app(triton_http: str, model: str, frame: tuple[int, int] = (640, 640)):
    import tritonclient.http as httpclient
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from PIL import Image
    from starlette.concurrency import run_in_threadpool

    app = FastAPI()
    local = threading.local()
    stats = {"requests": 0, "bytes_to_triton": 0}
    lock = threading.Lock()
    fh, fw = frame

    def client():
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(triton_http, network_timeout=300)
        return local.client

    @app.post("/detect")
    async def detect(request: Request):
        # the whole request body, then the blocking work in the default thread pool
        return await run_in_threadpool(handle, await request.body())

    def handle(body: bytes) -> Response:
        img = Image.open(io.BytesIO(body)).convert("RGB")            # full-size decode
        w, h = img.size
        r = min(fw / w, fh / h)
        nw, nh = round(w * r), round(h * r)
        canvas = Image.new("RGB", (fw, fh))
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), (0, 0))
        x = (np.asarray(canvas, np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
        inp = httpclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        outs = [httpclient.InferRequestedOutput(n, binary_data=True)
                for n in ("boxes", "scores", "classes", "num_detections")]
        res = client().infer(model, [inp], outputs=outs)
        with lock:
            stats["requests"] += 1
            stats["bytes_to_triton"] += x.nbytes
        n = int(res.as_numpy("num_detections")[0, 0])
        boxes, scores, classes = (res.as_numpy(k)[0, :n] for k in ("boxes", "scores", "classes"))
        objects = []
        for b, s, c in zip(boxes, scores, classes):                  # per-box Python loop
            objects.append({"class_id": int(c), "score": float(s),
                            "box": [float(v) / r for v in b]})
        return Response(json.dumps({"results": [{"width": w, "height": h, "objects": objects}]}),
                        media_type="application/json")

    @app.get("/stats")
    def get_stats():
        return dict(stats)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.baseline_naive")
    p.add_argument("--triton-http", default=defaults.TRITON_HTTP)
    p.add_argument("--model", default="yolo_fp32")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    args = p.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args.triton_http, args.model), host=args.host, port=args.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
