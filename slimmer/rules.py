"""Gitignore lines compiled for matching image paths, one path at a time.

Matching follows git's own code (dir.c and wildmatch.c), and
`git check-ignore` is the oracle in the tests. Each line becomes one
regular expression that matches exactly the paths the line names. A
directory line does not also match what lies below it: the walk in
prune.py applies that rule (git does not descend into an ignored
directory).

NOTE: pathspec's GitIgnoreSpec is not used here. Its expressions are built
for lists of files, so a line also matches everything below the path it
names. Asked about one path at a time, it then disagrees with git: `x/**`
would take `x` itself, and `*` followed by `!*/` would take every directory.

Paths are matched as UTF-8 bytes, because git's `?`, `*` and `[...]` count
bytes, not characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slimmer.profiles import Profile

_SLASH = ord("/")
_BACKSLASH = ord("\\")

# wildmatch.c: the [:name:] classes, ASCII only, as inclusive byte ranges.
_CLASSES = {
    b"alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    b"alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    b"blank": ((0x20, 0x20), (0x09, 0x09)),
    b"cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    b"digit": ((0x30, 0x39),),
    b"graph": ((0x21, 0x7E),),
    b"lower": ((0x61, 0x7A),),
    b"print": ((0x20, 0x7E),),
    b"punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    # git's own ctype table: space is \t \n \r and ' ' (no \v or \f).
    b"space": ((0x09, 0x0A), (0x0D, 0x0D), (0x20, 0x20)),
    b"upper": ((0x41, 0x5A),),
    b"xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}


class _NeverMatches(Exception):
    """wildmatch aborts on this pattern, so it matches no path at all."""


@dataclass(frozen=True)
class Rule:
    """One gitignore line of a profile, exactly as written there."""

    profile: str
    pattern: str


@dataclass(frozen=True)
class _Line:
    negative: bool
    dir_only: bool
    basename: bool  # no slash in the line: match the last path component
    regex: bytes | None  # None: the line can never match


def is_pattern(line: str) -> bool:
    """Whether git reads `line` as a pattern (not blank, not a comment)."""
    text = _trim_trailing_spaces(line.removesuffix("\r"))
    return bool(text) and not text.startswith("#")


def check_line(line: str) -> str | None:
    """Why git would never match `line`, or None when it can match."""
    try:
        _translate(_split_line(line)[3], pathname=True)
    except _NeverMatches as exc:
        return str(exc)
    return None


def _trim_trailing_spaces(text: str) -> str:
    # gitignore: trailing spaces are ignored unless quoted with a backslash.
    last_space = None
    i = 0
    while i < len(text):
        char = text[i]
        if char == " ":
            if last_space is None:
                last_space = i
        elif char == "\\":
            i += 1
            if i == len(text):
                return text  # dir.c: a final backslash stops the trimming
            last_space = None
        else:
            last_space = None
        i += 1
    return text if last_space is None else text[:last_space]


def _split_line(line: str) -> tuple[bool, bool, bool, bytes]:
    """(negative, dir_only, basename, pattern bytes), as dir.c parses a line."""
    text = _trim_trailing_spaces(line.removesuffix("\r"))

    # gitignore: a leading "!" negates; "\!" is a literal "!" (left to wildmatch).
    negative = text.startswith("!")
    if negative:
        text = text[1:]

    # gitignore: a trailing slash matches only directories.
    dir_only = text.endswith("/")
    if dir_only:
        text = text[:-1]

    # gitignore: a line without a slash matches the name at any depth.
    basename = "/" not in text
    if not basename and text.startswith("/"):
        text = text[1:]  # gitignore: a leading slash anchors to the root
    return negative, dir_only, basename, text.encode("utf-8", "surrogateescape")


def _compile(line: str) -> _Line:
    negative, dir_only, basename, pattern = _split_line(line)
    try:
        regex = _translate(pattern, pathname=not basename)
    except _NeverMatches:
        regex = None
    return _Line(negative, dir_only, basename, regex)


def _translate(pattern: bytes, pathname: bool) -> bytes:
    """A regular expression that fully matches what wildmatch matches."""
    out: list[bytes] = []
    i, end = 0, len(pattern)
    # dir.c compares the literal prefix before the first wildcard itself and
    # hands only the rest to wildmatch, where a "**" right after the prefix
    # then counts as the start of the pattern ("a**/z" matches "ab/c/z").
    prefix = next((n for n, c in enumerate(pattern) if c in b"*?[\\"), end)
    while i < end:
        char = pattern[i]
        if char == _BACKSLASH:
            if i + 1 == end:
                raise _NeverMatches("it ends with a lone backslash")
            out.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
        elif char == ord("?"):
            out.append(b"[^/]")  # WM_PATHNAME: "?" never matches a slash
            i += 1
        elif char == ord("*"):
            i = _translate_stars(pattern, i, pathname and i == prefix, pathname, out)
        elif char == ord("["):
            i = _translate_bracket(pattern, i, out)
        else:
            out.append(re.escape(pattern[i : i + 1]))
            i += 1
    return b"".join(out)


def _translate_stars(
    pattern: bytes, start: int, at_start: bool, pathname: bool, out
) -> int:
    end = start
    while end < len(pattern) and pattern[end] == ord("*"):
        end += 1
    rest = pattern[end:]
    # gitignore: "**" is special only as a whole path component.
    whole = (at_start or start == 0 or pattern[start - 1] == _SLASH) and (
        not rest or rest[:1] == b"/" or rest[:2] == b"\\/"
    )
    if end - start < 2 or not pathname or not whole:
        out.append(b"[^/]*")  # other consecutive asterisks are one "*"
        return end
    if rest[:1] == b"/":
        out.append(b"(?:.*/)?")  # "**/" matches zero or more directories
        return end + 1
    out.append(b".*")  # a trailing "/**" matches everything inside
    return end


def _translate_bracket(pattern: bytes, start: int, out) -> int:
    """Append the class opened at `start`; return the index past its "]"."""
    i, end = start + 1, len(pattern)
    negated = i < end and pattern[i] in b"!^"
    if negated:
        i += 1
    items: list[tuple[int, int]] = []
    prev: int | None = None  # wildmatch's prev_ch: a range may start here
    first = True
    while True:
        if i >= end:
            raise _NeverMatches("it has an unclosed '['")
        char = pattern[i]
        if char == ord("]") and not first:
            break
        first = False
        if char == _BACKSLASH:
            i += 1
            if i >= end:
                raise _NeverMatches("it has an unclosed '['")
            prev = pattern[i]
            items.append((prev, prev))
        elif char == ord("-") and prev is not None and i + 1 < end:
            if pattern[i + 1] == ord("]"):
                items.append((char, char))
                prev = char
            else:
                i, high = _range_end(pattern, i + 1)
                items.append((prev, high))  # wildmatch: an empty range is empty
                prev = None
        elif char == ord("[") and pattern[i + 1 : i + 2] == b":":
            i, prev = _class_name(pattern, i, items)
        else:
            items.append((char, char))
            prev = char
        i += 1
    out.append(_class_regex(items, negated))
    return i + 1


def _range_end(pattern: bytes, i: int) -> tuple[int, int]:
    if pattern[i] == _BACKSLASH:
        i += 1
        if i >= len(pattern):
            raise _NeverMatches("it has an unclosed '['")
    return i, pattern[i]


def _class_name(pattern: bytes, i: int, items: list) -> tuple[int, int | None]:
    """Handle "[:name:]" at `i`; return the last index used and prev_ch."""
    close = pattern.find(b"]", i + 2)
    if close < 0:
        raise _NeverMatches("it has an unclosed '['")
    name = pattern[i + 2 : close]
    if not name.endswith(b":"):
        items.append((ord("["), ord("[")))  # no ":]": "[" is a plain member
        return i, ord("[")
    ranges = _CLASSES.get(name[:-1])
    if ranges is None:
        shown = name.decode(errors="replace")
        raise _NeverMatches(f"it names an unknown class [:{shown}]")
    items.extend(ranges)
    return close, None


def _class_regex(items: list[tuple[int, int]], negated: bool) -> bytes:
    parts = []
    for low, high in items:
        if low > high:
            continue
        if low == high:
            parts.append(re.escape(bytes([low])))
        else:
            parts.append(re.escape(bytes([low])) + b"-" + re.escape(bytes([high])))
    body = b"".join(parts)
    # WM_PATHNAME: a bracket expression never matches a slash.
    if negated:
        return b"[^/" + body + b"]"
    return b"(?!/)[" + body + b"]" if body else b"(?!)"


class _Matcher:
    """Finds the last of many lines that matches one path."""

    def __init__(self, lines: Sequence[str]):
        self.lines = [_compile(line) for line in lines]
        self._regexes = {
            is_dir: [self._combine(is_dir, base) for base in (True, False)]
            for is_dir in (False, True)
        }

    def _combine(self, is_dir: bool, basename: bool):
        # One alternation, last line first: the first alternative that
        # matches is then the last matching line, found in one C-level scan.
        indexes, parts = [], []
        for index in reversed(range(len(self.lines))):
            line = self.lines[index]
            if line.regex is None or line.basename != basename:
                continue
            if line.dir_only and not is_dir:
                continue
            indexes.append(index)
            parts.append(b"(" + line.regex + b")")
        if not parts:
            return None
        return basename, re.compile(b"|".join(parts), re.DOTALL), indexes

    def last(self, path: str, is_dir: bool) -> int | None:
        """Index of the last line that matches the path itself, if any."""
        raw = path.encode("utf-8", "surrogateescape")
        best = -1
        for compiled in self._regexes[is_dir]:
            if compiled is None:
                continue
            basename, regex, indexes = compiled
            found = regex.fullmatch(raw.rpartition(b"/")[2] if basename else raw)
            if found:
                best = max(best, indexes[found.lastindex - 1])
        return best if best >= 0 else None

    def says_yes(self, path: str, is_dir: bool) -> int | None:
        """Index of the deciding line when it is a positive one."""
        index = self.last(path, is_dir)
        if index is None or self.lines[index].negative:
            return None
        return index


def _normal(path: str, is_dir: bool) -> tuple[str, bool]:
    # Callers may mark a directory the pathspec way, with a trailing slash.
    if path.endswith("/"):
        return path.rstrip("/"), True
    return path, is_dir


class Ruleset:
    """The remove and keep lines of resolved profiles, ready to match.

    `match` and `keep_match` look at one path only; a caller walking a tree
    applies git's directory rule itself (see prune.select).
    """

    def __init__(self, profiles: Sequence[Profile] = ()):
        self.profiles = tuple(profiles)
        self.rules = tuple(
            Rule(p.name, line)
            for p in self.profiles
            for line in p.remove
            if is_pattern(line)
        )
        self.keep_rules = tuple(
            Rule(p.name, line)
            for p in self.profiles
            for line in p.keep
            if is_pattern(line)
        )
        self.smoke = tuple(dict.fromkeys(c for p in self.profiles for c in p.smoke))
        self.breaks = tuple((p.name, p.breaks) for p in self.profiles if p.breaks)
        self._remove = _Matcher([rule.pattern for rule in self.rules])
        self._keep = _Matcher([rule.pattern for rule in self.keep_rules])

    @property
    def empty(self) -> bool:
        return not self.rules

    @property
    def has_keep(self) -> bool:
        return bool(self.keep_rules)

    def match(self, path: str, is_dir: bool) -> Rule | None:
        """The rule that removes this path itself: the last matching remove
        line, when it is not a "!" line."""
        index = self._remove.says_yes(*_normal(path, is_dir))
        return None if index is None else self.rules[index]

    def keep_match(self, path: str, is_dir: bool) -> Rule | None:
        """The keep line that keeps this path itself, if any."""
        index = self._keep.says_yes(*_normal(path, is_dir))
        return None if index is None else self.keep_rules[index]

    def keeps(self, path: str, is_dir: bool) -> bool:
        """Whether keep lines keep the path, itself or through a parent."""
        path, is_dir = _normal(path, is_dir)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if self.keep_match("/".join(parts[:depth]), True):
                return True
        return self.keep_match(path, is_dir) is not None
