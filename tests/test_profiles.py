"""Profiles: built-ins, project profiles, `extends`, and their errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slimmer.errors import ProfileError
from slimmer.profiles import (
    BUILT_IN,
    available_profiles,
    load_profile_file,
    resolve,
)
from slimmer.rules import Rule

BUILTINS = [
    "pycache",
    "rust-toolchain",
    "build-headers",
    "python-rust",
    "docs",
    "package-caches",
]
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "profiles"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(ruleset) -> list[str]:
    return [profile.name for profile in ruleset.profiles]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_profile_loads(tmp_path, name):
    profile = available_profiles(tmp_path)[name]
    assert profile.source == BUILT_IN
    assert profile.description
    assert profile.breaks


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_profile_file_opens_with_comments(name):
    first = (BUILTIN_DIR / f"{name}.toml").read_text().splitlines()[0]
    assert first.startswith(f"# {name}:")


def test_python_rust_extends_the_three(tmp_path):
    assert names(resolve(["python-rust"], tmp_path)) == [
        "pycache",
        "rust-toolchain",
        "build-headers",
        "python-rust",
    ]


def test_python_rust_breaks_mentions_pip(tmp_path):
    assert "pip" in available_profiles(tmp_path)["python-rust"].breaks


def test_docs_keeps_copyright_files(tmp_path):
    assert resolve(["docs"], tmp_path).keep_rules == (
        Rule("docs", "usr/share/doc/*/copyright"),
    )


def test_extends_come_first_and_once(tmp_path):
    folder = tmp_path / ".slimmer" / "profiles"
    write(folder / "a.toml", 'extends = ["b", "c"]\nremove = "a"\n')
    write(folder / "b.toml", 'extends = ["c"]\nremove = "b"\n')
    write(folder / "c.toml", 'remove = "c"\n')
    rules = resolve(["a", "c", "b"], tmp_path)
    assert names(rules) == ["c", "b", "a"]
    assert [rule.pattern for rule in rules.rules] == ["c", "b", "a"]


def test_extends_cycle_names_the_file(tmp_path):
    folder = tmp_path / ".slimmer" / "profiles"
    write(folder / "a.toml", 'extends = ["b"]\n')
    write(folder / "b.toml", 'extends = ["a"]\n')
    with pytest.raises(ProfileError, match=r"a\.toml: .*cycle: a -> b -> a"):
        resolve(["a"], tmp_path)


def test_profile_extending_itself_is_a_cycle(tmp_path):
    write(tmp_path / "slimmer.toml", '[profiles.me]\nextends = ["me"]\n')
    with pytest.raises(ProfileError, match=r"slimmer\.toml: .*cycle: me -> me"):
        resolve(["me"], tmp_path)


def test_unknown_profile_name(tmp_path):
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        resolve(["nope"], tmp_path)


def test_extends_unknown_name_names_the_file(tmp_path):
    path = write(tmp_path / ".slimmer" / "profiles" / "a.toml", 'extends = ["zz"]\n')
    with pytest.raises(ProfileError) as caught:
        resolve(["a"], tmp_path)
    assert str(caught.value) == f"{path}: profile 'a' extends unknown profile 'zz'"


def test_malformed_toml_gives_file_and_line(tmp_path):
    path = write(tmp_path / "bad.toml", 'description = "x"\n\nremove = \n')
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert str(caught.value).startswith(f"{path}:3: ")
    assert "\n" not in str(caught.value)


def test_unknown_key_names_file_and_line(tmp_path):
    path = write(tmp_path / "p.toml", 'description = "x"\nremoves = "a"\n')
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert str(caught.value) == f"{path}:2: unknown key 'removes' in a profile"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('remove = ["a"]\n', "remove"),
        ('extends = "docs"\n', "extends"),
        ("smoke = [1]\n", "smoke"),
        ("breaks = false\n", "breaks"),
    ],
    ids=["remove_list", "extends_string", "smoke_int", "breaks_bool"],
)
def test_wrong_type_is_rejected(tmp_path, text, key):
    path = write(tmp_path / "p.toml", text)
    with pytest.raises(
        ProfileError, match=rf"^{re.escape(str(path))}:1: `{key}` must be"
    ):
        load_profile_file(path)


def test_indented_remove_line_is_rejected(tmp_path):
    path = write(tmp_path / "p.toml", "remove = '''\nok/\n  usr/include/\n'''\n")
    with pytest.raises(
        ProfileError, match=rf"^{re.escape(str(path))}:3: .*starts with whitespace"
    ):
        load_profile_file(path)


def test_line_that_never_matches_is_rejected(tmp_path):
    path = write(tmp_path / "p.toml", "keep = '''\nlib[abc\n'''\n")
    with pytest.raises(ProfileError, match=r"never matches: it has an unclosed '\['"):
        load_profile_file(path)


def test_load_profile_file_reads_every_key(tmp_path):
    path = write(
        tmp_path / "extra.toml",
        (
            'description = "d"\nextends = ["docs"]\n'
            "remove = '''\n# why\n\\#lit\n'''\nkeep = 'k'\n"
            'smoke = ["true"]\nbreaks = "b"\n'
        ),
    )
    profile = load_profile_file(path)
    assert (profile.name, profile.source, profile.description) == (
        "extra",
        str(path),
        "d",
    )
    assert profile.extends == ("docs",)
    assert profile.remove == ("# why", "\\#lit")
    assert (profile.keep, profile.smoke, profile.breaks) == (("k",), ("true",), "b")


def test_project_profile_overrides_builtin_by_name(tmp_path):
    path = write(tmp_path / "slimmer.toml", "[profiles.docs]\nremove = 'x/'\n")
    assert available_profiles(tmp_path)["docs"].source == str(path)
    rules = resolve(["docs"], tmp_path)
    assert rules.rules == (Rule("docs", "x/"),)
    assert rules.keep_rules == ()


def test_project_override_may_extend_other_builtins(tmp_path):
    write(
        tmp_path / "slimmer.toml",
        '[profiles.python-rust]\nextends = ["pycache"]\nremove = "extra/"\n',
    )
    assert names(resolve(["python-rust"], tmp_path)) == ["pycache", "python-rust"]


def test_slimmer_toml_ignores_other_tables(tmp_path):
    write(
        tmp_path / "slimmer.toml",
        "[analyze]\nmax-wasted = 5\n\n[profiles.mine]\nremove = 'a'\n",
    )
    assert "mine" in available_profiles(tmp_path)


def test_unknown_key_in_slimmer_toml_table_names_its_line(tmp_path):
    path = write(
        tmp_path / "slimmer.toml",
        "[profiles.a]\nremove = 'a'\n\n[profiles.b]\nremove = 'b'\nsmok = []\n",
    )
    with pytest.raises(ProfileError) as caught:
        available_profiles(tmp_path)
    assert str(caught.value) == f"{path}:6: unknown key 'smok' in a profile"


def test_profile_name_with_slash_is_rejected(tmp_path):
    write(tmp_path / "slimmer.toml", '[profiles."a/b"]\nremove = "a"\n')
    with pytest.raises(ProfileError, match="'a/b' is not a valid profile name"):
        available_profiles(tmp_path)


def test_dot_slimmer_profiles_found_from_nested_cwd(tmp_path):
    write(tmp_path / ".slimmer" / "profiles" / "mine.toml", "remove = 'a'\n")
    nested = tmp_path / "src" / "deep" / "er"
    nested.mkdir(parents=True)
    assert names(resolve(["mine"], nested)) == ["mine"]


def test_nearest_folder_wins(tmp_path):
    write(tmp_path / "slimmer.toml", "[profiles.mine]\nremove = 'far'\n")
    write(tmp_path / "sub" / "slimmer.toml", "[profiles.mine]\nremove = 'near'\n")
    assert resolve(["mine"], tmp_path / "sub").rules == (Rule("mine", "near"),)


def test_same_name_in_both_places_of_one_folder_is_an_error(tmp_path):
    write(tmp_path / "slimmer.toml", "[profiles.mine]\nremove = 'a'\n")
    path = write(tmp_path / ".slimmer" / "profiles" / "mine.toml", "remove = 'b'\n")
    with pytest.raises(
        ProfileError, match=rf"^{re.escape(str(path))}: profile 'mine' is also"
    ):
        available_profiles(tmp_path)


@pytest.mark.parametrize(
    "ref",
    ["extra.toml", "./extra.toml", "conf/../extra.toml"],
    ids=["bare_toml_name", "dot_slash", "with_dotdot"],
)
def test_path_ref_is_relative_to_cwd(tmp_path, ref):
    write(tmp_path / "extra.toml", "extends = ['pycache']\nremove = 'x'\n")
    (tmp_path / "conf").mkdir()
    assert names(resolve([ref], tmp_path)) == ["pycache", "extra"]


def test_absolute_path_ref(tmp_path):
    path = write(tmp_path / "elsewhere" / "p.toml", "remove = 'x'\n")
    assert resolve([str(path)], tmp_path / "other").rules == (Rule("p", "x"),)


def test_missing_path_ref(tmp_path):
    with pytest.raises(ProfileError, match="nothere.toml: cannot read profile"):
        resolve(["nothere.toml"], tmp_path)


def test_path_ref_may_extend_the_builtin_of_its_own_name(tmp_path):
    write(tmp_path / "docs.toml", "extends = ['docs']\nremove = 'more/'\n")
    rules = resolve(["./docs.toml"], tmp_path)
    assert [profile.source for profile in rules.profiles] == [
        BUILT_IN,
        str(tmp_path / "docs.toml"),
    ]


def test_no_refs_give_empty_ruleset(tmp_path):
    rules = resolve([], tmp_path)
    assert rules.empty
    assert rules.profiles == ()
