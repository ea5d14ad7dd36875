"""Encoded entry points, generated into every repository from the contract (never committed).

For each model contract/encoded.py selects, `<model>_encoded` is an ensemble:

  cpu, openvino, onnx-gpu (python decode):
      image --> encoded_decode_<W>x<H> --images--> <model> --geometry--> <model>_encoded_remap
                                        --size, scale-------------------^
  gpu (the production repository, DALI decode):
      image --> encoded_check --encoded--> letterbox_<W>x<H> (DALI) --images--> <model> --> remap

Each entry point is two ensembles: `<model>_encoded`, what clients call, has one step,
`<model>_encoded_cached`, the chain above with Triton's response cache enabled (keyed on the
file's bytes: identical bytes, the same answer). Triton 2.51's cache key ignores which
outputs a request names and stores only those (contract/cache.py): the outer ensemble
always asks the inner one for every output, so every cached answer is whole, and the outer
one hands each client the outputs it named. A hit skips decode, model and remap.

One decode model per frame size serves every entry point of that size, so its dynamic
batcher batches frames across entry points (yolo_encoded and faces_encoded share
encoded_decode_640x640), as the DALI model does on the GPU. Non-geometric outputs leave the
model straight to the ensemble's outputs; geometric ones (the model's `geometry_outputs`)
go through `<model>_encoded_remap` (pipelines/encoded_remap.py), which adds
`original_size`.

The decode step's limits are its config parameters, from contract/defaults.py (the
gateway's defaults): an operator changes them in one place.

    python -m serving.encoded --profile gpu --out build/repositories/gpu-encoded [--serialize]
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import contract
from contract import MODEL_REPOSITORY, cache, defaults, encoded, mc
from contract.facts import facts
from pipelines import ENTRY_FILE, entry_source

DECODE_PREFIX = "encoded_decode_"
CHECK = "encoded_check"           # gpu: header + limits only, bytes on to DALI
DALI_PREFIX = "letterbox_"        # pipelines/dali_letterbox.py's default name
REMAP_SUFFIX = "_encoded_remap"
CACHED_SUFFIX = "_encoded_cached"  # the inner, cached ensemble
# Steps name the version every derived repository holds (`1/`), not -1 ("latest"):
# perf_analyzer 2.50 cannot read the statistics of an ensemble inside an ensemble whose
# steps say -1 ("failed to find the requested model version"), measured on yolo_encoded.
STEP_VERSION = 1
PROFILES = ("cpu", "openvino", "onnx-gpu", "gpu")
# The decoder's batch: the frames of a few requests in one execution; the python step
# decodes them on its own threads, DALI in one GPU batch.
DECODE_QUEUE_DELAY_US = 0


class EncodedError(ValueError):
    """Entry points cannot be generated as asked."""


@dataclass(frozen=True)
class Entry:
    model: str                   # the model it calls
    name: str                    # <model>_encoded
    frame: tuple[int, int]       # (height, width)
    geometry: tuple[str, ...]    # outputs mapped back to original pixels

    @property
    def decoder(self) -> str:
        return f"{DECODE_PREFIX}{self.frame[1]}x{self.frame[0]}"

    @property
    def dali(self) -> str:
        return f"{DALI_PREFIX}{self.frame[1]}x{self.frame[0]}"

    @property
    def remap(self) -> str:
        return self.model + REMAP_SUFFIX

    @property
    def cached(self) -> str:
        return self.model + CACHED_SUFFIX


def entries(contracts: dict[str, contract.ModelContract]) -> list[Entry]:
    """The entry points of these models (the contract's rule; sorted by name)."""
    return [Entry(m, encoded.entry_name(m), encoded.frame(contracts[m]), facts(contracts[m]).geometry_outputs)
            for m in encoded.entry_models(contracts)]


def _python(name: str, max_batch_size: int) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    cfg.dynamic_batching.max_queue_delay_microseconds = DECODE_QUEUE_DELAY_US
    return cfg


def _limits(cfg: mc.ModelConfig, threads: int) -> None:
    for key, value in (("max_image_pixels", defaults.MAX_IMAGE_PIXELS), ("max_image_side", defaults.MAX_IMAGE_SIDE),
                       ("pad_value", defaults.PAD_VALUE), ("decode_threads", threads)):
        cfg.parameters[key].string_value = str(value)


def decode_config(name: str, frame: tuple[int, int], max_batch_size: int, threads: int) -> mc.ModelConfig:
    cfg = _python(name, max_batch_size)
    cfg.input.add(name=encoded.INPUT, data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="images", data_type=mc.TYPE_UINT8, dims=[frame[0], frame[1], 3])
    cfg.output.add(name="size", data_type=mc.TYPE_INT32, dims=[2])
    cfg.output.add(name="scale", data_type=mc.TYPE_FP64, dims=[2])
    _limits(cfg, threads)
    return cfg


def check_config(max_batch_size: int) -> mc.ModelConfig:
    cfg = _python(CHECK, max_batch_size)
    cfg.input.add(name=encoded.INPUT, data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="encoded", data_type=mc.TYPE_UINT8, dims=[-1])
    _limits(cfg, 1)
    return cfg


def remap_config(e: Entry, c: contract.ModelContract) -> mc.ModelConfig:
    cfg = _python(e.remap, c.max_batch_size)
    cfg.input.add(name="size", data_type=mc.TYPE_INT32, dims=[2])
    cfg.input.add(name="scale", data_type=mc.TYPE_FP64, dims=[2])
    for o in c.config.output:
        if o.name in e.geometry:
            cfg.input.add(name=o.name, data_type=o.data_type, dims=o.dims)
            cfg.output.add().CopyFrom(o)
    cfg.output.add(name=encoded.ORIGINAL_SIZE, data_type=mc.TYPE_INT32, dims=[2])
    return cfg


def _entry_interface(name: str, c: contract.ModelContract) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=c.max_batch_size)
    cfg.input.add(name=encoded.INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for o in c.config.output:
        cfg.output.add().CopyFrom(o)
    cfg.output.add(name=encoded.ORIGINAL_SIZE, data_type=mc.TYPE_INT32, dims=[2])
    return cfg


def ensemble_config(e: Entry, c: contract.ModelContract) -> mc.ModelConfig:
    """`<model>_encoded`: what clients call; one step, the cached chain, every output mapped."""
    cfg = _entry_interface(e.name, c)
    step = cfg.ensemble_scheduling.step.add(model_name=e.cached, model_version=STEP_VERSION)
    step.input_map[encoded.INPUT] = encoded.INPUT
    for o in cfg.output:
        step.output_map[o.name] = o.name
    cfg.parameters["encoded_entry_of"].string_value = e.model
    return cfg


def cached_config(e: Entry, c: contract.ModelContract, dali: bool) -> mc.ModelConfig:
    """`<model>_encoded_cached`: decode -> model -> remap, with Triton's response cache."""
    cfg = _entry_interface(e.cached, c)
    cfg.response_cache.enable = True
    cfg.parameters[cache.CALLED_BY].string_value = e.name
    steps = cfg.ensemble_scheduling.step
    if dali:
        check = steps.add(model_name=CHECK, model_version=STEP_VERSION)
        check.input_map[encoded.INPUT] = encoded.INPUT
        check.output_map["encoded"] = "_encoded"
        decode = steps.add(model_name=e.dali, model_version=STEP_VERSION)
        decode.input_map[encoded.INPUT] = "_encoded"      # DALI's input: the bytes as uint8 [-1]
    else:
        decode = steps.add(model_name=e.decoder, model_version=STEP_VERSION)
        decode.input_map[encoded.INPUT] = encoded.INPUT
    for t in ("images", "size", "scale"):
        decode.output_map[t] = "_" + t
    model = steps.add(model_name=e.model, model_version=STEP_VERSION)
    model.input_map[encoded.FRAMES] = "_images"
    for o in c.outputs:
        model.output_map[o.name] = "_" + o.name if o.name in e.geometry else o.name
    remap = steps.add(model_name=e.remap, model_version=STEP_VERSION)
    remap.input_map["size"] = "_size"
    remap.input_map["scale"] = "_scale"
    for g in e.geometry:
        remap.input_map[g] = "_" + g
        remap.output_map[g] = g
    remap.output_map[encoded.ORIGINAL_SIZE] = encoded.ORIGINAL_SIZE
    return cfg


def configs(contracts: dict[str, contract.ModelContract], profile: str,
            threads: int | None = None) -> dict[str, tuple[mc.ModelConfig, str | None]]:
    """{model name: (config, pipelines module of its model.py or None)} of every model the
    entry points of `contracts` need in `profile`; the DALI models' configs come from
    pipelines/dali_letterbox.py ("gpu": their model.dali is a build artifact, `--serialize`)."""
    if profile not in PROFILES:
        raise EncodedError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    threads = threads or os.cpu_count() or 1
    es = entries(contracts)
    out: dict[str, tuple[mc.ModelConfig, str | None]] = {}
    by_frame: dict[tuple[int, int], int] = {}
    for e in es:
        by_frame[e.frame] = max(by_frame.get(e.frame, 0), contracts[e.model].max_batch_size)
        out[e.remap] = (remap_config(e, contracts[e.model]), "encoded_remap")
        out[e.name] = (ensemble_config(e, contracts[e.model]), None)
        out[e.cached] = (cached_config(e, contracts[e.model], dali=profile == "gpu"), None)
    for frame, batch in sorted(by_frame.items()):
        e = next(e for e in es if e.frame == frame)
        if profile == "gpu":
            from pipelines import dali_letterbox

            text = dali_letterbox.triton_config(e.dali, frame, max_batch_size=batch, device="mixed")
            out[e.dali] = (contract.parse_config(text, e.dali), None)
        else:
            out[e.decoder] = (decode_config(e.decoder, frame, batch, threads), "encoded_decode")
    if profile == "gpu" and es:
        out[CHECK] = (check_config(max(by_frame.values())), "encoded_decode")
    return out


def write(contracts: dict[str, contract.ModelContract], dest: Path, profile: str, threads: int | None = None,
          serialize: bool = False) -> tuple[str, ...]:
    """Write the entry points' models into the repository folder `dest`; their names.
    `serialize` ("gpu"): also each DALI model's 1/model.dali (needs nvidia-dali)."""
    written = configs(contracts, profile, threads)
    for name, (cfg, module) in written.items():
        folder = Path(dest) / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        if module:
            (folder / "1" / ENTRY_FILE).write_text(entry_source(module))
        elif serialize and cfg.backend == "dali":
            from pipelines import dali_letterbox

            frame = tuple(cfg.output[0].dims[:2])
            dali_letterbox.serialize(folder / "1" / "model.dali", frame, device="mixed",
                                     pad_value=defaults.PAD_VALUE, max_batch_size=cfg.max_batch_size)
        (folder / "config.pbtxt").write_text(
            f"# GENERATED by serving/encoded.py (profile {profile!r}) from the contract; do not edit.\n"
            + contract.to_text(cfg))
    return tuple(sorted(written))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.encoded",
                                 description="Write the encoded entry points' models into a repository folder.")
    ap.add_argument("--profile", choices=PROFILES, default="gpu")
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="the contract to derive from")
    ap.add_argument("--out", type=Path, required=True, help="repository folder to write into")
    ap.add_argument("--serialize", action="store_true", help="gpu: serialize each DALI model (needs nvidia-dali)")
    args = ap.parse_args(argv)
    names = write(contract.load_all(args.repository), args.out, args.profile, serialize=args.serialize)
    print(f"wrote {len(names)} models into {args.out}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
