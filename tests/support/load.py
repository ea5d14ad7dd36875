"""Closed-loop HTTP load through gateways, for the fleet tests: `workers` threads per
gateway each post one body until stopped; every request's (start, end, status) is kept
(status 0: the connection failed)."""
from __future__ import annotations

import threading
import time


class ClosedLoop:
    def __init__(self, urls: list[str], route: str, body: bytes, workers: int = 4,
                 content_type: str = "image/jpeg"):
        self.route, self.body, self.content_type = route, body, content_type
        self.stop_flag = threading.Event()
        self.results: list[tuple[float, float, int]] = []
        self.threads = [threading.Thread(target=self._run, args=(url,), daemon=True)
                        for url in urls for _ in range(workers)]

    def _run(self, url: str) -> None:
        import httpx

        with httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, connect=5.0)) as c:
            while not self.stop_flag.is_set():
                t0 = time.monotonic()
                try:
                    status = c.post(self.route, content=self.body,
                                    headers={"content-type": self.content_type}).status_code
                except httpx.TransportError:
                    status = 0
                self.results.append((t0, time.monotonic(), status))

    def __enter__(self) -> "ClosedLoop":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(40)

    def count(self, since: float = 0.0, status: int | None = None) -> int:
        return sum(1 for r in list(self.results)
                   if r[0] >= since and (status is None or r[2] == status))

    def failures(self, since: float = 0.0) -> list[tuple]:
        return [r for r in list(self.results) if r[2] != 200 and r[0] >= since]
