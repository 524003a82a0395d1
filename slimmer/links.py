"""Symlinks that a slim leaves pointing at removed paths.

A kept symlink dangles in the result when the path it names is removed,
or when its target resolves, inside the image, to a removed path (or
crosses a removed symlink on the way).
Targets are resolved over the squashed tree with the guards' resolver,
never on the host. A link that already dangled in the source is not
slimmer's doing and is not listed.
"""

from __future__ import annotations

from collections.abc import Mapping

from slimmer.guards import TreeView
from slimmer.tree import SYMLINK, Tree


def dangling(tree: Tree, removed: Mapping) -> list[dict]:
    """[{"path", "target"}] of every kept symlink that now points nowhere.

    `removed` maps each removed tree path to its rule; paths are absolute
    in the result, targets as stored in the link.
    """
    if not removed:
        return []
    view = TreeView(tree, None)
    found = []
    for path, entry in tree.walk():
        if entry.kind != SYMLINK or path in removed:
            continue
        # NOTE: a target that enters a removed directory and leaves it with
        # ".." is not caught; the resolver keeps only the final path.
        if _first_hop(path, entry.linkname or "") in removed:
            # The path the link names is gone, even if what lay behind it
            # (a loop, say) never resolved.
            found.append({"path": "/" + path, "target": entry.linkname or ""})
            continue
        target = view.resolve(path)
        if target is None:
            continue
        if any(step in removed for step in (*target.links, target.path)):
            found.append({"path": "/" + path, "target": entry.linkname or ""})
    return found


def _first_hop(path: str, target: str) -> str:
    """The tree path a link's target names, read lexically, never followed."""
    base = [] if target.startswith("/") else path.split("/")[:-1]
    for part in target.split("/"):
        if part == "..":
            if base:
                base.pop()
        elif part not in ("", "."):
            base.append(part)
    return "/".join(base)
