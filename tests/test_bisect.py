"""`--bisect`: delta debugging over the rules.

The search itself is tested with predicates over plain numbers; the last
tests run it for real, on the Python image, where each probe writes,
loads and tests an image.
"""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_image import image_ids, images_made_with, profile_file

from slimmer import pipeline
from slimmer.bisect import Bisection, as_json, ddmin, keep_line, relevant_rules
from slimmer.daemon import Daemon
from slimmer.errors import SmokeFailed
from slimmer.rules import Rule

pytest_plugins = ["python_image"]


class Probes:
    """A predicate that records every subset it is asked about."""

    def __init__(self, broken_by):
        self.broken_by, self.asked = broken_by, []

    def __call__(self, subset):
        self.asked.append(tuple(subset))
        return self.broken_by(set(subset))


def test_single_culprit_among_many_is_found():
    probes = Probes(lambda s: 11 in s)
    result = ddmin(list(range(16)), probes)
    assert result.culprits == [11]
    assert result.minimal


def test_probe_count_is_the_number_of_subsets_built():
    probes = Probes(lambda s: 11 in s)
    result = ddmin(list(range(16)), probes)
    assert result.probes == len(probes.asked)


def test_no_subset_is_probed_twice():
    probes = Probes(lambda s: {2, 5} <= s)
    ddmin(list(range(8)), probes)
    assert len(set(map(frozenset, probes.asked))) == len(probes.asked)


def test_the_full_set_is_known_to_break_and_never_probed():
    items = list(range(8))
    probes = Probes(lambda s: 7 in s)
    ddmin(items, probes)
    assert tuple(items) not in probes.asked


def test_two_rules_that_break_only_together_are_both_culprits():
    result = ddmin(list(range(10)), Probes(lambda s: {3, 9} <= s))
    assert result.culprits == [3, 9]


def test_either_of_two_independent_culprits_is_enough():
    result = ddmin(list(range(10)), Probes(lambda s: bool({3, 9} & s)))
    assert result.culprits in ([3], [9])


def test_single_rule_needs_no_probe():
    probes = Probes(lambda s: True)
    assert ddmin(["only"], probes) == Bisection(["only"], 0, True)
    assert probes.asked == []


def test_probe_budget_stops_early_and_says_not_minimal():
    probes = Probes(lambda s: 31 in s)
    result = ddmin(list(range(32)), probes, budget=3)
    assert result.probes == 3 and not result.minimal
    assert 31 in result.culprits


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=24),
    causes=st.lists(
        st.sets(st.integers(min_value=0, max_value=23), min_size=1, max_size=3),
        min_size=1,
        max_size=3,
    ),
)
def test_result_breaks_and_is_one_minimal(size, causes):
    causes = [cause for cause in causes if max(cause) < size] or [{size - 1}]

    def broken(subset):
        return any(cause <= subset for cause in causes)

    result = ddmin(list(range(size)), Probes(broken), budget=10_000)
    assert result.minimal
    found = set(result.culprits)
    assert broken(found)
    for item in found:
        assert not broken(found - {item}), (found, item)


def test_keep_line_is_toml_that_names_every_culprit():
    patterns = ["usr/lib/python3.11/encodings/", 'odd "name"', "back\\slash", "*.pyc"]
    parsed = tomllib.loads(keep_line(patterns))
    assert parsed["keep"].splitlines() == patterns
    assert "\n" not in keep_line(patterns)


def test_relevant_rules_drop_rules_that_removed_nothing():
    a, b, c = Rule("p", "a/"), Rule("p", "b/"), Rule("q", "c")
    removed = {"a": a, "a/x": a, "c": c}
    assert relevant_rules([a, b, c], removed) == [a, c]


def test_json_names_patterns_as_written_and_the_probe_count():
    rule = Rule("team", "usr/lib/python3.11/encodings/")
    document = as_json(Bisection([rule], 4))
    assert document["culprits"] == ["usr/lib/python3.11/encodings/"]
    assert document["probes"] == 4
    assert document["rules"] == [
        {"profile": "team", "pattern": "usr/lib/python3.11/encodings/"}
    ]


# -- on the real daemon ------------------------------------------------------

ENCODINGS = "usr/lib/python3.11/encodings/"
HARMLESS = [
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/locale/",
    "usr/lib/python3.11/pydoc_data/",
    "usr/lib/python3.11/turtledemo/",
    "usr/lib/python3.11/idlelib/",
]


PROFILE = "safety-bisect"


def stdlib_profile(tmp_path, keep: str = "") -> str:
    remove = [*HARMLESS[:3], ENCODINGS, *HARMLESS[3:]]
    return profile_file(tmp_path, PROFILE, remove, keep)


def test_bisect_names_exactly_the_stdlib_folder_rule(
    python_image, daemon_client, tmp_path
):
    before = image_ids(daemon_client)
    options = pipeline.Options(
        ref=python_image,
        profiles=[stdlib_profile(tmp_path)],
        tag="slimmer-safety/bisect:1",
        bisect=True,
        workdir=tmp_path,
    )
    with pytest.raises(SmokeFailed) as failed:
        pipeline.apply(Daemon(), options)
    result = failed.value.bisect
    assert result["culprits"] == [ENCODINGS]
    assert 1 <= result["probes"] <= len(HARMLESS) + 1
    assert failed.value.report.bisect == result
    assert tomllib.loads(result["keep"]) == {"keep": ENCODINGS}
    assert images_made_with(daemon_client, PROFILE, before) == []
    assert not daemon_client.api.images(name="slimmer-safety/bisect")
    assert not daemon_client.containers.list(all=True, filters={"label": "slimmer"})
    assert [p.name for p in tmp_path.iterdir()] == [f"{PROFILE}.toml"]


def test_the_suggested_keep_line_makes_the_profile_pass(
    python_image, images, daemon_client, tmp_path
):
    before = image_ids(daemon_client)
    tag = images.track("slimmer-safety/kept:1")
    options = pipeline.Options(
        ref=python_image,
        profiles=[stdlib_profile(tmp_path, keep_line([ENCODINGS]))],
        tag=tag,
        workdir=tmp_path,
    )
    report = pipeline.apply(Daemon(), options)
    assert report.imports["broken"] == [] and report.imports["checked"] > 0
    assert images_made_with(daemon_client, PROFILE, before) == [report.result["id"]]


def test_cli_bisect_prints_the_culprit_and_its_keep_line(
    python_image, slimmer, tmp_path
):
    profile = stdlib_profile(tmp_path)
    done = slimmer(
        "apply",
        "-p",
        profile,
        "--bisect",
        "-t",
        "slimmer-safety/clibisect:1",
        python_image,
        check=3,
    )
    assert f"safety-bisect:{ENCODINGS}" in done.stderr
    assert f'keep = "{ENCODINGS}"' in done.stderr
    report = slimmer.json(
        "apply",
        "-p",
        profile,
        "--bisect",
        "-t",
        "slimmer-safety/clibisect:1",
        python_image,
        check=3,
    )
    assert report["bisect"]["culprits"] == [ENCODINGS]
    assert report["error"]["exit_code"] == 3
