"""What `make bench-encoded` serves and measures inside Triton (perf/bench_encoded.py):

- the scratch repository: every network a measured route or pipeline calls is a
  ZERO-time fixed-time stand-in (serving/standins.py; its contract kept, so the derived
  encoded entry points, the decode step and the BLS pipelines are the real ones), so what
  is measured is the front end a GPU would leave: decode, wire, orchestration. The face
  detector answers 4 canned faces and the text detector 8 canned lines, so the pipelines'
  later steps (align + embed, crop + recognise) run as on real photos;
- the decode step alone (`encoded_decode_<W>x<H>`) over gRPC: images per CPU-second of
  its python-backend stub (/proc);
- BLS orchestration of the faces and ocr pipelines: images per CPU-second of the
  pipeline's stub plus tritonserver's own process (the stand-ins' stubs apart: on a GPU
  those steps are TensorRT inside tritonserver).
"""
from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import contract
from contract import encoded as rule
from serving import encoded, profiles, standins

from . import procstat

ROUTE_MODEL = "yolo"                  # /v1/detect's default: the gateway measurements
PIPELINES = ("faces", "ocr")          # the BLS pipelines whose orchestration is measured
CANNED_FACES = 4                      # face_align's variable range opt (faces per image)
CANNED_LINES = 8


def _networks(contracts: dict[str, contract.ModelContract], models) -> list[str]:
    """Every model `models` call (their steps, recursively), networks and the models themselves."""
    seen, todo = [], list(models)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.append(m)
            todo.extend(contracts[m].steps)
    return [m for m in seen if contracts[m].kind == "network"]


def canned_outputs(model: str, c: contract.ModelContract, folder: Path) -> str | None:
    """An .npz of one item's detector answer (the stand-in answers it for every item):
    faces for the face detector, text lines for the text detector; None for the rest."""
    names = {o.name for o in c.outputs}
    h, w = c.inputs[0].dims[:2]
    if {"boxes", "scores", "landmarks", "num_detections"} <= names:
        k = c.output("boxes").dims[0]
        boxes, scores = np.zeros((k, 4), np.float32), np.zeros(k, np.float32)
        marks = np.zeros((k, 5, 2), np.float32)
        unit = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)
        for i in range(CANNED_FACES):
            x, y, s = 40 + 150 * i, 200, 110
            boxes[i], scores[i] = (x, y, x + s, y + s * 1.2), 0.9
            marks[i] = (x, y) + unit * (s, s * 1.2)
        arrays = {"boxes": boxes, "scores": scores, "landmarks": marks,
                  "num_detections": np.array([CANNED_FACES], np.int32)}
    elif len(c.outputs) == 1 and tuple(c.outputs[0].dims) == (h, w):   # a text probability map
        prob = np.zeros((h, w), np.uint8)
        for i in range(CANNED_LINES):
            prob[30 + 70 * i:30 + 70 * i + 24, 40:40 + 200 + 40 * (i % 4)] = 255
        arrays = {c.outputs[0].name: prob}
    else:
        return None
    path = folder / f"{model}.canned.npz"
    np.savez(path, **arrays)
    return str(path.resolve())


def build_repository(work: Path) -> profiles.Derived:
    """The derived CPU repository of ROUTE_MODEL and PIPELINES (with their encoded entry
    points), every network in it a zero-time stand-in."""
    committed = contract.load_all()
    source = work / "source"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    wanted = (ROUTE_MODEL, *PIPELINES)
    nets = _networks(committed, wanted)
    for m in nets:
        standins.add_fixed_time(source, m, batch_ms=0, queue_timeout_us=0,
                                outputs_file=canned_outputs(m, committed[m], work))
    for m in wanted:
        if m not in nets:          # the pipelines' own models and data (ocr's charset)
            shutil.copytree(committed[m].path.parent, source / m, symlinks=True)
            _charset(source / m)
    return profiles.derive("cpu", dest=work / "repo", source=source, models=list(wanted))


def _charset(folder: Path) -> None:
    """ocr needs the recogniser's charset beside its model.py (the export writes it); the
    stand-in recogniser answers blanks only, so any charset serves when none is exported."""
    if folder.name == "ocr" and not (folder / "1" / "charset.txt").exists():
        (folder / "1" / "charset.txt").write_text("".join(f"{chr(c)}\n" for c in range(33, 127)))


def decoder_of(repo: Path, model: str = ROUTE_MODEL) -> str:
    return next(e.decoder for e in encoded.entries(contract.load_all(repo)) if e.model == model)


@dataclass
class StepPoint:
    what: str           # "decode 1280x720" | "faces" | "ocr"
    batch: int
    images: int
    wall_s: float
    cpu_s: dict[str, float]     # process -> CPU seconds over the run

    @property
    def img_s(self) -> float:
        return self.images / self.wall_s

    def per_core(self, *procs: str) -> float:
        cpu = sum(self.cpu_s[p] for p in procs)
        return self.images / cpu if cpu > 0 else float("nan")


def drive(server, model: str, inputs: dict[str, np.ndarray], dtype: dict[str, str], seconds: float,
          streams: int, watch: dict[str, list[int]], min_calls: int = 2) -> tuple[int, float, dict[str, float]]:
    """`streams` threads each calling `model` with `inputs` back to back for `seconds`
    (at least `min_calls` each) -> (calls, wall s, CPU s of each watched pid)."""
    import tritonclient.grpc as grpcclient

    def request():
        out = []
        for name, arr in inputs.items():
            t = grpcclient.InferInput(name, list(arr.shape), dtype[name])
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    clients = [grpcclient.InferenceServerClient(server.grpc_url) for _ in range(streams)]
    try:
        for c in clients:
            c.infer(model, request(), client_timeout=120)          # warm
        calls, errors = [0] * streams, []
        cpu0 = {k: procstat.cpu_of(p) for k, p in watch.items()}
        t0 = time.perf_counter()
        stop = t0 + seconds

        def loop(i):
            try:
                while calls[i] < min_calls or time.perf_counter() < stop:
                    clients[i].infer(model, request(), client_timeout=120)
                    calls[i] += 1
            except Exception as exc:            # reported below, once the others finished
                errors.append(exc)
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cpu = {k: procstat.cpu_of(p) - cpu0[k] for k, p in watch.items()}
    finally:
        for c in clients:
            c.close()
    if errors:
        raise RuntimeError(f"{model}: {errors[0]}")
    return sum(calls), wall, cpu


def decode_step(server, repo: Path, photos: dict[str, bytes], batches, seconds: float) -> list[StepPoint]:
    """The decode step alone: batches of one photo, two callers (so the step never waits
    for the client), CPU of its stubs (every instance)."""
    name = decoder_of(repo)
    pid = procstat.stubs_of(server.process.pid, name)
    points = []
    for size, data in photos.items():
        for b in batches:
            arr = np.array([[data]] * b, dtype=np.object_)
            calls, wall, cpu = drive(server, name, {rule.INPUT: arr}, {rule.INPUT: "BYTES"},
                                     seconds, streams=2, watch={"stub": pid})
            points.append(StepPoint(f"decode {size}", b, calls * b, wall, cpu))
    return points


def orchestration(server, repo: Path, frame: np.ndarray, batches, seconds: float) -> list[StepPoint]:
    """The BLS pipelines on zero-time steps: `batch` images in flight as requests of at most
    the pipeline's max_batch_size (32 -> 4 concurrent requests of 8 for faces/ocr)."""
    contracts = contract.load_all(repo)
    points = []
    for pipeline in PIPELINES:
        c = contracts[pipeline]
        watch = {"pipeline": procstat.stubs_of(server.process.pid, pipeline),
                 "tritonserver": [server.process.pid]}
        for b in batches:
            per = min(b, c.max_batch_size)
            streams = -(-b // per)
            feed = {c.inputs[0].name: np.broadcast_to(frame, (per, *frame.shape)).copy()}
            calls, wall, cpu = drive(server, pipeline, feed, {c.inputs[0].name: "UINT8"}, seconds,
                                     streams, watch)
            points.append(StepPoint(pipeline, b, calls * per, wall, cpu))
    return points
