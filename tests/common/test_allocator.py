"""common.allocator: a process that tuned glibc serves bulk buffers from its heap (counted
by glibc's mallinfo2, never timed)."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from v2sync.common import allocator

REPO = Path(__file__).resolve().parents[2]
# In a fresh process glibc serves 2 MiB with mmap (its threshold starts at 128 KiB); a tuned
# one serves it from the heap, where the next such buffer reuses the same pages. glibc's
# mallinfo2 counts the mmapped blocks in use.
PROBE = """
import ctypes
from v2sync.common import allocator
tuned = allocator.tune()
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
before = mallinfo2().hblks
buffer = bytes(2 << 20)
print(int(tuned), mallinfo2().hblks - before)
"""

def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc 2.33+
    except OSError:
        return False


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not _has_mallinfo2(),
                                reason="glibc's mallopt, and mallinfo2 to check it")


def _probe(**env: str) -> tuple:
    clean = {k: v for k, v in os.environ.items()
             if k != allocator.ENV_VAR and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env,
                         "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    return bool(int(out[0])), int(out[1])


@glibc_only
def test_a_tuned_process_serves_bulk_buffers_from_its_heap() -> None:
    assert _probe() == (True, 0)
    assert _probe(**{allocator.ENV_VAR: "off"}) == (False, 1)  # mmapped, unmapped on free


@glibc_only
def test_glibc_own_variables_win() -> None:
    tuned, _ = _probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert not tuned
