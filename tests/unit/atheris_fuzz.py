"""Coverage-guided fuzzing (atheris, libFuzzer) of the codec's and the body parsers'
Python code, for `make fuzz`: `python -m tests.unit.atheris_fuzz -runs=N`.

imaging/ and gateway/inputs.py are instrumented, so libFuzzer steers inputs into the
branches of the marker walk, the chunk walk, the EXIF walk and the multipart/JSON
handling that random bytes rarely reach (the decoders themselves are C libraries it
cannot see into). The first input byte picks the target; the seed corpus is the
hypothesis tests' real images. Same property as the hypothesis tests
(tests/unit/fuzz_targets.py); libFuzzer's -rss_limit_mb and -timeout bound each
input's memory and time."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import imaging  # noqa: F401
    from gateway import inputs  # noqa: F401

from tests.unit import fuzz_targets  # noqa: E402

CTYPE = "multipart/form-data; boundary=craftedboundary"


RUNS = [0]


def one_input(data: bytes) -> None:
    RUNS[0] += 1
    if RUNS[0] % 20000 == 0:   # libFuzzer exits from C at the end: report as it goes
        print(fuzz_targets.TALLY.report(), flush=True)
    if not data:
        return
    target, rest = data[0] % 3, data[1:]
    if target == 0:
        fuzz_targets.check_codec(rest)
    elif target == 1:
        fuzz_targets.check_multipart(rest, CTYPE)
    else:
        fuzz_targets.check_json(rest)


def seed_corpus() -> str:
    from tests.unit import crafted_images as crafted
    from tests.unit.test_imaging_fuzz import SEEDS

    folder = Path(tempfile.mkdtemp(prefix="visionserve_fuzz_"))
    body, _ = crafted.multipart([("images", "a.jpg", SEEDS[0][:300]), ("x", None, b"1")])
    seeds = [b"\x00" + s for s in SEEDS] + [b"\x01" + body, b'\x02{"images": ["/9j/4AAQ"]}']
    for i, s in enumerate(seeds):
        (folder / f"seed{i}").write_bytes(s)
    return str(folder)


def main() -> None:
    args = [sys.argv[0], *sys.argv[1:], seed_corpus()]
    if not any(a.startswith("-max_len") for a in args):
        args.insert(1, "-max_len=65536")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
