"""Guards: files slimmer keeps whatever a removal rule says, each with a reason.

Three kinds of need are followed, all resolved over the Tree alone (the
host filesystem is never looked at):

1. The entrypoint and cmd: the first word of Entrypoint and the first word
   of Cmd. Cmd's word is followed even when an Entrypoint is set, because
   wrapper entrypoints usually exec their arguments; a word that names no
   file in the image (an option, say) guards nothing.
2. The interpreter on a guarded script's shebang line, recursively.
3. The loader and the shared libraries of every kept ELF file, resolved the
   way ld.so(8) searches, and their own needs in turn.

Only paths the rules remove become guards; the caller restores each guard's
path and its ancestor directories.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import posixpath
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from slimmer.elf import ELF_MAGIC, ElfInfo, LibrarySearch, MalformedElf, read_elf
from slimmer.tree import SYMLINK, Entry, Tree

log = logging.getLogger(__name__)

# Docker's PATH when the image config sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# path_resolution(7): Linux follows at most 40 symlinks in one lookup.
MAX_SYMLINKS = 40
# binfmt_script: the kernel reads this many bytes to find the shebang line.
SHEBANG_BYTES = 256
# execve(2): the kernel gives up after a few nested interpreters.
MAX_INTERPRETERS = 5
# The smallest ELF header (32-bit, ELF gABI "ELF Header").
MIN_ELF_SIZE = 52
# Config files read here (ld.so.conf and friends) are far smaller.
MAX_TEXT = 1 << 16
# env(1) options that take the next word as their value.
ENV_VALUE_OPTIONS = {"-u", "--unset", "-C", "--chdir"}


@dataclass(frozen=True)
class Guard:
    """A removed path kept because something that stays needs it."""

    path: str
    needed_by: str
    rule: object


@dataclass(frozen=True)
class _Resolved:
    """A path followed through every symlink to the file it names."""

    path: str  # the file's own tree path
    entry: Entry
    links: tuple[str, ...]  # tree paths of the symlinks crossed on the way


def find_guards(tree: Tree, contents, config: dict, removed: Mapping) -> list[Guard]:
    """The paths of `removed` that must stay, with what needs each of them.

    `contents` reads file bytes (`read(entry, start, size)`, `open(entry)`);
    `config` is the image config document; `removed` maps each path the
    rules remove to its rule, and is not changed.
    """
    finder = _Finder(TreeView(tree, contents), config, removed)
    programs = finder.guard_programs()
    if finder.library_guards_possible():
        finder.guard_libraries(programs)
    else:
        log.debug("no removed symlink or ELF file: shared libraries not checked")
    return sorted(finder.guards.values(), key=lambda guard: guard.path)


class TreeView:
    """Path lookups and file reads over the Tree, cached.

    Every lookup stays inside the image: symlinks are followed through the
    Tree, never on the host. `contents` reads file bytes, as in find_guards.
    """

    def __init__(self, tree: Tree, contents):
        self.tree, self.contents = tree, contents
        self._resolved: dict[str, _Resolved | None] = {}
        # ELF files only (None: one ld.so cannot load). Other files are not
        # remembered: the library walk asks about every kept file once, and
        # an answer per file would grow with the image.
        self._elf: dict[tuple[int, int], ElfInfo | None] = {}

    def resolve(self, path: str) -> _Resolved | None:
        """What `path` names once every symlink is followed, or None.

        Absolute symlink targets start again at the image root; relative
        ones at the link's directory (path_resolution(7)).
        """
        if path not in self._resolved:
            self._resolved[path] = self._follow(path)
        return self._resolved[path]

    def locate(self, path: str) -> str | None:
        """The tree path `path` names, as lstat(2) sees it.

        The directories above it are followed through symlinks, the last
        name is not; None when a directory above it is missing.
        """
        parent, _, name = path.strip("/").rpartition("/")
        found = self.resolve(parent)
        if found is None or found.entry.children is None or name in ("", ".", ".."):
            return None
        return _join(found.path, name)

    def _follow(self, path: str) -> _Resolved | None:
        pending = path.split("/")[::-1]
        names, nodes, links = [], [self.tree.root], []
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                # path_resolution(7): ".." of the root is the root itself.
                if names:
                    names.pop()
                    nodes.pop()
                continue
            children = nodes[-1].children
            entry = None if children is None else children.get(name)
            if entry is None:
                return None
            if entry.kind != SYMLINK:
                names.append(name)
                nodes.append(entry)
                continue
            if len(links) == MAX_SYMLINKS:
                log.debug("too many symlinks (a loop?) resolving %s", path)
                return None
            links.append("/".join([*names, name]))
            target = entry.linkname or ""
            if target.startswith("/"):
                names, nodes = [], [self.tree.root]
            pending += target.split("/")[::-1]
        return _Resolved("/".join(names), nodes[-1], tuple(links))

    def is_elf(self, entry: Entry) -> bool:
        """Whether `entry` is a regular file that starts with the ELF magic."""
        if not entry.is_file or entry.size < MIN_ELF_SIZE:
            return False
        return self.contents.read(entry, 0, len(ELF_MAGIC)) == ELF_MAGIC

    def elf(self, entry: Entry, path: str) -> ElfInfo | None:
        """The loader facts of an ELF file, parsed once per file identity."""
        if entry.inode in self._elf:
            return self._elf[entry.inode]
        if not self.is_elf(entry):
            return None
        try:
            with self.contents.open(entry) as stream:
                info = read_elf(stream)
        except MalformedElf as exc:
            # ld.so cannot load it either, so its needs never matter.
            log.info("skipping unreadable ELF file %s: %s", path, exc)
            info = None
        self._elf[entry.inode] = info
        return info

    def read_text(self, path: str) -> str | None:
        found = self.resolve(path)
        if found is None or not found.entry.is_file:
            return None
        data = self.contents.read(found.entry, 0, MAX_TEXT)
        return data.decode("utf-8", "surrogateescape")

    def glob(self, pattern: str) -> list[str]:
        """Tree paths matching a glob(7) pattern, sorted as glob(3) does."""
        matches = [""]
        for part in pattern.split("/"):
            if part in ("", "."):
                continue
            if not any(char in part for char in "*?["):
                matches = [_join(match, part) for match in matches]
                continue
            grown = []
            for match in matches:
                found = self.resolve(match)
                if found is not None and found.entry.children is not None:
                    grown += [
                        _join(match, name)
                        for name in found.entry.children
                        if _glob_match(name, part)
                    ]
            matches = grown
        return sorted(match for match in matches if self.resolve(match) is not None)


def _glob_match(name: str, part: str) -> bool:
    # glob(7): a leading dot is matched only by a pattern with a leading dot.
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class _Finder:
    """Follows what the image needs and collects the guards it finds."""

    def __init__(self, view: TreeView, config: dict, removed: Mapping):
        self.view, self.removed = view, removed
        self.guards: dict[str, Guard] = {}
        self.settings = config.get("config") or {}
        self.architecture = config.get("architecture")
        self.env = _environment(self.settings.get("Env"))
        self.workdir = self.settings.get("WorkingDir") or "/"
        self.search = LibrarySearch(view, self.workdir, self.env)

    def keep(self, found: _Resolved, needed_by: str) -> None:
        """Guard the file `found` and every symlink crossed to reach it."""
        for path in (*found.links, found.path):
            if path in self.removed and path not in self.guards:
                self.guards[path] = Guard(path, needed_by, self.removed[path])
                log.debug(
                    "guard %s: needed by %s, removed by %s",
                    path,
                    needed_by,
                    self.removed[path],
                )

    # -- entrypoint, cmd and shebang interpreters ------------------------

    def guard_programs(self) -> list[_Resolved]:
        """Guard the entrypoint, the cmd and their interpreters; return them."""
        found: dict[str, _Resolved] = {}
        for label in ("Entrypoint", "Cmd"):
            words = self.settings.get(label) or []
            if isinstance(words, str):
                words = words.split()
            if not words:
                continue
            program = self.find_program(words[0])
            if program is None:
                log.debug("%s %r names no file in the image", label, words[0])
            else:
                self._follow_program(program, label.lower(), found, 0)
        return list(found.values())

    def _follow_program(
        self,
        program: _Resolved,
        needed_by: str,
        found: dict[str, _Resolved],
        depth: int,
    ) -> None:
        self.keep(program, needed_by)
        if program.path in found or depth > MAX_INTERPRETERS:
            return
        found[program.path] = program
        for interpreter in self._interpreters(program):
            self._follow_program(
                interpreter, f"shebang of {program.path}", found, depth + 1
            )

    def find_program(self, word: str, search: bool = True) -> _Resolved | None:
        """The regular file a command word runs, through PATH for a bare name."""
        if "/" in word or not search:
            candidates = [posixpath.join(self.workdir, word)]
        else:
            directories = self.env.get("PATH", DEFAULT_PATH).split(":")
            # execvp(3): an empty PATH element is the working directory.
            candidates = [
                posixpath.join(self.workdir, d or ".", word) for d in directories
            ]
        for candidate in candidates:
            found = self.view.resolve(candidate)
            if found is None or not found.entry.is_file:
                continue
            # execvp(3): a file without execute permission is skipped.
            if search and "/" not in word and not found.entry.mode & 0o111:
                continue
            return found
        return None

    def _interpreters(self, script: _Resolved) -> list[_Resolved]:
        line = _shebang(self.view.contents.read(script.entry, 0, SHEBANG_BYTES))
        if line is None:
            return []
        interpreter, argument = line
        found = [self.find_program(interpreter, search=False)]
        # env(1) runs its first non-option word through PATH.
        if posixpath.basename(interpreter) == "env" and argument:
            command = _env_command(argument)
            found.append(self.find_program(command) if command else None)
        if None in found:
            log.debug("the shebang of %s names a missing program", script.path)
        return [program for program in found if program is not None]

    # -- shared libraries ------------------------------------------------

    def library_guards_possible(self) -> bool:
        """Whether any removed path could turn out to be a library guard.

        A library guard is a symlink crossed on the way to a library or
        loader, or that library or loader itself, which must be an ELF file
        (see LibrarySearch). When `removed` holds neither symlinks nor ELF files,
        no library guard can exist, so no kept file needs parsing.
        """
        for path in self.removed:
            entry = self.view.tree.get(path)
            if entry is not None and (entry.kind == SYMLINK or self.view.is_elf(entry)):
                return True
        return False

    def guard_libraries(self, programs: list[_Resolved]) -> None:
        """Guard what every kept ELF file loads, and what that loads, in turn.

        Loads are followed breadth first: every kept file, the programs and
        the preloads, then what each of them loads, and so on. Which file
        first needs a library is the reason its guard gives.
        """
        # The preloads are guarded before any file is scanned.
        preloads = self._preloads()
        # NOTE: the kept files come one at a time from the tree walk rather
        # than from a queue holding them all; only the loads they lead to
        # wait in `later`, in the order a single queue would hold them.
        first = itertools.chain(
            self._kept_files(), [(p.path, p.entry, None, ()) for p in programs]
        )
        later, seen = deque(), set()
        for load in itertools.chain(first, preloads):
            later += self._scan(load, seen)
        while later:
            later += self._scan(later.popleft(), seen)
        log.debug("followed %d ELF loads", len(seen))

    def _kept_files(self) -> Iterator[tuple]:
        for path, entry in self.view.tree.walk():
            if entry.is_file and path not in self.removed:
                yield path, entry, None, ()

    def _scan(self, load: tuple, seen: set) -> list[tuple]:
        """Guard what one loaded file needs; return the loads that follow."""
        path, entry, origin, inherited = load
        info = self.view.elf(entry, path)
        if info is None:
            return []
        # A file run or scanned directly has its own dir as $ORIGIN.
        origin = origin or _origin(path)
        key = (entry.inode, origin, inherited)
        if key in seen:
            return []
        seen.add(key)
        return self._dependencies(path, info, origin, inherited)

    def _dependencies(
        self, path: str, info: ElfInfo, origin: str, inherited: tuple[str, ...]
    ) -> list[tuple]:
        loads = []
        if info.interp:
            loader = self.view.resolve(info.interp)
            if loader and self.view.elf(loader.entry, loader.path) is not None:
                self.keep(loader, path)
                loads.append((loader.path, loader.entry, _origin(loader.path), ()))

        # ld.so(8): DT_RPATH is ignored when DT_RUNPATH is present; the
        # RPATHs of the objects that loaded this one are searched after its own.
        own = () if info.runpath else self.search.expand(info.rpath, origin, info)
        passed_on = tuple(dict.fromkeys((*own, *inherited)))
        for name in info.needed:
            for found, found_origin in self.search.needed(
                name, info, origin, passed_on
            ):
                self.keep(found, path)
                loads.append((found.path, found.entry, found_origin, passed_on))
        return loads

    def _preloads(self) -> list[tuple]:
        """Libraries loaded ahead of every program: LD_PRELOAD, ld.so.preload."""
        sources = [
            ("LD_PRELOAD", self.env.get("LD_PRELOAD", "")),
            ("etc/ld.so.preload", self.view.read_text("/etc/ld.so.preload")),
        ]
        loads = []
        for label, text in sources:
            # ld.so(8): both lists are separated by blanks or colons.
            for name in re.split(r"[\s:]+", text or ""):
                matches = self.search.preload(name, self.architecture) if name else []
                for found, origin in matches:
                    self.keep(found, label)
                    loads.append((found.path, found.entry, origin, ()))
        return loads


def _origin(path: str) -> str:
    """$ORIGIN of a file at tree path `path`: its directory, as an absolute path."""
    return "/" + posixpath.dirname(path)


def _environment(env) -> dict[str, str]:
    pairs = (item.partition("=") for item in env or [] if isinstance(item, str))
    return {name: value for name, _, value in pairs}


def _shebang(head: bytes) -> tuple[str, str] | None:
    """(interpreter, argument) of a `#!` line, or None.

    binfmt_script: blanks (space, tab) after `#!` are skipped, the
    interpreter runs to the next blank, and the rest of the line, trimmed,
    is one optional argument.
    """
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "surrogateescape")
    line = line.strip(" \t")
    interpreter = re.match(r"[^ \t]*", line).group()
    if not interpreter:
        return None
    return interpreter, line[len(interpreter) :].strip(" \t")


def _env_command(argument: str) -> str | None:
    """The command an `env` shebang runs: its first non-option word."""
    words = iter(argument.split())
    for word in words:
        if word in ENV_VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-") and "=" not in word:
            return word
    return None
