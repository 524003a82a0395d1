"""A broken candidate never gets a tag, and nothing slimmer made stays behind.

Real-daemon tests: the Python test image (python_image.py) for the import
check, and small busybox images for timeouts and Ctrl-C. Ctrl-C is a real
SIGINT sent to this process at a chosen step of an in-process apply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import layers as L
import pytest
from python_image import DIST, SITE, image_ids, images_made_with, profile_file

from slimmer import importcheck, pipeline, smoke
from slimmer.daemon import Daemon
from slimmer.smoke import Runner

pytest_plugins = ["python_image"]

HARMLESS = ["usr/share/doc/", "usr/share/man/", "usr/share/locale/"]


def slimmer_containers(client) -> list:
    return client.containers.list(all=True, filters={"label": "slimmer"})


# -- the import check, on the Python image -----------------------------------


def test_interpreters_are_found_on_the_image_path_through_symlinks(python_tree):
    found = importcheck.interpreters(python_tree.tree, python_tree.config)
    # PATH: the venv first; /bin is merged-/usr's symlink to usr/bin.
    assert found == [
        "/opt/venv/bin/python3",
        "/opt/venv/bin/python",
        "/usr/bin/python3",
        "/bin/python3",
    ]


@pytest.fixture(scope="module")
def listing(python_image, python_tree):
    """What the import check finds in the Python image."""
    runner = Runner(Daemon(), timeout=60)
    pythons = importcheck.interpreters(python_tree.tree, python_tree.config)
    return importcheck.run_check(runner.bind(python_image), dict.fromkeys(pythons), 60)


def test_venv_and_system_python_are_checked_once_each(listing):
    assert sorted(listing) == ["/opt/venv/bin/python3", "/usr/bin/python3"]


def test_every_kind_of_top_level_module_is_listed(listing):
    venv = listing["/opt/venv/bin/python3"]
    assert venv["pkgdemo"] is None  # a package
    assert venv["nsdemo"] is None  # a namespace package
    assert venv["solo"] is None  # a .py module
    assert venv["_yaml"] is None  # an extension module
    assert venv["yaml"] is None  # from dist-packages, seen by the venv
    assert set(listing["/usr/bin/python3"]) == {"yaml", "_yaml"}


def test_a_module_failing_to_import_carries_its_error(listing):
    error = listing["/opt/venv/bin/python3"]["alwaysbroken"]
    assert error == "ImportError: broken in every image"


class CountingRunner(Runner):
    """A Runner that records the image of every container it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images = []

    def run(self, image, argv, timeout, entrypoint):
        self.images.append(image)
        return super().run(image, argv, timeout, entrypoint)


def test_import_check_runs_one_container_per_image(python_image, python_tree):
    runner = CountingRunner(Daemon(), timeout=60)
    pythons = importcheck.interpreters(python_tree.tree, python_tree.config)
    suite = smoke.baseline(runner, python_image, [], pythons, [])
    suite.check(python_image)  # the source stands in for the candidate
    assert runner.images == [python_image, python_image]
    assert suite.imports_json()["checked"] > len(pythons)


def test_deleting_a_stdlib_folder_python_needs_is_exit_3_and_leaves_nothing(
    python_image, slimmer, daemon_client, tmp_path
):
    before = image_ids(daemon_client)
    rules = [*HARMLESS, "usr/lib/python3.11/encodings/"]
    profile = profile_file(tmp_path, "safety-stdlib", rules)
    tag = "slimmer-safety/stdlib:1"
    done = slimmer("apply", "-p", profile, "-t", tag, python_image, check=3)
    assert "No module named 'encodings'" in done.stderr
    assert images_made_with(daemon_client, "safety-stdlib", before) == []
    assert not daemon_client.api.images(name="slimmer-safety/stdlib")
    assert not slimmer_containers(daemon_client)


@pytest.mark.parametrize(
    ("rule", "module"),
    [(f"{DIST[1:]}/yaml/", "yaml"), (f"{SITE[1:]}/pkgdemo/", "pkgdemo")],
    ids=["dist-packages", "site-packages"],
)
def test_removing_a_package_is_caught_by_the_import_check_alone(
    python_image, slimmer, daemon_client, tmp_path, rule, module
):
    before = image_ids(daemon_client)
    profile = profile_file(tmp_path, "safety-package", [*HARMLESS, rule])
    tag = "slimmer-safety/package:1"
    done = slimmer("apply", "-p", profile, "-t", tag, "--json", python_image)
    assert done.returncode == 3, done.stderr
    assert "imports in the source but not in the candidate" in done.stderr
    assert re.search(rf"\b{module}\b", done.stderr)
    document = json.loads(done.stdout)
    broken = {item["module"] for item in document["imports"]["broken"]}
    assert module in broken and document["error"]["exit_code"] == 3
    assert images_made_with(daemon_client, "safety-package", before) == []
    assert not daemon_client.api.images(name="slimmer-safety/package")


def test_module_failing_in_both_images_is_left_alone(
    python_image, slimmer, images, tmp_path, listing
):
    tag = images.track("slimmer-safety/harmless:1")
    profile = profile_file(tmp_path, "safety-harmless", HARMLESS)
    report = slimmer.json("apply", "-p", profile, "-t", tag, python_image, check=0)
    # alwaysbroken fails in the source (see above), so it is never compared.
    importable = [m for found in listing.values() for m, e in found.items() if not e]
    assert report["imports"] == {"checked": len(importable), "broken": []}
    assert images.exists(tag)


def test_smoke_false_is_exit_4_and_writes_nothing(
    python_image, slimmer, daemon_client, tmp_path
):
    before = image_ids(daemon_client)
    profile = profile_file(tmp_path, "safety-false", HARMLESS)
    listed = tmp_path / "removed.txt"
    args = ["-p", profile, "--smoke", "false", "--removed-list", str(listed)]
    done = slimmer("apply", *args, "-t", "slimmer-safety/false:1", python_image)
    assert done.returncode == 4, done.stderr
    assert "fails on the source" in done.stderr
    assert images_made_with(daemon_client, "safety-false", before) == []
    assert not listed.exists()


# -- timeouts, on a busybox image --------------------------------------------


def app_layer():
    return [L.directory("app"), L.file("app/notes.txt", b"n" * 100)]


def test_smoke_timeout_on_the_source_is_exit_4_with_its_output(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    ref = images.load(busybox_spec(app_layer()), "slimmer-safety/hang-source:1")
    before = image_ids(daemon_client)
    profile = profile_file(tmp_path, "safety-hang-source", ["app/notes.txt"])
    smoke = ["--smoke", "echo started; sleep 60", "--smoke-timeout", "2"]
    done = slimmer("apply", "-p", profile, *smoke, ref)
    assert done.returncode == 4, done.stderr
    assert "timed out" in done.stderr and "started" in done.stderr
    assert images_made_with(daemon_client, "safety-hang-source", before) == []


def test_smoke_timeout_on_the_candidate_is_exit_3_and_rolls_back(
    images, busybox_spec, slimmer, daemon_client, tmp_path
):
    ref = images.load(busybox_spec(app_layer()), "slimmer-safety/hang:1")
    target = images.track("slimmer-safety/hang:1-slim")
    before = image_ids(daemon_client)
    profile = profile_file(tmp_path, "safety-hang", ["etc/passwd"])
    smoke = "test -e /etc/passwd || sleep 60"
    done = slimmer(
        "apply", "-p", profile, "--smoke", smoke, "--smoke-timeout", "3", ref
    )
    assert done.returncode == 3, done.stderr
    assert "timed out" in done.stderr
    assert images_made_with(daemon_client, "safety-hang", before) == []
    assert not images.exists(target)


# -- Ctrl-C at every step ----------------------------------------------------


class InterruptAt(pipeline.Progress):
    """Sends this process a SIGINT once the pipeline reaches `step`.

    With `on="advance"` the signal comes at the first bytes of the step,
    so in the middle of it; with `after`, only once a step starting with
    `after` has begun.
    """

    def __init__(self, step: str, on: str = "advance", after: str | None = None):
        self.target, self.on, self.after = step, on, after
        self.current, self.armed, self.fired = None, after is None, False

    def step(self, name, total=None):
        self.current = name
        if self.after and name.startswith(self.after):
            self.armed = True
        if self.on == "step":
            self._maybe_fire()

    def advance(self, amount):
        if self.on == "advance":
            self._maybe_fire()

    def _maybe_fire(self):
        if self.armed and not self.fired and self.current == self.target:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)


def open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.fixture
def ctrl_c_case(images, busybox_spec, daemon_client, tmp_path):
    """A source image, its target tag already pointing at it, and options."""
    ref = images.load(busybox_spec(app_layer()), "slimmer-safety/ctrlc:1")
    target = images.track("slimmer-safety/ctrlc:1-slim")
    daemon_client.api.tag(ref, "slimmer-safety/ctrlc", "1-slim")
    work = tmp_path / "work"
    work.mkdir()
    profile = profile_file(tmp_path, "safety-ctrlc", ["app/notes.txt", "etc/group"])
    options = pipeline.Options(
        ref=ref, profiles=[profile], smoke=["cat /etc/passwd"], workdir=work
    )
    source = daemon_client.api.inspect_image(ref)
    yield options, target, source, image_ids(daemon_client)


def assert_rolled_back(client, case):
    options, target, source, before = case
    after = client.api.inspect_image(options.ref)
    assert (after["Id"], after["RepoTags"]) == (source["Id"], source["RepoTags"])
    assert client.api.inspect_image(target)["Id"] == source["Id"]
    assert images_made_with(client, "safety-ctrlc", before) == []
    assert not slimmer_containers(client)
    assert list(options.workdir.iterdir()) == []
    assert open_files_under(options.workdir) == []


@pytest.mark.parametrize(
    ("step", "on"),
    [
        ("save", "advance"),
        ("squash", "step"),
        ("size the new layer", "step"),
        # The layer is made as it is sent: this stops it halfway.
        ("load", "advance"),
        ("smoke tests on the candidate", "step"),
    ],
)
def test_ctrl_c_rolls_everything_back(daemon_client, ctrl_c_case, step, on):
    progress = InterruptAt(step, on)
    with pytest.raises(KeyboardInterrupt):
        pipeline.apply(Daemon(), ctrl_c_case[0], progress)
    assert progress.fired
    assert_rolled_back(daemon_client, ctrl_c_case)


class InterruptAfterUpload(Daemon):
    """Sends SIGINT once the whole archive is with it, then loads it."""

    loaded = False

    def load(self, archive):
        chunks = list(archive)
        os.kill(os.getpid(), signal.SIGINT)
        super().load(iter(chunks))
        self.loaded = True


def test_ctrl_c_after_the_upload_waits_for_the_load_then_removes_it(
    daemon_client, ctrl_c_case
):
    daemon = InterruptAfterUpload()
    with pytest.raises(KeyboardInterrupt):
        pipeline.apply(daemon, ctrl_c_case[0])
    assert daemon.loaded
    assert_rolled_back(daemon_client, ctrl_c_case)


def test_ctrl_c_during_a_bisect_probe_removes_the_probe(daemon_client, ctrl_c_case):
    options = ctrl_c_case[0]
    options.profiles.append(
        profile_file(options.workdir.parent, "safety-ctrlc2", ["etc/passwd"])
    )
    options.bisect = True
    progress = InterruptAt("load", after="bisect")
    with pytest.raises(KeyboardInterrupt):
        pipeline.apply(Daemon(), options, progress)
    assert progress.fired
    assert_rolled_back(daemon_client, ctrl_c_case)
    assert images_made_with(daemon_client, "safety-ctrlc2", ctrl_c_case[3]) == []


def test_ctrl_c_once_the_tag_moved_leaves_the_result_and_no_work_folder(
    daemon_client, ctrl_c_case, monkeypatch
):
    # Ctrl-C while the work folder is being removed, after the tag moved:
    # the run is done, so it says so, and the folder still goes.
    options, target, source, _before = ctrl_c_case
    remove = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        remove(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    report = pipeline.apply(Daemon(), options)
    assert report.result["tag"] == target
    assert daemon_client.api.inspect_image(target)["Id"] == report.result["id"]
    assert report.result["id"] != source["Id"]
    assert list(options.workdir.iterdir()) == []
    assert not slimmer_containers(daemon_client)
