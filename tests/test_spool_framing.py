"""The spool frames members as tarfile does, or leaves nothing out.

Each case builds a layer by hand whose member boundaries are easy to get
wrong (header-only types that state a size, a PAX size before a GNU long
name, old GNU sparse members with extension blocks, global PAX headers),
saves it through spool.save with the rule `*.pyc`, and compares the squash
and the written layer of the spool (holes filled on demand from the same
bytes) with those of the whole archive. A hole over a member header would
make the squash see an early end and drop the members after it.
"""

from __future__ import annotations

import io
import tarfile

import layers as L
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_prune import make_tree, ruleset
from test_spool import chunks

from slimmer import spool
from slimmer.archive import read_archive
from slimmer.errors import ArchiveError
from slimmer.prune import removes_file, select
from slimmer.squash import squash
from slimmer.writer import layer_size, write_layer

B = tarfile.BLOCKSIZE
RULES = ruleset(["*.pyc"])


def header(name, kind=tarfile.REGTYPE, size=0, fmt=tarfile.USTAR_FORMAT, **extra):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, 0o644, L.MTIME
    for key, value in extra.items():
        setattr(info, key, value)
    return info.tobuf(fmt)


def names_of(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer + bytes(2 * B))) as tar:
        return tar.getnames()


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % B)


def regular(name, data: bytes) -> bytes:
    return header(name, size=len(data)) + pad(data)


def kept_tail(count=12, size=3000) -> bytes:
    """Kept files after the trap; the spool's hole swallows their headers."""
    return b"".join(regular(f"d/k{n:02}", bytes([65 + n]) * size) for n in range(count))


def fake(size=40000) -> bytes:
    """One block that parses as the header of a removed file."""
    return header("evil.pyc", size=size)


def image_with(layer_tar: bytes) -> bytes:
    """A legacy `docker save` archive of one hand-made layer."""
    import json

    config = json.dumps(L.image_config(L.ImageSpec([]), [layer_tar])).encode()
    name = f"{L._sha(layer_tar)}/layer.tar"
    manifest = [{"Config": "c.json", "RepoTags": None, "Layers": [name]}]
    files = {"c.json": config, name: layer_tar}
    files["manifest.json"] = json.dumps(manifest).encode()
    return L._outer_tar(files)


def results(tmp_path, layer_tar: bytes):
    """slim_both on a one-layer archive of `layer_tar`."""
    return slim_both(tmp_path, image_with(layer_tar + bytes(2 * B)))


def slim_both(tmp_path, data: bytes, sizes=(4096, 4096)):
    """[(tree listing, written layer bytes, holes)] for the whole archive
    `data` and for its spool, saved and then filled in chunks of `sizes`.

    A refused squash gives its message as the listing, to compare. The
    layer's stated size must equal what is written.
    """
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    target = tmp_path / "spool.tar"
    holes = spool.save(chunks(data, sizes[0]), target, removes_file(RULES))
    holes.fill = lambda: spool.fill(holes, chunks(data, sizes[1]), target)
    out = []
    for n, path in enumerate((whole, target)):
        saved = read_archive(path, tmp_path)
        try:
            if path == target:
                for layer in saved.layers:
                    layer.holes = holes
            try:
                tree = squash(saved.layers)
            except ArchiveError as exc:
                out.append((f"refused: {exc}".replace(str(path), ""), b"", len(holes)))
                continue
            listing = [(p, e.kind, e.size) for p, e in tree.walk()]
            removed = select(tree, RULES).removed
            size = layer_size(tree, saved.layers, removed)
            written = write_layer(tree, saved.layers, removed, tmp_path / f"o{n}.tar")
            assert size == written.size
            out.append((listing, written.path.read_bytes(), len(holes)))
        finally:
            saved.close()
    return out


def assert_same(tmp_path, layer_tar):
    (tree_w, bytes_w, _), (tree_s, bytes_s, holes) = results(tmp_path, layer_tar)
    said = tree_s if isinstance(tree_s, str) else f"{len(tree_s)} paths"
    assert tree_s == tree_w, f"whole: {len(tree_w)} paths; spooled: {said}"
    assert bytes_s == bytes_w


# -- header-only members that state a size --------------------------------


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(header("d", tarfile.DIRTYPE, size=B), id="directory"),
        pytest.param(
            header("d/s", tarfile.SYMTYPE, size=B, linkname="x"), id="symlink"
        ),
        pytest.param(
            header("d/h", tarfile.LNKTYPE, size=B, linkname="a"), id="hardlink"
        ),
        pytest.param(header("d/f", tarfile.FIFOTYPE, size=B), id="fifo"),
        # An old-style regular file whose name ends in "/" is a directory.
        pytest.param(header("d/", tarfile.AREGTYPE, size=B), id="aregtype-slash"),
    ],
)
def test_a_header_only_member_with_a_size_does_not_desync_the_spool(tmp_path, first):
    # tarfile and Go's archive/tar skip no bytes after a directory, link,
    # device or fifo header whatever its size field says; the spool does.
    layer = regular("a", b"a") + first + regular("d/inner.tar", fake()) + kept_tail()
    assert_same(tmp_path, layer)


# -- an extended header before a GNU long name ----------------------------


def test_a_pax_size_before_a_gnu_long_name_does_not_desync_the_spool(tmp_path):
    # tarfile and Go read the long name by the 'L' header's own size and
    # give the PAX size to the file that follows; the spool reads the
    # long name by the PAX size too, and so lands inside the file's bytes.
    longname = b"d/" + b"n" * 150 + b".pyc\0"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    records = b"14 size=40960\n"
    pax.size = len(records)
    pax_member = pax.tobuf(tarfile.USTAR_FORMAT) + pad(records)
    gnu = tarfile.TarInfo("././@LongLink")
    gnu.type, gnu.size = tarfile.GNUTYPE_LONGNAME, len(longname)
    long_member = gnu.tobuf(tarfile.GNU_FORMAT) + pad(longname)
    target = header("short", size=0)  # the PAX size (40960) wins
    data = b"z" * (40960 - 2 * B) + fake() + b"z" * B
    layer = pax_member + long_member + target + data + kept_tail()
    names = names_of(layer)
    assert len(names) == 13 and names[0] == longname[:-1].decode()
    assert_same(tmp_path, layer)


# -- an old GNU sparse member with an extension block -----------------------


def test_an_old_gnu_sparse_member_with_extension_blocks(tmp_path):
    # GNU tar writes extension blocks after the header when a sparse file
    # has more than four pieces; its data starts after them.
    pieces = [(n * 8192, 512) for n in range(6)]
    size = sum(length for _, length in pieces)
    info = tarfile.TarInfo("d/sparse")
    info.type, info.size, info.mtime = tarfile.GNUTYPE_SPARSE, size, L.MTIME
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    for at, (offset, length) in enumerate(pieces[:4]):
        start = 386 + 24 * at
        block[start : start + 12] = tarfile.itn(offset, 12, tarfile.GNU_FORMAT)
        block[start + 12 : start + 24] = tarfile.itn(length, 12, tarfile.GNU_FORMAT)
    block[482] = 1  # isextended
    block[483:495] = tarfile.itn(6 * 8192, 12, tarfile.GNU_FORMAT)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    extension = bytearray(B)
    for at, (offset, length) in enumerate(pieces[4:]):
        extension[24 * at : 24 * at + 12] = tarfile.itn(offset, 12, tarfile.GNU_FORMAT)
        extension[24 * at + 12 : 24 * at + 24] = tarfile.itn(
            length, 12, tarfile.GNU_FORMAT
        )
    data = b"s" * (size - B) + fake()  # the last piece looks like a header
    layer = bytes(block) + bytes(extension) + data + kept_tail()
    # The layer is valid: tarfile lists every member.
    names = names_of(layer)
    assert names[-1] == "d/k11"
    assert_same(tmp_path, layer)


# -- a global PAX header ----------------------------------------------------


def test_a_global_pax_header_stops_leaving_bytes_out(tmp_path):
    # A global header makes tarfile read the next file as a PAX 0.1 sparse
    # file. The spool does not follow global headers: it copies the rest of
    # the layer whole, and a hardlink that keeps the file gets its bytes.
    globals_ = {"GNU.sparse.map": "0,8000", "GNU.sparse.realsize": "8000"}
    raw = tarfile.TarInfo._create_pax_generic_header(globals_, tarfile.XGLTYPE, "utf-8")
    body = b"Q" * 8000  # PAX sparse 0.1: the map is in the records
    member = tarfile.TarInfo("x.pyc")
    member.size, member.mtime = len(body), L.MTIME
    member.pax_headers = {"comment": "c"}  # a local header, no sparse record
    layer = raw + member.tobuf(tarfile.PAX_FORMAT) + pad(body)
    layer += header("keep", tarfile.LNKTYPE, linkname="x.pyc")
    (tree_w, bytes_w, _), (tree_s, bytes_s, holes) = results(tmp_path, layer)
    assert holes == 0 and tree_s == tree_w
    assert bytes_w.count(b"Q" * 8000) == 1
    assert bytes_s == bytes_w


# -- removes_file against select --------------------------------------------

NAMES = st.sampled_from(["a", "b", "x.pyc", "cache", "keep", "lib", "doc"])
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)
LINES = st.sampled_from(
    [
        "*.pyc", "!*.pyc", "cache/", "!cache/", "a/", "!a/b", "**/doc", "a/**",
        "!a/**/x.pyc", "lib/*", "!lib/keep", "/b", "b/", "**/cache/**", "*",
        "!*/", "x.pyc/", "!keep", "keep/", "a/**/b/",
    ]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(PATHS, min_size=1, max_size=12),
    st.lists(LINES, max_size=5),
    st.lists(LINES, max_size=3),
)
def test_removes_file_never_removes_what_select_keeps(paths, remove, keep):
    specs, seen = [], set()
    for path in paths:
        # make_tree cannot put a file where it made a directory.
        if any(s.startswith(path + "/") or path.startswith(s + "/") for s in seen):
            continue
        seen.add(path)
        specs.append(path)
    tree = make_tree(*specs)
    rules = ruleset(remove, keep)
    removed = select(tree, rules).removed
    removes = removes_file(rules)
    for path, entry in tree.walk():
        if entry.is_file:
            assert removes(path) == (path in removed), (path, remove, keep)


def test_layer_size_equals_the_written_size_for_odd_members(tmp_path):
    # Long names, a big uid, a hardlink whose first name goes, a sparse file.
    members = [
        L.directory("app"),
        L.file("app/" + "n" * 200, b"x" * 700, uid=3_000_000),
        L.file("app/first.pyc", b"f" * 5000),
        L.hardlink("app/second", "app/first.pyc"),
        L.sparse("app/holey", 20000, [(0, b"h" * 100), (16384, b"t" * 50)]),
        L.file("app/\udcff-odd", b"o" * 10),
    ]
    data = L.save_archive(L.ImageSpec([members]))
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    saved = read_archive(whole, tmp_path)
    try:
        tree = squash(saved.layers)
        removed = select(tree, RULES).removed
        size = layer_size(tree, saved.layers, removed)
        written = write_layer(tree, saved.layers, removed, tmp_path / "out.tar")
        assert size == written.size
    finally:
        saved.close()


def test_fill_refuses_a_second_save_with_a_changed_header(tmp_path):
    # The bytes before a hole are the file's written head; its header is
    # further back, and every written byte is checked.
    from test_spool import spooled, stack

    data, target, holes = spooled(tmp_path, L.ImageSpec(stack()))
    at = data.index(b"app/main.pyc\0")  # the member's header starts with it
    assert holes.touches(at + B, 30000) and not holes.touches(at, B)
    other = bytearray(data)
    other[at + 136 : at + 147] = b"77777777777"  # its mtime
    with pytest.raises(ArchiveError, match="changed"):
        spool.fill(holes, chunks(bytes(other), 999), target)


def test_a_deep_path_does_not_break_the_spool(tmp_path):
    # A PAX path of 1500 directories: the squash handles it; removes_file
    # asks its cached directory verdict recursively, one frame a level.
    deep = "/".join(["d"] * 1500) + "/x.pyc"
    spec = L.ImageSpec([[L.file(deep, b"x" * 9000), L.file("keep", b"k")]])
    data = L.save_archive(spec)
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    saved = read_archive(whole, tmp_path)
    try:
        tree = squash(saved.layers)
        assert deep in select(tree, RULES).removed
    finally:
        saved.close()
    target = tmp_path / "spool.tar"
    spool.save(chunks(data, 4096), target, removes_file(RULES))


# -- random ordinary stacks: spool and whole archive write the same layer ----

DIRS = ["app", "app/cache", "lib", "o" * 120, "caf\udce9"]
FILES = ["a.pyc", "b.py", "c", "long" * 30 + ".pyc", "\udcff.pyc", "z.so"]


@st.composite
def stacks(draw):
    out, files = [], []
    for _ in range(draw(st.integers(1, 3))):
        layer, used = [], set()
        for _ in range(draw(st.integers(1, 8))):
            parent = draw(st.sampled_from(DIRS))
            name = f"{parent}/{draw(st.sampled_from(FILES))}"
            if name in used:
                continue
            used.add(name)
            kind = draw(st.sampled_from(["file", "file", "link", "whiteout", "sparse"]))
            size = draw(st.sampled_from([0, 1, 100, 511, 512, 4000, 5000, 70000]))
            if kind == "link" and files:
                layer.append(L.hardlink(name, draw(st.sampled_from(files))))
            elif kind == "whiteout":
                layer.append(L.whiteout(name))
            elif kind == "sparse" and size:
                layer.append(L.sparse(name, size * 3, [(size, b"s" * size)]))
            else:
                layer.append(L.file(name, bytes([len(files) % 256]) * size))
                files.append(name)
        out.append(layer)
    return out


@settings(max_examples=400, deadline=None)
@given(stacks(), st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_random_stacks_write_the_same_layer_from_the_spool(
    tmp_path_factory, stack, fmt
):
    tmp_path = tmp_path_factory.mktemp("r")
    data = L.save_archive(L.ImageSpec(stack, format=fmt))
    out = [result[:2] for result in slim_both(tmp_path, data, sizes=(3000, 5000))]
    assert out[0] == out[1]
