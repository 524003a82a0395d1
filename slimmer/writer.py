"""Write the slimmed tree as one new layer, in PAX format.

Headers are re-read from the source layers (the tree keeps only where
they are), so ownership, modes, xattrs and odd names pass through as the
source had them. Bytes are copied by positioned reads; only the bytes of
kept files are read a second time.

The layer is a file (write_layer) or a stream of known size that goes
straight into `docker load` (StreamedLayer); both come from layer_chunks.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tarfile
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from slimmer.archive import COPY_BUFFER, Layer
from slimmer.squash import SPARSE
from slimmer.tree import REGULAR, Entry, Tree

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
# Extended header records that the writer derives anew from the fields.
DROPPED = {"path", "linkpath", "size", "hdrcharset"}
SPARSE_KEYS = "GNU.sparse."
XATTR = "SCHILY.xattr."
OWNER = ("uid", "gid", "uname", "gname")
MODE_AND_TIME = ("mode", "mtime")


@dataclass
class WrittenLayer:
    path: Path
    size: int
    diff_id: str  # "sha256:<hex>" of the uncompressed tar, as rootfs wants


class HeaderReader:
    """Re-reads member headers from the source layers on demand."""

    def __init__(self, layers: list[Layer]):
        # Closed in close(); the writer holds them for its whole run.
        self._archives = [
            tarfile.open(fileobj=layer.open(), mode="r:", **ENCODING)  # noqa: SIM115
            for layer in layers
        ]

    def header(self, entry: Entry) -> tarfile.TarInfo:
        return self.at(entry.layer, entry.header_offset)

    def at(self, layer: int, offset: int) -> tarfile.TarInfo:
        """The member whose first header block is at `offset` of `layer`."""
        archive = self._archives[layer]
        archive.fileobj.seek(offset)
        archive.offset = offset
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


def write_layer(
    tree: Tree,
    layers: list[Layer],
    removed: Container[str],
    target: Path,
    progress: Callable[[int], None] | None = None,
) -> WrittenLayer:
    """Write every path of `tree` not in `removed` to the tar `target`."""
    sink = _Sink(target)
    try:
        for chunk in layer_chunks(tree, layers, removed, progress):
            sink.write(chunk)
        # No fsync: the layer is scratch, loaded and then deleted.
        sink.file.flush()
    finally:
        sink.file.close()
    return WrittenLayer(target, sink.size, f"sha256:{sink.digest.hexdigest()}")


class StreamedLayer:
    """The new layer as a stream of known size, hashed as it goes out.

    The size comes from a first walk that reads only headers, so the
    layer can go straight into `docker load` (a tar header states its
    member's size up front) and never touches the disk. `diff_id` is set
    once the last chunk has gone.
    """

    def __init__(self, tree: Tree, layers: list[Layer], removed: Container[str]):
        self.tree, self.layers, self.removed = tree, layers, removed
        self.size = layer_size(tree, layers, removed)
        self.diff_id: str | None = None

    def chunks(self, progress: Callable[[int], None] | None = None):
        digest, sent = hashlib.sha256(), 0
        for chunk in layer_chunks(self.tree, self.layers, self.removed, progress):
            digest.update(chunk)
            sent += len(chunk)
            yield chunk
        if sent != self.size:
            # The two walks must agree, or the outer tar would be corrupt.
            raise OSError(f"the new layer came out {sent} bytes, not {self.size}")
        self.diff_id = f"sha256:{digest.hexdigest()}"


def layer_chunks(
    tree: Tree,
    layers: list[Layer],
    removed: Container[str],
    progress: Callable[[int], None] | None = None,
):
    """The new layer's tar, in chunks: every path of `tree` not in `removed`.

    A path in `removed` takes its subtree with it. Each file's first kept
    name is written in full and later names as hardlinks to it, so every
    hardlink points to a member written earlier.
    """
    reader = HeaderReader(layers)
    try:
        for entry, header in _headers(tree, removed, reader):
            yield header
            if entry is not None:
                yield from _contents(reader, layers, entry)
                yield _padding(entry.size)
                if progress:
                    progress(entry.size)
        yield END_OF_ARCHIVE
    finally:
        reader.close()


def layer_size(tree: Tree, layers: list[Layer], removed: Container[str]) -> int:
    """The size of what layer_chunks yields, from the headers alone.

    It also makes sure every kept file's bytes are in the saved archive
    (Layer.ensure), so that a layer streamed into the daemon never stalls.
    """
    reader = HeaderReader(layers)
    try:
        size = len(END_OF_ARCHIVE)
        for entry, header in _headers(tree, removed, reader):
            size += len(header)
            if entry is not None:
                _ensure(layers, entry)
                size += entry.size + len(_padding(entry.size))
        return size
    finally:
        reader.close()


def _headers(tree: Tree, removed: Container[str], reader: HeaderReader):
    """(entry, header bytes) of each kept path; entry is None unless the
    member carries bytes (a regular file written in full)."""
    names = Names(tree)
    for path, entry in _kept(tree, removed):
        info = member_info(reader, names, path, entry)
        carries = info.type == tarfile.REGTYPE
        yield (entry if carries else None), header_bytes(info)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


# Two zero blocks end a tar archive (POSIX ustar).
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


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


class Names:
    """The names written so far of files that may have several."""

    def __init__(self, tree: Tree):
        self.links = tree.links
        self.first: dict[tuple[int, int], str] = {}
        # The finished header of each file with hardlinks, for its aliases.
        self.linked: dict[tuple[int, int], tarfile.TarInfo] = {}


def member_info(
    reader: HeaderReader, names: Names, path: str, entry: Entry
) -> tarfile.TarInfo:
    """The header to write for `path`, recording it in `names`.

    A file already written under another name becomes a hardlink to it,
    with the same owner, mode, mtime and xattrs, since the unpacker
    applies a hardlink member's metadata to the file it names.
    """
    if entry.is_dir:
        return _header_for(reader, path, entry)
    # Only files with several names need their first name remembered.
    first = path
    if entry.inode in names.links:
        first = names.first.setdefault(entry.inode, path)
    info = names.linked.get(entry.inode)
    if info is None:
        info = _header_for(reader, path, entry)
        links = names.links.get(entry.inode)
        if links:
            _take_link_metadata(info, [reader.at(*link) for link in links])
            names.linked[entry.inode] = info
    if first == path:
        return info
    # tobuf never changes a TarInfo, so the copy may share its records.
    alias = copy.copy(info)
    alias.name, alias.linkname = path, first
    alias.type, alias.size = tarfile.LNKTYPE, 0
    return alias


def _header_for(reader: HeaderReader, path: str, entry: Entry) -> tarfile.TarInfo:
    if entry.layer < 0:
        # A directory no layer described (see squash._parent_dir).
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
        return info
    info = reader.header(entry)
    # tarfile lets extended header records win over fields, so records that
    # the rename or a hardlink change would contradict must go; the GNU
    # sparse ones would make readers take the plain bytes for a sparse map.
    for key in [
        k for k in info.pax_headers if k in DROPPED or k.startswith(SPARSE_KEYS)
    ]:
        del info.pax_headers[key]
    info.name = path
    if entry.kind in (REGULAR, SPARSE):
        # An old-style or contiguous file, or a sparse one: a plain file now.
        info.type, info.size = tarfile.REGTYPE, entry.size
    else:
        # Only regular files carry bytes in the new layer.
        info.size = 0
    return info


def _take_link_metadata(info: tarfile.TarInfo, links: list[tarfile.TarInfo]) -> None:
    # moby pkg/archive unpacks each hardlink member by chown, chmod and
    # utimes on the shared inode, and sets its xattrs, so the last member
    # naming a file decides its owner, mode and mtime; a symlink keeps its
    # mode and mtime (chmod and utimes would follow it).
    fields = OWNER if info.issym() else OWNER + MODE_AND_TIME
    for link in links:
        for field in fields:
            setattr(info, field, getattr(link, field))
            if field in link.pax_headers:
                info.pax_headers[field] = link.pax_headers[field]
            else:
                info.pax_headers.pop(field, None)
        info.pax_headers.update(
            (k, v) for k, v in link.pax_headers.items() if k.startswith(XATTR)
        )


def header_bytes(info: tarfile.TarInfo) -> bytes:
    """A member's header blocks, in PAX format.

    A field too big for ustar (a size of 8 GiB or more, a uid over 2097151,
    a name over 100 bytes) goes in an extended header record.
    """
    return info.tobuf(tarfile.PAX_FORMAT, **ENCODING)


def _contents(reader: HeaderReader, layers: list[Layer], entry: Entry):
    """A regular file's bytes, in chunks of at most COPY_BUFFER."""
    _ensure(layers, entry)
    if entry.kind == SPARSE:
        yield from _sparse_contents(reader, entry)
        return
    layer, offset, left = layers[entry.layer], entry.data_offset, entry.size
    while left > 0:
        chunk = layer.pread(min(left, COPY_BUFFER), offset)
        if not chunk:
            raise OSError(f"layer {layer.digest} ends inside a member")
        yield chunk
        offset += len(chunk)
        left -= len(chunk)


def _ensure(layers: list[Layer], entry: Entry) -> None:
    # A sparse member stores at most its full size after its headers.
    layers[entry.layer].ensure(entry.data_offset, entry.size)


def _sparse_contents(reader: HeaderReader, entry: Entry):
    # LIMITATION: GNU sparse members are written out as plain files of
    # their full length. The daemon never writes them, and docker 20.10
    # cannot `docker save` an image that holds one.
    info = reader.header(entry)
    source = reader.sparse_reader(entry, info)
    left = entry.size
    while chunk := source.read(min(left, COPY_BUFFER)):
        yield chunk
        left -= len(chunk)
    if left:
        raise OSError(f"a sparse member ends {left} bytes short: {info.name!r}")
