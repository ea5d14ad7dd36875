"""System shared memory for image inputs when the gateway runs beside Triton.

Shipping a 1.2 MB uint8 frame over the gRPC socket costs ~0.9 ms of gateway CPU per
request (kernel TCP send, memcpy, gRPC core). With shared memory the decoder writes the
letterboxed pixels straight into a POSIX shm slot that Triton has mapped, and the request
carries only (region, byte size, offset): the pixels are never copied by the gateway.

`decide()` is the settings decision (pure). `SlotPool` owns the slots: POSIX shm files
under /dev/shm, mmapped here, registered with Triton once each (through a callback, so
this module needs no gRPC). A slot is leased for one request and released when the
Triton call is over; a slot whose call may still be read by Triton (deadline, cancel,
broken connection) is retired instead: not leased again until Triton is proven done with
it (it lets the region be unregistered), then registered again and reused. All slots
together stay within a byte bound. When no slot fits or /dev/shm is full, callers use
the wire (counted by reason).
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

log = logging.getLogger("visionserve.gateway.shm")
SHM_DIR = "/dev/shm"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})


class SharedMemoryUnavailable(RuntimeError):
    """shared_memory="on" but the slots cannot be created or registered (start-up fails)."""


def host_of(url: str) -> str:
    """The host part of a gRPC target: "127.0.0.1:8001", "[::1]:8001", "dns:///h:1"."""
    url = url.split("///", 1)[-1] if "///" in url else url
    if url.startswith("["):
        return url[1:url.index("]")]
    return url.rsplit(":", 1)[0] if url.count(":") == 1 else url


def decide(mode: str, triton_url: str, admin_key: str | None) -> tuple[bool, str]:
    """(use shared memory?, why). auto: only beside a local Triton that we may register
    regions with (its shared-memory API is restricted behind the admin key)."""
    if mode == "off":
        return False, "shared_memory=off"
    local = host_of(triton_url).lower() in LOOPBACK
    if mode == "on":
        if not admin_key:
            raise SharedMemoryUnavailable(
                "shared_memory=on needs VISIONSERVE_GATEWAY_TRITON_ADMIN_KEY (Triton restricts "
                "its shared-memory API behind the admin-key header)")
        return True, "shared_memory=on"
    if not local:
        return False, f"auto: Triton at {triton_url} is not on loopback"
    if not admin_key:
        return False, "auto: no Triton admin key configured (VISIONSERVE_GATEWAY_TRITON_ADMIN_KEY)"
    return True, "auto: Triton on loopback and an admin key configured"


@dataclass(eq=False)
class Slot:
    """One registered region: `capacity` bytes mapped here and in Triton."""
    name: str                     # Triton's region name, also the /dev/shm file name
    capacity: int
    mm: mmap.mmap
    base: int = 0                 # address of the mapping in this process
    key: tuple = ()               # the pool key (frame, frames per slot)
    registered: bool = False
    retired: bool = False
    busy: bool = False

    def contains(self, arr: np.ndarray) -> int | None:
        """Byte offset of a C-contiguous `arr` lying inside this slot, else None."""
        addr = arr.__array_interface__["data"][0]
        if self.base <= addr and addr + arr.nbytes <= self.base + self.capacity:
            return addr - self.base
        return None


@dataclass(eq=False)
class Lease:
    """A slot held by one request; `array` is the numpy view the decoder writes into."""
    pool: "SlotPool"
    slot: Slot
    array: np.ndarray
    _done: bool = field(default=False, repr=False)

    def release(self, *, retire: bool = False) -> None:
        """Give the slot back (idempotent). retire=True: Triton may still read it."""
        if not self._done:
            self._done = True
            self.pool._give_back(self.slot, retire)


class SlotPool:
    """Slots per (frame shape, frames per slot), created lazily within `max_bytes`.

    Two sizes per frame shape: one frame (most requests carry one image) and the model's
    max batch (multi-image requests). Slots are reserved with posix_fallocate, so sizing
    every slot for the max batch would pin e.g. 16 x 1.2 MB per in-flight request.

    `max_bytes` bounds all slots together (in use, free and retired): /dev/shm pages are
    this process's memory. A new slot that does not fit first evicts free slots of other
    sizes; if it still does not fit, that request goes over the wire.

    A retired slot (its call ended without Triton's answer: deadline, cancel, lost
    connection) is reclaimed in the background once Triton lets it be unregistered -
    Triton (>= 2.50) refuses while a request that reads it is queued or running - and
    registered again; a Triton that restarted has forgotten it, and it is registered
    again at once. Until then it is never leased.

    Thread-safe (leases are released from decode threads on cancellation).
    `register(slot)` / `unregister(name)` are coroutines given by the backend (gRPC).
    """

    def __init__(self, max_bytes: int, register: Callable[[Slot], Awaitable[None]],
                 unregister: Callable[[str], Awaitable[None]] | None = None,
                 prefix: str | None = None, on_fallback: Callable[[str], None] | None = None,
                 reclaim_every_s: float = 0.2):
        self.max_bytes = max_bytes
        self._register = register
        self._unregister = unregister
        self.prefix = prefix or f"visionserve_gw_{os.getpid()}_{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._free: dict[tuple, list[Slot]] = {}
        self.slots: list[Slot] = []
        self._bytes = 0            # capacity of every slot, plus slots being created
        self._serial = 0
        self.failed = 0            # slots that could not be created (then the wire is used)
        self.reclaimed = 0
        self.fallbacks: dict[str, int] = {}
        self._on_fallback = on_fallback
        self._reclaim_every_s = reclaim_every_s
        self._reclaimer: asyncio.Task | None = None
        self._evictions: set[asyncio.Task] = set()   # run to the end even if their lease is cancelled

    # -- leasing ---------------------------------------------------------------------
    async def lease(self, frame_hw: tuple[int, int], max_batch: int, n: int) -> Lease | None:
        """A [n, H, W, 3] uint8 view in a slot, or None (use the wire): n over the max
        batch, no room within max_bytes, or the slot cannot be created."""
        if n > max_batch or n < 1:
            self.fallback("over_max_batch")
            return None
        key = (tuple(frame_hw), 1 if n == 1 else max_batch)
        capacity = _capacity(key)
        with self._lock:
            free = self._free.setdefault(key, [])
            slot = free.pop() if free else None
            evict = [] if slot is not None else self._make_room(capacity)
            if slot is None and evict is not None:
                self._bytes += capacity          # reserved while it is created
        if slot is None:
            if evict is None:
                self.fallback("pool_full")
                return None
            try:
                if evict:
                    await self._evict(evict)
                slot = await self._create(key)
            except BaseException as exc:   # /dev/shm full, registration refused: the wire
                with self._lock:
                    self._bytes -= capacity
                    self.failed += isinstance(exc, Exception)
                if not isinstance(exc, Exception):   # cancelled: not ours to swallow
                    raise
                log.warning("shared-memory slot unavailable, using the wire: %s", exc)
                self.fallback("create_failed")
                return None
        slot.busy = True
        h, w = frame_hw
        arr = np.frombuffer(slot.mm, np.uint8, n * h * w * 3).reshape(n, h, w, 3)
        return Lease(self, slot, arr)

    def _make_room(self, capacity: int) -> list[Slot] | None:
        """Free slots to evict so that `capacity` more bytes fit (under the lock), or
        None when even evicting every free slot would not do."""
        need = self._bytes + capacity - self.max_bytes
        if need <= 0:
            return []
        victims, freed = [], 0
        for free in self._free.values():
            while free and freed < need:
                slot = free.pop()
                victims.append(slot)
                freed += slot.capacity
        if freed < need:       # put them back: no room anyway
            for slot in victims:
                self._free.setdefault(slot.key, []).append(slot)
            return None
        for slot in victims:
            self.slots.remove(slot)
            self._bytes -= slot.capacity
        return victims

    async def _evict(self, victims: list[Slot]) -> None:
        """Unregister and destroy `victims` (already out of the accounting) to the end,
        whatever happens to the caller: a lease cancelled midway (client gone) must not
        leave slots registered with Triton, mapped here and in /dev/shm, that no count
        knows of. The caller's reservation is released by the caller."""
        task = asyncio.get_running_loop().create_task(self._drop_all(victims))
        self._evictions.add(task)
        task.add_done_callback(self._evictions.discard)
        await asyncio.shield(task)

    async def _drop_all(self, victims: list[Slot]) -> None:
        for slot in victims:
            await self._drop(slot)

    async def _drop(self, slot: Slot) -> None:
        if self._unregister is not None and slot.registered:
            try:
                await self._unregister(slot.name)
            except Exception as exc:
                log.debug("unregister %s: %s", slot.name, exc)
        _destroy(slot)

    def fallback(self, reason: str) -> None:
        """Count one batch that goes over the wire although shared memory is on."""
        with self._lock:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        if self._on_fallback is not None:
            self._on_fallback(reason)

    async def prepare(self, frame_hw: tuple[int, int], frames: int = 1) -> None:
        """Create and register one slot of `frames` frames now (start-up check); raises."""
        key = (tuple(frame_hw), frames)
        with self._lock:
            self._bytes += _capacity(key)
        try:
            slot = await self._create(key)
        except BaseException:
            with self._lock:
                self._bytes -= _capacity(key)
            raise
        with self._lock:
            self._free.setdefault(key, []).append(slot)

    async def _create(self, key) -> Slot:
        capacity = _capacity(key)
        with self._lock:
            self._serial += 1
            name = f"{self.prefix}_{self._serial}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # reserve the pages now: a full /dev/shm fails here (ENOSPC), not with SIGBUS
            # on the first write of a request
            os.posix_fallocate(fd, 0, capacity)
            mm = mmap.mmap(fd, capacity)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        slot = Slot(name, capacity, mm, key=key)
        slot.base = np.frombuffer(mm, np.uint8, 1).__array_interface__["data"][0]
        try:
            await self._register(slot)
        except BaseException:
            _destroy(slot)
            raise
        slot.registered = True
        with self._lock:
            self.slots.append(slot)
        return slot

    def _give_back(self, slot: Slot, retire: bool) -> None:
        with self._lock:
            slot.busy = False
            if retire:
                # kept mapped and registered (Triton may still read it) and never leased
                # until reclaim() proves Triton is done with it
                slot.retired = True
            elif not slot.retired and slot in self.slots:
                self._free.setdefault(slot.key, []).append(slot)

    # -- reclaiming retired slots ------------------------------------------------------
    def start(self) -> None:
        """Reclaim retired slots in the background (call from the event loop)."""
        if self._reclaimer is None and self._unregister is not None:
            self._reclaimer = asyncio.get_running_loop().create_task(self._reclaim_forever())

    async def _reclaim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reclaim_every_s)
            try:
                await self.reclaim()
            except Exception as exc:   # Triton away: the next round tries again
                log.debug("reclaiming shared-memory slots: %s", exc)

    async def reclaim(self) -> int:
        """Return retired slots that Triton is done with to the free lists; how many.
        Triton refuses to unregister a region a request still uses: such a slot stays
        retired until a later round."""
        if self._unregister is None:
            return 0
        with self._lock:
            retired = [s for s in self.slots if s.retired and not s.busy]
        back = 0
        for slot in retired:
            if slot.registered:
                try:
                    await self._unregister(slot.name)
                except Exception:   # in use (or Triton unreachable): not yet
                    continue
                slot.registered = False
            await self._register(slot)   # raises when Triton is away: next round
            slot.registered = True
            with self._lock:
                slot.retired = False
                if slot in self.slots:
                    self._free.setdefault(slot.key, []).append(slot)
                    back += 1
        self.reclaimed += back
        return back

    def locate(self, arr: np.ndarray) -> tuple[Slot, int] | None:
        """(slot, byte offset) when `arr` lies in a leased slot (chunks of a batch are
        views at an offset), else None. Few slots are busy: a short scan."""
        with self._lock:
            busy = [s for s in self.slots if s.busy]
        for slot in busy:
            offset = slot.contains(arr)
            if offset is not None:
                return slot, offset
        return None

    # -- accounting / shutdown --------------------------------------------------------
    def stats(self) -> dict[str, int]:
        with self._lock:
            busy = sum(s.busy for s in self.slots)
            retired = sum(s.retired and not s.busy for s in self.slots)
            return {"slots": len(self.slots), "in_use": busy, "retired": retired,
                    "free": sum(len(v) for v in self._free.values()),
                    "bytes": sum(s.capacity for s in self.slots),
                    "bytes_limit": self.max_bytes, "failed": self.failed,
                    "reclaimed": self.reclaimed,
                    "fallbacks": sum(self.fallbacks.values())}

    async def close(self, unregister: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Unregister (best effort: Triton may be gone) and unlink every slot."""
        if self._reclaimer is not None:
            self._reclaimer.cancel()
            try:
                await self._reclaimer
            except asyncio.CancelledError:
                pass
            self._reclaimer = None
        if self._evictions:
            await asyncio.gather(*self._evictions, return_exceptions=True)
        unregister = unregister or self._unregister
        with self._lock:
            slots, self.slots = self.slots, []
            self._free.clear()
            self._bytes = 0
        for slot in slots:
            if unregister is not None and slot.registered:
                try:
                    await unregister(slot.name)
                except Exception as exc:
                    log.debug("unregister %s: %s", slot.name, exc)
            _destroy(slot)


def _capacity(key) -> int:
    (h, w), frames = key
    return frames * h * w * 3


def _destroy(slot: Slot) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, slot.name))
    except FileNotFoundError:
        pass
    try:
        slot.mm.close()
    except BufferError:   # a view is still alive somewhere: the mapping dies with it
        pass
