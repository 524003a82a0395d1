"""`--keep-base REF|N`: keep the base image's layers; squash only the rest.

The result is the source's lowest N layers, untouched (the same blobs or
the same diff_ids, so registries and daemons keep sharing them with every
other image on that base), and one new layer on top. The new layer holds
every path of the final tree that differs from the base's tree, with the
directories above them, and a whiteout (OCI image spec, "Whiteouts") for
each base path the final tree lacks, at the highest such path: what the
upper layers deleted, and what the profile removed from the base.

The bytes of base files the profile removes are hidden, not reclaimed:
they still live in the base layers. The report gives both numbers.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from slimmer import __version__
from slimmer.archive import COPY_BUFFER, Layer
from slimmer.errors import ImageNotFound, SlimmerError
from slimmer.locations import (
    DAEMON,
    DOCKER_ARCHIVE,
    OCI,
    REGISTRY,
    Location,
    parse_location,
)
from slimmer.ocilayout import Source, matches, platform_text
from slimmer.report import tally
from slimmer.squash import IMPLIED, WHITEOUT, squash
from slimmer.tree import Entry, Tree
from slimmer.writer import WrittenLayer, header_bytes, write_layer

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
PREFIXES = ("docker://", "docker-archive:", "oci-archive:", "oci:", "docker-daemon:")


# -- which layers are the base ---------------------------------------------


def layer_count(spec: str, source: Location, image, daemon, workdir, insecure) -> int:
    """How many of the source's lowest layers `--keep-base spec` keeps.

    `spec` is a number of layers, or an image whose layers must be the
    source's lowest ones. Raises SlimmerError when they are not.
    """
    diff_ids = image.diff_ids
    if spec.isdigit():
        count = int(spec)
        if not 1 <= count <= len(diff_ids):
            raise SlimmerError(
                f"--keep-base {spec}: give 1 to {len(diff_ids)}, "
                f"the image has {len(diff_ids)} layers"
            )
        return count
    where = base_location(spec, source)
    base = base_diff_ids(where, image.platform, daemon, workdir, insecure)
    if not base or diff_ids[: len(base)] != base:
        raise SlimmerError(
            f"--keep-base {where}: its layers are not the lowest layers of {source}"
        )
    return len(base)


def base_location(text: str, source: Location) -> Location:
    """Where a base named without a kind is: beside the source.

    A bare `REPO:TAG` is in the source's registry, a bare `TAG` in the
    source's OCI folder; otherwise a bare ref names a daemon image.
    """
    if text.startswith(PREFIXES):
        return parse_location(text)
    if source.kind == REGISTRY:
        return parse_location(f"docker://{source.host}/{text}")
    if source.kind == OCI:
        return Location(OCI, path=source.path, tag=text)
    return parse_location(text)


def base_diff_ids(where: Location, platform: dict, daemon, workdir, insecure):
    """The diff_ids of the base image, for the source's platform."""
    if where.kind == DAEMON:
        return _daemon_diff_ids(where.ref, daemon)
    if where.kind == DOCKER_ARCHIVE:
        from slimmer.sources import archive_diff_ids

        return archive_diff_ids(where.path)
    wanted = {k: platform[k] for k in ("os", "architecture") if k in platform}
    with Source(where, workdir, insecure) as source:
        found = [d for p, d in source.platforms() if matches(p, wanted)]
        if not found:
            raise ImageNotFound(f"{where} has no image for {platform_text(platform)}")
        manifest = source.read_json(found[0])
        config = source.read_json(manifest["config"])
    return list((config.get("rootfs") or {}).get("diff_ids") or [])


def _daemon_diff_ids(ref: str, daemon) -> list[str]:
    import docker.errors

    if daemon is None:
        raise SlimmerError(f"--keep-base {ref} names a daemon image; none answers")
    try:
        attrs = daemon.api.inspect_image(ref)
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(f"no such image: {ref}") from exc
    except docker.errors.DockerException as exc:
        raise SlimmerError(f"cannot inspect {ref}: {exc}") from exc
    return list((attrs.get("RootFS") or {}).get("Layers") or [])


# -- the new layer -----------------------------------------------------------


class Diff:
    """What the new layer holds above `count` base layers.

    `path in diff` is true for a path the layer leaves out, which is what
    writer.write_layer asks of its `removed` argument: a removed path, or
    one the base already shows as it is, unless a changed path or a
    whiteout lies below it.
    """

    def __init__(self, tree: Tree, base: Tree, removed, count: int):
        self.removed, self.count = removed, count
        self.changed: set[str] = set()
        self.parents: set[str] = set()
        self.whiteouts: list[str] = []
        links = getattr(tree, "links", {})
        for path, entry in tree.walk():
            if path not in removed and self._differs(base, path, entry, links):
                self.changed.add(path)
                self._need_parents(path)
        self._find_gone(tree, base)

    def __contains__(self, path: str) -> bool:
        if path in self.removed:
            return True
        return path not in self.changed and path not in self.parents

    def _differs(self, base: Tree, path: str, entry: Entry, links) -> bool:
        if entry.layer >= self.count:
            return True
        old = base.get(path)
        if old is None or old.inode != entry.inode or old.kind != entry.kind:
            return True
        # An upper layer's hardlink to a base file gives the file its owner,
        # mode and mtime (moby pkg/archive), so the file changed.
        return any(layer >= self.count for layer, _ in links.get(entry.inode, ()))

    def _need_parents(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        while parent and parent not in self.parents:
            self.parents.add(parent)
            parent = parent.rpartition("/")[0]

    def _find_gone(self, tree: Tree, base: Tree) -> None:
        # Walk the base top down; a gone path hides its whole subtree, and
        # a non-directory in the final tree hides the base's below it.
        skip = None
        for path, entry in base.walk():
            if skip and path.startswith(skip):
                continue
            skip = None
            final = tree.get(path)
            if final is None or path in self.removed:
                self.whiteouts.append(path)
                self._need_parents(path)
                skip = f"{path}/"
            elif entry.is_dir and not final.is_dir:
                skip = f"{path}/"


def upper_layer(
    tree: Tree,
    layers: list[Layer],
    removed,
    count: int,
    target: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[WrittenLayer, Diff]:
    """Write the layer that goes above the lowest `count` layers."""
    diff = Diff(tree, squash(layers[:count]), removed, count)
    written = write_layer(tree, layers, diff, target, progress)
    return append_whiteouts(written, diff.whiteouts), diff


def append_whiteouts(layer: WrittenLayer, paths: list[str]) -> WrittenLayer:
    """Add a whiteout member for each path at the end of a written layer."""
    if not paths:
        return layer
    end = _content_end(layer.path)
    with open(layer.path, "r+b") as sink:
        sink.truncate(end)
        sink.seek(end)
        for path in paths:
            sink.write(header_bytes(whiteout_info(path)))
        # Two zero blocks end a tar archive (POSIX ustar).
        sink.write(b"\0" * (2 * BLOCK))
        sink.flush()
        os.fsync(sink.fileno())
    size, digest = _hash(layer.path)
    return WrittenLayer(layer.path, size, digest)


def whiteout_info(path: str) -> tarfile.TarInfo:
    """OCI image spec, "Whiteouts": an empty file `.wh.NAME` beside NAME."""
    parent, _, name = path.rpartition("/")
    info = tarfile.TarInfo(f"{parent}/{WHITEOUT}{name}" if parent else WHITEOUT + name)
    info.type, info.size, info.mode, info.mtime = tarfile.REGTYPE, 0, 0o644, 0
    return info


def _content_end(path: Path) -> int:
    """Where the last member ends: the end-of-archive blocks start there."""
    with tarfile.open(path, "r:", errors="surrogateescape") as written:
        while written.next() is not None:
            written.members.clear()
        return written.offset


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as source:
        while chunk := source.read(COPY_BUFFER):
            digest.update(chunk)
            size += len(chunk)
    return size, f"sha256:{digest.hexdigest()}"


# -- the config and the report -----------------------------------------------


def new_config(source: dict, count: int, diff_id: str, summary: str) -> dict:
    """The source config over the base's layers and the new one.

    OCI image spec, "Image Configuration": each history entry not marked
    `empty_layer` owns the next diff_id. The base's entries stay as they
    are; the upper entries are kept, marked as owning no layer.
    """
    config = copy.deepcopy(source)
    diff_ids = list(source["rootfs"]["diff_ids"])[:count] + [diff_id]
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    created = source.get("created", "1970-01-01T00:00:00Z")
    history, owned = [], 0
    for item in source.get("history") or []:
        if item.get("empty_layer"):
            history.append(dict(item))
        elif owned < count:
            history.append(dict(item))
            owned += 1
        else:
            history.append(dict(item, empty_layer=True))
    history += [
        {"created": created, "comment": "a base layer with no history entry"}
    ] * (count - owned)
    history.append(
        {
            "created": created,
            "created_by": f"slimmer {__version__}: {summary}",
            "comment": f"squashed by slimmer above {count} base layers",
        }
    )
    config["history"] = history
    return config


def hidden_bytes(tree: Tree, removed: dict, count: int) -> int:
    """Bytes of removed files that live in the base layers, as tally counts.

    All names of one file share its record, so they fall on the same side.
    """
    if not count:
        return 0
    in_base = {}
    for path, rule in removed.items():
        entry = tree.get(path)
        if entry is not None and entry.layer != IMPLIED and entry.layer < count:
            in_base[path] = rule
    return tally(tree, in_base, []).bytes


def note(count: int, reclaimed: int, hidden: int) -> str:
    """The report's plain words about what --keep-base costs."""
    return (
        f"--keep-base: the lowest {count} layers are kept and shared; "
        f"{_mb(reclaimed)} removed from the layers above were reclaimed, and "
        f"{_mb(hidden)} the profiles removed from the base are only hidden by "
        "whiteouts: those bytes are NOT reclaimed, they still live in the base"
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
