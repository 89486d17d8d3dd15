"""Stop requests end the ``vpo`` process promptly and leave its run resumable.

Ctrl-C (SIGINT) and SIGTERM (what Kubernetes sends on eviction, 30 s before SIGKILL)
first unwind the main thread, so Prefect marks the runs; a flow's steps may still be
running in other threads, and the interpreter would wait for them at exit (minutes).
A watcher thread therefore ends the process ``grace_s`` after the first request (at
once on a second): it stops the temporary Prefect server this process started (its
uvicorn child would outlive it) and every process this one started, then exits.

Nothing finished is lost: each finished step's outputs and result are on disk before
it counts as done, so the same command resumes from them. The watcher learns of a
signal through :func:`signal.set_wakeup_fd`, which the interpreter writes to for every
handled signal whichever handler is installed (Prefect installs its own for SIGTERM
while a flow runs).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import sys
import threading
from typing import NoReturn

import psutil

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 10.0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def stop_children(timeout_s: float = 5.0) -> None:
    """Stop the temporary Prefect server this process started and every process started
    under it (SIGTERM, then SIGKILL after ``timeout_s``)."""
    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _watch(fd: int, grace_s: float) -> NoReturn:
    first: int | None = None
    while True:
        ready, _, _ = select.select([fd], [], [], grace_s if first else None)
        if not ready:                            # the grace period is over
            break
        signums = [s for s in os.read(fd, 64) if s in STOP_SIGNALS]
        if signums and first is not None:        # a second request: now
            break
        if signums:
            first = signums[0]
            atexit.register(stop_children)
            print(f"vpo: {signal.Signals(first).name} received: stopping (finished steps "
                  f"are kept; run the same command to resume)", file=sys.stderr, flush=True)
    stop_children()
    os._exit(128 + (first or signal.SIGTERM))


def install(grace_s: float = GRACE_S) -> None:
    """Make SIGINT and SIGTERM stop this process within ``grace_s`` (+ ~5 s for its
    children); call once, from the main thread, before any flow runs."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    threading.Thread(target=_watch, args=(read_fd, grace_s), name="vpo-stop",
                     daemon=True).start()
