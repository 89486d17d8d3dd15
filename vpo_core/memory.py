"""Process memory: glibc's allocator settings, resident-set readings, and handing freed
memory back to the OS between stages.

On a CPU, PyTorch frees and re-allocates tensors of tens of MB at every step. With glibc's
defaults (an arena per thread, large blocks mmap'ed and unmapped on free) each step faults
its pages in again and freed memory stays spread over arenas: 135k page faults a training
step against 5k with :data:`MALLOC_ENV` (benchmarks/allocator_bench.py). glibc reads the
variables only when a process starts, so the ``vpo`` command re-executes itself once with
them (:func:`reexec_with_allocator`), as ``vpo ui up`` starts its workers. The trim
threshold keeps glibc from returning memory on its own; :func:`release` does it
deliberately when a stage ends, so the next stage starts from what is really in use.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
              "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
MARKER = "VPO_MALLOC_SET"   # set in the re-executed process: never re-exec twice


def _glibc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def allocator_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with (:data:`MALLOC_ENV` under the user's own values),
    or None when there is nothing to do: already done, every variable set by the user, or
    not glibc."""
    if environ.get(MARKER) or _glibc() is None:
        return None
    missing = {k: v for k, v in MALLOC_ENV.items() if k not in environ}
    if not missing:
        return None
    return {**environ, **missing, MARKER: "1"}


def reexec_with_allocator() -> None:
    """Re-execute this interpreter with the same arguments and :data:`MALLOC_ENV` (a user's
    value wins), once; call it first thing, before threads start or torch allocates."""
    env = allocator_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where there is no /proc)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss() -> int:
    """This process's resident set, bytes."""
    return _status("VmRSS")


def peak_rss() -> int:
    """This process's peak resident set since it started or since :func:`reset_peak`."""
    return _status("VmHWM")


def reset_peak() -> None:
    """Restart :func:`peak_rss` from the current resident set (Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def release() -> None:
    """Collect garbage and give the allocator's free memory back to the OS."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
