"""Symlinks that a slim leaves pointing at removed paths.

A kept symlink whose target resolves, inside the image, to a path a rule
removes (or crosses a removed symlink on the way) dangles in the result.
Targets are resolved over the squashed tree with the guards' resolver,
never on the host. A link that already dangled in the source is not
slimmer's doing and is not listed.
"""

from __future__ import annotations

from slimmer.guards import TreeView
from slimmer.tree import SYMLINK, Tree


def dangling(tree: Tree, removed: dict) -> list[dict]:
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
        target = view.resolve(path)
        if target is None:
            continue
        if any(step in removed for step in (*target.links, target.path)):
            found.append({"path": "/" + path, "target": entry.linkname or ""})
    return found
