"""Without a daemon: OCI layouts, archives, registries and --keep-base.

Every run marked daemonless has DOCKER_HOST pointing at a socket that
does not exist, so a run that needed the daemon would fail. Registries
are Debian's docker-registry on 127.0.0.1 (registry_fixture.py); skopeo
checks what slimmer writes. Daemon round trips (loading a result to run
it) are in test_daemonless_daemon.py.
"""

from __future__ import annotations

import gzip
import json

import layers as L
import pytest
from conftest import base_layer
from daemonless_fixture import (
    COPYING,
    PYC,
    README,
    UPPER_NAMES,
    NoDaemonCli,
    app_layer,
    based_layers,
    blob,
    layer_names,
    manifests,
    profile_file,
    save_archive,
)
from registry_fixture import (
    PASSWORD,
    USER,
    docker_config,
    free_port,
    make_layout,
    skopeo,
)

pytest_plugins = ["registry_fixture"]

PYC_PATH = "app/__pycache__/main.cpython-311.pyc"


@pytest.fixture
def cli(tmp_path):
    return NoDaemonCli(tmp_path)


@pytest.fixture
def layout(tmp_path):
    """An OCI layout holding `v1`, a busybox image with an app layer."""
    root = tmp_path / "layout"
    make_layout(root, [("amd64", [base_layer(), app_layer()])], tag="v1")
    return root


@pytest.fixture
def two_platforms(tmp_path):
    root = tmp_path / "index"
    stack = [base_layer(), app_layer()]
    make_layout(root, [("amd64", stack), ("arm64", stack)], tag="v1")
    return root


def one_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    return lines[0]


# -- no daemon: refused without --no-smoke -----------------------------------


def test_no_daemon_and_no_no_smoke_is_refused_in_one_line(cli, layout):
    done = cli("apply", "-p", "pycache", f"oci:{layout}:v1", check=1)
    assert "--no-smoke" in one_line(done)
    assert len(json.loads((layout / "index.json").read_text())["manifests"]) == 1


def test_daemon_ref_without_a_daemon_is_one_line(cli):
    done = cli("apply", "--no-smoke", "slimmer-daemonless/none:1", check=1)
    assert "daemon" in one_line(done)


# -- OCI layouts ---------------------------------------------------------------


def test_oci_layout_is_slimmed_beside_its_source(cli, layout):
    report = cli.json("apply", "-p", "pycache", "--no-smoke", f"oci:{layout}:v1")
    assert report["result"]["tag"] == f"oci:{layout}:v1-slim"
    assert report["removed"] == {"files": 1, "bytes": len(PYC)}
    (manifest,) = manifests(layout, "v1-slim")
    (layer,) = manifest["layers"]
    names = layer_names(blob(layout, layer["digest"]))
    assert "app/main.py" in names and "bin/busybox" in names
    assert not [name for name in names if "__pycache__" in name]
    skopeo("inspect", f"oci:{layout}:v1-slim")


def test_new_layers_are_gzip_by_default(cli, layout):
    cli("apply", "--no-smoke", f"oci:{layout}:v1", check=0)
    (manifest,) = manifests(layout, "v1-slim")
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert gzip.decompress(blob(layout, layer["digest"]))[:1] != b""


def test_zstd_compression_is_written_and_skopeo_reads_it(cli, layout, tmp_path):
    target = tmp_path / "out.tar"
    cli(
        "apply",
        "--no-smoke",
        "--compression",
        "zstd",
        "--to",
        f"oci-archive:{target}",
        f"oci:{layout}:v1",
        check=0,
    )
    raw = json.loads(skopeo("inspect", "--raw", f"oci-archive:{target}").stdout)
    assert raw["layers"][0]["mediaType"].endswith("+zstd")
    skopeo("copy", f"oci-archive:{target}", f"oci:{tmp_path / 'copy'}:x")


def test_source_layout_keeps_its_own_image(cli, layout):
    before = manifests(layout, "v1")
    cli("apply", "-p", "pycache", "--no-smoke", f"oci:{layout}:v1", check=0)
    assert manifests(layout, "v1") == before


def test_to_the_source_itself_is_a_usage_error(cli, layout):
    done = cli("apply", "--no-smoke", "--to", f"oci:{layout}:v1", f"oci:{layout}:v1")
    assert done.returncode == 2
    assert "source itself" in one_line(done)


def test_tag_option_takes_only_a_daemon_tag(cli, layout, tmp_path):
    done = cli("apply", "--no-smoke", "-t", f"oci:{tmp_path}/x", f"oci:{layout}:v1")
    assert done.returncode == 2


# -- a two-platform index ------------------------------------------------------


def test_two_platform_index_is_slimmed_per_platform(cli, two_platforms):
    report = cli.json("apply", "-p", "pycache", "--no-smoke", f"oci:{two_platforms}:v1")
    written = manifests(two_platforms, "v1-slim")
    assert [m["platform"]["architecture"] for m in written] == ["amd64", "arm64"]
    for manifest in written:
        config = json.loads(blob(two_platforms, manifest["config"]["digest"]))
        assert config["architecture"] == manifest["platform"]["architecture"]
        names = layer_names(blob(two_platforms, manifest["layers"][0]["digest"]))
        assert "app/main.py" in names and PYC_PATH not in names
    platforms = report["result"]["platforms"]
    assert [p["platform"] for p in platforms] == ["linux/amd64", "linux/arm64"]
    assert all(p["removed"] == len(PYC) for p in platforms)
    skopeo("inspect", "--raw", f"oci:{two_platforms}:v1-slim")


def test_platform_option_limits_the_index_to_that_platform(cli, two_platforms):
    cli(
        "apply",
        "--no-smoke",
        "--platform",
        "linux/arm64",
        f"oci:{two_platforms}:v1",
        check=0,
    )
    (written,) = manifests(two_platforms, "v1-slim")
    assert written["platform"]["architecture"] == "arm64"


def test_platform_missing_from_the_index_is_one_line(cli, two_platforms):
    done = cli(
        "apply", "--no-smoke", "--platform", "linux/s390x", f"oci:{two_platforms}:v1"
    )
    assert done.returncode == 1
    assert "linux/s390x" in one_line(done)


def test_docker_archive_destination_takes_one_platform(cli, two_platforms, tmp_path):
    target = f"docker-archive:{tmp_path / 'one.tar'}"
    done = cli("apply", "--no-smoke", "--to", target, f"oci:{two_platforms}:v1")
    assert done.returncode == 1
    assert "--platform" in one_line(done)
    assert not (tmp_path / "one.tar").exists()


def test_plan_of_an_index_plans_each_platform(cli, two_platforms):
    report = cli.json("plan", "-p", "pycache", f"oci:{two_platforms}:v1", check=0)
    assert report["removed"]["bytes"] == len(PYC)
    assert any("linux/arm64" in note for note in report["notes"])


def test_analyze_reads_one_platform_of_an_index(cli, two_platforms):
    location = f"oci:{two_platforms}:v1"
    report = cli.json("analyze", "--platform", "linux/arm64", location, check=0)
    assert len(report["layers"]) == 2
    done = cli("analyze", location, check=1)
    assert "--platform" in one_line(done)


# -- docker archives -----------------------------------------------------------


def test_docker_archive_goes_to_an_oci_archive(cli, tmp_path):
    source = save_archive(tmp_path / "app.tar", [base_layer(), app_layer()])
    target = tmp_path / "out.tar"
    cli(
        "apply",
        "-p",
        "pycache",
        "--no-smoke",
        "--to",
        f"oci-archive:{target}",
        f"docker-archive:{source}",
        check=0,
    )
    inspected = json.loads(skopeo("inspect", f"oci-archive:{target}").stdout)
    assert len(inspected["Layers"]) == 1


def test_docker_archive_goes_beside_itself_by_default(cli, tmp_path):
    source = save_archive(tmp_path / "app.tar", [base_layer(), app_layer()])
    cli("apply", "-p", "pycache", "--no-smoke", f"docker-archive:{source}", check=0)
    slim = tmp_path / "app-slim.tar"
    inspected = json.loads(skopeo("inspect", f"docker-archive:{slim}").stdout)
    assert len(inspected["Layers"]) == 1


def test_docker_25_archive_with_an_index_is_read(cli, tmp_path):
    spec = L.ImageSpec([base_layer(), app_layer()], layout="oci")
    source = tmp_path / "oci-save.tar"
    source.write_bytes(L.save_archive(spec))
    report = cli.json("plan", "-p", "pycache", f"docker-archive:{source}", check=0)
    assert report["removed"]["bytes"] == len(PYC)


# -- registries ------------------------------------------------------------------


@pytest.fixture
def pushed(registry, layout):
    """The layout's image pushed by skopeo as REPO:v1; returns its location."""

    def push(repository: str) -> str:
        location = f"docker://{registry.host}/{repository}:v1"
        skopeo("copy", f"oci:{layout}:v1", location)
        return location

    return push


def test_registry_to_registry_without_a_daemon(cli, pushed, registry):
    source = pushed("daemonless/app")
    report = cli.json("apply", "-p", "pycache", "--no-smoke", source, check=0)
    assert report["result"]["tag"] == source + "-slim"
    inspected = json.loads(skopeo("inspect", source + "-slim").stdout)
    assert len(inspected["Layers"]) == 1
    assert inspected["Digest"] == report["result"]["digest"]


def test_registry_to_an_oci_folder_and_back(cli, pushed, registry, tmp_path):
    source = pushed("daemonless/folder")
    out = tmp_path / "out"
    cli("apply", "--no-smoke", "--to", f"oci:{out}:flat", source, check=0)
    again = f"docker://{registry.host}/daemonless/folder:again"
    cli("apply", "--no-smoke", "--to", again, f"oci:{out}:flat", check=0)
    skopeo("inspect", again)


def test_unreachable_registry_is_one_line_and_leaves_nothing(cli):
    location = f"docker://127.0.0.1:{free_port()}/nobody/app:1"
    done = cli("apply", "--no-smoke", location, check=1)
    assert "cannot reach registry" in one_line(done)


def test_registry_refusing_anonymous_access_is_one_line(cli, auth_registry):
    location = f"docker://{auth_registry.host}/private/app:1"
    done = cli("plan", location, check=1)
    assert "needs credentials" in one_line(done)


def test_wrong_credentials_are_one_line(cli, auth_registry):
    docker_config(cli.config, auth_registry.host, password="wrong")
    location = f"docker://{auth_registry.host}/private/app:1"
    done = cli("plan", location, check=1)
    assert "authentication failed" in one_line(done)


def test_credentials_from_the_docker_config_are_used(cli, auth_registry, layout):
    docker_config(cli.config, auth_registry.host)
    location = f"docker://{auth_registry.host}/private/app:v1"
    creds = f"--dest-creds={USER}:{PASSWORD}"
    skopeo("copy", creds, f"oci:{layout}:v1", location)
    report = cli.json("plan", "-p", "pycache", location, check=0)
    assert report["removed"]["bytes"] == len(PYC)


# -- errors on files ---------------------------------------------------------------


def test_missing_archive_is_one_line_and_leaves_nothing(cli, tmp_path):
    done = cli("apply", "--no-smoke", f"docker-archive:{tmp_path / 'none.tar'}")
    assert done.returncode == 1
    assert "none.tar" in one_line(done)


@pytest.mark.parametrize(
    "index",
    [b"{not json", b'{"manifests": "nope"}', b'{"manifests": [{"size": 3}]}', b"[]"],
)
def test_malformed_index_is_one_line_and_leaves_nothing(cli, layout, index):
    (layout / "index.json").write_bytes(index)
    done = cli("apply", "--no-smoke", f"oci:{layout}:v1", check=1)
    assert "malformed" in one_line(done)


# -- --keep-base, in OCI layouts and registries --------------------------------------


@pytest.fixture
def based(tmp_path):
    """`v1` (base + 2 layers) and `base` (the base alone) in one layout."""
    root = tmp_path / "based"
    stack = based_layers()
    make_layout(root, [("amd64", stack)], tag="v1")
    make_layout(root, [("amd64", stack[:1])], tag="base")
    return root


def keep_base(cli, tmp_path, source, *extra) -> dict:
    profile = profile_file(tmp_path)
    return cli.json("apply", "-p", str(profile), "--no-smoke", *extra, source)


@pytest.mark.parametrize("base", ["1", "base"])
def test_keep_base_reuses_the_base_blob_in_an_oci_layout(cli, based, tmp_path, base):
    keep_base(cli, tmp_path, f"oci:{based}:v1", "--keep-base", base)
    (source,) = manifests(based, "v1")
    (result,) = manifests(based, "v1-slim")
    assert len(result["layers"]) == 2
    assert result["layers"][0] == source["layers"][0]


def test_keep_base_layer_holds_the_changes_and_whiteouts_only(cli, based, tmp_path):
    keep_base(cli, tmp_path, f"oci:{based}:v1", "--keep-base", "1")
    (result,) = manifests(based, "v1-slim")
    assert set(layer_names(blob(based, result["layers"][1]["digest"]))) == UPPER_NAMES


def test_keep_base_config_keeps_the_base_diff_ids_and_history(cli, based, tmp_path):
    keep_base(cli, tmp_path, f"oci:{based}:v1", "--keep-base", "1")
    (source,) = manifests(based, "v1")
    (result,) = manifests(based, "v1-slim")
    old = json.loads(blob(based, source["config"]["digest"]))
    new = json.loads(blob(based, result["config"]["digest"]))
    assert new["rootfs"]["diff_ids"][0] == old["rootfs"]["diff_ids"][0]
    assert len(new["rootfs"]["diff_ids"]) == 2
    owning = [item for item in new["history"] if not item.get("empty_layer")]
    assert owning[0] == old["history"][0]
    assert owning[1]["created_by"].startswith("slimmer")


def test_keep_base_report_says_base_bytes_are_hidden_not_reclaimed(
    cli, based, tmp_path
):
    report = keep_base(cli, tmp_path, f"oci:{based}:v1", "--keep-base", "1")
    assert report["result"]["hidden_base_bytes"] == len(README) + len(COPYING)
    assert report["result"]["reclaimed_bytes"] == len(PYC)
    assert any("NOT reclaimed" in note for note in report["notes"])


def test_keep_base_that_is_not_below_the_image_is_refused(cli, based, tmp_path):
    make_layout(based, [("amd64", [app_layer()])], tag="other")
    profile = profile_file(tmp_path)
    done = cli(
        "apply",
        "-p",
        str(profile),
        "--no-smoke",
        "--keep-base",
        "other",
        f"oci:{based}:v1",
    )
    assert done.returncode == 1
    assert "not the lowest layers" in one_line(done)


def test_keep_base_count_above_the_layers_is_refused(cli, based):
    done = cli("apply", "--no-smoke", "--keep-base", "9", f"oci:{based}:v1")
    assert done.returncode == 1
    assert "3 layers" in one_line(done)


def test_keep_base_in_a_registry_sends_no_base_blob_again(
    cli, based, registry, tmp_path
):
    source = f"docker://{registry.host}/daemonless/based:v1"
    skopeo("copy", f"oci:{based}:v1", source)
    skopeo("copy", f"oci:{based}:base", f"docker://{registry.host}/daemonless/base:1")
    (manifest,) = manifests(based, "v1")
    base_digest = manifest["layers"][0]["digest"]
    uploads = registry.uploads(base_digest)
    report = keep_base(cli, tmp_path, source, "--keep-base", "daemonless/base:1")
    raw = json.loads(skopeo("inspect", "--raw", source + "-slim").stdout)
    assert raw["layers"][0]["digest"] == base_digest
    assert registry.uploads(base_digest) == uploads
    assert report["result"]["base_layers"] == 1
