"""`slimmer plan` and `slimmer analyze` on small hand-made images."""

from __future__ import annotations

import json

import layers as L
import pytest

from slimmer.analyze import parse_size
from slimmer.errors import SlimmerError


def layered(busybox_spec):
    return busybox_spec(
        [
            L.directory("app"),
            L.file("app/big.bin", b"x" * 5000),
            L.file("app/a.txt", b"a" * 10),
            L.directory("app/__pycache__"),
            L.file("app/__pycache__/m.pyc", b"c" * 70),
        ],
        [
            L.directory("app"),
            L.file("app/a.txt", b"b" * 20),
            L.file("app/new.txt", b"n" * 30),
            L.whiteout("app/big.bin"),
        ],
    )


def test_plan_json_lists_rules_unmatched_guarded_and_top(
    images, busybox_spec, slimmer, daemon_client
):
    ref = images.load(layered(busybox_spec), "slimmer-test/plan:1")
    before = {image.id for image in daemon_client.images.list(all=True)}
    report = slimmer.json("plan", "-p", "pycache", ref, check=0)
    assert report["removed"] == {"files": 1, "bytes": 70}
    assert {"rules", "unmatched", "guarded", "top"} <= set(report)
    # The .pyc lies inside __pycache__/, so only the folder rule matched.
    assert report["unmatched"] == [
        {"profile": "pycache", "pattern": "*.pyc"},
        {"profile": "pycache", "pattern": "*.pyo"},
    ]
    assert report["top"][0] == {"path": "/app/__pycache__", "bytes": 70}
    assert report["result"] is None
    assert {image.id for image in daemon_client.images.list(all=True)} == before


def test_removed_list_names_every_removed_path(images, busybox_spec, slimmer, tmp_path):
    ref = images.load(layered(busybox_spec), "slimmer-test/removedlist:1")
    listing = tmp_path / "removed.txt"
    slimmer("plan", "-p", "pycache", "--removed-list", str(listing), ref, check=0)
    assert listing.read_text().splitlines() == [
        "/app/__pycache__",
        "/app/__pycache__/m.pyc",
    ]


def test_analyze_classes_each_layer_and_counts_waste(images, busybox_spec, slimmer):
    ref = images.load(layered(busybox_spec), "slimmer-test/analyze:1")
    document = slimmer.json("analyze", ref, check=0)
    upper = document["layers"][-1]
    # a.txt replaced; new.txt added; big.bin whited out.
    assert (upper["added"], upper["changed"], upper["deleted"]) == (1, 2, 1)
    # Hidden: the old a.txt (10 bytes) and big.bin (5000 bytes).
    assert document["wasted_bytes"] == 5010
    assert document["efficiency"] < 1
    pycache = {p["name"]: p for p in document["profiles"]}["pycache"]
    assert (pycache["files"], pycache["bytes"]) == (1, 70)


def test_analyze_gates_exit_5_and_name_the_gate(images, busybox_spec, slimmer):
    ref = images.load(layered(busybox_spec), "slimmer-test/gates:1")
    done = slimmer("analyze", "--max-wasted", "1kB", ref, check=5)
    assert "max_wasted" in done.stderr
    done = slimmer("analyze", "--min-efficiency", "0.999", ref, check=5)
    assert "min_efficiency" in done.stderr
    slimmer("analyze", "--max-wasted", "1MB", "--max-size", "1GiB", ref, check=0)


def test_analyze_gates_from_slimmer_toml(images, busybox_spec, slimmer):
    ref = images.load(layered(busybox_spec), "slimmer-test/gatestoml:1")
    (slimmer.tmp.parent / "slimmer.toml").write_text('[analyze]\nmax_wasted = "1kB"\n')
    done = slimmer("analyze", ref, check=5)
    assert "wasted" in done.stderr


def test_bad_size_is_a_usage_error(slimmer):
    done = slimmer("analyze", "--max-wasted", "ten", "any:1", check=2)
    assert "not a size" in done.stderr


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MB", 10_000_000),
        ("1.5GiB", 1610612736),
        ("500kB", 500_000),
        ("123", 123),
        ("2 MiB", 2097152),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_refuses_unknown_units():
    with pytest.raises(SlimmerError):
        parse_size("10 parsecs")


def test_json_of_plan_is_valid_with_odd_names(images, busybox_spec, slimmer):
    odd = "app/caf\udce9.pyc"
    ref = images.load(
        busybox_spec([L.directory("app"), L.file(odd, b"z")]), "slimmer-test/oddjson:1"
    )
    done = slimmer("plan", "-p", "pycache", "--json", ref, check=0)
    assert json.loads(done.stdout)["removed"]["files"] == 1
