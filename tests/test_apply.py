"""`slimmer apply` end to end, on a real daemon, with hand-made images."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import layers as L
import pytest
from conftest import ROOT
from oracle import differences, export_view

CONFIG = {
    "Env": ["PATH=/bin", "GREETING=hello"],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo hi"],
    "User": "65534:65534",
    "WorkingDir": "/work",
    "Labels": {"team": "slim"},
    "ExposedPorts": {"8080/tcp": {}},
    "Volumes": {"/data": {}},
    "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30000000000},
    "StopSignal": "SIGTERM",
}


def app_layer():
    return [
        L.directory("work", uid=65534),
        L.directory("app"),
        L.directory("app/__pycache__"),
        L.file("app/__pycache__/m.pyc", b"x" * 300),
        L.file("app/m.py", "print(1)\n"),
        L.directory("app/docs"),
        L.file("app/docs/a.txt", b"d" * 1000),
        L.file("app/docs/b.txt", b"d" * 20),
    ]


def write_profile(tmp_path, body, name="team.toml"):
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def image_ids(client):
    return {image.id for image in client.images.list(all=True)}


def test_squash_only_matches_the_daemon_view(
    images, busybox_spec, slimmer, daemon_client
):
    upper = [L.directory("app"), L.directory("app/docs"), L.whiteout("app/docs/b.txt")]
    ref = images.load(busybox_spec(app_layer(), upper), "slimmer-test/squash:1")
    images.track("slimmer-test/squash:1-slim")
    done = slimmer("apply", "--no-smoke", ref, check=0)
    assert "only squashed" in done.stdout
    expected = export_view(daemon_client, ref)
    assert differences(expected, export_view(daemon_client, ref + "-slim")) == []
    slim = daemon_client.api.inspect_image(ref + "-slim")
    assert len(slim["RootFS"]["Layers"]) == 1


def test_profile_removes_exactly_its_paths_and_counts_per_rule(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    ref = images.load(busybox_spec(app_layer()), "slimmer-test/rules:1")
    images.track("slimmer-test/rules:1-slim")
    profile = write_profile(
        tmp_path,
        'description = "t"\nremove = """\n'
        '__pycache__/\napp/docs/\n!app/docs/a.txt\n*.txt\n"""\n',
    )
    report = slimmer.json("apply", "--no-smoke", "-p", profile, ref, check=0)
    after = export_view(daemon_client, ref + "-slim")
    before = export_view(daemon_client, ref)
    gone = sorted(before.keys() - after.keys())
    assert gone == [
        "app/__pycache__",
        "app/__pycache__/m.pyc",
        "app/docs",
        "app/docs/a.txt",
        "app/docs/b.txt",
    ]
    by_rule = {r["pattern"]: (r["files"], r["bytes"]) for r in report["rules"]}
    # The directory rule takes its files; a `!` inside it cannot bring one back.
    assert by_rule["__pycache__/"] == (1, 300)
    assert by_rule["app/docs/"] == (2, 1020)
    assert by_rule["*.txt"] == (0, 0)
    assert report["removed"] == {"files": 3, "bytes": 1320}


def test_json_report_has_the_promised_keys_and_daemon_sizes(
    images, busybox_spec, slimmer, daemon_client
):
    ref = images.load(busybox_spec(app_layer()), "slimmer-test/json:1")
    images.track("slimmer-test/json:1-slim")
    report = slimmer.json("apply", "-p", "pycache", "--smoke", "true", ref, check=0)
    source = daemon_client.api.inspect_image(ref)
    result = daemon_client.api.inspect_image(ref + "-slim")
    assert report["schema_version"] == 1
    assert report["source"] == {"ref": ref, "id": source["Id"], "size": source["Size"]}
    assert report["result"] == {
        "tag": ref + "-slim",
        "id": result["Id"],
        "size": result["Size"],
    }
    assert report["smoke"] == [{"command": "true", "source_rc": 0, "result_rc": 0}]
    assert {"profile", "pattern", "files", "bytes"} <= set(report["rules"][0])


def test_source_image_is_untouched(images, busybox_spec, slimmer, daemon_client):
    ref = images.load(busybox_spec(app_layer()), "slimmer-test/untouched:1")
    images.track("slimmer-test/untouched:1-slim")
    before = daemon_client.api.inspect_image(ref)
    slimmer("apply", "--no-smoke", "-p", "pycache", ref, check=0)
    after = daemon_client.api.inspect_image(ref)
    assert (after["Id"], after["RepoTags"]) == (before["Id"], before["RepoTags"])


def test_config_is_carried_through(images, busybox_spec, slimmer, daemon_client):
    spec = busybox_spec(app_layer(), config=dict(CONFIG))
    ref = images.load(spec, "slimmer-test/config:1")
    images.track("slimmer-test/config:1-slim")
    slimmer("apply", "--no-smoke", ref, check=0)
    source = daemon_client.api.inspect_image(ref)
    result = daemon_client.api.inspect_image(ref + "-slim")
    for key in CONFIG:
        assert result["Config"].get(key) == source["Config"].get(key), key
    history = daemon_client.api.history(ref + "-slim")
    assert "slimmer" in history[0]["CreatedBy"] and len(history) == 3


def test_custom_tag_and_ref_without_tag(images, busybox_spec, slimmer):
    ref = images.load(busybox_spec(), "slimmer-test/notag:latest")
    images.track("slimmer-test/notag:latest-slim")
    images.track("slimmer-test/other:flat")
    slimmer("apply", "--no-smoke", "slimmer-test/notag", check=0)
    assert images.exists("slimmer-test/notag:latest-slim")
    slimmer("apply", "--no-smoke", "-t", "slimmer-test/other:flat", ref, check=0)
    assert images.exists("slimmer-test/other:flat")


def test_missing_image_is_exit_1_with_one_line(slimmer):
    done = slimmer("apply", "slimmer-test/does-not-exist:1", check=1)
    assert done.stderr.strip().splitlines() == [
        "error: no such image: slimmer-test/does-not-exist:1"
    ]


def test_no_daemon_is_exit_1(slimmer, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    done = slimmer("apply", "anything:1", check=1)
    assert "cannot reach the Docker daemon" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_broken_profile_is_exit_1_and_writes_nothing(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    ref = images.load(busybox_spec(), "slimmer-test/badprofile:1")
    profile = write_profile(
        tmp_path, 'description = "t"\nremove = [unclosed\n', "bad.toml"
    )
    before = image_ids(daemon_client)
    done = slimmer("apply", "-p", profile, ref, check=1)
    assert "bad.toml" in done.stderr and image_ids(daemon_client) == before


def test_unknown_profile_is_exit_1(images, busybox_spec, slimmer):
    ref = images.load(busybox_spec(), "slimmer-test/unknown:1")
    done = slimmer("apply", "-p", "no-such-profile", ref, check=1)
    assert "no-such-profile" in done.stderr


def test_smoke_failing_on_source_is_exit_4_and_writes_nothing(
    images, busybox_spec, slimmer, daemon_client
):
    ref = images.load(busybox_spec(), "slimmer-test/smoke4:1")
    images.track(ref + "-slim")  # removed even if a failed run made it
    before = image_ids(daemon_client)
    done = slimmer("apply", "--smoke", "false", ref, check=4)
    assert "fails on the source" in done.stderr
    assert image_ids(daemon_client) == before
    assert not images.exists(ref + "-slim")


def test_smoke_failing_on_candidate_is_exit_3_and_rolls_back(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    ref = images.load(busybox_spec(), "slimmer-test/smoke3:1")
    images.track(ref + "-slim")  # removed even if a failed run made it
    profile = write_profile(tmp_path, 'description = "t"\nremove = "etc/passwd"\n')
    before = image_ids(daemon_client)
    done = slimmer("apply", "-p", profile, "--smoke", "cat /etc/passwd", ref, check=3)
    assert "failed on the candidate" in done.stderr
    assert "root:x:0:0" in done.stderr  # the source's output, shown beside
    assert image_ids(daemon_client) == before
    assert not images.exists(ref + "-slim")


def test_failed_candidate_keeps_what_the_target_tag_pointed_to(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    ref = images.load(busybox_spec(), "slimmer-test/keeptag:1")
    daemon_client.api.tag(ref, "slimmer-test/keeptag", "1-slim")
    images.track("slimmer-test/keeptag:1-slim")
    profile = write_profile(tmp_path, 'description = "t"\nremove = "etc/passwd"\n')
    slimmer("apply", "-p", profile, "--smoke", "cat /etc/passwd", ref, check=3)
    assert images.id(ref + "-slim") == images.id(ref)


def test_smoke_runs_without_network(images, busybox_spec, slimmer):
    ref = images.load(busybox_spec(), "slimmer-test/nonet:1")
    images.track("slimmer-test/nonet:1-slim")
    # With no network a container has only the loopback interface.
    done = slimmer("apply", "--smoke", "test $(ls /sys/class/net | wc -l) -eq 1", ref)
    assert done.returncode == 0, done.stderr


def test_ctrl_c_during_smoke_cleans_up(images, busybox_spec, daemon_client, tmp_path):
    import os

    ref = images.load(busybox_spec(), "slimmer-test/ctrlc:1")
    before = image_ids(daemon_client)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = dict(os.environ, TMPDIR=str(workdir), PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "slimmer", "apply", "--smoke", "sleep 5", ref],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_container(daemon_client)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not list(workdir.iterdir())
    assert not daemon_client.containers.list(all=True, filters={"label": "slimmer"})
    assert image_ids(daemon_client) == before


def _wait_for_container(client, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.containers.list(filters={"label": "slimmer"}):
            return
        time.sleep(0.2)
    raise AssertionError("no smoke container started")


def test_profiles_list_and_show(slimmer):
    listed = slimmer("profiles", "list", check=0).stdout
    for name in (
        "pycache",
        "rust-toolchain",
        "build-headers",
        "python-rust",
        "docs",
        "package-caches",
    ):
        assert name in listed
    shown = slimmer("profiles", "show", "python-rust", check=0).stdout
    assert "pip" in shown and "usr/lib/rustlib" in shown


def test_every_command_has_help_with_an_example(slimmer):
    for command in (["apply"], ["plan"], ["profiles"], ["profiles", "show"]):
        text = slimmer(*command, "--help", check=0).stdout
        assert "slimmer " in text.split("Example", 1)[-1], command


def test_json_is_one_document(images, busybox_spec, slimmer):
    ref = images.load(busybox_spec(), "slimmer-test/onejson:1")
    images.track("slimmer-test/onejson:1-slim")
    done = slimmer("apply", "--no-smoke", "--json", ref, check=0)
    assert json.loads(done.stdout)["squash_only"] is True


def test_failed_candidate_that_the_daemon_held_already_is_not_removed(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    # The candidate is made as it is loaded, so its id is known only after;
    # an identical image the daemon held before must survive the rollback.
    ref = images.load(busybox_spec(), "slimmer-test/held:1")
    images.track(ref + "-slim")
    profile = write_profile(tmp_path, 'description = "t"\nremove = "etc/passwd"\n')
    slimmer("apply", "--no-smoke", "-p", profile, ref, check=0)
    held = images.id(ref + "-slim")
    images.track("slimmer-test/held:other")
    slimmer(
        "apply", "-p", profile, "--smoke", "cat /etc/passwd", "-t",
        "slimmer-test/held:other", ref, check=3,
    )  # fmt: skip
    assert images.id(ref + "-slim") == held
    assert not images.exists("slimmer-test/held:other")


def test_kept_name_of_a_removed_file_is_read_back_from_a_second_save(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    # The save leaves out the bytes of app/__pycache__/big.pyc, which the
    # profile removes; app/keep is a hardlink to it that stays, so its bytes
    # come from a second save of the same image.
    layer = [*app_layer(), L.file("app/__pycache__/big.pyc", b"x" * 100_000)]
    layer.append(L.hardlink("app/keep", "app/__pycache__/big.pyc"))
    ref = images.load(busybox_spec(layer), "slimmer-test/alias:1")
    images.track(ref + "-slim")
    profile = write_profile(tmp_path, 'description = "t"\nremove = "__pycache__/"\n')
    done = slimmer("-v", "apply", "--no-smoke", "-p", profile, ref, check=0)
    assert "save again" in done.stderr
    view = export_view(daemon_client, ref + "-slim")
    expected = hashlib.sha256(b"x" * 100_000).hexdigest()
    assert (view["app/keep"].size, view["app/keep"].sha256) == (100_000, expected)
    assert "app/__pycache__/big.pyc" not in view and "app/keep" in view


def test_save_leaves_out_removed_bytes_without_a_second_save(
    images, busybox_spec, slimmer, tmp_path
):
    big = [L.file("app/__pycache__/big.pyc", b"b" * 100_000)]
    ref = images.load(busybox_spec(app_layer(), big), "slimmer-test/leftout:1")
    images.track(ref + "-slim")
    profile = write_profile(tmp_path, 'description = "t"\nremove = "__pycache__/"\n')
    done = slimmer("-vv", "apply", "--no-smoke", "-p", profile, ref, check=0)
    left_out = re.search(r"leaving out (\d+) bytes in 1 holes", done.stderr)
    assert left_out, done.stderr
    # All of big.pyc but the head written up to a file system block.
    assert 100_000 - 4096 - 64 <= int(left_out[1]) <= 100_000
    assert "save again" not in done.stderr


def test_full_disk_is_one_line_and_leaves_nothing(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("a tmpfs cannot be mounted here (not root?)")
    try:
        big = [L.directory("data"), L.file("data/kept.bin", os.urandom(6 << 20))]
        ref = images.load(busybox_spec(big), "slimmer-test/fulldisk:1")
        images.track(ref + "-slim")
        before = image_ids(daemon_client)
        done = slimmer(
            "apply", "--no-smoke", "--workdir", str(small), ref, check=1
        )  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0], done.stderr
        assert "--workdir" in lines[0]
        assert list(small.iterdir()) == []
        assert image_ids(daemon_client) == before
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_tag_that_names_the_source_is_refused(images, busybox_spec, slimmer):
    ref = images.load(busybox_spec(), "slimmer-test/sametag:1")
    source = images.id(ref)
    done = slimmer("apply", "--no-smoke", "-t", ref, ref, check=2)
    assert "source's own tag" in done.stderr and len(done.stderr.splitlines()) == 1
    assert images.id(ref) == source
