"""The package manager's view: which installed packages lost files.

After a slim, the package database still says every package is whole, so
the report names the packages whose files a rule took. Both databases are
read from the squashed tree (never from the host), and each path they list
is looked up as lstat(2) would inside the image, so Debian's merged-/usr
(`/bin` a symlink to `usr/bin`) maps `/bin/sh` to `usr/bin/sh`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from slimmer.guards import TreeView
from slimmer.tree import Tree

log = logging.getLogger(__name__)

# dpkg(1): one `<package>.list` per installed package, one path a line.
DPKG_INFO = "var/lib/dpkg/info"
# apk-tools: the installed database, one stanza per package.
APK_INSTALLED = "lib/apk/db/installed"


def lost_files(tree: Tree, contents, removed: Mapping) -> list[dict]:
    """[{"package", "files_removed"}] for every package that lost a file.

    `contents` reads file bytes (`read(entry)`); `removed` maps each removed
    tree path to its rule. A directory is not a file: it counts nothing.
    """
    if not removed:
        return []
    view = TreeView(tree, contents)
    counts: dict[str, int] = {}
    for package, paths in (*_dpkg(view), *_apk(view)):
        lost = sum(1 for path in paths if _removed_file(view, path, removed))
        if lost:
            counts[package] = counts.get(package, 0) + lost
    return [
        {"package": name, "files_removed": count}
        for name, count in sorted(counts.items())
    ]


def _removed_file(view: TreeView, path: str, removed: Mapping) -> bool:
    where = view.locate(path)
    if where is None or where not in removed:
        return False
    entry = view.tree.get(where)
    return entry is not None and not entry.is_dir


def _read(view: TreeView, path: str) -> str | None:
    found = view.resolve(path)
    if found is None or not found.entry.is_file:
        return None
    return view.contents.read(found.entry).decode("utf-8", "surrogateescape")


def _dpkg(view: TreeView) -> Iterator[tuple[str, list[str]]]:
    info = view.resolve(DPKG_INFO)
    if info is None or info.entry.children is None:
        return
    for name in sorted(info.entry.children):
        if not name.endswith(".list"):
            continue
        text = _read(view, f"{info.path}/{name}")
        if text is None:
            continue
        # Multi-arch packages are named `libc6:amd64.list`; "/." is the root.
        paths = [line for line in text.splitlines() if line not in ("", "/.")]
        yield name.removesuffix(".list"), paths


def _apk(view: TreeView) -> Iterator[tuple[str, list[str]]]:
    text = _read(view, APK_INSTALLED)
    if text is None:
        return
    yield from parse_apk_installed(text)


def parse_apk_installed(text: str) -> Iterator[tuple[str, list[str]]]:
    """(package, paths) of each stanza of an apk `installed` database.

    apk-tools: stanzas are separated by blank lines; `P:` names the
    package, `F:` a directory relative to the root, and each `R:` a file
    in the last `F:` directory.
    """
    package, directory, paths = None, "", []
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        if not line:
            if package is not None:
                yield package, paths
            package, directory, paths = None, "", []
        elif key == "P":
            package = value
        elif key == "F":
            directory = value
            paths.append(value)
        elif key == "R":
            paths.append(f"{directory}/{value}" if directory else value)
