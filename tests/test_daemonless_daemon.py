"""Daemonless results, run on the daemon; smoke tests for sources elsewhere.

The slimming itself runs with DOCKER_HOST pointing at a socket that does
not exist wherever the test says `daemon=False`; the daemon is used only
before (to push a fixture with skopeo) and after (to load the result and
run it). Images made here are named `slimmer-daemonless/...` and removed.
"""

from __future__ import annotations

import subprocess

import layers as L
import pytest
from conftest import ROOT, base_layer
from daemonless_fixture import (
    COPYING,
    PYC,
    README,
    NoDaemonCli,
    app_layer,
    based_layers,
    profile_file,
    save_archive,
)
from oracle import differences, export_view
from registry_fixture import make_layout, skopeo

pytest_plugins = ["registry_fixture"]

EXAMPLE = "slimmer-example:latest"
EXAMPLE_CHECKS = [
    "ansible --version",
    "ansible localhost -c local -m ping",
    'python -c "import cryptography.fernet, yaml, jinja2, ssl; '
    'ssl.create_default_context()"',
]
GONE = ("usr/share/doc", "app/__pycache__")


@pytest.fixture
def cli(tmp_path, daemon_client):
    return NoDaemonCli(tmp_path)


def run(client, ref: str, command: str) -> bytes:
    return client.containers.run(
        ref, ["sh", "-c", command], network_mode="none", remove=True
    )


def removed_by_profile(path: str) -> bool:
    return any(path == gone or path.startswith(gone + "/") for gone in GONE)


# -- --keep-base on the daemon -----------------------------------------------


@pytest.fixture
def based_on_daemon(images):
    stack = based_layers()
    source = images.load(
        L.ImageSpec(stack, config={"Env": ["PATH=/bin"]}), "slimmer-daemonless/kb:1"
    )
    base = images.load(L.ImageSpec(stack[:1]), "slimmer-daemonless/kb-base:1")
    return source, base


@pytest.mark.parametrize("keep", ["1", "slimmer-daemonless/kb-base:1"])
def test_keep_base_on_the_daemon_keeps_the_base_layers_and_the_view(
    cli, images, daemon_client, based_on_daemon, tmp_path, keep
):
    source, _ = based_on_daemon
    target = images.track("slimmer-daemonless/kb:slim")
    profile = profile_file(tmp_path)
    report = cli.json(
        "apply",
        "-p",
        str(profile),
        "--keep-base",
        keep,
        "--smoke",
        "cat /etc/passwd /app/main.py",
        "-t",
        target,
        source,
        daemon=True,
        check=0,
    )
    old = daemon_client.api.inspect_image(source)["RootFS"]["Layers"]
    new = daemon_client.api.inspect_image(target)["RootFS"]["Layers"]
    assert new[0] == old[0] and len(new) == 2
    expected = {
        path: record
        for path, record in export_view(daemon_client, source).items()
        if not removed_by_profile(path)
    }
    actual = export_view(daemon_client, target)
    assert differences(expected, actual) == []
    assert "usr/share/doc" not in actual and "usr/share" in actual
    assert report["result"]["hidden_base_bytes"] == len(README) + len(COPYING)
    assert report["result"]["reclaimed_bytes"] == len(PYC)


# -- sources elsewhere, smoke-tested on the daemon ---------------------------


def test_archive_source_is_loaded_for_the_smoke_tests_then_removed(
    cli, images, tmp_path
):
    source = save_archive(tmp_path / "app.tar", [base_layer(), app_layer()])
    out = tmp_path / "out.tar"
    report = cli.json(
        "apply",
        "-p",
        "pycache",
        "--smoke",
        "cat /app/main.py",
        "--to",
        f"docker-archive:{out}",
        f"docker-archive:{source}",
        daemon=True,
        check=0,
    )
    assert report["smoke"] == [
        {"command": "cat /app/main.py", "source_rc": 0, "result_rc": 0}
    ]
    assert report["result"]["smoke_tested"] is True
    assert not images.exists(report["source"]["id"])
    assert not images.exists(report["result"]["id"])
    skopeo("inspect", f"docker-archive:{out}")


def test_a_source_already_on_the_daemon_stays_there(cli, images, tmp_path):
    stack = [base_layer(), app_layer()]
    source = save_archive(
        tmp_path / "app.tar", stack, tags=["slimmer-daemonless/pre:1"]
    )
    images.client.images.load(source.read_bytes())
    images.track("slimmer-daemonless/pre:1")
    report = cli.json(
        "apply",
        "--smoke",
        "true",
        "--to",
        f"oci:{tmp_path / 'out'}:1",
        f"docker-archive:{source}",
        daemon=True,
        check=0,
    )
    assert images.exists(report["source"]["id"])
    assert images.id("slimmer-daemonless/pre:1") == report["source"]["id"]


def test_oci_archive_result_runs_on_the_daemon(cli, images, daemon_client, tmp_path):
    source = save_archive(
        tmp_path / "app.tar", [base_layer(), app_layer()], config={"Env": ["PATH=/bin"]}
    )
    out = tmp_path / "out.tar"
    cli(
        "apply",
        "-p",
        "pycache",
        "--no-smoke",
        "--to",
        f"oci-archive:{out}",
        f"docker-archive:{source}",
        check=0,
    )
    ref = images.track("slimmer-daemonless/roundtrip:1")
    skopeo("copy", f"oci-archive:{out}", f"docker-daemon:{ref}")
    assert run(daemon_client, ref, "cat /app/main.py") == b"print('hi')\n"
    assert run(daemon_client, ref, "ls /app") == b"main.py\n"


def test_a_platform_the_daemon_cannot_run_needs_no_smoke(cli, tmp_path):
    root = tmp_path / "arm"
    make_layout(root, [("arm64", [base_layer(), app_layer()])], tag="v1")
    done = cli("apply", "-p", "pycache", f"oci:{root}:v1", daemon=True, check=1)
    assert "linux/arm64 was not smoke-tested" in done.stderr
    assert "--no-smoke" in done.stderr


def test_an_index_is_tested_where_the_daemon_runs_it(cli, tmp_path):
    root = tmp_path / "index"
    stack = [base_layer(), app_layer()]
    make_layout(root, [("amd64", stack), ("arm64", stack)], tag="v1")
    report = cli.json(
        "apply",
        "-p",
        "pycache",
        "--smoke",
        "cat /app/main.py",
        f"oci:{root}:v1",
        daemon=True,
        check=0,
    )
    tested = {p["platform"]: p["smoke_tested"] for p in report["result"]["platforms"]}
    assert tested == {"linux/amd64": True, "linux/arm64": False}
    assert any("linux/arm64 was not smoke-tested" in n for n in report["notes"])


# -- the example image, registry to registry, with no daemon -------------------


@pytest.fixture(scope="module")
def example_in_registry(daemon_client, registry):
    subprocess.run(
        ["bash", str(ROOT / "examples" / "build.sh"), EXAMPLE], check=True, timeout=3000
    )
    location = f"docker://{registry.host}/daemonless/example:latest"
    skopeo("copy", f"docker-daemon:{EXAMPLE}", location)
    return location


@pytest.fixture(scope="module")
def example_slimmed(example_in_registry, daemon_client, tmp_path_factory):
    """`apply -p python-rust --no-smoke` registry to registry, no daemon."""
    runner = NoDaemonCli(tmp_path_factory.mktemp("example"))
    report = runner.json(
        "apply", "-p", "python-rust", "--no-smoke", example_in_registry, check=0
    )
    ref = "slimmer-daemonless/example:slim"
    skopeo("copy", example_in_registry + "-slim", f"docker-daemon:{ref}")
    yield report, ref
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


@pytest.mark.slow
def test_example_result_is_smaller_and_keeps_its_config(example_slimmed, daemon_client):
    report, ref = example_slimmed
    result = daemon_client.api.inspect_image(ref)
    source = daemon_client.api.inspect_image(EXAMPLE)
    assert result["Size"] <= 0.45 * source["Size"], (result["Size"], source["Size"])
    for key in ("User", "WorkingDir", "Env", "Cmd", "Entrypoint"):
        assert result["Config"].get(key) == source["Config"].get(key), key
    assert report["removed"]["bytes"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("command", EXAMPLE_CHECKS)
def test_example_result_works_without_network(example_slimmed, daemon_client, command):
    assert run(daemon_client, example_slimmed[1], command) is not None
