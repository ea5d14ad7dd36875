"""What the kernel counts for the benchmarks: CPU time per process (or process group) from
/proc/<pid>/stat, and bytes per TCP connection from `ss -tinp` (tcp_info's bytes_acked /
bytes_received), so a benchmark checks what its own counters claim against the kernel's."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """The fields after the command name (whose parentheses may hold anything)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), reaped children excluded."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / TICKS


def group_cpu(pgid: int) -> dict[int, float]:
    """{pid: CPU seconds} of every live process of a process group (tritonserver starts
    its own group; its python-backend stubs stay in it)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            f = _stat(entry.name)
            if int(f[2]) == pgid:
                out[int(entry.name)] = (int(f[11]) + int(f[12])) / TICKS
        except (OSError, IndexError, ValueError):    # gone meanwhile
            continue
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stubs_of(pgid: int, model: str) -> list[int]:
    """The pids of the python-backend stubs serving `model`, one per instance (a stub's
    cmdline names the model's folder: .../<model>/1/model.py)."""
    needle = f"/{model}/1/model.py"
    pids = [p for p in group_cpu(pgid) if needle in cmdline(p)]
    if not pids:
        raise LookupError(f"no stub process serves {model} in group {pgid}")
    return pids


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


@dataclass(frozen=True)
class SocketBytes:
    sent: int          # bytes_acked: what the peer has acknowledged receiving from us
    received: int      # bytes_received
    sockets: tuple[str, ...]   # "local->peer" of each connection counted

    def __sub__(self, before: "SocketBytes") -> "SocketBytes":
        if set(before.sockets) - set(self.sockets):
            # a closed connection's counters are gone: the difference would undercount
            raise LookupError("a counted connection closed between the two reads: "
                              + ", ".join(sorted(set(before.sockets) - set(self.sockets))))
        return SocketBytes(self.sent - before.sent, self.received - before.received, self.sockets)


# [State] Recv-Q Send-Q local peer (ss leaves State out when the filter names one state)
_PEER = re.compile(r"^(?:[A-Z-]+\s+)?\d+\s+\d+\s+(\S+)\s+(\S+)")
_PID = re.compile(r"pid=(\d+)")


def parse_ss(text: str, pid: int) -> SocketBytes:
    """`ss -tinpH` output -> the bytes of `pid`'s connections. Each connection is a line with
    the addresses and users:(("name",pid=N,fd=M)), then an indented line of tcp_info."""
    sent = received = 0
    sockets = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _PEER.match(line)
        if not m or int(pid) not in map(int, _PID.findall(line)):
            continue
        info = lines[i + 1] if i + 1 < len(lines) and not _PEER.match(lines[i + 1]) else ""
        acked = re.search(r"\bbytes_acked:(\d+)", info)
        got = re.search(r"\bbytes_received:(\d+)", info)
        sent += int(acked.group(1)) if acked else 0
        received += int(got.group(1)) if got else 0
        sockets.append(f"{m.group(1)}->{m.group(2)}")
    return SocketBytes(sent, received, tuple(sorted(sockets)))


def socket_bytes(pid: int, port: int) -> SocketBytes:
    """The kernel's byte counters of `pid`'s established TCP connections to `port`."""
    text = subprocess.run(["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    return parse_ss(text, pid)
