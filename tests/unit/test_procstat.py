"""perf/procstat.py: the kernel's per-socket byte counters read from `ss -tinp` output, and
CPU time from /proc, against a connection and a process this test makes itself."""
from __future__ import annotations

import os
import socket
import time

import pytest

from perf import procstat

SS = """0      0      127.0.0.1:44142 127.0.0.1:8001 users:(("python",pid=7932,fd=4))
\t bbr wscale:10,10 rto:204 bytes_sent:100000 bytes_acked:100001 bytes_received:5000 segs_out:6
0      0      127.0.0.1:44150 127.0.0.1:8001 users:(("python",pid=7932,fd=9))
\t cubic bytes_acked:11 bytes_received:7 segs_out:2
0      0      127.0.0.1:44160 127.0.0.1:8001 users:(("python",pid=555,fd=3))
\t cubic bytes_acked:999999 bytes_received:999999
"""


def test_parse_ss_sums_the_connections_of_one_pid():
    got = procstat.parse_ss(SS, 7932)
    assert (got.sent, got.received) == (100012, 5007)
    assert got.sockets == ("127.0.0.1:44142->127.0.0.1:8001", "127.0.0.1:44150->127.0.0.1:8001")
    assert procstat.parse_ss(SS, 1).sockets == ()


def test_parse_ss_with_a_state_column():
    text = "ESTAB 0 0 127.0.0.1:1 127.0.0.1:2 users:((\"x\",pid=3,fd=4))\n\t bytes_acked:5 bytes_received:6\n"
    assert procstat.parse_ss(text, 3).sent == 5


def test_a_difference_refuses_a_connection_that_closed():
    before = procstat.SocketBytes(10, 10, ("a", "b"))
    assert (procstat.SocketBytes(30, 15, ("a", "b", "c")) - before).sent == 20
    with pytest.raises(LookupError, match="closed"):
        procstat.SocketBytes(30, 15, ("a",)) - before


def test_socket_bytes_counts_what_crossed_a_real_connection():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    with srv, socket.create_connection(("127.0.0.1", port)) as c:
        a, _ = srv.accept()
        with a:
            before = procstat.socket_bytes(os.getpid(), port)
            c.sendall(b"x" * 100_000)
            got = 0
            while got < 100_000:
                got += len(a.recv(65536))
            a.sendall(b"y" * 5000)
            n = 0
            while n < 5000:
                n += len(c.recv(65536))
            deadline = time.monotonic() + 5       # the ack of the last segment may trail
            while (d := procstat.socket_bytes(os.getpid(), port) - before).sent < 100_000 \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
    assert (d.sent, d.received) == (100_000, 5000)


def test_cpu_seconds_grows_with_work():
    t0 = procstat.cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert procstat.cpu_seconds(os.getpid()) - t0 >= 0.1
    assert os.getpid() in procstat.group_cpu(os.getpgid(0))
