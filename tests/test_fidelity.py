"""Squash fidelity against the real daemon, case by case (issue 3).

The daemon's own merge is the oracle: `docker create` then `docker export`
of the source must equal that of slimmer's result, path for path. One
rich image holds every case in its own folder. It is loaded once and
slimmed twice with the CLI, with no profile and with a profile; each test
then checks its own case on the daemon's views (oracle.py), after
checking that the daemon really sees the case as described.

`SLIMMER_DIFF_IMAGE=IMAGE python3 -m pytest tests/test_fidelity.py -k
any_image` runs the same comparison on any image the daemon holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import layers as L
import pytest
from conftest import BUSYBOX, Images, Run, base_layer
from oracle import (
    archive_dir_mtimes,
    assert_same_tree,
    compare_images,
    compare_views,
    expected_view,
    export_view,
    header_dir_mtimes,
)

from slimmer import assemble
from slimmer.archive import read_archive
from slimmer.destinations import layer_first_archive
from slimmer.squash import squash
from slimmer.writer import StreamedLayer

RICH = "slimmer-fidelity/rich:1"
# cap_net_raw in the permitted and effective sets (VFS_CAP_REVISION_2,
# linux/capability.h), as the kernel stores security.capability.
CAP_NET_RAW = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
# cap_setuid and cap_net_raw: the byte 0x80 makes the value binary.
CAP_HIGH = "\x01\x00\x00\x02\udc80\x20\x00\x00" + "\x00" * 12
LONG = "names/" + "x" * 180
DEEP = "names/" + "d" * 120 + "/" + "f" * 150
NOT_UTF8 = "names/caf\udce9"
PROFILE = """\
hl/many/a
/prof/pruned
prof/caf?/
prof/keepme/
!prof/keepme/x
*.pyc
spec/emptydir/
"""


def sha(data) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def whiteout_cases():
    lower = [
        L.directory("wh", mode=0o700, uid=3),
        L.file("wh/file", "deleted"),
        *[L.directory("wh/dir"), L.file("wh/dir/a"), L.directory("wh/dir/sub")],
        L.file("wh/dir/sub/b"),
        L.file("wh/again", "old"),
        *[L.directory("wh/againdir"), L.file("wh/againdir/old")],
        L.file("wh/lower", "old"),
        *[L.directory("seg"), L.file("seg/foo"), L.file("seg/foobar", "bar")],
        *[L.file("seg/foo.bak"), L.file("seg/xfoo"), L.directory("seg/lib")],
        *[L.file("seg/lib/x"), L.directory("seg/lib64"), L.file("seg/lib64/y")],
        *[L.directory("hlmark"), L.file("hlmark/victim"), L.file("hlmark/other")],
        L.directory("opq"),
    ]
    for case in ("first", "middle", "last", "implied"):
        lower += [L.directory(f"opq/{case}"), L.file(f"opq/{case}/old")]
        lower += [L.directory(f"opq/{case}/sub"), L.file(f"opq/{case}/sub/old")]
    # No header for wh/ here: the daemon makes it anew (0755, root).
    upper = [L.whiteout(p) for p in ("wh/file", "wh/dir", "wh/again")]
    upper += [L.whiteout("wh/againdir"), L.whiteout("wh/lower")]
    upper += [L.file("wh/lower", "new"), L.whiteout("seg/foo")]
    upper += [L.whiteout("seg/lib"), L.directory("opq")]
    for case, at in (("first", 0), ("middle", 2), ("last", 3)):
        upper += opaque_case(case, at)
    upper += [L.opaque("opq/implied"), L.file("opq/implied/new1", "1")]
    top = [L.file("wh/again", "new"), L.directory("wh/againdir")]
    top += [L.file("wh/againdir/new", "new"), L.opaque("")]
    return lower, upper, top


def opaque_case(case, at):
    """An opaque directory's layer, with the marker at index `at`."""
    members = [L.directory(f"opq/{case}")]
    members += [L.file(f"opq/{case}/new{n}", str(n)) for n in (1, 2)]
    members.insert(at, L.opaque(f"opq/{case}"))
    return members


def aufs_cases():
    """AUFS bookkeeping, and whiteouts stored as hardlinks into it."""
    return [
        L.directory(".wh..wh.plnk", mode=0o700),
        L.file(".wh..wh.aufs"),
        L.file(".wh..wh.plnk/123.456", "stray"),
        L.file(".wh..wh.plnk/1"),
        L.hardlink("hlmark/.wh.victim", ".wh..wh.plnk/1"),
        L.file(".wh..wh.plnk/2", "aufs-data", mode=0o640, uid=9),
        L.directory("aufs"),
        L.hardlink("aufs/linked", ".wh..wh.plnk/2", mode=0o640, uid=9),
    ]


def type_change_cases():
    lower = [L.directory("tc"), L.directory("tc/dir2link"), L.file("tc/dir2link/a")]
    lower += [L.directory("tc/dir2link/sub"), L.file("tc/dir2link/sub/b")]
    lower += [L.directory("tc/dir2file"), L.file("tc/dir2file/a")]
    lower += [L.directory("tc/dir2file/sub"), L.file("tc/dir2file/sub/b")]
    lower += [L.file("tc/file2dir", "f"), L.symlink("tc/link2dir", "elsewhere")]
    upper = [L.symlink("tc/dir2link", "/tmp"), L.file("tc/dir2file", "now a file")]
    upper += [L.directory("tc/file2dir"), L.file("tc/file2dir/child", "c")]
    upper += [L.directory("tc/link2dir"), L.file("tc/link2dir/child", "c")]
    return lower, upper


def hardlink_cases():
    lower = [L.directory("hl"), L.directory("hl/many"), L.directory("hl/many/sub")]
    lower += [L.file("hl/many/a", "many", mode=0o755)]
    lower += [L.hardlink(f"hl/many/{n}", "hl/many/a", mode=0o755) for n in "bc"]
    lower += [L.hardlink("hl/many/sub/d", "hl/many/a", mode=0o755)]
    for case in ("cross", "rewrite", "gone", "newc"):
        lower += [L.directory(f"hl/{case}"), L.file(f"hl/{case}/t", f"{case} v1")]
        lower += [L.hardlink(f"hl/{case}/alias", f"hl/{case}/t")]
    lower += [L.directory("hl/meta")]
    lower += [L.file("hl/meta/t", "meta", mode=0o755, uid=5, gid=6, mtime=100)]
    lower += [L.hardlink("hl/meta/l", "hl/meta/t", mode=0o600, uid=7, gid=8)]
    lower += [L.directory("hl/sym"), L.symlink("hl/sym/s", "target")]
    lower += [L.hardlink("hl/sym/t", "hl/sym/s", mode=0o777)]
    lower += [L.directory("hl/order"), L.file("hl/order/z", "z")]
    lower += [L.hardlink(f"hl/order/{n}", "hl/order/z") for n in "am"]
    upper = [L.file("hl/cross/t", "cross v2"), L.hardlink("hl/cross/new", "hl/cross/t")]
    upper += [L.file("hl/rewrite/alias", "rewrite v2"), L.whiteout("hl/gone/t")]
    upper += [L.file("hl/newc/t", "newc v2")]
    top = [L.file("hl/rewrite/alias", "rewrite v3")]
    top += [L.hardlink("hl/rewrite/third", "hl/rewrite/alias")]
    return lower, upper, top


def symlink_and_metadata_cases():
    busybox = Path(BUSYBOX).read_bytes()
    return [
        L.directory("sym"),
        L.symlink("sym/abs", "/etc/passwd"),
        L.symlink("sym/rel", "../bin/busybox"),
        L.symlink("sym/dangling", "nowhere/at/all"),
        L.symlink("sym/to-deleted", "../wh/file"),
        L.symlink("sym/to-pruned", "../prof/pruned"),
        L.symlink("sym/self", "self"),
        L.directory("meta"),
        L.file("meta/bigid", uid=70000, gid=80000),
        L.file("meta/hugeid", uid=4_000_000, gid=3_000_000),
        L.file("meta/suid", mode=0o4755),
        L.file("meta/sgid", mode=0o2755),
        L.directory("meta/sticky", mode=0o1777),
        L.file("meta/allbits", mode=0o7777),
        L.directory("root", mode=0o550),
        L.file("root/.profile", mode=0o600),
        L.file("meta/old", mtime=123456789),
        L.file("meta/y2100", mtime=4_102_444_800),
        L.directory("meta/dirmtime", mtime=234567890),
        L.file("meta/dirmtime/x"),
        L.symlink("meta/linkmtime", "old", mtime=345678901),
        L.file("meta/highcap", xattrs={"security.capability": CAP_HIGH}),
        L.file("meta/userx", xattrs={"user.note": "caf\udce9"}),
        L.directory("caps"),
        L.file(
            "caps/ping", busybox, 0o755, xattrs={"security.capability": CAP_NET_RAW}
        ),
        L.directory("caps/plain"),
        L.file("caps/plain/ping", busybox, mode=0o755),
    ]


def name_cases():
    return [
        L.directory("names"),
        L.file(LONG, "long"),
        L.directory(DEEP.rpartition("/")[0]),
        L.file(DEEP, "deep"),
        L.hardlink("names/" + "l" * 150, LONG),
        L.symlink("names/longtarget", "../" + "t" * 200),
        L.file(NOT_UTF8, "not utf-8"),
        L.directory("names/\udcff\udcfe"),
        L.file("names/\udcff\udcfe/inner", "inner"),
        L.file("names/new\nline"),
        L.file("names/ünïcödé"),
        L.directory("./mix"),
        L.file("./mix/a", "1"),
        L.file("mix/b", "b"),
        L.directory("./mix/sub"),
    ]


def special_and_profile_cases():
    return [
        L.directory("spec"),
        L.chardev("spec/null", 1, 3),
        L.blockdev("spec/loop0", 7, 0),
        L.fifo("spec/fifo"),
        L.file("spec/empty"),
        L.directory("spec/emptydir"),
        L.directory("prof"),
        L.file("prof/pruned", "p"),
        L.directory("prof/caf\udce9"),
        L.file("prof/caf\udce9/inside", b"z" * 10000),
        L.directory("prof/keepme"),
        L.file("prof/keepme/x", "x"),
        L.file("prof/a.pyc", "pyc"),
    ]


def rich_spec() -> L.ImageSpec:
    wh_lower, wh_upper, wh_top = whiteout_cases()
    tc_lower, tc_upper = type_change_cases()
    hl_lower, hl_upper, hl_top = hardlink_cases()
    lower = wh_lower + tc_lower + hl_lower + symlink_and_metadata_cases()
    lower += name_cases() + special_and_profile_cases()
    upper = wh_upper + aufs_cases() + tc_upper + hl_upper
    upper += [L.file("mix/a", "2"), L.whiteout("./mix/b"), L.file("./mix/c", "c")]
    upper += [L.file("mix/sub/d", "d")]
    return L.ImageSpec(
        [base_layer(), lower, upper, wh_top + hl_top],
        config={"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
    )


@dataclass
class Source:
    images: Images
    run: Run
    view: dict  # the daemon's view of the rich image
    dir_mtimes: dict  # directory path -> mtimes its headers carry


@dataclass
class Result:
    """The daemon's views of the source and of one slimmed result."""

    ref: str
    source: dict
    expected: dict
    actual: dict
    report: dict
    dir_mtimes: dict

    def assert_case(self, *paths):
        """The result matches the expected tree on `paths` and below them."""

        def pick(view):
            return {p: r for p, r in view.items() if _under(p, paths)}

        assert compare_views(pick(self.expected), pick(self.actual)) == []


def _under(path, prefixes):
    return any(path == p or path.startswith(p + "/") for p in prefixes)


@pytest.fixture(scope="module")
def rich(daemon_client, tmp_path_factory):
    """The rich image, loaded once, with the daemon's view of it."""
    tmp = tmp_path_factory.mktemp("rich")
    images = Images(daemon_client, tmp)
    try:
        images.load(rich_spec(), RICH)
        view = export_view(daemon_client, RICH)
        mtimes = header_dir_mtimes(daemon_client, RICH)
        run = Run(tmp, daemon_client)
        yield Source(images, run, view, mtimes)
        run.assert_clean()
    finally:
        images.cleanup()


def _slim(daemon_client, rich: Source, tag, *args, removed_by=None) -> Result:
    rich.images.track(tag)
    done = rich.run("apply", "--no-smoke", "--json", "-t", tag, *args, RICH)
    assert done.returncode == 0, done.stderr
    expected = expected_view(rich.view, rich.dir_mtimes, removed_by)
    actual = export_view(daemon_client, tag)
    report = json.loads(done.stdout)
    return Result(tag, rich.view, expected, actual, report, rich.dir_mtimes)


@pytest.fixture(scope="module")
def squashed(daemon_client, rich) -> Result:
    """The rich image slimmed with no profile."""
    return _slim(daemon_client, rich, RICH + "-slim")


@pytest.fixture(scope="module")
def pruned(daemon_client, rich, tmp_path_factory) -> Result:
    """The rich image slimmed with the PROFILE lines."""
    profile = tmp_path_factory.mktemp("profile") / "cases.toml"
    profile.write_text(f'description = "fidelity"\nremove = """\n{PROFILE}"""\n')
    tag = RICH + "-pruned"
    return _slim(daemon_client, rich, tag, "-p", str(profile), removed_by=PROFILE)


@pytest.fixture(scope="module")
def slim_layer(daemon_client, squashed) -> list[tarfile.TarInfo]:
    """The members of the result's one layer, as `docker save` gives it."""
    saved = io.BytesIO(b"".join(daemon_client.api.get_image(squashed.ref)))
    with tarfile.open(fileobj=saved) as outer:
        (entry,) = json.load(outer.extractfile("manifest.json"))
        (layer,) = entry["Layers"]
        data = outer.extractfile(layer).read()
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as tar:
        return tar.getmembers()


def names_below(view, path):
    return sorted(p[len(path) + 1 :] for p in view if p.startswith(path + "/"))


# --- the whole tree ---------------------------------------------------------


def test_squash_only_equals_the_daemon_view(squashed):
    assert len(squashed.expected) > 100
    assert compare_views(squashed.expected, squashed.actual) == []


def test_profile_removes_exactly_what_git_drops(pruned):
    # What git drops: a `!` line cannot bring back a file in a dropped
    # directory, and `?` matches the one byte that is not UTF-8.
    gone = pruned.source.keys() - pruned.expected.keys()
    assert {p for p in gone if not p.startswith(".wh..wh.")} == {
        "hl/many/a",
        "prof/pruned",
        "prof/caf\udce9",
        "prof/caf\udce9/inside",
        "prof/keepme",
        "prof/keepme/x",
        "prof/a.pyc",
        "spec/emptydir",
    }
    assert compare_views(pruned.expected, pruned.actual) == []


# --- whiteouts --------------------------------------------------------------


def test_file_deleted_in_a_later_layer_stays_deleted(squashed):
    assert "wh/file" not in squashed.source
    squashed.assert_case("wh/file")


def test_directory_deleted_in_a_later_layer_takes_its_children(squashed):
    assert not [p for p in squashed.source if p.startswith("wh/dir")]
    squashed.assert_case("wh/dir")


def test_file_deleted_then_recreated_has_the_new_content(squashed):
    assert squashed.source["wh/again"].sha256 == sha("new")
    squashed.assert_case("wh/again")


def test_directory_deleted_then_recreated_has_only_new_children(squashed):
    assert names_below(squashed.source, "wh/againdir") == ["new"]
    squashed.assert_case("wh/againdir")


def test_whiteout_hides_only_what_lower_layers_put_there(squashed):
    assert squashed.source["wh/lower"].sha256 == sha("new")
    squashed.assert_case("wh/lower")


def test_directory_a_layer_implies_takes_the_daemons_metadata(squashed):
    # wh/ was 0700 and owned by uid 3 below; the upper layer has no header
    # for it, so the daemon makes it anew, 0755 and root-owned.
    record = squashed.source["wh"]
    assert (record.mode, record.uid) == (0o755, 0)
    assert record.mtime not in squashed.dir_mtimes["wh"]
    assert (
        compare_views({"wh": squashed.expected["wh"]}, {"wh": squashed.actual["wh"]})
        == []
    )


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_opaque_marker_anywhere_in_its_layer_hides_lower_children(squashed, position):
    assert names_below(squashed.source, f"opq/{position}") == ["new1", "new2"]
    squashed.assert_case(f"opq/{position}")


def test_opaque_directory_with_no_header_in_its_layer(squashed):
    assert names_below(squashed.source, "opq/implied") == ["new1"]
    squashed.assert_case("opq/implied")


def test_opaque_marker_at_the_image_root_is_ignored_like_the_daemon(squashed):
    # overlayfs never reads the opaque xattr of a layer's root directory.
    assert "bin/busybox" in squashed.source and "wh/lower" in squashed.source
    squashed.assert_case("bin", "seg", "meta")


def test_whiteout_matches_whole_path_segments(squashed):
    assert names_below(squashed.source, "seg") == [
        "foo.bak",
        "foobar",
        "lib64",
        "lib64/y",
        "xfoo",
    ]
    squashed.assert_case("seg")


def test_whiteout_stored_as_a_hardlink_still_hides(squashed):
    assert names_below(squashed.source, "hlmark") == ["other"]
    squashed.assert_case("hlmark")


def test_hardlink_to_an_aufs_link_source_keeps_its_bytes(squashed):
    record = squashed.source["aufs/linked"]
    assert (record.sha256, record.mode, record.uid) == (sha("aufs-data"), 0o640, 9)
    squashed.assert_case("aufs")


def test_aufs_bookkeeping_never_reaches_the_output(squashed):
    # overlay2 unpacks it as plain files; the OCI spec never shows it.
    assert ".wh..wh.plnk/123.456" in squashed.source
    assert not [p for p in squashed.actual if ".wh." in p]


def test_no_marker_reaches_the_written_layer(slim_layer):
    names = [member.name for member in slim_layer]
    assert "aufs/linked" in names
    assert not [n for n in names if any(s.startswith(".wh.") for s in n.split("/"))]


# --- type changes -----------------------------------------------------------


def test_directory_replaced_by_a_symlink_loses_its_children(squashed):
    assert squashed.source["tc/dir2link"].kind == "symlink"
    assert not names_below(squashed.source, "tc/dir2link")
    squashed.assert_case("tc/dir2link")


def test_directory_replaced_by_a_file_loses_its_children(squashed):
    assert squashed.source["tc/dir2file"].kind == "file"
    assert not names_below(squashed.source, "tc/dir2file")
    squashed.assert_case("tc/dir2file")


def test_file_replaced_by_a_directory(squashed):
    assert names_below(squashed.source, "tc/file2dir") == ["child"]
    squashed.assert_case("tc/file2dir")


def test_symlink_replaced_by_a_directory(squashed):
    assert squashed.source["tc/link2dir"].kind == "dir"
    squashed.assert_case("tc/link2dir")


# --- hardlinks --------------------------------------------------------------


def test_several_aliases_in_one_layer_stay_one_file(squashed):
    names = ("hl/many/a", "hl/many/b", "hl/many/c", "hl/many/sub/d")
    assert squashed.source["hl/many/sub/d"].links == names
    squashed.assert_case("hl/many")


def test_aliases_made_in_different_layers_stay_apart(squashed):
    source = squashed.source
    assert source["hl/cross/t"].links == ("hl/cross/new", "hl/cross/t")
    assert source["hl/cross/alias"].sha256 == sha("cross v1")
    squashed.assert_case("hl/cross")


def test_same_path_written_in_several_layers(squashed):
    source = squashed.source
    assert source["hl/rewrite/alias"].links == ("hl/rewrite/alias", "hl/rewrite/third")
    assert source["hl/rewrite/third"].sha256 == sha("rewrite v3")
    assert source["hl/rewrite/t"].sha256 == sha("rewrite v1")
    squashed.assert_case("hl/rewrite")


def test_alias_survives_a_whiteout_of_its_target(squashed):
    assert names_below(squashed.source, "hl/gone") == ["alias"]
    assert squashed.source["hl/gone/alias"].sha256 == sha("gone v1")
    squashed.assert_case("hl/gone")


def test_alias_keeps_the_old_content_when_its_target_is_rewritten(squashed):
    assert squashed.source["hl/newc/alias"].sha256 == sha("newc v1")
    assert squashed.source["hl/newc/t"].sha256 == sha("newc v2")
    squashed.assert_case("hl/newc")


def test_hardlink_member_metadata_applies_to_the_whole_file(squashed):
    # The daemon chowns, chmods and stamps the inode as each member says.
    record = squashed.source["hl/meta/t"]
    assert (record.mode, record.uid, record.gid) == (0o600, 7, 8)
    squashed.assert_case("hl/meta")


def test_hardlink_to_a_symlink_stays_a_hardlink(squashed):
    assert squashed.source["hl/sym/t"].links == ("hl/sym/s", "hl/sym/t")
    squashed.assert_case("hl/sym")


def test_alias_of_a_target_the_profile_removes_keeps_the_bytes(pruned):
    assert "hl/many/a" not in pruned.expected
    assert pruned.expected["hl/many/b"].links == (
        "hl/many/b",
        "hl/many/c",
        "hl/many/sub/d",
    )
    pruned.assert_case("hl/many")


def test_every_hardlink_in_the_layer_points_to_an_earlier_member(slim_layer):
    seen, links = set(), 0
    for member in slim_layer:
        if member.islnk():
            links += 1
            assert member.linkname in seen, member.name
            assert seen and member.size == 0
        seen.add(member.name)
    assert links >= 8
    # hl/order/z was the file the others link to; "a" sorts first now.
    (order,) = [m for m in slim_layer if m.name == "hl/order/z"]
    assert order.islnk() and order.linkname == "hl/order/a"


# --- symlinks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["abs", "rel", "dangling", "to-deleted", "to-pruned", "self"]
)
def test_symlink_is_kept_as_it_was(squashed, name):
    assert squashed.source[f"sym/{name}"].kind == "symlink"
    squashed.assert_case(f"sym/{name}")


def test_symlink_into_a_removed_path_is_kept(pruned):
    assert "prof/pruned" not in pruned.expected
    pruned.assert_case("sym/to-pruned")


def test_symlink_into_a_removed_path_is_listed_in_the_report(pruned):
    listed = {
        item["path"]: item["target"] for item in pruned.report["dangling_symlinks"]
    }
    assert listed == {"/sym/to-pruned": "../prof/pruned"}


# --- metadata ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["bigid", "hugeid"])
def test_owner_ids_above_65535(squashed, name):
    assert squashed.source[f"meta/{name}"].uid > 65535
    squashed.assert_case(f"meta/{name}")


@pytest.mark.parametrize(
    "name, mode",
    [("suid", 0o4755), ("sgid", 0o2755), ("sticky", 0o1777), ("allbits", 0o7777)],
)
def test_setuid_setgid_and_sticky_bits(squashed, name, mode):
    assert squashed.source[f"meta/{name}"].mode == mode
    squashed.assert_case(f"meta/{name}")


def test_read_only_root_home(squashed):
    assert squashed.source["root"].mode == 0o550
    squashed.assert_case("root")


@pytest.mark.parametrize("name", ["old", "y2100", "dirmtime", "linkmtime"])
def test_mtime_is_kept(squashed, name):
    assert squashed.source[f"meta/{name}"].mtime not in (None, L.MTIME)
    squashed.assert_case(f"meta/{name}")


@pytest.mark.parametrize("name", ["meta/highcap", "caps/ping"])
def test_binary_security_capability_is_kept(squashed, name):
    ((key, value),) = squashed.source[name].xattrs
    assert key == "SCHILY.xattr.security.capability"
    assert value in (CAP_HIGH, CAP_NET_RAW)
    squashed.assert_case(name)


def test_xattrs_the_export_hides_reach_the_layer(slim_layer):
    (member,) = [m for m in slim_layer if m.name == "meta/userx"]
    assert member.pax_headers["SCHILY.xattr.user.note"] == "caf\udce9"


def test_file_capability_lets_a_non_root_user_ping(squashed, daemon_client):
    def ping(binary):
        return daemon_client.containers.run(
            squashed.ref,
            [binary, "-c1", "127.0.0.1"],
            user="65534",
            network_mode="none",
            remove=True,
            stderr=True,
        )

    # The same binary without the capability is refused, so this can fail.
    with pytest.raises(docker.errors.ContainerError, match="permission denied"):
        ping("/caps/plain/ping")
    assert b"1 packets received" in ping("/caps/ping")


# --- names ------------------------------------------------------------------


@pytest.mark.parametrize("name", [LONG, DEEP, "names/" + "l" * 150, "names/longtarget"])
def test_names_longer_than_100_bytes(squashed, name):
    assert name in squashed.source
    squashed.assert_case(name)


def test_name_not_utf8_is_kept_byte_for_byte(squashed, slim_layer):
    assert squashed.source[NOT_UTF8].sha256 == sha("not utf-8")
    names = {os.fsencode(member.name) for member in slim_layer}
    assert b"names/caf\xe9" in names and b"names/\xff\xfe/inner" in names
    squashed.assert_case(NOT_UTF8, "names/\udcff\udcfe")


@pytest.mark.parametrize("name", ["names/new\nline", "names/ünïcödé"])
def test_odd_characters_in_names(squashed, name):
    assert name in squashed.source
    squashed.assert_case(name)


def test_names_not_utf8_print_in_the_json_report(pruned):
    top = [item["path"] for item in pruned.report["top"]]
    assert "/prof/caf\udce9" in top


def test_names_not_utf8_print_in_the_text_report(rich, tmp_path):
    profile = tmp_path / "cases.toml"
    profile.write_text(f'description = "fidelity"\nremove = """\n{PROFILE}"""\n')
    # -vv: debug logging must print such names too.
    done = rich.run("-vv", "plan", "-p", str(profile), RICH)
    assert done.returncode == 0, done.stderr
    assert "/prof/caf\\xe9" in done.stdout


def test_dot_slash_and_bare_names_mix_across_layers(squashed):
    assert names_below(squashed.source, "mix") == ["a", "c", "sub", "sub/d"]
    assert squashed.source["mix/a"].sha256 == sha("2")
    squashed.assert_case("mix")


# --- special files ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        ("null", "chardev"),
        ("loop0", "blockdev"),
        ("fifo", "fifo"),
        ("empty", "file"),
        ("emptydir", "dir"),
    ],
)
def test_special_file_is_kept(squashed, name, kind):
    assert squashed.source[f"spec/{name}"].kind == kind
    squashed.assert_case(f"spec/{name}")


def test_sparse_file_made_by_docker_build(images, busybox_spec, slimmer, daemon_client):
    # The daemon stores a sparse file of a build step as plain bytes.
    # A config of its own gives the base an image id no other test shares,
    # so no other test's cleanup can remove it mid-build.
    config = {"Env": ["PATH=/bin"], "Labels": {"case": "sparse-build"}}
    base = images.load(busybox_spec(config=config), "slimmer-fidelity/base:1")
    dockerfile = (
        f"FROM {base}\nRUN busybox truncate -s 4M /holes && echo data | "
        "busybox dd of=/holes bs=1 seek=3000000 conv=notrunc\n"
    )
    built = images.track("slimmer-fidelity/built:1")
    daemon_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()),
        tag=built,
        network_mode="none",
        rm=True,
        forcerm=True,
    )
    slim = images.track("slimmer-fidelity/built:1-slim")
    slimmer("apply", "--no-smoke", built, check=0)
    source = export_view(daemon_client, built)
    assert source["holes"].size == 4 << 20
    assert_same_tree(daemon_client, built, slim)


# --- archive layouts, read by slimmer directly -----------------------------


def layout_layers():
    lower = [L.directory("a"), L.file("a/x", "x"), L.hardlink("a/y", "a/x")]
    lower += [L.directory("o"), L.file("o/old"), L.file(LONG, "long")]
    upper = [L.whiteout("a/x"), L.opaque("o"), L.file("o/new", "new")]
    return [base_layer(), [L.directory("names"), *lower], upper]


def slim_archive(client, archive: Path, workdir: Path, tag: str) -> str:
    """slimmer's reader, squash and writer on `archive`; loaded as `tag`."""
    saved = read_archive(archive, workdir)
    try:
        # The way apply loads a candidate: the layer made as it is sent.
        layer = StreamedLayer(squash(saved.layers), saved.layers, ())

        def config() -> bytes:
            made = assemble.new_config(saved.config, layer.diff_id, "fidelity")
            return assemble.config_bytes(made)

        stream = b"".join(layer_first_archive(layer.size, layer.chunks(), config))
    finally:
        saved.close()
    (image,) = client.images.load(stream)
    image.tag(*tag.split(":"))
    return tag


@pytest.fixture(scope="module")
def layout_source(daemon_client, tmp_path_factory):
    """The layout image loaded as `docker save` would give it: the oracle."""
    images = Images(daemon_client, tmp_path_factory.mktemp("layout"))
    try:
        ref = images.load(L.ImageSpec(layout_layers()), "slimmer-fidelity/layout:1")
        view = export_view(daemon_client, ref)
        yield images, expected_view(view, header_dir_mtimes(daemon_client, ref))
    finally:
        images.cleanup()


@pytest.mark.parametrize(
    "layout, compression",
    [
        ("legacy", "none"),
        ("legacy", "gzip"),
        ("legacy", "zstd"),
        ("oci", "none"),
        ("oci", "gzip"),
        ("oci", "zstd"),
        ("oci-bare", "gzip"),
    ],
)
def test_archive_layout_squashes_to_the_daemon_view(
    layout_source, daemon_client, tmp_path, layout, compression
):
    # docker 20.10 cannot load zstd layers nor a bare OCI layout, so each
    # archive is read by slimmer itself and its result compared with the
    # daemon's view of the same layers loaded plainly.
    images, expected = layout_source
    spec = L.ImageSpec(layout_layers(), compression=compression, layout=layout)
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(spec))
    tag = images.track(f"slimmer-fidelity/layout:{layout}-{compression}")
    slim_archive(daemon_client, archive, tmp_path, tag)
    assert compare_views(expected, export_view(daemon_client, tag)) == []


def test_pax_sparse_member_comes_out_as_the_file_the_daemon_shows(
    images, daemon_client, tmp_path
):
    chunks = [(0, b"head"), (2 << 20, b"x" * 5000)]
    spec = L.ImageSpec([base_layer(), [L.sparse("holes", 3 << 20, chunks)]])
    source = images.load(spec, "slimmer-fidelity/sparse-pax:1")
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(spec))
    slim = images.track("slimmer-fidelity/sparse-pax:1-slim")
    slim_archive(daemon_client, archive, tmp_path, slim)
    whole = bytearray(3 << 20)
    whole[:4], whole[2 << 20 : (2 << 20) + 5000] = b"head", b"x" * 5000
    assert export_view(daemon_client, source)["holes"].sha256 == sha(bytes(whole))
    # The daemon cannot save this image (see the next test): read the
    # header mtimes from the archive loaded.
    mtimes = archive_dir_mtimes(io.BytesIO(L.save_archive(spec)))
    expected = expected_view(export_view(daemon_client, source), mtimes)
    assert compare_views(expected, export_view(daemon_client, slim)) == []


def test_image_the_daemon_cannot_save_is_one_clear_error(images, slimmer):
    # The daemon loads a PAX sparse member but cannot `docker save` it
    # again: its stored tar-split no longer matches the plain file.
    spec = L.ImageSpec([base_layer(), [L.sparse("holes", 1 << 20, [(0, b"x")])]])
    ref = images.load(spec, "slimmer-fidelity/unsaveable:1")
    images.track(ref + "-slim")
    done = slimmer("apply", "--no-smoke", ref, check=1)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_manifest_with_null_repo_tags(images, daemon_client, slimmer):
    spec = L.ImageSpec(layout_layers(), config={"Env": ["CASE=untagged"]})
    (image,) = daemon_client.images.load(L.save_archive(spec))
    images.track(image.id)
    assert image.tags == []
    slim = images.track("slimmer-fidelity/untagged:slim")
    slimmer("apply", "--no-smoke", "-t", slim, image.id, check=0)
    assert_same_tree(daemon_client, image.id, slim)


@pytest.mark.skipif(
    not os.environ.get("SLIMMER_DIFF_IMAGE"),
    reason="set SLIMMER_DIFF_IMAGE=IMAGE to compare an image of your own",
)
def test_any_image_squashes_to_the_daemon_view(images, daemon_client, slimmer):
    image = os.environ["SLIMMER_DIFF_IMAGE"]
    slim = images.track("slimmer-fidelity/any:slim")
    slimmer("apply", "--no-smoke", "-t", slim, image, check=0, timeout=3600)
    result = compare_images(daemon_client, image, slim)
    assert result.wrong == 0, "\n".join(result.problems)
