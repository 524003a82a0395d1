"""Select what a ruleset removes from the squashed tree: the plan.

The walk follows git. A directory that a rule removes takes everything
below it, because git never looks inside an ignored directory, so a "!"
line cannot bring back a file in it. `keep` lines win over every rule: a
kept path stays, and so do the directories above it, while the rest of a
removed directory still goes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from slimmer.rules import Rule, Ruleset
from slimmer.tree import Tree

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What goes and why, in the order of the tree walk."""

    # Every removed path, descendants of a removed directory included
    # (attributed to that directory's rule).
    removed: dict[str, Rule] = field(default_factory=dict)
    # Paths a rule would remove but a keep line saved, with the reason.
    kept_by_keep: dict[str, str] = field(default_factory=dict)


def select(tree: Tree, ruleset: Ruleset) -> Plan:
    """The plan for `tree`: which paths `ruleset` removes, and which it keeps."""
    plan = Plan()
    if ruleset.empty:
        return plan

    # State of each directory seen so far: the rule removing it (its own
    # or a parent's), and why keep lines keep it. tree.walk() yields a
    # parent before its children, so a parent's state is always there.
    dirs: dict[str, tuple[Rule | None, str | None]] = {"": (None, None)}
    for path, entry in tree.walk():
        removed_by, kept_because = dirs[path.rpartition("/")[0]]
        is_dir = entry.is_dir
        if removed_by is None:
            removed_by = ruleset.match(path, is_dir)
        if kept_because is None and ruleset.has_keep:
            kept_because = _keep_reason(ruleset, path, is_dir)
        if is_dir:
            dirs[path] = (removed_by, kept_because)

        if removed_by is None:
            continue
        if kept_because is None:
            plan.removed[path] = removed_by
        else:
            _restore_parents(plan, path)
            plan.kept_by_keep[path] = kept_because

    log.debug(
        "plan: %d paths removed, %d kept by keep lines",
        len(plan.removed),
        len(plan.kept_by_keep),
    )
    return plan


def _keep_reason(ruleset: Ruleset, path: str, is_dir: bool) -> str | None:
    rule = ruleset.keep_match(path, is_dir)
    if rule is None:
        return None
    return f"keep line {rule.pattern!r} of profile {rule.profile}"


def _restore_parents(plan: Plan, path: str) -> None:
    """Take the removed directories above a kept path out of the plan."""
    parents = []
    parent = path.rpartition("/")[0]
    # A parent that is not removed has no removed parent left above it:
    # either none was removed, or an earlier kept path restored them.
    while parent and parent in plan.removed:
        parents.append(parent)
        parent = parent.rpartition("/")[0]
    for parent in reversed(parents):
        del plan.removed[parent]
        plan.kept_by_keep[parent] = f"holds the kept path {path}"


def guarded(tree: Tree, ruleset: Ruleset, contents, config: dict):
    """The paths `ruleset` removes once the guards are applied, and the guards.

    Returns (removed: path -> rule, guards). A guarded path stays, and so
    does every directory above it.
    """
    from slimmer.guards import find_guards

    # The plan's own dict, not a copy: a second dict of every removed path
    # would double its cost at this step's peak.
    removed = select(tree, ruleset).removed
    kept = find_guards(tree, contents, config, removed)
    for guard in kept:
        parts = guard.path.split("/")
        for depth in range(1, len(parts) + 1):
            removed.pop("/".join(parts[:depth]), None)
    return removed, kept


def removes_file(ruleset: Ruleset) -> Callable[[str], bool]:
    """Whether `ruleset` removes a regular file at a path, keep lines
    counted, however the rest of the tree looks.

    It follows select() for a file whose parents are directories, which
    they are wherever such a file is in the tree. The guards are not
    asked: they need the whole tree, so a file they keep is read back
    through Layer.ensure.
    """

    @functools.lru_cache(maxsize=4096)
    def directory(path: str) -> tuple[bool, bool]:
        """(removed, kept) for a directory, its parents' verdicts included."""
        if not path:
            return False, False
        removed, kept = directory(path.rpartition("/")[0])
        return _verdict(ruleset, path, True, removed, kept)

    def removes(path: str) -> bool:
        removed, kept = directory(path.rpartition("/")[0])
        removed, kept = _verdict(ruleset, path, False, removed, kept)
        return removed and not kept

    return removes


def _verdict(ruleset, path, is_dir, removed, kept) -> tuple[bool, bool]:
    """(removed, kept) for a path, given its parent directory's."""
    removed = removed or ruleset.match(path, is_dir) is not None
    if not kept and ruleset.has_keep:
        kept = ruleset.keep_match(path, is_dir) is not None
    return removed, kept
