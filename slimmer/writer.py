"""Write the slimmed tree as one new layer, in PAX format.

Headers are re-read from the source layers (the tree keeps only where
they are), so ownership, modes, xattrs and odd names pass through as the
source had them. Bytes are copied by positioned reads; only the bytes of
kept files are read a second time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from slimmer.archive import COPY_BUFFER, Layer
from slimmer.squash import SPARSE
from slimmer.tree import DIRECTORY, Entry, Tree

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


@dataclass
class WrittenLayer:
    path: Path
    size: int
    diff_id: str  # "sha256:<hex>" of the uncompressed tar, as rootfs wants


class _HeaderReader:
    """Re-reads member headers from the source layers on demand."""

    def __init__(self, layers: list[Layer]):
        # Closed in close(); the writer holds them for its whole run.
        self._archives = [
            tarfile.open(fileobj=layer.open(), mode="r:", **ENCODING)  # noqa: SIM115
            for layer in layers
        ]

    def header(self, entry: Entry) -> tarfile.TarInfo:
        archive = self._archives[entry.layer]
        archive.fileobj.seek(entry.header_offset)
        archive.offset = entry.header_offset
        return tarfile.TarInfo.fromtarfile(archive)

    def sparse_reader(self, entry: Entry, info: tarfile.TarInfo):
        return self._archives[entry.layer].extractfile(info)

    def close(self):
        for archive in self._archives:
            archive.close()


class _Sink:
    """The output file, hashed as it is written."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115 - closed by write_layer
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def pad(self) -> None:
        remainder = self.size % BLOCK
        if remainder:
            self.write(b"\0" * (BLOCK - remainder))


def write_layer(
    tree: Tree,
    layers: list[Layer],
    removed: Container[str],
    target: Path,
    progress: Callable[[int], None] | None = None,
) -> WrittenLayer:
    """Write every path of `tree` not in `removed` to the tar `target`.

    A path in `removed` takes its subtree with it. Each file's first kept
    name is written as a regular file and later names as hardlinks to it,
    so every hardlink points to a member written earlier.
    """
    reader = _HeaderReader(layers)
    sink = _Sink(target)
    first_name: dict[tuple[int, int], str] = {}
    try:
        for path, entry in _kept(tree, removed):
            info = _header_for(reader, path, entry)
            if entry.is_file and entry.inode in first_name:
                info = _as_hardlink(info, first_name[entry.inode])
            elif entry.is_file:
                first_name[entry.inode] = path
            _write_member(sink, reader, layers, entry, info)
            if progress:
                progress(entry.size)
        # Two zero blocks end a tar archive (POSIX ustar).
        sink.write(b"\0" * (2 * BLOCK))
        sink.file.flush()
        os.fsync(sink.file.fileno())
    finally:
        sink.file.close()
        reader.close()
    return WrittenLayer(target, sink.size, f"sha256:{sink.digest.hexdigest()}")


def _kept(tree: Tree, removed: Container[str]):
    skip_below = None
    for path, entry in tree.walk():
        if skip_below and path.startswith(skip_below):
            continue
        if path in removed:
            if entry.children is not None:
                skip_below = f"{path}/"
            continue
        skip_below = None
        yield path, entry


def _header_for(reader: _HeaderReader, path: str, entry: Entry) -> tarfile.TarInfo:
    if entry.layer < 0:
        # A directory no layer described (see squash._parent_dir).
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
        return info
    info = reader.header(entry)
    # tarfile lets extended header records win over fields, so records that
    # the rename or a hardlink change would contradict must go.
    for key in ("path", "linkpath", "size"):
        info.pax_headers.pop(key, None)
    info.name = path
    return info


def _as_hardlink(info: tarfile.TarInfo, target: str) -> tarfile.TarInfo:
    info.type, info.linkname, info.size = tarfile.LNKTYPE, target, 0
    return info


def _write_member(sink, reader, layers, entry, info) -> None:
    if entry.kind == SPARSE and info.type != tarfile.LNKTYPE:
        _write_sparse(sink, reader, entry, info)
        return
    if info.type == tarfile.DIRTYPE or entry.kind == DIRECTORY:
        info.size = 0
    sink.write(info.tobuf(tarfile.PAX_FORMAT, **ENCODING))
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        _copy(sink, layers[entry.layer], entry.data_offset, entry.size)
        sink.pad()


def _copy(sink: _Sink, layer: Layer, offset: int, size: int) -> None:
    while size > 0:
        chunk = layer.pread(min(size, COPY_BUFFER), offset)
        if not chunk:
            raise OSError(f"layer {layer.digest} ends inside a member")
        sink.write(chunk)
        offset += len(chunk)
        size -= len(chunk)


def _write_sparse(sink, reader, entry, info) -> None:
    # LIMITATION: GNU sparse members are written out as plain files of
    # their full length; docker's own layers never hold them.
    source = reader.sparse_reader(entry, info)
    plain = tarfile.TarInfo(info.name)
    for field in ("mode", "uid", "gid", "uname", "gname", "mtime", "pax_headers"):
        setattr(plain, field, getattr(info, field))
    plain.size = info.size
    sink.write(plain.tobuf(tarfile.PAX_FORMAT, **ENCODING))
    while chunk := source.read(COPY_BUFFER):
        sink.write(chunk)
    sink.pad()
