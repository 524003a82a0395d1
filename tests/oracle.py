"""The daemon's own view of an image, for comparing against slimmer's.

`docker create` then `docker export` gives the merged tree a container
sees. Both the source and slimmer's result are read this way, so paths
the daemon adds to every container appear on both sides alike; they are
still left out, since their mtimes differ per container.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass

# Paths the daemon adds to every container's filesystem (its init layer).
DAEMON_PATHS = {
    ".dockerenv",
    "dev",
    "proc",
    "sys",
    "etc",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
    "dev/pts",
    "dev/shm",
}
KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "chardev",
    tarfile.BLKTYPE: "blockdev",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class Record:
    kind: str
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    size: int
    sha256: str
    link: str
    xattrs: tuple
    mtime: int
    device: tuple


def normalize(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def read_tree(fileobj) -> dict[str, Record]:
    """Path -> Record for a stream of tar data; hardlinks are resolved."""
    records: dict[str, Record] = {}
    with tarfile.open(fileobj=fileobj, mode="r|", errors="surrogateescape") as tf:
        for info in tf:
            path = normalize(info.name)
            if not path:
                continue
            if info.islnk():
                records[path] = records[normalize(info.linkname)]
                continue
            digest = ""
            if info.isreg():
                digest = hashlib.sha256(tf.extractfile(info).read()).hexdigest()
            xattrs = tuple(
                sorted(
                    (k, v)
                    for k, v in info.pax_headers.items()
                    if k.startswith("SCHILY.xattr.")
                )
            )
            records[path] = Record(
                KINDS.get(info.type, repr(info.type)),
                info.mode & 0o7777,
                info.uid,
                info.gid,
                info.size if info.isreg() else 0,
                digest,
                info.linkname if info.issym() else "",
                xattrs,
                int(info.mtime),
                (info.devmajor, info.devminor)
                if info.ischr() or info.isblk()
                else (0, 0),
            )
    return records


def export_view(client, ref: str) -> dict[str, Record]:
    """The tree a container of `ref` sees, as the daemon exports it."""
    container = client.containers.create(
        ref, command=["true"], entrypoint=[], network_disabled=True
    )
    try:
        stream = io.BufferedReader(
            _Chunks(container.export(chunk_size=1 << 20)), 1 << 20
        )
        return {
            path: record
            for path, record in read_tree(stream).items()
            if path not in DAEMON_PATHS
        }
    finally:
        container.remove(force=True)


def differences(expected: dict, actual: dict, limit: int = 20) -> list[str]:
    """Human-readable differences between two views; empty when equal."""
    problems = []
    for path in sorted(expected.keys() - actual.keys())[:limit]:
        problems.append(f"missing: {path!r}")
    for path in sorted(actual.keys() - expected.keys())[:limit]:
        problems.append(f"extra: {path!r}")
    for path in sorted(expected.keys() & actual.keys()):
        if expected[path] != actual[path] and len(problems) < limit * 3:
            problems.append(f"differs: {path!r}: {expected[path]} != {actual[path]}")
    return problems


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (for tarfile's r|)."""

    def __init__(self, chunks):
        super().__init__()
        self._chunks, self._pending = iter(chunks), memoryview(b"")

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
