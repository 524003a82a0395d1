"""prune.select: git's directory rule, keep lines, and the built-in profiles
on the paths real Debian bookworm images hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimmer.profiles import Profile, resolve
from slimmer.prune import RemovedPaths, select
from slimmer.rules import Rule, Ruleset
from slimmer.tree import DIRECTORY, REGULAR, SYMLINK, Entry, Tree


def make_tree(*paths: str) -> Tree:
    """A tree of `paths`: "x/" is a directory, "x@" a symlink, parents made."""
    tree = Tree()
    for number, spec in enumerate(paths):
        kind = {"/": DIRECTORY, "@": SYMLINK}.get(spec[-1], REGULAR)
        parts = spec.rstrip("/@").split("/")
        node = tree.root
        for depth, name in enumerate(parts, start=1):
            here = kind if depth == len(parts) else DIRECTORY
            if name not in node.children:
                node.children[name] = Entry(0, number * 100 + depth, -1, 0, here, 0o644)
            node = node.children[name]
    return tree


def profile(name="p", remove=(), keep=(), smoke=(), breaks="") -> Profile:
    return Profile(
        name, "test", "", (), tuple(remove), tuple(keep), tuple(smoke), breaks
    )


def ruleset(remove=(), keep=()) -> Ruleset:
    return Ruleset([profile(remove=remove, keep=keep)])


def test_removed_dir_takes_descendants_with_its_rule():
    tree = make_tree("usr/include/stdio.h", "usr/include/sys/types.h", "usr/bin/ls")
    plan = select(tree, ruleset(["usr/include/"]))
    rule = Rule("p", "usr/include/")
    assert plan.removed == {
        "usr/include": rule,
        "usr/include/stdio.h": rule,
        "usr/include/sys": rule,
        "usr/include/sys/types.h": rule,
    }


def test_removed_descendants_keep_the_outer_dirs_rule():
    tree = make_tree("a/b/c.txt")
    plan = select(tree, ruleset(["a/", "*.txt"]))
    assert plan.removed["a/b/c.txt"] == Rule("p", "a/")


def test_double_star_empties_dir_but_keeps_it():
    tree = make_tree("var/cache/x/y", "var/cache/z")
    plan = select(tree, ruleset(["var/cache/**"]))
    assert list(plan.removed) == ["var/cache/x", "var/cache/x/y", "var/cache/z"]


def test_negation_cannot_bring_back_file_in_removed_dir():
    tree = make_tree("logs/keep.log", "logs/a.log")
    plan = select(tree, ruleset(["logs/", "!logs/keep.log"]))
    assert "logs/keep.log" in plan.removed


def test_negation_brings_back_file_when_parent_stays():
    tree = make_tree("logs/keep.log", "logs/a.log")
    plan = select(tree, ruleset(["logs/*", "!logs/keep.log"]))
    assert list(plan.removed) == ["logs/a.log"]


def test_dir_only_rule_spares_file_and_symlink():
    tree = make_tree("build", "src/build@", "lib/build/")
    plan = select(tree, ruleset(["build/"]))
    assert list(plan.removed) == ["lib/build"]


def test_keep_saves_file_in_removed_dir_and_its_parents():
    tree = make_tree(
        "usr/share/doc/a/copyright",
        "usr/share/doc/a/changelog.gz",
        "usr/share/doc/b/README",
    )
    plan = select(tree, ruleset(["usr/share/doc/"], ["usr/share/doc/*/copyright"]))
    assert list(plan.removed) == [
        "usr/share/doc/a/changelog.gz",
        "usr/share/doc/b",
        "usr/share/doc/b/README",
    ]
    assert list(plan.kept_by_keep) == [
        "usr/share/doc",
        "usr/share/doc/a",
        "usr/share/doc/a/copyright",
    ]
    assert "usr/share/doc/*/copyright" in plan.kept_by_keep["usr/share/doc/a/copyright"]
    assert "usr/share/doc/a/copyright" in plan.kept_by_keep["usr/share/doc"]


def test_keep_dir_keeps_its_whole_subtree():
    tree = make_tree("opt/app/x.pyc", "opt/app/sub/y.pyc", "opt/other/z.pyc")
    plan = select(tree, ruleset(["*.pyc"], ["opt/app/"]))
    assert list(plan.removed) == ["opt/other/z.pyc"]
    assert list(plan.kept_by_keep) == ["opt/app/sub/y.pyc", "opt/app/x.pyc"]


def test_keep_of_path_no_rule_removes_is_not_reported():
    tree = make_tree("etc/passwd", "tmp/x")
    plan = select(tree, ruleset(["tmp/"], ["etc/passwd"]))
    assert plan.kept_by_keep == {}


def test_keep_wins_over_rules_of_later_profiles():
    rules = Ruleset([profile("a", keep=["x/y"]), profile("b", remove=["x/"])])
    plan = select(make_tree("x/y", "x/z"), rules)
    assert list(plan.removed) == ["x/z"]
    assert list(plan.kept_by_keep) == ["x", "x/y"]


def test_removed_is_in_walk_order():
    tree = make_tree("b/2.a", "a/1.a", "a/z/3.a", "c.a")
    plan = select(tree, ruleset(["*.a", "z/"]))
    assert list(plan.removed) == [
        path for path, _ in tree.walk() if path in plan.removed
    ]


# Names that sort around each other: "a" < "a b" < "a-b" < "a.b" < "ab".
_NAMES = st.sampled_from(["a", "b", "a.b", "a-b", "ab", "a b", "A", "\u00e9"])
_PATHS = st.lists(_NAMES, min_size=1, max_size=4).map("/".join)


@given(st.lists(_PATHS, unique=True), st.data())
def test_removed_paths_is_a_dict_in_walk_order(paths, data):
    removed, model = RemovedPaths(), {}
    for number, path in enumerate(paths):
        removed[path] = model[path] = Rule("p", str(number))
    gone = data.draw(st.lists(st.sampled_from(paths), unique=True)) if paths else []
    for path in gone:
        del removed[path]
        del model[path]
    # The walk's order: parents first, siblings sorted, component by component.
    assert list(removed) == sorted(model, key=lambda path: path.split("/"))
    assert dict(removed.items()) == model and len(removed) == len(model)
    assert all(path in removed for path in model)
    assert "zz" not in removed and removed.get("zz") is None
    with pytest.raises(KeyError):
        del removed["zz"]


def test_empty_ruleset_removes_nothing():
    plan = select(make_tree("a/b"), Ruleset())
    assert (plan.removed, plan.kept_by_keep) == ({}, {})


def test_match_looks_at_the_path_itself_only():
    rules = ruleset(["a/"])
    assert rules.match("a", True) == Rule("p", "a/")
    assert rules.match("a/b", False) is None


def test_match_reads_trailing_slash_as_directory():
    assert ruleset(["a/"]).match("x/a/", False) == Rule("p", "a/")


def test_match_is_none_when_last_line_is_negation():
    assert ruleset(["*.so", "!libssl.so"]).match("usr/lib/libssl.so", False) is None


def test_keeps_looks_at_parent_directories():
    rules = ruleset(keep=["usr/share/doc/"])
    assert rules.keeps("usr/share/doc/x/copyright", False)
    assert not rules.keeps("usr/share/man/x", False)


def test_rules_hold_negations_but_not_comments_or_blanks():
    rules = ruleset(["# comment", "", "   ", "a", "!b", "\\#c"])
    assert [rule.pattern for rule in rules.rules] == ["a", "!b", "\\#c"]
    assert not rules.empty
    assert ruleset(["# only a comment"]).empty


def test_smoke_and_breaks_follow_profile_order():
    rules = Ruleset(
        [
            profile("a", smoke=["true", "ls /"], breaks="A goes."),
            profile("b", smoke=["true"]),
            profile("c", smoke=["id"], breaks="C goes."),
        ]
    )
    assert rules.smoke == ("true", "ls /", "id")
    assert rules.breaks == (("a", "A goes."), ("c", "C goes."))


# (profile, path, removed?) on paths from Debian bookworm packages and
# images: rustc 1.63, gcc-12, binutils 2.40, libpython3.11-dev, venvs.
DEBIAN_PATHS = [
    ("python-rust", "usr/lib/rustlib/", True),
    (
        "python-rust",
        "usr/lib/rustlib/x86_64-unknown-linux-gnu/lib/libcore-2b14.rlib",
        True,
    ),
    ("python-rust", "usr/include/", True),
    ("python-rust", "usr/include/python3.11/Python.h", True),
    ("python-rust", "opt/v/lib/python3.11/site-packages/x/__pycache__/", True),
    ("python-rust", "opt/v/lib/python3.11/site-packages/x/__init__.py", False),
    ("python-rust", "usr/lib/python3.11/config-3.11-x86_64-linux-gnu/", True),
    ("python-rust", "usr/lib/python3.11/_sysconfigdata__x86_64-linux-gnu.py", False),
    ("python-rust", "usr/local/lib/python3.11/config-3.11-x86_64-linux-gnu/", True),
    ("python-rust", "usr/bin/python3", False),
    ("python-rust", "usr/bin/python3.11", False),
    ("python-rust", "usr/bin/python3.11-config", True),
    ("python-rust", "usr/bin/x86_64-linux-gnu-python3.11-config", True),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libssl.so.3", False),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libstdc++.so.6", False),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libgcc_s.so.1", False),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libz.so.1", False),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libz.a", True),
    ("python-rust", "usr/bin/gcc", True),
    ("python-rust", "usr/bin/gcc-12", True),
    ("python-rust", "usr/bin/x86_64-linux-gnu-gcc-12", True),
    ("python-rust", "usr/bin/g++-12", True),
    ("python-rust", "usr/bin/cpp-12", True),
    ("python-rust", "usr/lib/gcc/", True),
    ("python-rust", "usr/lib/gcc/x86_64-linux-gnu/12/cc1", True),
    ("python-rust", "usr/bin/ld", True),
    ("python-rust", "usr/bin/x86_64-linux-gnu-ld.bfd", True),
    ("python-rust", "usr/bin/objdump", True),
    ("python-rust", "usr/bin/perl", False),
    ("python-rust", "usr/bin/cargo", True),
    ("python-rust", "usr/bin/rustc", True),
    (
        "python-rust",
        "usr/lib/x86_64-linux-gnu/librustc_driver-4c3beb7552356b6f.so",
        True,
    ),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libstd-a5a48102fbd58791.so", True),
    ("python-rust", "usr/lib/x86_64-linux-gnu/libLLVM-14.so.1", True),
    ("python-rust", "root/.rustup/toolchains/stable/lib/librustc_driver-1a.so", True),
    ("python-rust", "home/app/.rustup/", True),
    ("python-rust", "usr/local/rustup/", True),
    ("python-rust", "root/.cargo/bin/cargo", True),
    ("python-rust", "root/.cargo/bin/rustup", True),
    ("python-rust", "root/.cargo/bin/rg", False),
    ("python-rust", "root/.cargo/env", False),
    ("python-rust", "home/app/.cargo/registry/", True),
    ("python-rust", "usr/local/cargo/bin/rustc", True),
    ("python-rust", "usr/local/cargo/bin/my-server", False),
    ("pycache", "usr/lib/python3.11/__pycache__/os.cpython-311.pyc", True),
    ("pycache", "usr/lib/python3.11/os.py", False),
    ("pycache", "opt/app/legacy.pyc", True),
    ("docs", "usr/share/doc/x/copyright", False),
    ("docs", "usr/share/doc/x/changelog.Debian.gz", True),
    ("docs", "usr/share/man/man1/ls.1.gz", True),
    ("docs", "usr/share/info/dir", True),
    ("docs", "usr/share/locale/de/LC_MESSAGES/coreutils.mo", True),
    ("docs", "usr/share/locale/en_GB/LC_MESSAGES/coreutils.mo", False),
    ("docs", "usr/share/locale/en@quot/LC_MESSAGES/coreutils.mo", False),
    ("docs", "usr/share/locale/locale.alias", False),
    (
        "package-caches",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
        True,
    ),
    ("package-caches", "var/lib/apt/lists/", False),
    ("package-caches", "var/cache/apt/archives/curl_7.88.1-10_amd64.deb", True),
    ("package-caches", "var/cache/apt/archives/partial/", False),
    ("package-caches", "var/cache/apt/pkgcache.bin", True),
    ("package-caches", "var/lib/dpkg/status", False),
    ("package-caches", "root/.cache/pip/http/a/b", True),
    ("package-caches", "root/.npm/_npx/1a/package.json", False),
    ("package-caches", "root/.npm/_cacache/index-v5/00", True),
]


@pytest.mark.parametrize(
    ("name", "path", "removed"),
    DEBIAN_PATHS,
    ids=[
        f"{name}:{path}:{'removed' if gone else 'kept'}"
        for name, path, gone in DEBIAN_PATHS
    ],
)
def test_builtin_profile_on_debian_path(tmp_path: Path, name, path, removed):
    plan = select(make_tree(path), resolve([name], tmp_path))
    assert (path.rstrip("/") in plan.removed) is removed
