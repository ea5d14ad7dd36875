"""gateway.__main__.fixed_mmap_threshold: big buffers go back to the system when freed.

Each case runs in a fresh interpreter (malloc's state is per process): one 31 MiB body,
then a 20 MiB one, both freed. With glibc's default the first raises the mmap threshold,
the second comes from the heap and stays resident after it is freed."""
import platform
import subprocess
import sys

import pytest

SCENARIO = """
import sys
from gateway.__main__ import fixed_mmap_threshold
def rss_kib():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])
if sys.argv[1] == 'fixed':
    assert fixed_mmap_threshold()
r0 = rss_kib()
for mib in (31, 20):
    body = bytearray(mib << 20)
    body[::4096] = b'x' * len(body[::4096])     # resident, as a received body is
    del body
print((rss_kib() - r0) // 1024)
"""


def _retained_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's M_MMAP_THRESHOLD is glibc's")
def test_freed_bodies_leave_nothing_resident():
    assert _retained_mib("default") >= 15       # what the fix is for (glibc's default)
    assert _retained_mib("fixed") <= 2
