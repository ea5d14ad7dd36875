"""Bounded polling: tests wait for a state, never for a fixed time that assumes one."""
from __future__ import annotations

import asyncio
import time


def wait_for(cond, timeout_s: float = 10.0, what: str = "the condition", every_s: float = 0.05) -> float:
    """Poll `cond()` until true; the seconds it took. AssertionError naming `what` when the
    bound passes."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(every_s)


def settled(read, quiet_s: float = 0.5, timeout_s: float = 10.0, every_s: float = 0.1):
    """`read()` once it has returned the same value for `quiet_s` (connections closing,
    counters catching up); AssertionError if it keeps changing past `timeout_s`."""
    t0 = time.monotonic()
    last, since = read(), time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        time.sleep(every_s)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"still changing after {timeout_s:g} s: {last!r}")


async def eventually(cond, timeout_s: float = 3.0, every_s: float = 0.01) -> bool:
    """The event-loop twin of wait_for: True once `cond()` holds, False past the bound."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)
    return True
