"""The squashed tree: one compact record per path, never the file bytes.

A record says where a member's header and bytes live (layer index and
offset in that layer's tar), so later stages can re-read headers and copy
bytes on demand. Records are kept small on purpose: memory must grow with
the number of paths, not with the image's size in bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

# Member kinds, as tar type flags (POSIX ustar, section "typeflag").
REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHARDEV = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"


BLOCK = 512  # tar: headers and data areas fill whole 512-byte blocks
# A record's header offset takes this many low bits of its place (see
# Entry): layer tars up to 256 TiB.
OFFSET_BITS = 48
_OFFSET_MASK = (1 << OFFSET_BITS) - 1


class Shape(NamedTuple):
    """What many records have in common: layer, kind, mode, header blocks.

    `header_blocks` is how many 512-byte blocks the member's headers take
    (extended headers included), so the bytes start that many blocks after
    the header offset; None for a record with no member bytes to read.
    """

    layer: int
    kind: bytes
    mode: int
    header_blocks: int | None


# Every Shape in use, once each: an image has few layers, kinds, modes and
# header lengths, so records share these few tuples instead of holding
# four fields (and a fresh int for the mode) each.
_SHAPES: dict[Shape, Shape] = {}


def shape(layer: int, kind: bytes, mode: int, header_blocks: int | None) -> Shape:
    new = Shape(layer, kind, mode, header_blocks)
    return _SHAPES.setdefault(new, new)


class Entry:
    """One path of the squashed tree.

    `layer` and `header_offset` locate the member's first header block
    (extended headers included) inside its layer; `data_offset` is where
    its bytes start. The names of a file with hardlinks share one record,
    so two entries with the same `inode` are one file with several names.

    NOTE: an image may hold millions of records, so each is kept small, at
    the cost of reading most fields through a property:

    - four slots, a 64-byte object;
    - layer, kind, mode and header length in a Shape shared with every
      record alike;
    - header offset and size in one int, the place: the offset (plus one,
      so that -1, no member, fits) in the low OFFSET_BITS bits, the size
      above them. A file under 4 KiB keeps it one 32-byte int, where two
      ints took 64 bytes;
    - the data offset derived from the header offset and the Shape's
      header length, not held as a third large int.
    """

    __slots__ = ("children", "linkname", "_shape", "_place")

    def __init__(
        self, layer, header_offset, data_offset, size, kind, mode, linkname=None
    ):
        self.children: dict[str, Entry] | None = {} if kind == DIRECTORY else None
        self.linkname = linkname
        blocks = header_blocks(header_offset, data_offset)
        self._shape = shape(layer, kind, mode, blocks)
        self._place = place(header_offset, size)

    @property
    def layer(self) -> int:
        return self._shape.layer

    @property
    def kind(self) -> bytes:
        return self._shape.kind

    @property
    def mode(self) -> int:
        return self._shape.mode

    @mode.setter
    def mode(self, mode: int) -> None:
        layer, kind, _, blocks = self._shape
        self._shape = shape(layer, kind, mode, blocks)

    @property
    def header_offset(self) -> int:
        return (self._place & _OFFSET_MASK) - 1

    @property
    def size(self) -> int:
        return self._place >> OFFSET_BITS

    @property
    def data_offset(self) -> int:
        """Where the member's bytes start in its layer; -1 when it has none."""
        blocks = self._shape.header_blocks
        return -1 if blocks is None else self.header_offset + blocks * BLOCK

    @property
    def inode(self) -> tuple[int, int]:
        return (self._shape.layer, self.header_offset)

    @property
    def is_dir(self) -> bool:
        return self._shape.kind == DIRECTORY

    @property
    def is_file(self) -> bool:
        return self._shape.kind == REGULAR

    def __repr__(self):
        return (
            f"Entry(kind={self.kind!r}, layer={self.layer}, "
            f"size={self.size}, link={self.linkname!r})"
        )


def header_blocks(header_offset: int, data_offset: int) -> int | None:
    """The blocks between a member's first header and its bytes.

    A negative `data_offset` means the record has no bytes to read.
    """
    if data_offset < 0:
        return None
    blocks, rest = divmod(data_offset - header_offset, BLOCK)
    if rest or blocks < 0:
        raise ValueError(
            f"data offset {data_offset} is not whole blocks after the header "
            f"at {header_offset}"
        )
    return blocks


def place(header_offset: int, size: int) -> int:
    """A record's header offset and size as one int (see Entry)."""
    if not -1 <= header_offset < _OFFSET_MASK or size < 0:
        raise ValueError(f"header offset {header_offset} or size {size} out of range")
    return size << OFFSET_BITS | (header_offset + 1)


class Tree:
    """Paths of the squashed image, as nested directory records.

    Paths are relative POSIX strings with no leading `/` or `./`, such as
    `usr/bin/python3`. The root is the directory record for ``""``.
    """

    def __init__(self):
        self.root = Entry(-1, -1, -1, 0, DIRECTORY, 0o755)
        # inode -> (layer, header offset) of each hardlink member naming it,
        # in order: the unpacker applies each one's owner, mode, mtime and
        # xattrs to the shared inode, so the last one's win.
        self.links: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def get(self, path: str) -> Entry | None:
        node = self.root
        if not path:
            return node
        for part in path.split("/"):
            if node.children is None:
                return None
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def walk(self, top: str = "") -> Iterator[tuple[str, Entry]]:
        """Every (path, entry) below `top`, depth first, parents before
        children, siblings in sorted order (the order the writer emits)."""
        for directory, name, entry in self.walk_names(top):
            yield (f"{directory}/{name}" if directory else name), entry

    def walk_names(self, top: str = "") -> Iterator[tuple[str, str, Entry]]:
        """Every (directory path, name, entry) below `top`, in walk order.

        The directory path is one string per directory and the name is the
        tree's own key, so a caller that keeps them keeps no new strings.
        """
        start = self.get(top)
        if start is None or start.children is None:
            return
        # One frame per open directory: its path, its children and an
        # iterator over their sorted names. Memory grows with the depth and
        # the widest directory, never with the number of paths.
        stack = [(top, start.children, iter(sorted(start.children)))]
        while stack:
            directory, children, names = stack[-1]
            for name in names:
                entry = children.get(name)
                if entry is None:
                    continue  # the caller took it out while walking
                yield directory, name, entry
                if entry.children:
                    path = f"{directory}/{name}" if directory else name
                    stack.append((path, entry.children, iter(sorted(entry.children))))
                    break
            else:
                stack.pop()

    def __len__(self):
        return sum(1 for _ in self.walk())
