"""Helpers for the daemonless tests: the CLI with no daemon, small images.

`NoDaemonCli` runs slimmer as a user would, in a private TMPDIR, with an
empty Docker config folder and, unless told otherwise, with DOCKER_HOST
pointing at a socket that does not exist: proof that no daemon is used.
Each run is checked to leave no file in its TMPDIR.

Images are busybox-based and hand-made (layers.py), written as OCI
layouts by registry_fixture.make_layout or as `docker save` archives.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import layers as L
from conftest import ROOT, base_layer

NO_DAEMON = "unix:///nonexistent/docker.sock"
PYC = b"c" * 70
README = b"r" * 300
COPYING = b"l" * 200
PROFILE = 'description = "test"\nremove = """\n__pycache__/\nusr/share/doc/\n"""\n'


class NoDaemonCli:
    """Runs `python -m slimmer`; afterwards its TMPDIR must be empty."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path / "tmpdir"
        self.tmp.mkdir()
        self.config = tmp_path / "docker-config"
        self.config.mkdir()
        self.runs = 0

    def __call__(self, *args, check=None, daemon=False, timeout=1800):
        env = dict(os.environ, TMPDIR=str(self.tmp), NO_COLOR="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["DOCKER_CONFIG"] = str(self.config)
        if not daemon:
            env["DOCKER_HOST"] = NO_DAEMON
        done = subprocess.run(
            [sys.executable, "-m", "slimmer", *args],
            cwd=self.tmp.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.runs += 1
        if check is not None:
            assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
        leftovers = list(self.tmp.iterdir())
        assert not leftovers, f"work files left behind: {leftovers}"
        return done

    def json(self, *args, **kwargs) -> dict:
        return json.loads(self(*args, "--json", **kwargs).stdout)


def profile_file(folder: Path) -> Path:
    """A profile removing __pycache__ folders and usr/share/doc."""
    path = folder / "daemonless.toml"
    path.write_text(PROFILE)
    return path


def app_layer() -> list[L.Member]:
    return [
        L.directory("app"),
        L.file("app/main.py", "print('hi')\n"),
        L.directory("app/__pycache__"),
        L.file("app/__pycache__/main.cpython-311.pyc", PYC),
    ]


def based_layers() -> list[list[L.Member]]:
    """A base layer, then layers that delete, change and add above it."""
    base = base_layer() + [
        L.directory("opt"),
        L.file("opt/old.txt", "old\n"),
        L.directory("usr"),
        L.directory("usr/share"),
        L.directory("usr/share/doc"),
        L.directory("usr/share/doc/pkg"),
        L.file("usr/share/doc/pkg/README", README),
        L.file("usr/share/doc/pkg/COPYING", COPYING),
    ]
    deletes = [L.directory("opt"), L.whiteout("opt/old.txt"), *app_layer()]
    changes = [
        L.directory("etc"),
        L.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        L.directory("app"),
        L.file("app/extra.txt", "extra\n"),
    ]
    return [base, deletes, changes]


# The keep-base layer over based_layers()[0], minus the profile's paths.
UPPER_NAMES = {
    "app",
    "app/main.py",
    "app/extra.txt",
    "etc",
    "etc/passwd",
    "opt",
    "opt/.wh.old.txt",
    "usr",
    "usr/share",
    "usr/share/.wh.doc",
}


def save_archive(path: Path, stack, tags=None, config=None) -> Path:
    spec = L.ImageSpec(stack, config=config or {"Env": ["PATH=/bin"]}, tags=tags)
    path.write_bytes(L.save_archive(spec))
    return path


# -- reading what slimmer wrote, independently of slimmer --------------------


def blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()


def layout_top(root: Path, tag: str) -> dict:
    index = json.loads((root / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(L_REF) == tag:
            return entry
    raise AssertionError(f"no {tag} in {root}/index.json")


L_REF = "org.opencontainers.image.ref.name"


def manifests(root: Path, tag: str) -> list[dict]:
    """Each image manifest under `tag`, its platform added, as written."""
    top = layout_top(root, tag)
    document = json.loads(blob(root, top["digest"]))
    if "manifests" not in document:
        return [dict(document, platform=top.get("platform"))]
    return [
        dict(json.loads(blob(root, entry["digest"])), platform=entry["platform"])
        for entry in document["manifests"]
    ]


def layer_names(data: bytes) -> list[str]:
    """Member names of a layer blob (gzip or plain tar)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        return [name.removeprefix("./") for name in layer.getnames()]
