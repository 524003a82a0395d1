"""The acceptance checks on the example image, a stand-in for an Ansible
web UI that grew to 1.6 GB with a Rust toolchain and a C build chain.

The image is built once per session by examples/build.sh (a few minutes on
first use); these tests are marked `slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from oracle import differences, export_view

pytestmark = pytest.mark.slow
EXAMPLE = "slimmer-example:latest"
SLIM = "slimmer-example:latest-slim"
CHECKS = [
    "ansible --version",
    "ansible localhost -c local -m ping",
    'python -c "import cryptography.fernet, yaml, jinja2, ssl; '
    'ssl.create_default_context()"',
]


@pytest.fixture(scope="module")
def example(daemon_client):
    subprocess.run(
        ["bash", str(ROOT / "examples" / "build.sh"), EXAMPLE], check=True, timeout=3000
    )
    return EXAMPLE


@pytest.fixture(scope="module")
def slimmed(example, daemon_client, tmp_path_factory):
    """`apply -p python-rust --json` on the example, run once."""
    source_id = daemon_client.api.inspect_image(example)["Id"]
    tmp = tmp_path_factory.mktemp("apply")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimmer",
            "apply",
            "--profile",
            "python-rust",
            "--json",
            example,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT)),
    )
    yield done, source_id, tmp
    subprocess.run(["docker", "rmi", "-f", SLIM], capture_output=True)


def test_apply_exits_0_and_leaves_the_source_unchanged(slimmed, daemon_client):
    done, source_id, tmp = slimmed
    assert done.returncode == 0, done.stderr
    assert daemon_client.api.inspect_image(EXAMPLE)["Id"] == source_id
    assert not list(tmp.iterdir())


def test_result_is_at_most_45_percent_of_the_source(slimmed, daemon_client):
    report = json.loads(slimmed[0].stdout)
    source = daemon_client.api.inspect_image(EXAMPLE)["Size"]
    result = daemon_client.api.inspect_image(SLIM)["Size"]
    assert report["result"]["size"] == result
    assert result <= 0.45 * source, (result, source)


def test_runtime_config_is_kept(slimmed, daemon_client):
    source = daemon_client.api.inspect_image(EXAMPLE)["Config"]
    result = daemon_client.api.inspect_image(SLIM)["Config"]
    for key in ("User", "WorkingDir", "Env", "Cmd", "Entrypoint"):
        assert result.get(key) == source.get(key), key


def test_build_leftovers_are_gone(slimmed, daemon_client):
    view = export_view(daemon_client, SLIM)
    assert not [p for p in view if "__pycache__" in p.split("/")]
    assert not [p for p in view if p.startswith(("usr/lib/rustlib", "usr/include"))]


@pytest.mark.parametrize("command", CHECKS)
def test_slim_image_still_works_without_network(slimmed, daemon_client, command):
    output = daemon_client.containers.run(
        SLIM, ["sh", "-c", command], network_mode="none", remove=True
    )
    assert output is not None


def test_rules_sum_to_the_total(slimmed):
    report = json.loads(slimmed[0].stdout)
    assert sum(rule["bytes"] for rule in report["rules"]) == report["removed"]["bytes"]
    assert sum(rule["files"] for rule in report["rules"]) == report["removed"]["files"]


def test_squash_alone_equals_the_daemon_view(example, daemon_client, tmp_path):
    flat = "slimmer-example:flat"
    done = subprocess.run(
        [sys.executable, "-m", "slimmer", "apply", "--no-smoke", "-t", flat, example],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    try:
        assert done.returncode == 0, done.stderr
        expected = export_view(daemon_client, example)
        assert differences(expected, export_view(daemon_client, flat)) == []
    finally:
        subprocess.run(["docker", "rmi", "-f", flat], capture_output=True)


def test_plan_agrees_with_apply_to_the_byte_and_creates_nothing(
    slimmed, daemon_client, tmp_path
):
    images_before = {image.id for image in daemon_client.images.list(all=True)}
    containers_before = daemon_client.containers.list(all=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimmer",
            "plan",
            "-p",
            "python-rust",
            "--json",
            EXAMPLE,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, done.stderr
    plan, applied = json.loads(done.stdout), json.loads(slimmed[0].stdout)
    assert plan["removed"] == applied["removed"]
    assert plan["rules"] == applied["rules"]
    assert {image.id for image in daemon_client.images.list(all=True)} == images_before
    assert daemon_client.containers.list(all=True) == containers_before
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def analysis(example, tmp_path_factory):
    done = subprocess.run(
        [sys.executable, "-m", "slimmer", "analyze", "--json", EXAMPLE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_analyze_finds_the_wheels_left_in_a_lower_layer(analysis):
    assert analysis["wasted_bytes"] >= 60_000_000
    assert {"layers", "wasted_bytes", "efficiency", "profiles"} <= set(analysis)


def test_analyze_prices_python_rust_as_plan_does(analysis, slimmed):
    applied = json.loads(slimmed[0].stdout)["removed"]["bytes"]
    priced = {p["name"]: p["bytes"] for p in analysis["profiles"]}["python-rust"]
    assert abs(priced - applied) <= 0.05 * applied


def test_analyze_gate_on_waste_exits_5(example):
    done = subprocess.run(
        [sys.executable, "-m", "slimmer", "analyze", "--max-wasted", "10MB", EXAMPLE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 5, done.stderr
    assert "max_wasted" in done.stderr
