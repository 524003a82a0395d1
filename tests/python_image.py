"""The Python test image, built once and cached between runs, and its fixtures.

`slimmer-test/python:1` is debian:bookworm with Debian's python3 and
python3-yaml, plus a venv (first on PATH, seeing the system packages)
whose site-packages holds one of each kind of top-level module. The image
carries a label with the hash of its recipe, so a changed recipe rebuilds
it. debian:bookworm itself is built with examples/debian-base.sh when the
daemon lacks it, as CI does.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass

import pytest
from conftest import ROOT

PYTHON_IMAGE = "slimmer-test/python:1"
BASE = "debian:bookworm"
LABEL = "slimmer.test.recipe"
VENV = "/opt/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"
DIST = "/usr/lib/python3/dist-packages"
RECIPE = f"""\
FROM {BASE}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-yaml \\
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv --without-pip --system-site-packages {VENV} \\
 && mkdir {SITE}/nsdemo {SITE}/pkgdemo \\
 && echo 'VALUE = 1' > {SITE}/nsdemo/part.py \\
 && echo 'VALUE = 2' > {SITE}/pkgdemo/__init__.py \\
 && echo 'VALUE = 3' > {SITE}/solo.py \\
 && echo 'raise ImportError("broken in every image")' > {SITE}/alwaysbroken.py \\
 && cp {DIST}/yaml/_yaml.cpython-311-x86_64-linux-gnu.so \\
       {SITE}/_yaml.cpython-311-x86_64-linux-gnu.so
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3"]
"""
RECIPE_HASH = hashlib.sha256(RECIPE.encode()).hexdigest()[:16]


def _labels(client, ref: str) -> dict | None:
    import docker.errors

    try:
        attrs = client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    return (attrs.get("Config") or {}).get("Labels") or {}


def ensure_python_image(client) -> str:
    """Build the Python test image unless an image of this recipe exists."""
    labels = _labels(client, PYTHON_IMAGE)
    if labels is not None and labels.get(LABEL) == RECIPE_HASH:
        return PYTHON_IMAGE
    if _labels(client, BASE) is None:
        script = ROOT / "examples" / "debian-base.sh"
        subprocess.run(["bash", str(script), BASE], check=True, timeout=1800)
    subprocess.run(
        [
            "docker",
            "build",
            "--quiet",
            "--network",
            "host",
            "--label",
            f"{LABEL}={RECIPE_HASH}",
            "-t",
            PYTHON_IMAGE,
            "-",
        ],
        input=RECIPE,
        text=True,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    return PYTHON_IMAGE


@pytest.fixture(scope="session")
def python_image(daemon_client) -> str:
    """The cached Python test image (built on first use; a few minutes)."""
    return ensure_python_image(daemon_client)


@dataclass
class Squashed:
    """The Python image saved, read and squashed once, for read-only tests."""

    saved: object
    tree: object
    config: dict


@pytest.fixture(scope="session")
def python_tree(python_image, tmp_path_factory):
    from slimmer.archive import read_archive
    from slimmer.daemon import Daemon
    from slimmer.squash import squash

    work = tmp_path_factory.mktemp("python-tree")
    daemon = Daemon()
    daemon.save(daemon.inspect(python_image).id, work / "image.tar")
    saved = read_archive(work / "image.tar", work)
    yield Squashed(saved, squash(saved.layers), saved.config)
    saved.close()


def images_made_with(client, profile: str, before: set[str]) -> list[str]:
    """Images made since `before` whose history names the profile `profile`.

    Every candidate and probe slimmer writes records its profiles in its
    history, so this finds them even while other tests load images.
    """
    import docker.errors

    found = []
    for image in client.images.list(all=True):
        if image.id in before:
            continue
        try:
            history = client.api.history(image.id)
        except docker.errors.ImageNotFound:
            continue  # removed meanwhile, by another test or another user
        if any(f"profiles: {profile}" in (h.get("CreatedBy") or "") for h in history):
            found.append(image.id)
    return found


def image_ids(client) -> set[str]:
    return {image.id for image in client.images.list(all=True)}


def profile_file(folder, name: str, remove: list[str], keep: str = "") -> str:
    """A profile file `name`.toml removing `remove`, plus a raw `keep` line."""
    import json

    body = f'description = "{name}"\nremove = {json.dumps(chr(10).join(remove))}\n'
    path = folder / f"{name}.toml"
    path.write_text(body + (keep + "\n" if keep else ""))
    return str(path)
