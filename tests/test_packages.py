"""The package manager's view: installed packages that lost files.

Trees are hand-made (the FakeImage of test_guards); the last test reads
the real dpkg database of the Python test image.
"""

from __future__ import annotations

from python_image import DIST, profile_file
from test_guards import FakeImage

from slimmer.packages import lost_files, parse_apk_installed

pytest_plugins = ["python_image"]

RULE = "rule"


def dpkg_image(**lists: str) -> FakeImage:
    image = FakeImage()
    image.directory("var/lib/dpkg/info")
    for name, text in lists.items():
        image.file(f"var/lib/dpkg/info/{name}.list", text, mode=0o644)
    return image


def test_dpkg_package_that_lost_files_is_listed_with_the_count():
    image = dpkg_image(curl="/.\n/usr\n/usr/bin\n/usr/bin/curl\n/usr/share/doc/c\n")
    image.file("usr/bin/curl", "x")
    image.file("usr/share/doc/c", "x")
    removed = {"usr/bin/curl": RULE, "usr/share/doc/c": RULE}
    assert lost_files(image.tree, image, removed) == [
        {"package": "curl", "files_removed": 2}
    ]


def test_directories_a_package_lists_count_no_file():
    image = dpkg_image(docs="/.\n/usr/share/doc\n/usr/share/doc/docs\n")
    image.directory("usr/share/doc/docs")
    removed = {"usr/share/doc": RULE, "usr/share/doc/docs": RULE}
    assert lost_files(image.tree, image, removed) == []


def test_merged_usr_paths_are_looked_up_through_the_image_symlinks():
    # Debian lists /bin/sh; with merged-/usr the file is usr/bin/sh.
    image = dpkg_image(dash="/.\n/bin\n/bin/dash\n")
    image.symlink("bin", "usr/bin")
    image.file("usr/bin/dash", "x")
    found = lost_files(image.tree, image, {"usr/bin/dash": RULE})
    assert found == [{"package": "dash", "files_removed": 1}]


def test_a_removed_symlink_listed_by_a_package_counts():
    image = dpkg_image(zlib1g="/usr/lib/libz.so.1\n/usr/lib/libz.so.1.2\n")
    image.file("usr/lib/libz.so.1.2", "x")
    image.symlink("usr/lib/libz.so.1", "libz.so.1.2")
    found = lost_files(image.tree, image, {"usr/lib/libz.so.1": RULE})
    assert found == [{"package": "zlib1g", "files_removed": 1}]


def test_packages_are_sorted_and_untouched_ones_left_out():
    image = dpkg_image(
        **{"zz": "/z\n", "libc6:amd64": "/l\n", "untouched": "/u\n", "aa": "/a\n"}
    )
    for name in "zlau":
        image.file(name, "x")
    removed = {"z": RULE, "l": RULE, "a": RULE}
    assert [item["package"] for item in lost_files(image.tree, image, removed)] == [
        "aa",
        "libc6:amd64",
        "zz",
    ]


APK_INSTALLED = """\
C:Q1abc=
P:musl
V:1.2.4-r2
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
R:libc.musl-x86_64.so.1

P:ca-certificates-bundle
V:20230506-r0
F:etc
F:etc/ssl/certs
R:ca-certificates.crt
"""


def test_apk_stanzas_give_each_package_its_files():
    assert list(parse_apk_installed(APK_INSTALLED)) == [
        ("musl", ["lib", "lib/ld-musl-x86_64.so.1", "lib/libc.musl-x86_64.so.1"]),
        (
            "ca-certificates-bundle",
            ["etc", "etc/ssl/certs", "etc/ssl/certs/ca-certificates.crt"],
        ),
    ]


def test_apk_package_that_lost_files_is_listed():
    image = FakeImage()
    image.file("lib/apk/db/installed", APK_INSTALLED, mode=0o644)
    image.file("etc/ssl/certs/ca-certificates.crt", "pem")
    image.file("lib/ld-musl-x86_64.so.1", "elf")
    removed = {"etc/ssl/certs": RULE, "etc/ssl/certs/ca-certificates.crt": RULE}
    assert lost_files(image.tree, image, removed) == [
        {"package": "ca-certificates-bundle", "files_removed": 1}
    ]


# -- on the real daemon ------------------------------------------------------


def test_plan_names_the_debian_package_whose_files_a_rule_took(
    python_image, slimmer, daemon_client, tmp_path
):
    profile = profile_file(tmp_path, "safety-dpkg", [f"{DIST[1:]}/yaml/"])
    report = slimmer.json("plan", "-p", profile, python_image, check=0)
    # The oracle: what dpkg itself lists below that folder. Bytecode is
    # compiled after install, so the package does not list it.
    count = f"grep -c '^{DIST}/yaml/' /var/lib/dpkg/info/python3-yaml.list"
    listed = daemon_client.containers.run(
        python_image, ["sh", "-c", count], network_mode="none", remove=True
    )
    expected = int(listed.decode())
    assert expected > 0
    assert report["packages"] == [
        {"package": "python3-yaml", "files_removed": expected}
    ]
