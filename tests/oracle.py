"""The daemon's own view of an image, for comparing against slimmer's.

`docker create` then `docker export` gives the merged tree a container
sees. Both the source and slimmer's result are read this way, and
`assert_same_tree` compares them path for path: type, mode with the
setuid, setgid and sticky bits, owner, size and content hash, symlink
target, xattrs, hardlink groups and mtime. With a profile, the expected
tree is the source minus exactly what `git check-ignore` drops.

Run as a script, it is the real-image differential:

    python3 tests/oracle.py IMAGE

slims IMAGE with no profile, prints every difference and exits 1 on any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Files the daemon's init layer adds to every container's filesystem.
DAEMON_FILES = {
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
}
# Directories the init layer makes or writes into at `docker create`:
# compared, but their mtime is the container's creation time.
DAEMON_DIRS = {"dev", "dev/pts", "dev/shm", "etc", "proc", "sys"}
DAEMON_PATHS = DAEMON_FILES | DAEMON_DIRS
# AUFS bookkeeping (`.wh..wh.plnk/`, `.wh..wh.aufs`): overlay2 unpacks it
# as plain files, the OCI spec and the AUFS driver never show it, and
# slimmer drops it; the expected tree leaves it out.
AUFS_META = ".wh..wh."
KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "chardev",
    tarfile.BLKTYPE: "blockdev",
    tarfile.FIFOTYPE: "fifo",
}
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Record:
    kind: str
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    size: int
    sha256: str
    link: str
    xattrs: tuple
    mtime: int | None
    device: tuple
    links: tuple = ()  # every name of a file with several, sorted


def normalize(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def read_tree(fileobj) -> dict[str, Record]:
    """Path -> Record for a stream of tar data; hardlinks are resolved."""
    records: dict[str, Record] = {}
    first_name: dict[str, str] = {}  # hardlink name -> the name it points to
    with tarfile.open(fileobj=fileobj, mode="r|", errors="surrogateescape") as tf:
        for info in tf:
            path = normalize(info.name)
            if not path:
                continue
            if info.islnk():
                target = normalize(info.linkname)
                records[path] = records[target]
                first_name[path] = first_name.get(target, target)
                continue
            records[path] = _record(tf, info)
    return _with_link_groups(records, first_name)


def _record(tf: tarfile.TarFile, info: tarfile.TarInfo) -> Record:
    digest = ""
    if info.isreg():
        digest = hashlib.sha256(tf.extractfile(info).read()).hexdigest()
    xattrs = tuple(
        sorted((k, v) for k, v in info.pax_headers.items() if k.startswith("SCHILY."))
    )
    device = (0, 0)
    if info.ischr() or info.isblk():
        device = (info.devmajor, info.devminor)
    return Record(
        KINDS.get(info.type, repr(info.type)),
        info.mode & 0o7777,
        info.uid,
        info.gid,
        info.size if info.isreg() else 0,
        digest,
        info.linkname if info.issym() else "",
        xattrs,
        int(info.mtime),
        device,
    )


def _with_link_groups(records: dict, first_name: dict) -> dict[str, Record]:
    groups: dict[str, list[str]] = {}
    for alias, target in first_name.items():
        groups.setdefault(target, [target]).append(alias)
    for names in groups.values():
        names = tuple(sorted(set(names)))
        for name in names:
            records[name] = dataclasses.replace(records[name], links=names)
    return records


def export_view(client, ref: str) -> dict[str, Record]:
    """The tree a container of `ref` sees, as the daemon exports it.

    Files the daemon adds to every container are left out; the mtime of
    the directories it writes into is blanked.
    """
    container = client.containers.create(
        ref, command=["true"], entrypoint=[], network_disabled=True
    )
    try:
        stream = io.BufferedReader(
            _Chunks(container.export(chunk_size=1 << 20)), 1 << 20
        )
        view = read_tree(stream)
    finally:
        container.remove(force=True)
    for path in DAEMON_FILES:
        view.pop(path, None)
    for path in DAEMON_DIRS & view.keys():
        view[path] = dataclasses.replace(view[path], mtime=None)
    return view


def header_dir_mtimes(client, ref: str) -> dict[str, set[int]]:
    """Each directory path -> the mtimes its headers carry in `ref`'s layers.

    A directory of the daemon's view whose mtime is not among these was
    made by the daemon when it unpacked a layer that had no header for it.
    """
    chunks = client.api.get_image(ref, 1 << 20)
    return archive_dir_mtimes(io.BufferedReader(_Chunks(chunks), 1 << 20))


def archive_dir_mtimes(fileobj) -> dict[str, set[int]]:
    """header_dir_mtimes() of a `docker save` archive read from `fileobj`."""
    mtimes: dict[str, set[int]] = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as outer:
        for member in outer:
            if member.isfile() and _may_be_layer(member.name):
                _collect_dir_mtimes(outer.extractfile(member), mtimes)
    return mtimes


def _may_be_layer(name: str) -> bool:
    # Legacy layout: <id>/layer.tar; OCI-style layout: blobs/<alg>/<hex>.
    return name.endswith("/layer.tar") or name.startswith("blobs/")


def _collect_dir_mtimes(fileobj, mtimes: dict) -> None:
    try:
        with tarfile.open(
            fileobj=fileobj, mode="r|*", errors="surrogateescape"
        ) as layer:
            for info in layer:
                if info.isdir():
                    mtimes.setdefault(normalize(info.name), set()).add(int(info.mtime))
    except tarfile.ReadError:
        pass  # a config or manifest blob, not a layer


def git_dropped(view: dict[str, Record], lines: str) -> set[str]:
    """The paths of `view` that `git check-ignore` drops under `lines`.

    The paths are made in a scratch work tree (directories as
    directories, symlinks as symlinks, the rest as empty files), so git
    tells directories apart itself. A path inside a dropped directory is
    dropped too: git never looks inside an ignored directory.
    """
    with tempfile.TemporaryDirectory(prefix="oracle-git-") as top:
        tree, gitdir = Path(top, "tree"), Path(top, "git")
        tree.mkdir()
        for path in sorted(view):
            _make(tree, path, view[path].kind)
        git = ["git", f"--git-dir={gitdir}", f"--work-tree={tree}"]
        env = {
            **os.environ,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        subprocess.run([*git, "init", "-q"], env=env, check=True)
        (gitdir / "info" / "exclude").write_text(lines + "\n")
        # A leading ./ keeps a name like ":x" from being read as pathspec magic.
        request = b"".join(
            b"./" + os.fsencode(p) + (b"/" if r.kind == "dir" else b"") + b"\0"
            for p, r in view.items()
        )
        done = subprocess.run(
            [*git, "check-ignore", "--no-index", "--stdin", "-z"],
            cwd=tree,
            env=env,
            input=request,
            capture_output=True,
        )
    # check-ignore exits 1 when it ignores nothing.
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    ignored = {
        os.fsdecode(name).removeprefix("./").rstrip("/")
        for name in done.stdout.split(b"\0")
        if name
    }
    return {path for path in view if _self_or_parent_in(path, ignored)}


def _make(tree: Path, path: str, kind: str) -> None:
    target = tree / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dir":
        target.mkdir(exist_ok=True)
    elif kind == "symlink":
        target.symlink_to(".")
    else:
        target.write_bytes(b"")


def _self_or_parent_in(path: str, paths: set[str]) -> bool:
    parts = path.split("/")
    return any("/".join(parts[:depth]) in paths for depth in range(1, len(parts) + 1))


def _is_aufs_meta(path: str) -> bool:
    return any(part.startswith(AUFS_META) for part in path.split("/"))


def expected_view(
    source: dict[str, Record],
    dir_mtimes: dict[str, set[int]],
    removed_by: str | None = None,
) -> dict[str, Record]:
    """What slimmer's result must show: the source minus what goes.

    The mtime of a directory the daemon made on unpack is the unpack
    time, which no one can reproduce, so it is blanked (None) here and
    not compared.
    """
    gone = {path for path in source if _is_aufs_meta(path)}
    if removed_by:
        gone |= git_dropped(source, removed_by)
    expected = {}
    for path, record in source.items():
        if path in gone:
            continue
        if record.kind == "dir" and record.mtime not in dir_mtimes.get(path, ()):
            record = dataclasses.replace(record, mtime=None)
        names = tuple(name for name in record.links if name not in gone)
        expected[path] = dataclasses.replace(record, links=names * (len(names) > 1))
    return expected


def compare_views(expected: dict, actual: dict, limit: int = 20) -> list[str]:
    """differences(), not comparing the mtimes `expected` leaves blank."""
    return differences(expected, _blank_like(expected, actual), limit)


def _blank_like(expected: dict, actual: dict) -> dict:
    actual = dict(actual)
    for path, record in expected.items():
        if record.mtime is None and path in actual:
            actual[path] = dataclasses.replace(actual[path], mtime=None)
    return actual


def differences(expected: dict, actual: dict, limit: int = 20) -> list[str]:
    """Human-readable differences between two views; empty when equal.

    At most `limit` missing, `limit` extra and 3 * `limit` lines in all.
    """
    problems = []
    for path in sorted(expected.keys() - actual.keys())[:limit]:
        problems.append(f"missing: {path!r}")
    for path in sorted(actual.keys() - expected.keys())[:limit]:
        problems.append(f"extra: {path!r}")
    for path in sorted(expected.keys() & actual.keys()):
        if expected[path] != actual[path] and len(problems) < limit * 3:
            problems.append(f"differs: {path!r}: {expected[path]} != {actual[path]}")
    return problems


@dataclass
class Comparison:
    compared: int  # paths in the expected tree
    left_out: int  # source paths the profile or AUFS bookkeeping takes out
    unstamped: int  # directories the daemon made or writes into: mtime not compared
    wrong: int  # paths missing, extra or different
    problems: list[str]  # the first of them, readable


def compare_images(
    client, source_ref: str, slim_ref: str, removed_by: str | None = None, limit=20
) -> Comparison:
    """The daemon's view of `slim_ref` against that of `source_ref`."""
    source = export_view(client, source_ref)
    expected = expected_view(source, header_dir_mtimes(client, source_ref), removed_by)
    actual = _blank_like(expected, export_view(client, slim_ref))
    wrong = len(expected.keys() ^ actual.keys()) + sum(
        expected[p] != actual[p] for p in expected.keys() & actual.keys()
    )
    return Comparison(
        len(expected),
        len(source) - len(expected),
        sum(record.mtime is None for record in expected.values()),
        wrong,
        differences(expected, actual, limit),
    )


def assert_same_tree(client, source_ref, slim_ref, removed_by=None) -> None:
    """Assert the daemon sees in `slim_ref` exactly the tree of `source_ref`.

    `removed_by` is the text of a profile's `remove` lines (gitignore
    syntax); the paths git drops under them must be gone, and nothing
    else. A profile whose rules hit a guarded path (the entrypoint, a
    library a kept ELF file needs) cannot be checked this way.
    """
    comparison = compare_images(client, source_ref, slim_ref, removed_by)
    assert not comparison.wrong, "\n".join(comparison.problems)


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (for tarfile's r|)."""

    def __init__(self, chunks):
        super().__init__()
        self._chunks, self._pending = iter(chunks), memoryview(b"")

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def differential(client, image: str, tag: str, out=sys.stdout) -> int:
    """Slim `image` with no profile as `tag`, compare, remove `tag`.

    Prints every difference (up to 500) and the figures; returns the exit
    status: 0 equal, 1 different, 2 slimmer failed.
    """
    path = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimmer",
            "-q",
            "apply",
            "--no-smoke",
            "-t",
            tag,
            image,
        ],
        env=dict(os.environ, PYTHONPATH=path),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"slimmer apply failed ({done.returncode}):\n{done.stderr}", file=out)
        return 2
    slimmed = time.monotonic() - started
    try:
        result = compare_images(client, image, tag, limit=500)
    finally:
        client.api.remove_image(tag, force=True)
    for problem in result.problems:
        print(problem, file=out)
    print(
        f"{image}: {result.compared} paths compared, {result.wrong} differ; "
        f"{result.left_out} AUFS bookkeeping paths left out; mtime not compared "
        f"on {result.unstamped} directories the daemon made or writes into; "
        f"slimmed in {slimmed:.1f}s, compared in "
        f"{time.monotonic() - started - slimmed:.1f}s",
        file=out,
    )
    return 1 if result.wrong else 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python3 tests/oracle.py IMAGE", file=sys.stderr)
        return 2
    import docker

    client = docker.from_env(timeout=600)
    return differential(client, argv[0], f"slimmer-fidelity/diff:{os.getpid()}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
