"""prune.select against git itself: `git check-ignore` is the oracle.

Each case writes its lines to an excludes file, creates its paths in a
fresh git repository, and asks `git check-ignore --no-index` which paths
are ignored and by which line. Git reports a path inside an ignored
directory as ignored by that directory's line, which is exactly what the
plan records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimmer.profiles import Profile
from slimmer.prune import select
from slimmer.rules import Ruleset
from slimmer.tree import DIRECTORY, REGULAR, SYMLINK, Entry, Tree

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def ruleset(lines: list[str]) -> Ruleset:
    profile = Profile("case", "test", "", (), tuple(lines), (), (), "")
    return Ruleset([profile])


class Sandbox:
    """A git repository and a Tree holding the same paths.

    A path ending in "/" is a directory, one ending in "@" is a symlink
    (pointing at "."), any other is a regular file. Parents are created.
    No name starts with ":", which check-ignore would read as pathspec
    magic (it refuses GIT_LITERAL_PATHSPECS).
    """

    def __init__(self, top: Path, paths: list[str]):
        self.top = top
        self.repo = top / "repo"
        self.repo.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(top),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        self._git("init", "-q", ".")
        self.tree = Tree()
        self.kinds: dict[str, bytes] = {}
        for spec in paths:
            self._add(spec)

    def _add(self, spec: str) -> None:
        kind = {"/": DIRECTORY, "@": SYMLINK}.get(spec[-1], REGULAR)
        path = spec[:-1] if kind != REGULAR else spec
        parts = path.split("/")
        for depth in range(1, len(parts)):
            self._make("/".join(parts[:depth]), DIRECTORY)
        self._make(path, kind)

    def _make(self, path: str, kind: bytes) -> None:
        if path in self.kinds:
            assert self.kinds[path] == kind, f"{path} is listed twice"
            return
        self.kinds[path] = kind
        parent, _, name = path.rpartition("/")
        folder = self.tree.get(parent)
        offset = len(self.kinds)
        folder.children[name] = Entry(0, offset, offset, 0, kind, 0o644)
        real = self.repo / path
        if kind == DIRECTORY:
            real.mkdir()
        elif kind == SYMLINK:
            real.symlink_to(".")
        else:
            real.write_bytes(b"")

    def _git(self, *args: str, data: bytes = b"") -> bytes:
        done = subprocess.run(
            ["git", *args],
            cwd=self.repo,
            env=self.env,
            input=data,
            capture_output=True,
            check=False,
        )
        # check-ignore exits 1 when no path is ignored.
        assert done.returncode in (0, 1), done.stderr.decode()
        return done.stdout

    def git_ignored(self, lines: list[str]) -> dict[str, str]:
        """Each path git ignores -> the line that ignores it."""
        excludes = self.top / "excludes"
        excludes.write_bytes("".join(f"{line}\n" for line in lines).encode())
        data = b"\0".join(path.encode() for path in self.kinds)
        out = self._git(
            "-c",
            f"core.excludesFile={excludes}",
            "check-ignore",
            "--no-index",
            "--stdin",
            "-z",
            "-v",
            data=data,
        )
        fields = out.split(b"\0")
        ignored = {}
        for at in range(0, len(fields) - 1, 4):
            _source, number, pattern, path = fields[at : at + 4]
            # -v also lists paths whose last match is a "!" line.
            if not pattern.startswith(b"!"):
                ignored[path.decode()] = lines[int(number) - 1]
        return ignored

    def removed(self, lines: list[str]) -> dict[str, str]:
        plan = select(self.tree, ruleset(lines))
        return {path: rule.pattern for path, rule in plan.removed.items()}


CASES = [
    pytest.param(
        ["foo"],
        ["foo", "dir/foo", "dir/sub/foo", "foobar", "dir/xfoo"],
        id="basename_matches_at_any_depth",
    ),
    pytest.param(
        ["foo"],
        ["foo/", "foo/x", "foo/sub/y", "bar/foo/z"],
        id="basename_dir_takes_contents",
    ),
    pytest.param(
        ["build/"],
        ["build", "src/build/", "src/build/out.o", "x/"],
        id="trailing_slash_matches_dirs_only",
    ),
    pytest.param(
        ["link/"],
        ["link@", "dir/", "dir/link@", "real/link/"],
        id="dir_only_never_matches_symlink",
    ),
    pytest.param(
        ["/top"],
        ["top", "sub/top", "deeper/top/x", "topper"],
        id="leading_slash_anchors",
    ),
    pytest.param(
        ["a/b"], ["a/b", "x/a/b", "a/bb", "c/a/b/d"], id="middle_slash_anchors"
    ),
    pytest.param(
        ["*.log"],
        ["a.log", "dir/b.log", "dir/sub/c.log", "log", "x.logx"],
        id="star_suffix_any_depth",
    ),
    pytest.param(
        ["src/*.c"],
        ["src/a.c", "src/sub/b.c", "x/src/c.c", "src/.c"],
        id="star_does_not_cross_slash",
    ),
    pytest.param(
        ["**/cache"],
        ["cache", "a/cache", "a/b/cache/", "a/b/cache/x"],
        id="double_star_leading",
    ),
    pytest.param(
        ["a/**/z"],
        ["a/z", "a/b/z", "a/b/c/z", "b/a/z", "a/zz"],
        id="double_star_middle",
    ),
    pytest.param(
        ["x/**"],
        ["x/", "x/y/", "x/y/z", "x/f", "xx/f"],
        id="double_star_trailing_empties_dir",
    ),
    pytest.param(
        ["x/**/"],
        ["x/", "x/y/", "x/y/z", "x/f", "x/y/w/"],
        id="double_star_trailing_slash_dirs_inside",
    ),
    pytest.param(["**"], ["a", "b/", "b/c", ".d"], id="double_star_alone"),
    pytest.param(
        ["/**/leaf"],
        ["leaf", "a/leaf", "a/b/leaf/", "a/b/leaf/x"],
        id="anchored_double_star",
    ),
    pytest.param(
        ["a/***/z", "f**o"],
        ["a/z", "a/b/z", "fo", "fxo", "d/fyo", "f/o"],
        id="runs_of_stars",
    ),
    pytest.param(
        ["a**/z", "x/y**"],
        ["az", "a/z", "ab/z", "ab/c/z", "x/yz", "x/y/q", "x/yy/q/r"],
        id="double_star_after_literal_prefix_is_whole",
    ),
    pytest.param(
        ["?a**/z"],
        ["ba/z", "baz", "bab/z", "bab/c/z"],
        id="double_star_after_wildcard_is_one_star",
    ),
    pytest.param(
        ["*.log", "!keep.log"],
        ["a.log", "keep.log", "d/keep.log"],
        id="negation_reincludes_file",
    ),
    pytest.param(
        ["logs/", "!logs/keep.log"],
        ["logs/keep.log", "logs/a.log"],
        id="negation_inside_excluded_dir_has_no_effect",
    ),
    pytest.param(
        ["logs/*", "!logs/keep.log"],
        ["logs/keep.log", "logs/a.log", "logs/d/"],
        id="negation_of_dir_contents_works",
    ),
    pytest.param(
        ["*/", "!src/"],
        ["src/", "src/x", "a/src/", "a/b", "f"],
        id="negated_dir_inside_excluded_dir",
    ),
    pytest.param(
        ["*", "!*/", "!*.py"],
        ["a.py", "a.txt", "d/b.py", "d/b.txt", "d/e/"],
        id="ignore_files_not_dirs",
    ),
    pytest.param(["!a", "a"], ["a", "b/a"], id="last_line_wins"),
    pytest.param(
        ["*.txt", "!*.txt", "a.txt"], ["a.txt", "b.txt"], id="exclude_negate_exclude"
    ),
    pytest.param(
        ["*.d", "!keep.d/"],
        ["keep.d", "sub/keep.d/", "sub/keep.d/x", "x.d"],
        id="negated_dir_only_line_spares_file",
    ),
    pytest.param(
        ["data/"],
        ["data", "sub/data/", "sub/data/f"],
        id="dir_line_vs_file_of_same_name",
    ),
    pytest.param(["?.txt"], ["a.txt", "ab.txt", "d/b.txt", ".txt"], id="question_mark"),
    pytest.param(
        ["?.txt", "??.bin"],
        ["é.txt", "é.bin", "e.txt"],
        id="question_mark_counts_bytes",
    ),
    pytest.param(
        ["[ab].txt", "[!a]x", "[a-c]*.md", "[]]y"],
        ["a.txt", "c.txt", "ax", "bx", "b.md", "d.md", "]y", "zy"],
        id="bracket_classes",
    ),
    pytest.param(
        ["[[:digit:]]*", "[[:upper:]][[:lower:]]"],
        ["1a", "a1", "Ab", "AB", "x9"],
        id="named_classes",
    ),
    pytest.param(
        ["[z-a]x", "[a-]y", "[!]]z"],
        ["ax", "zx", "-y", "ay", "bz", "]z"],
        id="bracket_edge_ranges",
    ),
    pytest.param(
        ["foo[", "ba[r"], ["foo[", "ba[r", "bar"], id="unclosed_bracket_matches_nothing"
    ),
    pytest.param(["[[:nope:]]x"], ["ax", "[x"], id="unknown_class_matches_nothing"),
    pytest.param(["a[/]b"], ["a/b", "a[/]b/"], id="bracket_never_matches_slash"),
    pytest.param(
        ["#notes", "\\#hash"],
        ["#notes", "#hash", "notes"],
        id="comment_and_escaped_hash",
    ),
    pytest.param(
        ["\\!bang", "!nothing"], ["!bang", "bang", "nothing"], id="escaped_bang"
    ),
    pytest.param(
        ["foo   ", "bar\\ "],
        ["foo", "foo   ", "bar", "bar "],
        id="trailing_spaces_trimmed_unless_escaped",
    ),
    pytest.param(
        ["tail\\"], ["tail", "tail\\"], id="trailing_backslash_matches_nothing"
    ),
    pytest.param(
        ["my dir/", "a b.txt"],
        ["my dir/", "my dir/x", "a b.txt", "ab.txt"],
        id="names_with_spaces",
    ),
    pytest.param(
        ["star\\*name", "\\[x\\]"],
        ["star*name", "starXname", "[x]", "x"],
        id="escaped_glob_characters",
    ),
    pytest.param(
        ["back\\\\slash"], ["back\\slash", "backslash"], id="escaped_backslash"
    ),
    pytest.param(
        [".*", "!.keep"],
        [".env", ".keep", "d/.cache/", "d/.cache/x", "e"],
        id="dotfiles",
    ),
    pytest.param(["*"], [".hidden", "d/.x"], id="star_matches_leading_dot"),
    pytest.param(
        ["deep/**/leaf.txt"],
        ["deep/leaf.txt", "deep/1/2/3/4/5/6/7/8/9/leaf.txt", "deep/1/other.txt"],
        id="deep_paths",
    ),
    pytest.param(["*/*"], ["f", "a/b", "c/d/e", "g/"], id="star_slash_star"),
    pytest.param(["/", "!", ""], ["a", "b/"], id="degenerate_lines_match_nothing"),
    pytest.param(["new*"], ["new\nline", "old"], id="name_with_newline"),
    pytest.param(
        ["usr/share/locale/*/", "!usr/share/locale/en/"],
        [
            "usr/share/locale/de/x.mo",
            "usr/share/locale/en/y.mo",
            "usr/share/locale/locale.alias",
        ],
        id="locale_style_negation",
    ),
]


@pytest.mark.parametrize(("lines", "paths"), CASES)
def test_select_matches_git(tmp_path, lines, paths):
    box = Sandbox(tmp_path, paths)
    assert box.removed(lines) == box.git_ignored(lines)


# Names for the random tree: dirs "a" and "b" three deep, and these files
# in every folder.
_FILE_NAMES = ["ab", ".a", "b a", "[a]", "a*", "ba", "a\\b"]
# Common tokens appear more than once, so that most lines match something.
_TOKENS = [
    "a",
    "a",
    "b",
    "b",
    "ab",
    "*",
    "*",
    "**",
    "**",
    "?",
    "[ab]",
    "[!a]",
    "[a-b]",
    "[[:alpha:]]",
    "\\*",
    "\\[",
    ".",
    " ",
    "\\ ",
    "\\",
]


def _random_tree_paths() -> list[str]:
    folders = [""]
    for _ in range(3):
        folders += [f"{f}{d}/" for f in folders if f.count("/") < 3 for d in "ab"]
    folders = sorted(set(folders))
    return [f for f in folders if f] + [
        f + name for f in folders for name in _FILE_NAMES
    ]


@pytest.fixture(scope="module")
def random_box(tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("random"), _random_tree_paths())


_segment = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=3).map("".join)
_line = st.builds(
    lambda bang, lead, segments, trail: bang + lead + "/".join(segments) + trail,
    st.sampled_from(["", "!"]),
    st.sampled_from(["", "/"]),
    st.lists(_segment, min_size=1, max_size=3),
    st.sampled_from(["", "/"]),
)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_line, min_size=1, max_size=5))
def test_random_lines_match_git(random_box, lines):
    assert random_box.removed(lines) == random_box.git_ignored(lines)
