"""Squash layers into the tree a container sees.

This is the only module that knows whiteouts. The rules follow the OCI
image spec, "Layer" section ("Whiteouts" and "Opaque Whiteout"), as the
overlay2 storage driver applies them:

- `.wh.NAME` in layer N hides NAME of the lower layers only.
- `.wh..wh..opq` in directory D of layer N hides every lower child of D.
- Both hold wherever the marker sits in layer N's member order, so each
  layer is read whole before its hides and then its adds are applied.
- A non-directory placed at a path hides everything the lower layers had
  below it; a directory placed over a directory merges with it.
- Other `.wh..wh.` names are AUFS bookkeeping (`.wh..wh.plnk`,
  `.wh..wh.aufs`) and are dropped. A regular file in `.wh..wh.plnk/` is
  the source of hardlinks elsewhere in its layer; they keep its bytes.
  No marker reaches the tree.
- An opaque marker at the image root is ignored: overlayfs never reads
  the opaque xattr on a layer's root, so the daemon shows the lower files.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterable, Iterator

from slimmer.archive import Layer
from slimmer.errors import ArchiveError
from slimmer.tree import DIRECTORY, HARDLINK, REGULAR, SYMLINK, Entry, Tree

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
AUFS_META = ".wh..wh."
# AUFS keeps the sources of a layer's hardlinks here (moby pkg/archive).
AUFS_LINK_DIR = ".wh..wh.plnk/"
# GNU sparse members keep a map instead of plain bytes; see writer.py.
SPARSE = b"S"
# The layer index of a directory no member described (see _parent_dir).
IMPLIED = -1


def squash(layers: Iterable[Layer]) -> Tree:
    """Apply `layers` oldest first and return the merged tree."""
    tree = Tree()
    for index, layer in enumerate(layers):
        apply_layer(tree, index, layer)
    return tree


def normalize(name: str) -> str:
    """A member name as a tree path: no `./`, no leading or trailing `/`.

    Member names are hostile input: a `..` segment would step outside the
    image root, so it is refused rather than resolved.
    """
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member name escapes the image root: {name!r}")
    return "/".join(parts)


def members(layer: Layer) -> Iterator[tarfile.TarInfo]:
    """The members of a layer, in order, without keeping them all in memory."""
    with tarfile.open(
        fileobj=layer.open(), mode="r:", errors="surrogateescape"
    ) as archive:
        while (info := archive.next()) is not None:
            # TarFile remembers every member it has read; drop them so
            # memory does not grow with the layer.
            archive.members.clear()
            yield info
        _check_end(layer, archive.offset)


class _HolesFilled(Exception):
    """The layer seemed to end inside bytes the save left out (spool.py)."""


def _check_end(layer: Layer, offset: int) -> None:
    # The spool never leaves out a header, but should it ever, the zeros
    # of its hole would read as the end: bring the bytes back and reread.
    if layer.ensure(offset, tarfile.BLOCKSIZE):
        raise _HolesFilled
    # tarfile takes a bad or cut header past the first member for the end
    # of the archive; a real end is zero blocks (POSIX ustar) or no bytes.
    tail = layer.pread(tarfile.BLOCKSIZE, offset)
    if tail.strip(b"\0"):
        raise ArchiveError(
            f"layer {layer.digest or '?'} has a bad member header at offset {offset}"
        )


class _Adds:
    """A layer's members that add a path, held until its markers are known.

    NOTE: a layer is read whole before its adds are applied (see the
    module docstring), so every added member is held at once. Each costs
    two list slots: its name (the very string that becomes the tree's key)
    and its record. Its parent directory's path is held once for each run
    of members in the same directory, as tar keeps a directory's members
    together. A full path string and a tuple per member would cost more
    than the record itself.
    """

    def __init__(self):
        self.names: list[str] = []
        self.entries: list[Entry] = []
        # (parent path, index of the run's first member), one per run.
        self.runs: list[tuple[str, int]] = []

    def append(self, path: str, entry: Entry) -> None:
        parent, _, name = path.rpartition("/")
        if not self.runs or self.runs[-1][0] != parent:
            self.runs.append((parent, len(self.names)))
        self.names.append(name)
        self.entries.append(entry)

    def __iter__(self) -> Iterator[tuple[str, str, Entry]]:
        for number, (parent, start) in enumerate(self.runs):
            last = number + 1 == len(self.runs)
            end = len(self.names) if last else self.runs[number + 1][1]
            for index in range(start, end):
                yield parent, self.names[index], self.entries[index]


def _apply(tree: Tree, index: int, layer: Layer) -> None:
    hides, opaque_dirs, adds, aufs_sources = [], [], _Adds(), {}
    for info in members(layer):
        path = normalize(info.name)
        meaning = marker(path)
        if meaning is None:
            if path:
                adds.append(path, _record(index, info))
        elif meaning[0] == "whiteout":
            hides.append(meaning[1])
        elif meaning[0] == "opaque":
            opaque_dirs.append(meaning[1])
        elif path.startswith(AUFS_LINK_DIR) and info.isreg():
            aufs_sources[path] = _record(index, info)
        else:
            log.debug("dropping AUFS metadata %s", path)

    for path in hides:
        _remove(_parent_dir(tree, path, index), path)
    for path in opaque_dirs:
        if not path:
            log.debug("ignoring an opaque marker at the image root, as overlayfs")
            continue
        _parent_dir(tree, f"{path}/{OPAQUE}", index).children.clear()
    for parent, name, entry in adds:
        if entry.kind == HARDLINK:
            entry = _resolve_hardlink(tree, _join(parent, name), entry, aufs_sources)
        _put(_directory(tree, parent, index), name, entry)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _record(index: int, info: tarfile.TarInfo) -> Entry:
    """A compact record of one member; hardlinks keep their target name."""
    if info.islnk():
        return Entry(
            index, info.offset, -1, 0, HARDLINK, info.mode, normalize(info.linkname)
        )
    kind = SPARSE if info.issparse() else info.type
    if kind in (tarfile.AREGTYPE, tarfile.CONTTYPE):
        kind = REGULAR
    size = info.size if kind in (REGULAR, SPARSE) else 0
    linkname = info.linkname if info.issym() else None
    return Entry(index, info.offset, info.offset_data, size, kind, info.mode, linkname)


def _remove(directory: Entry, path: str) -> None:
    directory.children.pop(path.rpartition("/")[2], None)


def _put(directory: Entry, name: str, entry: Entry) -> None:
    existing = directory.children.get(name)
    if entry.is_dir and existing is not None and existing.is_dir:
        # A directory over a directory merges: new metadata, old children.
        entry.children = existing.children
    directory.children[name] = entry


def _parent_dir(tree: Tree, path: str, index: int) -> Entry:
    """The directory that holds `path`, as layer `index` leaves it."""
    return _directory(tree, path.rpartition("/")[0], index)


def _directory(tree: Tree, path: str, index: int) -> Entry:
    """The directory at `path`, as layer `index` leaves it.

    A layer that holds a path without a header for its parent directory
    makes the parent anew, as the daemon's unpacker does: root-owned,
    0755. Under overlay2 that new directory hides the lower one's metadata
    (though not its children), so a lower directory takes it on too.
    """
    node = tree.root
    if not path:
        return node
    for part in path.split("/"):
        child = node.children.get(part)
        if child is None or child.children is None:
            child = _implied_dir()
            node.children[part] = child
        elif child.layer not in (index, IMPLIED):
            implied = _implied_dir()
            implied.children = child.children
            node.children[part] = child = implied
        node = child
    return node


def _implied_dir() -> Entry:
    # NOTE: the daemon stamps such a directory with the time it unpacked
    # the layer, which no one can reproduce; slimmer writes mtime 0.
    return Entry(IMPLIED, -1, -1, 0, DIRECTORY, 0o755)


def _resolve_hardlink(tree: Tree, path: str, link: Entry, aufs_sources) -> Entry:
    # A hardlink names a file already unpacked; it becomes a second name
    # for that record, so later changes to the target name do not touch it.
    target = aufs_sources.get(link.linkname) or tree.get(link.linkname)
    if target is None or target.is_dir:
        raise ArchiveError(
            f"hardlink {path!r} points to {link.linkname!r}, which is not a file"
        )
    # moby pkg/archive applies the link member's owner, mode and mtime to
    # the shared inode (chown, then chmod, as the kernel clears set-id bits
    # on chown); a symlink's mode and mtime stay.
    tree.links.setdefault(target.inode, []).append(link.inode)
    if target.kind != SYMLINK:
        target.mode = link.mode
    return target


def apply_layer(tree: Tree, index: int, layer: Layer) -> None:
    """Apply one layer on `tree`, for callers that look between layers."""
    try:
        try:
            _apply(tree, index, layer)
        except _HolesFilled:
            # _apply changes the tree only once the layer is read whole.
            _apply(tree, index, layer)
    except tarfile.TarError as exc:
        raise ArchiveError(f"layer {index} is not a valid tar: {exc}") from exc


def marker(path: str) -> tuple[str, str] | None:
    """What a member path means when it is a marker, else None.

    ("whiteout", hidden path), ("opaque", directory) or ("aufs", path).
    """
    parent, _, name = path.rpartition("/")
    if name == OPAQUE:
        return ("opaque", parent)
    if f"/{path}".find(f"/{AUFS_META}") >= 0:
        return ("aufs", path)
    if name.startswith(WHITEOUT):
        return ("whiteout", _join(parent, name[len(WHITEOUT) :]))
    return None
