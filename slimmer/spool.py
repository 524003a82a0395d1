"""Save an image from the daemon into the work folder, minus what will go.

`docker save` streams a tar whose members are the layers, themselves
tars. While the stream comes in, each layer's member headers are read as
they pass. The bytes of a regular file that the profiles remove whatever
the rest of the image holds (its path alone decides, see
prune.removes_file) are not written: the file keeps a hole there, which
takes no disk. Everything else, every header included, lands at its own
offset, so the archive reads as if it were whole.

A removed file's bytes may still be wanted: a guard keeps it, or a
hardlink that stays names it. Whoever reads file bytes asks Layer.ensure
first; a read that touches a hole fills every hole from a second
`docker save` of the same image id. The daemon rebuilds each layer from
the tar-split data it stored, so that stream is the same byte for byte;
the header before each hole and the total length are checked to be sure.

Nothing is extracted, and member names are only matched, never opened.
"""

from __future__ import annotations

import logging
import os
import tarfile
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from slimmer.errors import ArchiveError, SlimmerError
from slimmer.squash import normalize

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)
WRITE_BUFFER = 1 << 20
# Buffers per pwritev call, well under Linux's IOV_MAX of 1024.
MAX_VECTOR = 512
# Bytes of a left-out file always written: its ELF identification and more.
HEAD = 64
# Types whose bytes are the file's bytes (POSIX ustar "typeflag").
PLAIN_FILES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
PAX_HEADERS = {tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE}
# Headers that describe the next member rather than being one.
EXTENSIONS = PAX_HEADERS | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
# Types with no bytes after the header, whatever the size field says: tarfile
# (and so the squash) reads the next header right after them.
HEADER_ONLY = {
    tarfile.LNKTYPE,
    tarfile.SYMTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
}
# A global PAX header changes every member after it, and an old GNU sparse
# member has extension blocks: the spool stops leaving bytes out at either.
UNFOLLOWED = {tarfile.XGLTYPE, tarfile.GNUTYPE_SPARSE}


class Holes:
    """The byte ranges of the saved archive that were not written.

    `ensure` is the gate every reader of file bytes passes: when a read
    would touch a hole, all holes are filled first, once.
    """

    def __init__(self):
        # Sorted, disjoint [start, end) ranges; arrays keep them compact.
        self.starts, self.ends = array("q"), array("q")
        self.fill: Callable[[], None] | None = None

    def __len__(self):
        return len(self.starts)

    @property
    def size(self) -> int:
        return sum(self.ends) - sum(self.starts)

    def add(self, start: int, end: int) -> None:
        if self.ends and self.ends[-1] == start:
            self.ends[-1] = end  # adjacent: one range
        else:
            self.starts.append(start)
            self.ends.append(end)

    def touches(self, offset: int, size: int) -> bool:
        index = bisect_right(self.starts, offset + size - 1) - 1
        return size > 0 and index >= 0 and self.ends[index] > offset

    def ensure(self, offset: int, size: int) -> bool:
        """Fill every hole if this range touches one; True if it did."""
        if not self.touches(offset, size):
            return False
        if self.fill is None:
            raise SlimmerError("slimmer needs bytes it left out of the saved image")
        log.info("a kept file's bytes were left out: saving the image again")
        self.fill()
        self.starts, self.ends = array("q"), array("q")
        return True


class _Spooler:
    """Reads a chunked stream and writes it to a file at the same offsets.

    `take` and `copy` write what they read; `skip` reads without writing.
    """

    def __init__(self, chunks: Iterable[bytes], fd: int, holes: Holes, progress):
        self._chunks, self._fd, self._holes = iter(chunks), fd, holes
        self._progress = progress
        self._buffer = memoryview(b"")  # received, not yet consumed
        # Consumed, not yet written: views of the received chunks, written
        # together by one pwritev, so no byte is copied on the way.
        self._pending: list[memoryview] = []
        self._pending_size = 0
        self.pos = 0  # stream offset of the next byte to consume
        self.block = os.fstat(fd).st_blksize or 4096  # the file system's

    def _fill(self, want: int) -> bool:
        """Make at least `want` unconsumed bytes ready; False at the end."""
        while len(self._buffer) < want:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            if self._progress:
                self._progress(len(chunk))
            if self._buffer:
                chunk = bytes(self._buffer) + chunk
            self._buffer = memoryview(chunk)
        return True

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return bytes(self._buffer[:size])

    def take(self, size: int) -> bytes:
        """Up to `size` bytes, written too; fewer only at the stream's end."""
        self._fill(size)
        data = bytes(self._buffer[:size])
        self._consume(len(data), write=True)
        return data

    def copy(self, size: int) -> None:
        self._pass(size, write=True)

    def skip(self, size: int) -> None:
        if size <= 0:
            return
        start = self.pos
        self._pass(size, write=False)
        self._holes.add(start, self.pos)

    def copy_rest(self) -> None:
        while self._fill(1):
            self._consume(len(self._buffer), write=True)

    def finish(self) -> int:
        """Write what is pending; the file is as long as the stream."""
        self._flush()
        os.ftruncate(self._fd, self.pos)
        return self.pos

    def _pass(self, size: int, write: bool) -> None:
        while size > 0:
            if not self._buffer and not self._fill(1):
                raise ArchiveError("the saved image ends early")
            step = min(size, len(self._buffer))
            self._consume(step, write)
            size -= step

    def _consume(self, size: int, write: bool) -> None:
        if not write:
            self._flush()  # what is pending ends where the hole starts
        piece = self._buffer[:size]
        self._buffer = self._buffer[size:]
        self.pos += size
        if write:
            self._pending.append(piece)
            self._pending_size += size
            if self._pending_size >= WRITE_BUFFER or len(self._pending) >= MAX_VECTOR:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        start = self.pos - self._pending_size
        written = os.pwritev(self._fd, self._pending, start)
        if written < self._pending_size:  # a short write: finish it plainly
            rest = b"".join(self._pending)[written:]
            while rest:
                done = os.pwrite(self._fd, rest, start + written)
                rest, written = rest[done:], written + done
        self._pending, self._pending_size = [], 0


def save(
    chunks: Iterable[bytes],
    target: Path,
    removes: Callable[[str], bool] | None,
    progress: Callable[[int], None] | None = None,
) -> Holes:
    """Write the saved image `chunks` to `target`, leaving out the bytes
    of regular files whose path `removes` says go. Returns the holes."""
    holes = Holes()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        spooler = _Spooler(chunks, fd, holes, progress)
        if removes is None:
            spooler.copy_rest()
        else:
            _outer(spooler, removes)
        spooler.finish()
    finally:
        os.close(fd)
    log.debug(
        "saved %s leaving out %d bytes in %d holes", target, holes.size, len(holes)
    )
    return holes


def _outer(spooler: _Spooler, removes: Callable[[str], bool]) -> None:
    """The saved archive: a layer member is read member by member."""
    for info, length in _members(spooler, spooler.pos + (1 << 62)):
        if info.isreg() and _is_tar(spooler.peek(BLOCK)):
            end = spooler.pos + length
            _layer(spooler, end, removes)
            spooler.copy(end - spooler.pos)
        else:
            spooler.copy(length)
    spooler.copy_rest()


def _layer(spooler: _Spooler, end: int, removes: Callable[[str], bool]) -> None:
    """One layer's tar, up to stream offset `end`; the caller copies the rest.

    It stops at the first thing it does not follow: the squash reads the
    layer again, and reports a bad header then.
    """
    for info, length in _members(spooler, end):
        wanted = not (
            info.type in PLAIN_FILES
            and info.size > 0
            and not _sparse(info)
            and _removed(removes, info.name)
        )
        if wanted:
            spooler.copy(length)
            continue
        # The head of the file is written anyway: readers peek at it (the
        # guards look for ELF magic in removed files), and a hole saves
        # disk only in whole file system blocks, the first of which holds
        # the header too.
        head = min(length, _align(spooler.pos + HEAD, spooler.block) - spooler.pos)
        spooler.copy(head)
        spooler.skip(length - head)


def _members(spooler: _Spooler, end: int) -> Iterator[tuple[tarfile.TarInfo, int]]:
    """Each member header up to stream offset `end`, with the padded length
    of its data, which the caller must consume. Extended headers (PAX, GNU
    long names) are consumed here and folded into the member they describe.

    Members are framed exactly as tarfile, which the squash reads them
    with, frames them. At anything whose framing is not followed here (a
    global PAX header, a GNU sparse member, stacked PAX headers) it stops,
    and the caller copies the rest as it comes.
    """
    records: dict[str, str] = {}
    long_name = None
    while end - spooler.pos >= BLOCK:
        # A block that ends the archive, or is no header, is written too:
        # the caller copies whatever follows.
        block = spooler.take(BLOCK)
        if len(block) < BLOCK or block == ZERO_BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return
        if info.type in UNFOLLOWED or (info.type in PAX_HEADERS and records):
            return
        length = _data_length(info, records)
        if length > end - spooler.pos:
            return
        if info.type in PAX_HEADERS:
            records = _pax_records(spooler.take(length)[: info.size])
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = spooler.take(length)[: info.size].rstrip(b"\0")
        elif info.type == tarfile.GNUTYPE_LONGLINK:
            spooler.copy(length)
        else:
            if "path" in records:
                info.name = records["path"]
            elif long_name is not None:
                info.name = long_name.decode("utf-8", "surrogateescape")
            info.pax_headers = records
            if info.type not in HEADER_ONLY:
                info.size = _int(records.get("size", ""), info.size)
            yield info, length
            records, long_name = {}, None


def _data_length(info: tarfile.TarInfo, records: dict[str, str]) -> int:
    """The padded length of the bytes after this header, as tarfile sees it:
    none after a header-only type whatever its size field says, and a PAX
    `size` record counts for the member itself, not for a GNU long name."""
    if info.type in HEADER_ONLY:
        return 0
    size = info.size
    if info.type not in EXTENSIONS and "size" in records:
        size = _int(records["size"], size)
    return size + (-size % BLOCK)


def _pax_records(data: bytes) -> dict[str, str]:
    """POSIX pax "extended header" records: `LEN KEY=VALUE\\n` each."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = _int(data[pos:space].decode("ascii", "replace"), 0)
        if length <= 0:
            break
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape"
        )
        pos += length
    return records


def _int(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def _align(offset: int, block: int) -> int:
    return offset + (-offset % block)


def _is_tar(block: bytes) -> bool:
    # POSIX ustar and GNU headers both carry "ustar" at offset 257.
    return len(block) == BLOCK and block[257:262] == b"ustar"


def _sparse(info: tarfile.TarInfo) -> bool:
    # A PAX sparse file keeps a map in its bytes: never leave it out.
    return any(key.startswith("GNU.sparse.") for key in info.pax_headers)


def _removed(removes: Callable[[str], bool], name: str) -> bool:
    try:
        path = normalize(name)
    except ArchiveError:
        return False  # the squash refuses the name itself
    return bool(path) and removes(path)


def fill(holes: Holes, chunks: Iterable[bytes], target: Path) -> None:
    """Write the bytes of every hole of `target` from a second save.

    Everything the first save wrote must come again unchanged, and the
    length too, or the image changed under slimmer and nothing is trusted.
    """
    fd = os.open(target, os.O_RDWR)
    try:
        pos, index = 0, 0
        for chunk in chunks:
            view, end = memoryview(chunk), pos + len(chunk)
            while pos < end:
                # The next hole that ends after pos, if it starts in this chunk.
                while index < len(holes) and holes.ends[index] <= pos:
                    index += 1
                start = holes.starts[index] if index < len(holes) else end
                if start > pos:  # written the first time: must match
                    upto = min(start, end)
                    if os.pread(fd, upto - pos, pos) != view[: upto - pos]:
                        raise ArchiveError("the image changed while slimmer read it")
                else:  # in a hole: fill it
                    upto = min(holes.ends[index], end)
                    os.pwrite(fd, view[: upto - pos], pos)
                view, pos = view[upto - pos :], upto
        if pos != os.fstat(fd).st_size:
            raise ArchiveError("the image changed while slimmer read it")
    finally:
        os.close(fd)
