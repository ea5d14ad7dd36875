"""The small records passed between the export tools and a family's functions.

What a family provides (its exporter, reference, tolerances, weights sources, ...) is one
record in export/registry.py. Exported graphs take the config's input names/dtypes/dims
with a dynamic batch axis named "batch", and produce exactly the config's outputs.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from contract import ModelContract

log = logging.getLogger("export")

OPSET = 17
DEFAULT_SEED = 20261123


class ExportError(RuntimeError):
    """An export cannot be done as asked (bad weights file, unsupported graph, ...)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from; recorded in the ONNX metadata_props."""

    kind: str                      # "file" (user / weights dir), "package" (pip wheel), "synthetic"
    description: str               # human words: "insightface det_10g.onnx", "rapidocr-onnxruntime 1.4.4"
    path: Path | None = None
    seed: int | None = None

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def fingerprint(self) -> str:
        if self.path is not None:
            st = os.stat(self.path)   # name, not path: the same file reached another way is the same input
            return f"{self.path.name}:{st.st_size}:{int(st.st_mtime)}"
        return f"synthetic-seed-{self.seed}"

    def metadata(self) -> dict[str, str]:
        md = {"weights_kind": self.kind, "weights_description": self.description}
        if self.path is not None:
            md["weights_source"] = str(self.path)
            md["weights_sha256"] = sha256_file(self.path)
        if self.seed is not None:
            md["weights_seed"] = str(self.seed)
        if self.synthetic:
            md["weights_provenance"] = f"synthetic, seed {self.seed}"
        elif self.path is not None:
            md["weights_provenance"] = f"{self.description} ({md['weights_source']}, sha256 {md['weights_sha256'][:16]})"
        else:  # nothing learned (resize, alignment): the description says it all
            md["weights_provenance"] = self.description
        return md


@dataclass(frozen=True)
class WeightsSearch:
    """Where to look for real weights: explicit files per model, then weights dirs."""

    explicit: dict[str, Path] = field(default_factory=dict)
    dirs: tuple[Path, ...] = ()
    seed: int = DEFAULT_SEED

    def find(self, model: str, *names: str) -> Path | None:
        """An explicit file for `model`, else the first of `names` (globs allowed) in the dirs."""
        if model in self.explicit:
            p = Path(self.explicit[model])
            if not p.is_file():
                raise ExportError(f"weights for {model}: {p} is not a file")
            return p
        for d in self.dirs:
            for n in names:
                hits = sorted(Path(d).glob(n))
                if hits:
                    return hits[0]
        return None

    def synthetic(self, what: str) -> WeightsSource:
        return WeightsSource("synthetic", f"{what} with deterministic random weights", seed=self.seed)


@dataclass(frozen=True)
class ExportJob:
    contract: ModelContract
    out_path: Path                 # write the ONNX here (the runner moves it into place)
    weights: WeightsSource
    work_dir: Path                 # scratch space for intermediate files
    progress: Callable[[str], None] = lambda msg: log.info(msg)

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def architecture(self) -> str | None:
        """What the exporter builds itself (the family record's `architecture`)."""
        from .registry import record

        return record(self.name).architecture
