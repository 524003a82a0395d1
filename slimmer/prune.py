"""Select what a ruleset removes from the squashed tree: the plan.

The walk follows git. A directory that a rule removes takes everything
below it, because git never looks inside an ignored directory, so a "!"
line cannot bring back a file in it. `keep` lines win over every rule: a
kept path stays, and so do the directories above it, while the rest of a
removed directory still goes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field

from slimmer.rules import Rule, Ruleset
from slimmer.tree import Tree

log = logging.getLogger(__name__)


class RemovedPaths(MutableMapping[str, Rule]):
    """Removed tree paths and the rule removing each, as a mapping.

    It iterates in the order of the tree walk: depth first, parents before
    children, siblings sorted, which is also the order `select` adds them.

    NOTE: an image may lose hundreds of thousands of paths, and a dict
    keyed by full path strings costs about 140 bytes for each. Here each
    directory's path is held once, with a dict of its removed names, and
    `add` takes the tree's own name strings: about 40 bytes a path. A
    lookup splits the path first, which makes it a little slower.
    """

    def __init__(self, paths=()):
        self._names: dict[str, dict[str, Rule]] = {}  # directory -> name -> rule
        self._count = 0
        self.update(paths)

    def add(self, directory: str, name: str, rule: Rule) -> None:
        """Remove `name` of `directory`; pass the tree's own strings."""
        names = self._names.setdefault(directory, {})
        if name not in names:
            self._count += 1
        names[name] = rule

    def __setitem__(self, path: str, rule: Rule) -> None:
        directory, _, name = path.rpartition("/")
        self.add(directory, name, rule)

    def _holding(self, path) -> tuple[str, str, dict[str, Rule] | None]:
        """(directory, name, the removed names of that directory or None)."""
        directory, _, name = path.rpartition("/")
        return directory, name, self._names.get(directory)

    def __getitem__(self, path: str) -> Rule:
        _, name, names = self._holding(path)
        if names is None or name not in names:
            raise KeyError(path)
        return names[name]

    def __contains__(self, path) -> bool:
        if not isinstance(path, str):
            return False
        _, name, names = self._holding(path)
        return names is not None and name in names

    def __delitem__(self, path: str) -> None:
        directory, name, names = self._holding(path)
        if names is None or name not in names:
            raise KeyError(path)
        del names[name]
        self._count -= 1
        if not names:
            del self._names[directory]

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        # Walk order is sorted order of path components, so a depth-first
        # walk over the directories that hold removed names (and those
        # above them) yields it without the tree.
        subdirs = self._subdirectories()
        stack = [("", self._sorted_names("", subdirs))]
        while stack:
            directory, names = stack[-1]
            for name in names:
                path = f"{directory}/{name}" if directory else name
                if name in self._names.get(directory, ()):
                    yield path
                if name in subdirs.get(directory, ()):
                    stack.append((path, self._sorted_names(path, subdirs)))
                    break
            else:
                stack.pop()

    def _subdirectories(self) -> dict[str, set[str]]:
        """directory -> names of its subdirectories that lead to removed names."""
        subdirs: dict[str, set[str]] = {}
        for directory in self._names:
            while directory:
                parent, _, name = directory.rpartition("/")
                below = subdirs.setdefault(parent, set())
                if name in below:
                    break  # the rest of the way up is there already
                below.add(name)
                directory = parent
        return subdirs

    def _sorted_names(self, directory: str, subdirs) -> Iterator[str]:
        names = self._names.get(directory, {}).keys() | subdirs.get(directory, set())
        return iter(sorted(names))

    def __repr__(self):
        return f"RemovedPaths({dict(self.items())!r})"


@dataclass
class Plan:
    """What goes and why, in the order of the tree walk."""

    # Every removed path, descendants of a removed directory included
    # (attributed to that directory's rule).
    removed: RemovedPaths = field(default_factory=RemovedPaths)
    # Paths a rule would remove but a keep line saved, with the reason.
    kept_by_keep: dict[str, str] = field(default_factory=dict)


def select(tree: Tree, ruleset: Ruleset) -> Plan:
    """The plan for `tree`: which paths `ruleset` removes, and which it keeps."""
    plan = Plan()
    if ruleset.empty:
        return plan

    # State of each directory seen so far: the rule removing it (its own
    # or a parent's), and why keep lines keep it. The walk yields a
    # parent before its children, so a parent's state is always there.
    dirs: dict[str, tuple[Rule | None, str | None]] = {"": (None, None)}
    for directory, name, entry in tree.walk_names():
        path = f"{directory}/{name}" if directory else name
        removed_by, kept_because = dirs[directory]
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
            plan.removed.add(directory, name, removed_by)
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


# Directories whose verdict removes_file remembers before starting afresh.
MAX_VERDICTS = 4096


def removes_file(ruleset: Ruleset) -> Callable[[str], bool]:
    """Whether `ruleset` removes a regular file at a path, keep lines
    counted, however the rest of the tree looks.

    It follows select() for a file whose parents are directories, which
    they are wherever such a file is in the tree. The guards are not
    asked: they need the whole tree, so a file they keep is read back
    through Layer.ensure.
    """

    verdicts: dict[str, tuple[bool, bool]] = {"": (False, False)}

    def directory(path: str) -> tuple[bool, bool]:
        """(removed, kept) for a directory, its parents' verdicts included."""
        # Up to the nearest directory already judged, then down again: a
        # loop, not recursion, since a path may be thousands of levels deep.
        pending = []
        while path not in verdicts:
            pending.append(path)
            path = path.rpartition("/")[0]
        verdict = verdicts[path]
        if len(verdicts) > MAX_VERDICTS:
            # Members come grouped by directory: recent ones are enough.
            verdicts.clear()
            verdicts[""] = (False, False)
        for path in reversed(pending):
            verdict = verdicts[path] = _verdict(ruleset, path, True, *verdict)
        return verdict

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
