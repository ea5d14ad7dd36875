"""Byte sizes as people type them ("4G", "512MiB") and as they read them."""
from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """'4G', '4GiB', '4gb', '512M', '1048576' -> bytes (binary multiples, as `free -h`)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"cannot read {text!r} as a size (examples: 4G, 512M, 1073741824)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_range(text: str) -> tuple[int, int, int]:
    """perf_analyzer's 'start:end:step' ('8' means 8:8:1, '1:16' means step 1)."""
    parts = str(text).split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"range {text!r} must be start[:end[:step]] integers") from None
    if not 1 <= len(nums) <= 3 or any(n < 1 for n in nums):
        raise UsageError(f"range {text!r} must be start[:end[:step]] with positive integers")
    start = nums[0]
    end = nums[1] if len(nums) > 1 else start
    step = nums[2] if len(nums) > 2 else 1
    if end < start:
        raise UsageError(f"range {text!r}: end {end} is below start {start}")
    return start, end, step


def expand_range(rng: tuple[int, int, int]) -> list[int]:
    start, end, step = rng
    return list(range(start, end + 1, step))


def parse_int_list(text: str) -> list[int]:
    """'1,4,16' or a range '1:16:4' -> [ints]."""
    if ":" in str(text):
        return expand_range(parse_range(text))
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{text!r} must be a comma list of integers or start:end:step") from None
    if not out or any(n < 1 for n in out):
        raise UsageError(f"{text!r} must list positive integers")
    return out
