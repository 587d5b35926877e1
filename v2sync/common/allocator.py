"""Keep C's allocator from handing bulk buffers back to the kernel after every use (glibc;
elsewhere a no-op).

Why: a bulk relay allocates and frees buffers of up to RELAY_READ_SIZE (1 MiB) several times
per MiB it moves (a read, a joined write, a TLS BIO's records, a masked WebSocket frame).
glibc serves such sizes with ``mmap`` once they pass its threshold and, below it, trims the
top of a thread's heap on free; either way the next buffer of that size is fresh memory the
kernel faults in page by page. Measured on 2 cores, a v2sync client uploading over WS+TLS to
v2ray 4.34: 1,215 minor page faults per MiB and 3.8 ms of CPU per MiB; with the thresholds
below, 18 faults and 1.2-1.4 ms per MiB (downloads: 450-700 faults per MiB to under 10).

The cost: a thread's heap keeps up to ``TRIM_THRESHOLD`` of free memory at its top instead
of returning it at once (glibc keeps at most 8 heaps per core), and buffers up to
``MMAP_THRESHOLD`` come from those heaps. Small allocations, which make up an idle
connection's memory, are untouched.

``V2SYNC_MALLOC_TUNING=off`` leaves glibc's defaults (and so does any ``MALLOC_*_``
variable glibc reads itself, which this module then leaves alone).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV_VAR = "V2SYNC_MALLOC_TUNING"
# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Above the largest buffer a relay makes (RELAY_READ_SIZE, 1 MiB, plus framing) with room.
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024
_GLIBC_OWN = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
              "MALLOC_MMAP_MAX_")


def tune() -> bool:
    """Set the thresholds; True if they were set. Call once, before bulk traffic."""
    if os.environ.get(ENV_VAR, "on") == "off" or any(name in os.environ for name in _GLIBC_OWN):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the bulk-buffer thresholds; glibc's defaults stay")
    return ok
