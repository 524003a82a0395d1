"""The report: what went, why, and what stayed. One object, counted once.

The same numbers serve the terminal table and the `--json` document, and
`plan` and `apply` count with the same function, so they agree to the
byte.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slimmer.tree import Tree

SCHEMA_VERSION = 1
TOP_DIRECTORIES = 10


@dataclass
class RuleCount:
    profile: str
    pattern: str
    files: int = 0
    bytes: int = 0


@dataclass
class Tally:
    """Files and bytes removed, per rule and per directory."""

    files: int = 0
    bytes: int = 0
    rules: list[RuleCount] = field(default_factory=list)
    top: list[tuple[str, int]] = field(default_factory=list)


def tally(tree: Tree, removed: Mapping, rules: list) -> Tally:
    """Count what `removed` (path -> rule) takes out of `tree`.

    Every removed file counts under exactly one rule, the one `removed`
    names. A directory is not a file. A file with several names counts its
    bytes once, and only when no name of it stays.
    """
    counts = {rule: RuleCount(rule.profile, rule.pattern) for rule in rules}
    kept_inodes = _kept_inodes(tree, removed)
    seen_inodes = set()
    by_directory: dict[str, int] = defaultdict(int)
    result = Tally()
    for path, rule in removed.items():
        entry = tree.get(path)
        if entry is None or entry.is_dir:
            continue
        size = entry.size if entry.is_file else 0
        inode = entry.inode
        # Only a file with several names (see Tree.links) needs its inode
        # remembered; a set of every removed file's inode would not.
        if size and inode in tree.links:
            if inode in kept_inodes or inode in seen_inodes:
                size = 0
            else:
                seen_inodes.add(inode)
        count = counts.get(rule)
        if count is None:
            count = counts[rule] = RuleCount(rule.profile, rule.pattern)
        count.files += 1
        count.bytes += size
        result.files += 1
        result.bytes += size
        by_directory[_removed_root(path, removed)] += size
    result.rules = list(counts.values())
    result.top = sorted(by_directory.items(), key=lambda item: -item[1])
    result.top = result.top[:TOP_DIRECTORIES]
    return result


def _kept_inodes(tree: Tree, removed: Mapping) -> set:
    """Files with more than one name, of which some name stays.

    Only the files Tree.links names have several names, so only their
    paths are gathered, not a path for every file of the image.
    """
    if not tree.links:
        return set()
    names = defaultdict(list)
    for path, entry in tree.walk():
        if entry.is_file and entry.inode in tree.links:
            names[entry.inode].append(path)
    return {
        inode
        for inode, paths in names.items()
        if len(paths) > 1 and any(path not in removed for path in paths)
    }


def _removed_root(path: str, removed: Mapping) -> str:
    """The highest removed directory holding `path`, else its parent."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        prefix = "/".join(parts[:depth])
        if prefix in removed:
            return "/" + prefix
    return "/" + "/".join(parts[:-1])


@dataclass
class Report:
    """Everything `apply` or `plan` has to say."""

    command: str
    source: dict
    profiles: list[str]
    tally: Tally
    result: dict | None = None
    guarded: list[dict] = field(default_factory=list)
    dangling: list[dict] = field(default_factory=list)
    unmatched: list[dict] = field(default_factory=list)
    packages: list[dict] = field(default_factory=list)
    smoke: list[dict] = field(default_factory=list)
    imports: dict = field(default_factory=dict)
    breaks: list[dict] = field(default_factory=list)
    bisect: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def squash_only(self) -> bool:
        return not self.profiles

    def as_json(self) -> dict:
        document = {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "source": self.source,
            "result": self.result,
            "profiles": self.profiles,
            "squash_only": self.squash_only,
            "removed": {"files": self.tally.files, "bytes": self.tally.bytes},
            "rules": [vars(count) for count in self.tally.rules],
            "top": [{"path": p, "bytes": b} for p, b in self.tally.top],
            "guarded": self.guarded,
            "dangling_symlinks": self.dangling,
            "unmatched": self.unmatched,
            "packages": self.packages,
            "smoke": self.smoke,
            "imports": self.imports,
            "breaks": self.breaks,
            "notes": self.notes,
        }
        if self.bisect is not None:
            document["bisect"] = self.bisect
        return document


def dumps(document: dict) -> str:
    # Names that are not UTF-8 are carried as surrogate escapes; JSON must
    # still be valid, so they are written as \udcXX escapes, never raw.
    return json.dumps(document, indent=2, ensure_ascii=True)


def write_lines_atomically(target: Path, lines) -> None:
    """Write `lines` to `target` through a temp file and a rename."""
    target = Path(target)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        # Names that are not UTF-8 go out byte for byte, as the image has them.
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as f:
            for line in lines:
                f.write(f"{line}\n")
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
