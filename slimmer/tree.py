"""The squashed tree: one compact record per path, never the file bytes.

A record says where a member's header and bytes live (layer index and
offset in that layer's tar), so later stages can re-read headers and copy
bytes on demand. Records are kept small on purpose: memory must grow with
the number of paths, not with the image's size in bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

# Member kinds, as tar type flags (POSIX ustar, section "typeflag").
REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHARDEV = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"


class Entry:
    """One path of the squashed tree.

    `layer` and `header_offset` locate the member's first header block
    (extended headers included) inside its layer. The names of a file with
    hardlinks share one record, so two entries
    with the same `inode` are one file with several names.
    """

    __slots__ = (
        "layer",
        "header_offset",
        "data_offset",
        "size",
        "kind",
        "mode",
        "linkname",
        "children",
    )

    def __init__(
        self, layer, header_offset, data_offset, size, kind, mode, linkname=None
    ):
        self.layer = layer
        self.header_offset = header_offset
        self.data_offset = data_offset
        self.size = size
        self.kind = kind
        self.mode = mode
        self.linkname = linkname
        self.children: dict[str, Entry] | None = {} if kind == DIRECTORY else None

    @property
    def inode(self) -> tuple[int, int]:
        return (self.layer, self.header_offset)

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY

    @property
    def is_file(self) -> bool:
        return self.kind == REGULAR

    def __repr__(self):
        return (
            f"Entry(kind={self.kind!r}, layer={self.layer}, "
            f"size={self.size}, link={self.linkname!r})"
        )


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
        start = self.get(top)
        if start is None or start.children is None:
            return
        stack = [(top, start)]
        while stack:
            path, node = stack.pop()
            if node is not start:
                yield path, node
            if node.children:
                prefix = f"{path}/" if path else ""
                for name in sorted(node.children, reverse=True):
                    stack.append((prefix + name, node.children[name]))

    def __len__(self):
        return sum(1 for _ in self.walk())
