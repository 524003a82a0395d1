"""Removal profiles: loading, finding and resolving them into one ruleset.

A profile is a TOML table (parsed with tomllib) with these keys, all
optional: `description`, `extends`, `remove`, `keep`, `smoke`, `breaks`.
Built-in profiles ship as package data of `slimmer.profiles`. Project
profiles come from `slimmer.toml` (tables `[profiles.NAME]`) and from
`.slimmer/profiles/NAME.toml`, in the working folder or any folder above
it; the nearest definition of a name wins, also over a built-in.

Write `remove` and `keep` as TOML literal strings (three single quotes):
in a basic string a gitignore escape such as `\\#` is a TOML error.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slimmer.errors import ProfileError
from slimmer.rules import Ruleset, check_line, is_pattern

log = logging.getLogger(__name__)

BUILT_IN = "built-in"
# The package that ships profiles/*.toml (pyproject.toml maps the folder).
BUILTIN_PACKAGE = "slimmer.builtin_profiles"
PROJECT_FILE = "slimmer.toml"
PROJECT_DIR = Path(".slimmer") / "profiles"

# Each key, the type it must have, and its value when absent.
_FIELDS = {
    "description": (str, ""),
    "extends": (list, ()),
    "remove": (str, ""),
    "keep": (str, ""),
    "smoke": (list, ()),
    "breaks": (str, ""),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOML_WHERE = re.compile(r"^(.*) \(at (?:line (\d+), column (\d+)|end of document)\)$")


@dataclass(frozen=True)
class Profile:
    name: str
    source: str  # "built-in", or the path of the file that defines it
    description: str
    extends: tuple[str, ...]
    remove: tuple[str, ...]
    keep: tuple[str, ...]
    smoke: tuple[str, ...]
    breaks: str


def available_profiles(cwd: Path) -> dict[str, Profile]:
    """Every profile by name: built-ins, overridden by project profiles."""
    found = dict(_builtins())
    here = Path(cwd).absolute()
    # Farthest folder first, so that nearer definitions replace it.
    for folder in reversed([here, *here.parents]):
        found.update(_project_profiles_in(folder))
    return found


def load_profile_file(path: Path) -> Profile:
    """One profile from its own TOML file; its name is the file's stem."""
    path = Path(path)
    text = _read(path)
    return _profile(path.stem, _parse(text, path), str(path), _Place(path, text))


def resolve(refs: Sequence[str], cwd: Path) -> Ruleset:
    """The ruleset for profile names or paths, `extends` resolved first.

    A ref containing "/" or ending in ".toml" is a path to a profile file,
    relative to `cwd`. Each profile appears once, after what it extends.
    """
    known = available_profiles(cwd)
    order: dict[tuple[str, str], Profile] = {}
    for ref in refs:
        profile = _lookup(ref, known, Path(cwd))
        _visit(profile, known, order, ())
    log.debug("resolved profiles: %s", ", ".join(p.name for p in order.values()))
    return Ruleset(tuple(order.values()))


def _lookup(ref: str, known: dict[str, Profile], cwd: Path) -> Profile:
    if "/" in ref or ref.endswith(".toml"):
        path = Path(ref) if Path(ref).is_absolute() else cwd / ref
        return load_profile_file(path)
    if ref not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ProfileError(f"unknown profile {ref!r} (available: {names})")
    return known[ref]


def _visit(profile, known, order, stack) -> None:
    key = (profile.name, profile.source)
    if key in order:
        return
    if key in stack:
        loop = stack[stack.index(key) :]
        chain = " -> ".join([name for name, _ in loop] + [profile.name])
        raise ProfileError(f"{_file_of(profile)}: `extends` forms a cycle: {chain}")
    for name in profile.extends:
        if name not in known:
            raise ProfileError(
                f"{_file_of(profile)}: profile {profile.name!r} extends "
                f"unknown profile {name!r}"
            )
        _visit(known[name], known, order, (*stack, key))
    order[key] = profile


def _file_of(profile: Profile) -> str:
    if profile.source == BUILT_IN:
        return str(_builtin_files()[profile.name])
    return profile.source


@functools.cache
def _builtin_files() -> dict[str, Path]:
    try:
        folder = importlib.resources.files(BUILTIN_PACKAGE)
    except (ModuleNotFoundError, TypeError):
        # A checkout that is not installed: profiles/ sits beside slimmer/.
        folder = Path(__file__).resolve().parent.parent / "profiles"
    files = [f for f in folder.iterdir() if f.name.endswith(".toml")]
    return {f.name.removesuffix(".toml"): f for f in sorted(files, key=str)}


@functools.cache
def _builtins() -> dict[str, Profile]:
    profiles = {}
    for name, file in _builtin_files().items():
        text = _read(file)
        profiles[name] = _profile(
            name, _parse(text, file), BUILT_IN, _Place(file, text)
        )
    return profiles


def _project_profiles_in(folder: Path) -> dict[str, Profile]:
    here: dict[str, Profile] = {}
    toml = folder / PROJECT_FILE
    if toml.is_file():
        here.update(_project_file(toml))
    profile_dir = folder / PROJECT_DIR
    if profile_dir.is_dir():
        for file in sorted(profile_dir.glob("*.toml")):
            profile = load_profile_file(file)
            if profile.name in here:
                raise ProfileError(
                    f"{file}: profile {profile.name!r} is also defined in {toml}"
                )
            here[profile.name] = profile
    return here


def _project_file(path: Path) -> dict[str, Profile]:
    text = _read(path)
    data = _parse(text, path)
    # Other top-level tables belong to other features; only profiles count.
    tables = data.get("profiles", {})
    place = _Place(path, text)
    if not isinstance(tables, dict):
        raise ProfileError(f"{place.at('profiles')}: `profiles` must be a table")
    found = {}
    for name, table in tables.items():
        section = _Place(path, text, f"profiles.{name}")
        if not isinstance(table, dict):
            raise ProfileError(f"{place.at(name)}: profiles.{name} must be a table")
        found[name] = _profile(name, table, str(path), section)
    return found


class _Place:
    """Names a file, and finds the line of a key for error messages."""

    def __init__(self, path, text: str, table: str | None = None):
        self.path = path
        self.lines = text.splitlines()
        self.table = table

    def line_of(self, needle: str, key: bool = True) -> int | None:
        start = 0
        if self.table is not None:
            header = re.compile(rf"^\s*\[\s*{re.escape(self.table)}\s*\]")
            start = next(
                (n for n, line in enumerate(self.lines) if header.match(line)), 0
            )
        for number in range(start, len(self.lines)):
            line = self.lines[number]
            found = re.match(rf"\s*{re.escape(needle)}\s*=", line) if key else None
            if found or (not key and line == needle):
                return number + 1
        return None

    def at(self, needle: str, key: bool = True) -> str:
        number = self.line_of(needle, key)
        return f"{self.path}:{number}" if number else str(self.path)


def _read(path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ProfileError(f"{path}: cannot read profile: {reason}") from exc


def _parse(text: str, path) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_WHERE.match(str(exc))
        if not found:
            raise ProfileError(f"{path}: {exc}") from exc
        message, line, column = found.groups()
        if line is None:
            line, column = str(len(text.splitlines()) or 1), None
        where = f" (column {column})" if column else ""
        raise ProfileError(f"{path}:{line}: {message}{where}") from exc


def _profile(name: str, table: dict, source: str, place: _Place) -> Profile:
    if not _NAME.fullmatch(name) or name.endswith(".toml"):
        raise ProfileError(f"{place.path}: {name!r} is not a valid profile name")
    for key in table:
        if key not in _FIELDS:
            raise ProfileError(f"{place.at(key)}: unknown key {key!r} in a profile")
    for key, value in table.items():
        kind = _FIELDS[key][0]
        if not isinstance(value, kind) or (
            kind is list and not all(isinstance(item, str) for item in value)
        ):
            wanted = "a list of strings" if kind is list else "a string"
            raise ProfileError(f"{place.at(key)}: `{key}` must be {wanted}")
    values = {key: table.get(key, default) for key, (_, default) in _FIELDS.items()}
    remove = _pattern_lines(values["remove"], "remove", place)
    keep = _pattern_lines(values["keep"], "keep", place)
    return Profile(
        name=name,
        source=source,
        description=values["description"],
        extends=tuple(values["extends"]),
        remove=remove,
        keep=keep,
        smoke=tuple(values["smoke"]),
        breaks=values["breaks"],
    )


def _pattern_lines(text: str, key: str, place: _Place) -> tuple[str, ...]:
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    # The newline before the closing quotes ends the last line; it adds none.
    while lines and not lines[-1].strip():
        lines.pop()
    for line in lines:
        if not is_pattern(line):
            continue
        # gitignore keeps leading spaces as part of the pattern, so an
        # indented line would silently match nothing.
        if line[:1].isspace():
            where = place.at(line, key=False)
            raise ProfileError(f"{where}: `{key}` line {line!r} starts with whitespace")
        problem = check_line(line)
        if problem:
            where = place.at(line, key=False)
            raise ProfileError(
                f"{where}: `{key}` line {line!r} never matches: {problem}"
            )
    return tuple(lines)
