"""Squash cases on synthetic layers, plus a property test against a model.

Each case builds layers with the factories in layers.py, squashes them
with slimmer, writes the one-layer result, and reads it back.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import layers as L
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import read_tree

from slimmer.archive import Layer, read_archive
from slimmer.errors import ArchiveError
from slimmer.squash import squash
from slimmer.writer import (
    HeaderReader,
    Names,
    StreamedLayer,
    header_bytes,
    member_info,
    write_layer,
)


def slim(tmp_path, *stack, removed=(), compression="none", layout="legacy"):
    """Squash `stack` (lists of members) and read the written layer back."""
    spec = L.ImageSpec(list(stack), compression=compression, layout=layout)
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(spec))
    saved = read_archive(archive, tmp_path)
    try:
        tree = squash(saved.layers)
        written = write_layer(tree, saved.layers, set(removed), tmp_path / "out.tar")
    finally:
        saved.close()
    with open(written.path, "rb") as result:
        return read_tree(result)


def names(view):
    return sorted(view)


def test_file_deleted_in_a_later_layer_is_gone(tmp_path):
    view = slim(tmp_path, [L.directory("a"), L.file("a/x", "1")], [L.whiteout("a/x")])
    assert names(view) == ["a"]


def test_directory_deleted_in_a_later_layer_takes_its_children(tmp_path):
    view = slim(
        tmp_path,
        [L.directory("a"), L.directory("a/d"), L.file("a/d/x")],
        [L.whiteout("a/d")],
    )
    assert names(view) == ["a"]


def test_file_deleted_then_recreated_has_the_new_content(tmp_path):
    view = slim(tmp_path, [L.file("x", "old")], [L.whiteout("x")], [L.file("x", "new")])
    assert view["x"].size == 3 and view["x"].sha256 == _sha("new")


def test_whiteout_and_readd_in_the_same_layer_keeps_the_readd(tmp_path):
    # A marker hides only what lower layers put there.
    view = slim(tmp_path, [L.file("x", "old")], [L.file("x", "new"), L.whiteout("x")])
    assert view["x"].sha256 == _sha("new")


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_opaque_directory_hides_lower_children_wherever_the_marker_sits(
    tmp_path, position
):
    upper = [L.directory("d"), L.file("d/new1"), L.file("d/new2")]
    index = {"first": 0, "middle": 2, "last": 3}[position]
    upper.insert(index, L.opaque("d"))
    view = slim(
        tmp_path,
        [L.directory("d"), L.file("d/old"), L.directory("d/sub"), L.file("d/sub/deep")],
        upper,
    )
    assert names(view) == ["d", "d/new1", "d/new2"]


def test_whiteout_matches_whole_name_only(tmp_path):
    view = slim(
        tmp_path,
        [L.directory("opt"), L.file("opt/foo"), L.file("opt/foobar")],
        [L.whiteout("opt/foo")],
    )
    assert names(view) == ["opt", "opt/foobar"]


def test_whiteout_stored_as_hardlink_still_hides(tmp_path):
    view = slim(
        tmp_path,
        [L.file("x"), L.file("marker")],
        [L.file(".wh..wh.plnk/1"), L.hardlink(".wh.x", ".wh..wh.plnk/1")],
    )
    assert "x" not in view and not any(".wh." in p for p in view)


def test_aufs_metadata_never_reaches_the_output(tmp_path):
    view = slim(
        tmp_path,
        [L.file("keep")],
        [
            L.directory(".wh..wh.plnk"),
            L.file(".wh..wh.aufs"),
            L.file(".wh..wh.plnk/123.456"),
        ],
    )
    assert names(view) == ["keep"]


def test_directory_replaced_by_symlink_drops_lower_children(tmp_path):
    view = slim(tmp_path, [L.directory("d"), L.file("d/x")], [L.symlink("d", "/tmp")])
    assert names(view) == ["d"] and view["d"].kind == "symlink"


def test_directory_replaced_by_file_drops_lower_children(tmp_path):
    view = slim(tmp_path, [L.directory("d"), L.file("d/x")], [L.file("d", "f")])
    assert names(view) == ["d"] and view["d"].kind == "file"


def test_file_replaced_by_directory(tmp_path):
    view = slim(tmp_path, [L.file("d", "f")], [L.directory("d"), L.file("d/y")])
    assert view["d"].kind == "dir" and names(view) == ["d", "d/y"]


def test_directory_over_directory_merges_and_takes_new_metadata(tmp_path):
    view = slim(
        tmp_path,
        [L.directory("d", mode=0o700), L.file("d/x")],
        [L.directory("d", mode=0o750, uid=7)],
    )
    assert names(view) == ["d", "d/x"] and view["d"].mode == 0o750
    assert view["d"].uid == 7


def test_hardlink_alias_keeps_old_content_after_target_is_replaced(tmp_path):
    view = slim(
        tmp_path, [L.file("a", "old"), L.hardlink("b", "a")], [L.file("a", "newer")]
    )
    assert view["b"].sha256 == _sha("old") and view["a"].sha256 == _sha("newer")


def test_hardlink_survives_whiteout_of_its_target(tmp_path):
    view = slim(
        tmp_path, [L.file("a", "data"), L.hardlink("b", "a")], [L.whiteout("a")]
    )
    assert names(view) == ["b"] and view["b"].sha256 == _sha("data")


def test_hardlink_target_removed_by_profile_leaves_alias_as_file(tmp_path):
    view = slim(
        tmp_path,
        [L.file("a", "data"), L.hardlink("b", "a"), L.hardlink("c", "a")],
        removed={"a"},
    )
    assert names(view) == ["b", "c"] and view["c"].sha256 == _sha("data")


def test_every_hardlink_in_output_points_to_an_earlier_member(tmp_path):
    spec = L.ImageSpec(
        [[L.file("z", "data"), L.hardlink("a", "z"), L.hardlink("m", "z")]]
    )
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(spec))
    saved = read_archive(archive, tmp_path)
    written = write_layer(squash(saved.layers), saved.layers, set(), tmp_path / "o")
    saved.close()
    seen = set()
    with tarfile.open(written.path) as result:
        for info in result:
            if info.islnk():
                assert info.linkname in seen
            seen.add(info.name)


def test_metadata_survives(tmp_path):
    # A file capability (cap_net_raw), binary as the kernel stores it.
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
    view = slim(
        tmp_path,
        [
            L.directory("root", mode=0o550),
            L.file("suid", mode=0o4755),
            L.file("sgid", mode=0o2755),
            L.directory("sticky", mode=0o1777),
            L.file("bigid", uid=70000, gid=80000),
            L.file("ping", mode=0o755, xattrs={"security.capability": cap}),
            L.file("old", mtime=123456789),
        ],
    )
    assert view["root"].mode == 0o550
    assert view["suid"].mode == 0o4755 and view["sgid"].mode == 0o2755
    assert view["sticky"].mode == 0o1777
    assert (view["bigid"].uid, view["bigid"].gid) == (70000, 80000)
    assert view["ping"].xattrs == (("SCHILY.xattr.security.capability", cap),)
    assert view["old"].mtime == 123456789


def test_long_and_non_utf8_names_survive(tmp_path):
    long_name = "d/" + "x" * 180
    odd = "caf\udce9"  # the byte 0xE9 alone, not UTF-8
    view = slim(tmp_path, [L.directory("d"), L.file(long_name, "1"), L.file(odd, "2")])
    assert long_name in view and odd in view


def test_dot_slash_and_bare_names_mix_across_layers(tmp_path):
    view = slim(
        tmp_path,
        [L.directory("./etc"), L.file("./etc/a", "1")],
        [L.file("etc/a", "2"), L.whiteout("./etc/b")],
    )
    assert names(view) == ["etc", "etc/a"] and view["etc/a"].sha256 == _sha("2")


def test_special_files_survive(tmp_path):
    view = slim(
        tmp_path,
        [
            L.directory("dev"),
            L.chardev("dev/null", 1, 3),
            L.blockdev("dev/loop0", 7, 0),
            L.fifo("pipe"),
            L.file("empty"),
            L.directory("emptydir"),
        ],
    )
    assert view["dev/null"].kind == "chardev" and view["dev/null"].device == (1, 3)
    assert view["dev/loop0"].device == (7, 0) and view["pipe"].kind == "fifo"
    assert view["empty"].size == 0 and view["emptydir"].kind == "dir"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("layout", ["legacy", "oci", "oci-bare", "oci-links"])
def test_compressed_layers_in_every_layout(tmp_path, compression, layout):
    view = slim(
        tmp_path,
        [L.file("a", "1")],
        [L.file("b", "2")],
        compression=compression,
        layout=layout,
    )
    assert names(view) == ["a", "b"]


def test_member_escaping_the_root_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="escapes"):
        slim(tmp_path, [L.file("../../etc/passwd", "x")])


def test_hardlink_escaping_the_root_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="escapes"):
        slim(tmp_path, [L.file("a"), L.hardlink("b", "../a")])


def test_symlink_targets_are_kept_verbatim_never_resolved(tmp_path):
    view = slim(
        tmp_path,
        [
            L.symlink("abs", "/etc/shadow"),
            L.symlink("rel", "../../../../etc"),
            L.symlink("dangling", "nowhere"),
        ],
    )
    assert view["abs"].link == "/etc/shadow" and view["rel"].link == "../../../../etc"


def big_layer(path, fmt) -> Layer:
    """A layer whose first member claims 9 GiB; its bytes are a hole on disk."""
    big, after = tarfile.TarInfo("big"), tarfile.TarInfo("after")
    big.size, after.size = 9 << 30, 5
    with open(path, "wb") as layer:
        layer.write(big.tobuf(fmt))
        layer.seek(big.size, os.SEEK_CUR)
        layer.write(after.tobuf(fmt) + L._pad(b"after") + b"\0" * 1024)
    fd = os.open(path, os.O_RDONLY)
    return Layer(path, 0, path.stat().st_size, "big", fd)


@pytest.mark.parametrize(
    "fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu-base-256"]
)
def test_member_over_8_gib_is_read_and_its_header_written_in_pax(tmp_path, fmt):
    # Only the headers are written: 9 GiB of bytes would take too long.
    layer = big_layer(tmp_path / "big.tar", fmt)
    try:
        tree = squash([layer])
        assert tree.get("after").size == 5
        reader = HeaderReader([layer])
        info = member_info(reader, Names(tree), "big", tree.get("big"))
        reader.close()
    finally:
        os.close(layer.fd)
    header = header_bytes(info)
    assert b" size=9663676416\n" in header
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 1024)) as parsed:
        assert (parsed.firstmember.name, parsed.firstmember.size) == ("big", 9 << 30)


@pytest.mark.parametrize("style", ["pax", "gnu"])
def test_sparse_member_is_written_as_the_plain_file(tmp_path, style):
    chunks = [(0, b"head"), (5000, b"middle" * 100), (20000, b"tail")]
    whole = bytearray(20004)
    for offset, chunk in chunks:
        whole[offset : offset + len(chunk)] = chunk
    view = slim(tmp_path, [L.sparse("d/sp", 20004, chunks, style=style)])
    assert view["d/sp"].size == 20004
    assert view["d/sp"].sha256 == hashlib.sha256(whole).hexdigest()
    assert not [k for k, _ in view["d/sp"].xattrs if "sparse" in k]
    assert b"GNU.sparse" not in (tmp_path / "out.tar").read_bytes()


@pytest.mark.parametrize("tags", [None, []], ids=["null", "empty"])
def test_manifest_without_repo_tags(tmp_path, tags):
    spec = L.ImageSpec([[L.file("a", "1")]], tags=tags)
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(spec))
    saved = read_archive(archive, tmp_path)
    saved.close()
    assert saved.repo_tags == [] and len(saved.layers) == 1


def test_opaque_marker_at_the_image_root_is_ignored(tmp_path):
    # overlayfs never reads the opaque xattr of a layer's root directory.
    spec = L.ImageSpec([[L.file("a"), L.directory("d")], [L.opaque(""), L.file("b")]])
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(spec))
    saved = read_archive(archive, tmp_path)
    try:
        paths = [path for path, _ in squash(saved.layers).walk()]
    finally:
        saved.close()
    assert paths == ["a", "b", "d"]


def test_hardlink_member_owner_mode_and_mtime_win(tmp_path):
    # The unpacker chowns, chmods and stamps the shared file per member.
    view = slim(
        tmp_path,
        [
            L.file("a", "x", mode=0o755, uid=5, mtime=100),
            L.hardlink("b", "a", mode=0o600, uid=7),
        ],
    )
    assert (view["a"].mode, view["a"].uid, view["a"].mtime) == (0o600, 7, L.MTIME)
    assert view["b"] == view["a"]


def test_hardlink_to_an_aufs_link_source_keeps_its_bytes(tmp_path):
    view = slim(
        tmp_path,
        [
            L.file(".wh..wh.plnk/7.8", "kept", mode=0o640),
            L.hardlink("x", ".wh..wh.plnk/7.8", mode=0o640),
            L.hardlink("y", ".wh..wh.plnk/7.8", mode=0o640),
        ],
    )
    assert names(view) == ["x", "y"] and view["x"].sha256 == _sha("kept")
    assert view["x"].links == ("x", "y")


def test_hardlinked_symlink_stays_one_file(tmp_path):
    view = slim(tmp_path, [L.symlink("s", "t"), L.hardlink("u", "s", mode=0o777)])
    assert view["u"].links == ("s", "u") and view["u"].link == "t"


def test_malformed_archive_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArchiveError):
        read_archive(broken, tmp_path)


def _sha(text):
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


# --- property test: slimmer's squash equals a simple model -----------------

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)


@st.composite
def layer_ops(draw):
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["file", "dir", "symlink", "whiteout", "opaque", "link"]
                ),
                PATHS,
                st.integers(0, 3),
            ),
            max_size=8,
        )
    )
    return ops


def build_members(ops):
    """Turn ops into valid members for one layer.

    A valid layer names each path once and never both hides a path and
    puts something at or below it: the daemon refuses such a layer.
    """
    members, used, hidden, leaves, files = [], set(), set(), set(), []
    for kind, path, value in ops:
        if path in used or _overlaps(path, hidden) or _overlaps(path, leaves):
            continue
        if kind in ("whiteout", "file", "symlink", "link") and _overlaps(path, used):
            continue
        if kind in ("file", "symlink", "link"):
            leaves.add(path)
        if kind == "link":
            # A hardlink names a file unpacked earlier in the same layer.
            if not files:
                continue
            members.append(L.hardlink(path, files[value % len(files)]))
        elif kind == "file":
            members.append(L.file(path, f"v{value}"))
            files.append(path)
        elif kind == "dir":
            members.append(L.directory(path, mode=0o700 + value))
        elif kind == "symlink":
            members.append(L.symlink(path, f"t{value}"))
        elif kind == "whiteout":
            members.append(L.whiteout(path))
            hidden.add(path)
        else:
            members.append(L.opaque(path))
        used.add(path)
    return members


def _overlaps(path, paths):
    return any(
        path == other or path.startswith(other + "/") or other.startswith(path + "/")
        for other in paths
    )


def model_apply(model, members):
    """The simple model: a flat dict, hides first, then adds in order.

    A path whose parent directory the layer does not describe gets a new
    0755 parent, which hides the lower directory's metadata.
    """
    lower = dict(model)
    described = {m.info.name for m in members if m.info.isdir()}
    markers = [
        m.info.name
        for m in members
        if m.info.name.rpartition("/")[2].startswith(".wh.")
    ]
    for name in markers:
        _imply_parents(lower, name, described)
        parent, _, base = name.rpartition("/")
        target = (
            parent
            if base == ".wh..wh..opq"
            else (f"{parent}/{base[4:]}" if parent else base[4:])
        )
        _drop_below(lower, target)
        if base != ".wh..wh..opq":
            lower.pop(target, None)
    for member in members:
        info = member.info
        if info.name in markers:
            continue
        _imply_parents(lower, info.name, described)
        if info.islnk():
            record = lower[info.linkname]
        elif info.isdir():
            record = ("dir", info.mode, "")
        elif info.issym():
            record = ("symlink", 0o777, info.linkname)
        else:
            record = ("file", info.mode, member.data.decode())
        if record[0] != "dir" or lower.get(info.name, ("",))[0] != "dir":
            _drop_below(lower, info.name)
        lower[info.name] = record
    return lower


def _imply_parents(model, name, described):
    parts = name.split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        if parent in described and model.get(parent, ("",))[0] == "dir":
            continue
        if model.get(parent, ("",))[0] != "dir":
            _drop_below(model, parent)
        model[parent] = ("dir", 0o755, "")


def _drop_below(model, path):
    for other in list(model):
        if other.startswith(path + "/"):
            del model[other]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(layer_ops(), min_size=1, max_size=4))
def test_squash_matches_the_in_memory_model(tmp_path_factory, stack):
    tmp_path = tmp_path_factory.mktemp("prop")
    model, layers = {}, []
    for ops in stack:
        members = build_members(ops)
        layers.append(members)
        model = model_apply(model, members)
    view = slim(tmp_path, *layers)
    simple = {
        path: (r.kind, r.mode if r.kind == "dir" else None, r.link or None)
        for path, r in view.items()
    }
    expected = {
        path: (
            kind,
            mode if kind == "dir" else None,
            link if kind == "symlink" else None,
        )
        for path, (kind, mode, link) in model.items()
    }
    assert simple == expected
    contents = {p: r.sha256 for p, r in view.items() if r.kind == "file"}
    assert contents == {p: _sha(r[2]) for p, r in model.items() if r[0] == "file"}


# --- malformed input is a clear error, never a silently smaller tree -------


def _archive_with_layer(tmp_path, blob: bytes, index=None):
    import json

    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    files = {"c.json": config, "l/layer.tar": blob}
    if index is None:
        manifest = [{"Config": "c.json", "RepoTags": None, "Layers": ["l/layer.tar"]}]
        files["manifest.json"] = json.dumps(manifest).encode()
    else:
        files["index.json"] = index
    path = tmp_path / "image.tar"
    path.write_bytes(L._outer_tar(files))
    return path


def _squash_file(tmp_path, path):
    saved = read_archive(path, tmp_path)
    try:
        return squash(saved.layers)
    finally:
        saved.close()


THREE = [L.file("a", "1"), L.file("b", "2"), L.file("c", "3")]


def test_member_header_with_a_bad_checksum_is_an_error(tmp_path):
    tar = L.layer_tar(THREE)
    broken = tar[:1024] + b"X" * 8 + tar[1032:]
    with pytest.raises(ArchiveError, match="bad member header"):
        _squash_file(tmp_path, _archive_with_layer(tmp_path, broken))


def test_layer_cut_inside_a_header_is_an_error(tmp_path):
    tar = L.layer_tar(THREE)
    with pytest.raises(ArchiveError, match="bad member header"):
        _squash_file(tmp_path, _archive_with_layer(tmp_path, tar[:1280]))


@pytest.mark.parametrize("method", ["gzip", "zstd"])
def test_truncated_compressed_layer_is_an_error(tmp_path, method):
    blob = L._compress(L.layer_tar(THREE), method)[:-20]
    with pytest.raises(ArchiveError, match="not a valid compressed stream"):
        read_archive(_archive_with_layer(tmp_path, blob), tmp_path)


def test_zstd_layer_of_several_frames_is_read_whole(tmp_path):
    tar = L.layer_tar(THREE)
    blob = L._compress(tar[:1024], "zstd") + L._compress(tar[1024:], "zstd")
    tree = _squash_file(tmp_path, _archive_with_layer(tmp_path, blob))
    assert sorted(tree.root.children) == ["a", "b", "c"]


def test_index_json_that_is_not_an_object_is_an_error(tmp_path):
    path = _archive_with_layer(tmp_path, L.layer_tar(THREE), index=b"[]")
    with pytest.raises(ArchiveError, match="malformed"):
        read_archive(path, tmp_path)


def test_decompressed_layers_never_clash_with_other_work_files(tmp_path):
    path = _archive_with_layer(tmp_path, L._compress(L.layer_tar(THREE), "gzip"))
    (tmp_path / "layer-0.tar").write_bytes(b"someone else's file")
    saved = read_archive(path, tmp_path)
    try:
        assert saved.layers[0].path.name.startswith("source-layer-")
        assert (tmp_path / "layer-0.tar").read_bytes() == b"someone else's file"
    finally:
        saved.close()


@pytest.mark.parametrize("removed", [(), ("a",), ("big", "a/x")])
def test_streamed_layer_is_the_written_layer_and_states_its_size(tmp_path, removed):
    # The size is stated before any byte is read, from the headers alone.
    long_name = "d/" + "n" * 150
    lower = [L.directory("a"), L.file("a/x", b"x" * 700), L.hardlink("a/y", "a/x")]
    lower += [L.file("big", os.urandom(3 << 20)), L.symlink("s", "a/x")]
    lower += [L.directory("d"), L.file(long_name, b"l", uid=3_000_000)]
    upper = [L.whiteout("a/x"), L.sparse("sp", 9000, [(0, b"s" * 10), (8000, b"e")])]
    archive = tmp_path / "image.tar"
    archive.write_bytes(L.save_archive(L.ImageSpec([lower, upper])))
    saved = read_archive(archive, tmp_path)
    try:
        tree = squash(saved.layers)
        written = write_layer(tree, saved.layers, set(removed), tmp_path / "out.tar")
        streamed = StreamedLayer(tree, saved.layers, set(removed))
        size = streamed.size
        data = b"".join(streamed.chunks())
    finally:
        saved.close()
    assert size == len(data) == written.size
    assert data == written.path.read_bytes()
    assert streamed.diff_id == written.diff_id
