"""Which processes a tool left behind: every process it starts (tritonserver, its python-backend
stubs, gateways) inherits the tool's environment, so a tag set there finds them all, even
those started in their own session or re-parented after the tool exited."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

TAG = "VISIONSERVE_TEST_PROCESS_TAG"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged(tag: str) -> list[str]:
    """'pid: command line' of every live process (but this one) whose environment holds `tag`."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((line for line in (entry / "status").read_text().splitlines()
                          if line.startswith("State:")), "")
        except OSError:        # gone meanwhile, or not ours to read
            continue
        if "zombie" not in state:
            found.append(f"{entry.name}: {cmd.strip()}")
    return found
