"""Shared fixtures: the real daemon, hand-made images, and the slimmer CLI.

Real-daemon tests are marked `daemon`. Every image and container a test
creates is recorded and removed in teardown, and every run of slimmer is
checked to leave no container and no work folder behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import layers as L
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = (
    "sh",
    "ls",
    "cat",
    "true",
    "false",
    "echo",
    "test",
    "id",
    "rm",
    "stat",
    "sleep",
    "readlink",
    "wc",
    "sha256sum",
    "find",
    "env",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "daemon_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.daemon)


@pytest.fixture(scope="session")
def daemon_client():
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no daemon
        pytest.fail(f"real-daemon test, but no Docker daemon answers: {exc}")
    return client


class Images:
    """Loads hand-made images and removes everything it made afterwards."""

    def __init__(self, client, tmp_path: Path):
        self.client, self.tmp_path = client, tmp_path
        self.refs: list[str] = []

    def load(self, spec: L.ImageSpec, tag: str) -> str:
        spec.tags = [tag]
        loaded = self.client.images.load(L.save_archive(spec))
        self.refs.append(tag)
        self.refs.extend(image.id for image in loaded)
        return tag

    def track(self, ref: str) -> str:
        self.refs.append(ref)
        return ref

    def id(self, ref: str) -> str:
        return self.client.api.inspect_image(ref)["Id"]

    def exists(self, ref: str) -> bool:
        import docker.errors

        try:
            self.client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def cleanup(self):
        import docker.errors

        for ref in reversed(self.refs):
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.remove_image(ref, force=True)


@pytest.fixture
def images(daemon_client, tmp_path):
    tracker = Images(daemon_client, tmp_path)
    yield tracker
    tracker.cleanup()


def busybox_members(prefix="bin") -> list[L.Member]:
    """A static busybox and the applets the tests use, as layer members."""
    members = [
        L.directory(prefix),
        L.file(f"{prefix}/busybox", Path(BUSYBOX).read_bytes(), mode=0o755),
    ]
    members += [L.symlink(f"{prefix}/{name}", "busybox") for name in APPLETS]
    return members


def base_layer() -> list[L.Member]:
    return [
        L.directory("etc"),
        L.file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
        ),
        L.file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        L.directory("tmp", mode=0o1777),
        *busybox_members(),
    ]


@pytest.fixture
def busybox_spec():
    """An ImageSpec with a busybox base layer, to extend per test."""
    return lambda *upper, config=None: L.ImageSpec(
        [base_layer(), *upper],
        config=config or {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
    )


class Run:
    """Runs the slimmer CLI as a user would, in a private TMPDIR."""

    def __init__(self, tmp_path: Path, client):
        self.tmp = tmp_path / "tmpdir"
        self.tmp.mkdir()
        self.client = client

    def __call__(self, *args, cwd=None, check=None, timeout=900):
        env = dict(os.environ, TMPDIR=str(self.tmp), NO_COLOR="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        done = subprocess.run(
            [sys.executable, "-m", "slimmer", *args],
            cwd=cwd or self.tmp.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check is not None:
            assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args, **kwargs) -> dict:
        done = self(*args, "--json", **kwargs)
        return json.loads(done.stdout)

    def assert_clean(self):
        leftovers = list(self.tmp.iterdir())
        assert not leftovers, f"work files left behind: {leftovers}"
        if self.client is not None:
            running = self.client.containers.list(
                all=True, filters={"label": "slimmer"}
            )
            assert not running, f"containers left behind: {running}"


@pytest.fixture
def slimmer(tmp_path, request):
    """Run the CLI; afterwards assert it left no temp file or container."""
    client = None
    if "daemon_client" in request.fixturenames or "images" in request.fixturenames:
        client = request.getfixturevalue("daemon_client")
    runner = Run(tmp_path, client)
    yield runner
    runner.assert_clean()


def tar_bytes(members) -> io.BytesIO:
    return io.BytesIO(L.layer_tar(members))
