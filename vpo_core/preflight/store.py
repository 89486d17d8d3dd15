"""Preflight of the LLM call store (``judge.call_store``): a Redis store answers a PING,
and an SQLite store is not on a network file system.

SQLite's WAL mode keeps its index in shared memory that only the processes of one
machine share, and network file systems give no reliable locks (SQLite's own docs: "WAL
does not work over a network filesystem"), so a store on NFS, a parallel file system or
a FUSE mount of a remote disk loses answers or corrupts the file once two machines write.
The file system is read from the kernel's mount table, the longest mount point that
holds the store's folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from vpo_core.errors import VPOError
from vpo_core.preflight.findings import Finding
from vpo_core.preflight.plan import Plan

MOUNTINFO = Path("/proc/self/mountinfo")
FIELD = "judge.call_store"
# Network, parallel and remote-FUSE file systems, as mountinfo names them.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "fuse.sshfs", "sshfs",
    "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph", "fuse.ceph-fuse", "glusterfs",
    "fuse.glusterfs", "ocfs2", "gfs2", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.rclone", "fuse.weka", "wekafs", "orangefs", "pvfs2"})
REDIS_FIX = ("set judge.call_store: redis://host:6379/0, a Redis server every machine "
             "reaches (docs/cluster.md, 'The LLM call store'), or put work_dir on a local "
             "disk if one machine runs every LLM stage")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem(path: Path, mountinfo: Path = MOUNTINFO) -> tuple[str, str] | None:
    """(file system type, mount point) of the mount that holds ``path`` (made yet or
    not; symbolic links of its existing part followed); None when the table cannot be
    read."""
    target = str(path.expanduser().resolve())
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    best: tuple[str, str] | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[1])):
            best = (right.split()[0], point)
    return best


def check_sqlite(store_file: Path, mountinfo: Path = MOUNTINFO) -> Finding:
    """An SQLite store on a local disk: ok; on a network file system: an error."""
    found = filesystem(store_file.parent, mountinfo)
    if found is None:
        return Finding("warning", FIELD, f"sqlite at {store_file}: the file system is unknown "
                       f"({mountinfo} unreadable)", "keep it on a local disk; across "
                       "machines " + REDIS_FIX.removeprefix("set "))
    fstype, point = found
    if fstype in NETWORK_FS:
        return Finding("error", FIELD, f"sqlite at {store_file} is on {fstype} ({point}), a "
                       "network file system: SQLite's WAL needs memory and locks that only "
                       "one machine's processes share, so answers would be lost or the file "
                       "corrupted", REDIS_FIX)
    return Finding("ok", FIELD, f"sqlite at {store_file} ({fstype} on {point}, local)")


def check_redis(location: str, plan: Plan) -> Finding:
    """One PING through the store's own client, with its timeouts and retries."""
    from vpo_core.llm.engine import engine
    from vpo_core.llm.store import open_store

    cfg, remote = plan.cfg.judge, plan.remote(plan.judge_stages)

    async def ping() -> float:
        store = open_store(location, cfg)
        start = time.perf_counter()
        try:
            await store.ping()
        finally:
            await store.aclose()
        return time.perf_counter() - start

    try:
        seconds = engine().call(ping())
    except VPOError as exc:
        return Finding("warning" if remote else "error", FIELD, str(exc) + (
            f" (from here; the LLM stages run on pool {remote!r})" if remote else ""),
            "start the Redis server or fix judge.call_store (and "
            "judge.call_store_password_env)")
    return Finding("ok", FIELD, f"{location} answered PING in {seconds * 1000:.0f} ms")


def check_store(plan: Plan, work: Path, mountinfo: Path = MOUNTINFO) -> list[Finding]:
    """The configured call store, for a plan whose stages call the judge."""
    from vpo_core.llm.store import store_location

    if not plan.judge_stages:
        return []
    location = store_location(plan.cfg.judge, work)
    if location is None:
        return [Finding("warning", FIELD, "off: every re-run pays for every call again",
                        "use sqlite on one machine, redis:// across machines")]
    if location.startswith(("redis://", "rediss://")):
        return [check_redis(location, plan)]
    return [check_sqlite(Path(location), mountinfo)]
