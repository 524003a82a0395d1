"""Read a saved image archive: the tar that `docker save` writes.

Two layouts exist. The legacy one keeps each layer at `<id>/layer.tar`;
the OCI-style one of Docker 25+ keeps blobs at `blobs/sha256/<hex>`. Both
carry `manifest.json`, which names the config and the layers in order, so
layers are always found through it (or through `index.json` for a bare OCI
archive), never by guessing paths.

Nothing is extracted: a layer is a byte range of the archive file, read
with positioned reads. A compressed layer is decompressed once into the
work folder, because the squash needs random access to its members.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from slimmer.errors import ArchiveError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952, section 2.3.1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878, section 3.1.1
COPY_BUFFER = 1 << 20


class FileSlice(io.RawIOBase):
    """A read-only, seekable view of `size` bytes at `offset` of a file.

    Reads use os.pread, so many slices can share one descriptor without
    fighting over a file position.
    """

    def __init__(self, fd: int, offset: int, size: int):
        super().__init__()
        self._fd, self._start, self._size, self._pos = fd, offset, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, pos, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        self._pos = max(0, base[whence] + pos)
        return self._pos

    def read(self, n=-1):
        left = self._size - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._start + self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class Layer:
    """Where one layer's uncompressed tar lives: a byte range of a file."""

    path: Path
    offset: int
    size: int
    digest: str = ""  # the archive's name for it; for messages only

    fd: int = field(default=-1, repr=False)
    # Ranges of the file left unwritten (spool.Holes), or None.
    holes: object = field(default=None, repr=False)

    def ensure(self, offset: int, size: int) -> bool:
        """Make sure `size` bytes at `offset` of the layer tar are there;
        True if some had to be brought back.

        Every reader of a file's bytes asks first: a saved archive may
        leave out the bytes of files the profiles remove (see spool.py).
        """
        return self.holes is not None and self.holes.ensure(self.offset + offset, size)

    def open(self) -> FileSlice:
        return FileSlice(self.fd, self.offset, self.size)

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` within the layer tar."""
        return os.pread(self.fd, size, self.offset + offset)


@dataclass
class SavedImage:
    """The parts of a saved archive that the pipeline needs."""

    config: dict
    config_digest: str
    layers: list[Layer]
    repo_tags: list[str]
    _fds: list[int] = field(default_factory=list, repr=False)

    def read(self, entry, start: int = 0, size: int | None = None) -> bytes:
        """Up to `size` bytes of a regular file's contents, from `start`.

        `entry` is a tree.Entry; reads never go past the member's end.
        """
        end = entry.size if size is None else min(entry.size, start + size)
        if start >= end:
            return b""
        layer = self.layers[entry.layer]
        layer.ensure(entry.data_offset + start, end - start)
        return layer.pread(end - start, entry.data_offset + start)

    def open(self, entry) -> FileSlice:
        """A seekable file object over a regular file's contents."""
        self.layers[entry.layer].ensure(entry.data_offset, entry.size)
        return FileSlice(
            self.layers[entry.layer].fd,
            self.layers[entry.layer].offset + entry.data_offset,
            entry.size,
        )

    def close(self):
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def read_archive(path: Path, workdir: Path) -> SavedImage:
    """Index the saved archive at `path`; decompress layers into `workdir`.

    Raises ArchiveError when the archive or its manifest is malformed.
    """
    try:
        members = index_members(path)
        fd = os.open(path, os.O_RDONLY)
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError(f"cannot read image archive {path}: {exc}") from exc
    image = SavedImage({}, "", [], [], [fd])
    try:
        config_name, layer_names, image.repo_tags = _find_manifest(fd, members)
        image.config = json.loads(_read_member(fd, members, config_name))
        image.config_digest = Path(config_name).name.removesuffix(".json")
        for name in layer_names:
            offset, size = _member(members, name)
            image.layers.append(
                uncompressed(Layer(path, offset, size, name, fd), workdir, image)
            )
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        image.close()
        raise ArchiveError(f"malformed image archive {path}: {exc}") from exc
    except BaseException:
        image.close()
        raise
    return image


def index_members(path: Path) -> dict[str, tuple[int, int]]:
    """Map each member name of the outer archive to (data offset, size).

    A link member maps to what its target holds: a save layout may keep
    `<id>/layer.tar` as a link to the blob that holds the layer.
    """
    members, links = {}, {}
    with tarfile.open(path, "r:") as outer:
        for info in outer:
            name = posixpath.normpath(info.name)
            if info.isfile():
                members[name] = (info.offset_data, info.size)
            elif info.issym():
                parent = posixpath.dirname(name)
                links[name] = posixpath.normpath(posixpath.join(parent, info.linkname))
            elif info.islnk():
                links[name] = posixpath.normpath(info.linkname)
    for name, target in links.items():
        if target in members:
            members[name] = members[target]
    return members


def _member(members, name: str) -> tuple[int, int]:
    key = posixpath.normpath(name)
    if key not in members:
        raise ValueError(f"the manifest names {name!r}, which the archive lacks")
    return members[key]


def _read_member(fd: int, members, name: str) -> bytes:
    offset, size = _member(members, name)
    return os.pread(fd, size, offset)


def _find_manifest(fd, members) -> tuple[str, list[str], list[str]]:
    """The config name, layer names and tags, from manifest.json or index.json."""
    if "manifest.json" in members:
        manifest = json.loads(_read_member(fd, members, "manifest.json"))
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise ValueError("manifest.json must describe exactly one image")
        entry = manifest[0]
        return entry["Config"], list(entry["Layers"]), entry.get("RepoTags") or []
    if "index.json" in members:
        return _follow_oci_index(fd, members)
    raise ValueError("neither manifest.json nor index.json is present")


def blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if not hexdigest or "/" in hexdigest or "/" in algorithm:
        raise ValueError(f"bad digest {digest!r}")
    return f"blobs/{algorithm}/{hexdigest}"


def _follow_oci_index(fd, members) -> tuple[str, list[str], list[str]]:
    # OCI image-layout spec: index.json lists manifests, which may be nested
    # indexes; follow the first image manifest found.
    document = json.loads(_read_member(fd, members, "index.json"))
    for _depth in range(4):
        manifests = document.get("manifests") or []
        if not manifests:
            raise ValueError("index.json lists no manifest")
        if len(manifests) > 1:
            raise ValueError("the archive holds several images; name one")
        descriptor = manifests[0]
        document = json.loads(
            _read_member(fd, members, blob_path(descriptor["digest"]))
        )
        if "config" in document:
            tags = descriptor.get("annotations", {}).get("io.containerd.image.name")
            layers = [blob_path(layer["digest"]) for layer in document["layers"]]
            return (
                blob_path(document["config"]["digest"]),
                layers,
                [tags] if tags else [],
            )
    raise ValueError("index.json nests too deep")


def uncompressed(layer: Layer, workdir: Path, image: SavedImage) -> Layer:
    """The layer itself if it is a plain tar, else a decompressed copy."""
    magic = layer.pread(4, 0)
    if magic.startswith(GZIP_MAGIC):
        opener = gzip.GzipFile
    elif magic == ZSTD_MAGIC:
        opener = _zstd_reader
    else:
        return layer
    # A name of its own, so no other step's file in the work folder clashes.
    handle, name = tempfile.mkstemp(prefix="source-layer-", suffix=".tar", dir=workdir)
    target = Path(name)
    log.debug("decompressing %s into %s", layer.digest, target)
    try:
        with opener(fileobj=layer.open()) as source, os.fdopen(handle, "wb") as sink:
            _copy_all(source, sink)
    except (EOFError, zlib.error, _zstd_error()) as exc:
        raise ValueError(
            f"layer {layer.digest} is not a valid compressed stream: {exc}"
        ) from exc
    fd = os.open(target, os.O_RDONLY)
    image._fds.append(fd)
    return Layer(target, 0, target.stat().st_size, layer.digest, fd)


def _copy_all(source, sink) -> None:
    shutil.copyfileobj(source, sink, COPY_BUFFER)
    # A zstd stream cut short just ends (RFC 8878 frames carry no length
    # the reader checks), so the end of the frame must be seen explicitly.
    if getattr(source, "frame_finished", True) is False:
        raise EOFError("the zstd stream ends inside a frame")


class _ZstdLayer:
    """A zstd layer read to its end; `frame_finished` says it was whole.

    A layer may hold several frames one after another (RFC 8878, section
    3.1), so a new decompressor starts on whatever follows a frame's end.
    """

    def __init__(self, fileobj):
        import zstandard

        self._source = fileobj
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._inflate = self._new()
        self.frame_finished = True

    def read(self, size=-1):
        while chunk := self._source.read(COPY_BUFFER):
            data = self._feed(chunk)
            if data:
                return data
        return b""

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            out.append(self._inflate.decompress(chunk))
            self.frame_finished = self._inflate.eof
            chunk = self._inflate.unused_data if self._inflate.eof else b""
            if self._inflate.eof:
                self._inflate = self._new()
        return b"".join(out)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _zstd_reader(fileobj):
    return _ZstdLayer(fileobj)


def _zstd_error():
    import zstandard

    return zstandard.ZstdError
