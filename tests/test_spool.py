"""spool.py: a saved image written without the bytes of removed files.

Synthetic `docker save` streams, cut into chunks of any size. The spool
must read like the whole archive everywhere but in its holes, leave out
exactly the removed files' bytes, and fill every hole from a second save
the moment anything reads one, refusing a second save that differs.
"""

from __future__ import annotations

import os
import tarfile
from bisect import bisect_right

import layers as L
import pytest
from test_prune import make_tree, ruleset

from slimmer import spool
from slimmer.archive import read_archive
from slimmer.errors import ArchiveError
from slimmer.prune import removes_file, select
from slimmer.squash import squash

LONG = "opt/" + "deep/" * 30 + "module.pyc"  # a PAX or GNU long name
RULES = ruleset(["*.pyc", "cache/", "!keep.pyc"])


def stack() -> list[list[L.Member]]:
    # Files of a few blocks: a hole saves disk only in whole blocks.
    lower = [L.directory("app"), L.file("app/main.py", b"print(1)\n" * 100)]
    lower += [L.file("app/main.pyc", b"\x42" * 30000), L.file(LONG, b"long" * 3000)]
    lower += [L.directory("cache"), L.file("cache/blob", b"c" * 50000)]
    lower += [L.file("keep.pyc", b"k" * 7000), L.file("empty.pyc")]
    lower += [L.file("small.pyc", b"s" * 900)]  # within the written head
    upper = [L.file("app/new.pyc", b"n" * 9000), L.whiteout("app/main.py")]
    upper += [L.hardlink("app/alias", "app/new.pyc")]
    return [lower, upper]


def chunks(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def spooled(tmp_path, spec, removes=RULES, size=4096):
    data = L.save_archive(spec)
    target = tmp_path / "spool.tar"
    rule = removes_file(removes) if removes is not None else None
    holes = spool.save(chunks(data, size), target, rule)
    return data, target, holes


def covered(holes, start: int, end: int) -> bool:
    """Whether [start, end) lies inside one hole."""
    index = bisect_right(holes.starts, start) - 1
    return index >= 0 and holes.starts[index] <= start and holes.ends[index] >= end


def outside_holes(data: bytes, holes) -> bytes:
    kept, pos = [], 0
    for start, end in zip(holes.starts, holes.ends, strict=True):
        kept.append(data[pos:start])
        pos = end
    return b"".join([*kept, data[pos:]])


@pytest.mark.parametrize("size", [1, 511, 512, 513, 4096, 1 << 20])
def test_spool_reads_like_the_stream_outside_its_holes(tmp_path, size):
    data, target, holes = spooled(tmp_path, L.ImageSpec(stack()), size=size)
    written = target.read_bytes()
    assert len(written) == len(data)
    assert len(holes) > 0
    assert outside_holes(written, holes) == outside_holes(data, holes)
    assert written.count(b"\x42" * 30000) == 0


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_holes_are_exactly_the_bytes_of_files_the_rules_remove(tmp_path, fmt):
    data, target, holes = spooled(tmp_path, L.ImageSpec(stack(), format=fmt))
    saved = read_archive(target, tmp_path)
    try:
        left_out = set()
        for index, layer in enumerate(saved.layers):
            with tarfile.open(fileobj=layer.open(), mode="r:") as tar:
                for info in tar:
                    start = layer.offset + info.offset_data
                    padded = info.size + (-info.size % 512)
                    if not holes.touches(start, max(padded, 1)):
                        continue
                    left_out.add((index, info.name))
                    # The head up to a file system block is written.
                    head = -(start + spool.HEAD) % 4096 + spool.HEAD
                    assert not holes.touches(start - 512, 512 + head)
                    assert covered(holes, start + head, start + padded)
                    assert not holes.touches(start + padded, 1)
    finally:
        saved.close()
    # keep.pyc is kept by its "!" line, empty.pyc has no bytes, small.pyc
    # fits in its head, the alias is a hardlink (its bytes are new.pyc's).
    assert left_out == {
        (0, "app/main.pyc"),
        (0, LONG),
        (0, "cache/blob"),
        (1, "app/new.pyc"),
    }


def test_left_out_bytes_take_no_disk(tmp_path):
    spec = L.ImageSpec([[L.file("big.pyc", os.urandom(4 << 20))]])
    data, target, holes = spooled(tmp_path, spec)
    assert holes.size >= (4 << 20) - 4096  # all but the written head
    assert target.stat().st_size == len(data)
    assert target.stat().st_blocks * 512 <= len(data) - (4 << 20) + (64 << 10)


def test_no_rule_copies_the_stream_byte_for_byte(tmp_path):
    data, target, holes = spooled(tmp_path, L.ImageSpec(stack()), removes=None)
    assert target.read_bytes() == data and len(holes) == 0


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_layer_is_copied_whole(tmp_path, compression):
    spec = L.ImageSpec(stack(), compression=compression)
    data, target, holes = spooled(tmp_path, spec)
    assert target.read_bytes() == data and len(holes) == 0


def test_a_bad_header_stops_leaving_out_and_copies_the_rest(tmp_path):
    files = [L.file("a.pyc", b"x" * 9000), L.file("b.pyc", b"y" * 9000)]
    layer = L.layer_tar(files)
    second = layer.index(b"b.pyc")  # its header; the name comes first
    broken = bytearray(layer)
    broken[second + 148 : second + 156] = b"garbage!"  # its header checksum
    spec = L.ImageSpec([[L.file("z", b"z")]])
    data = L.save_archive(spec).replace(L.layer_tar(spec.layers[0]), bytes(broken))
    target = tmp_path / "spool.tar"
    holes = spool.save(chunks(data, 700), target, removes_file(RULES))
    assert len(holes) == 1  # a.pyc only; the rest as it came
    assert outside_holes(target.read_bytes(), holes) == outside_holes(data, holes)


def test_a_name_that_escapes_the_root_is_never_left_out(tmp_path):
    spec = L.ImageSpec([[L.file("../../x.pyc", b"x" * 60000)]])
    data, target, holes = spooled(tmp_path, spec)
    assert target.read_bytes() == data and len(holes) == 0


def test_squash_of_the_spool_equals_squash_of_the_whole_archive(tmp_path):
    spec = L.ImageSpec(stack(), format=tarfile.GNU_FORMAT)
    data, target, _ = spooled(tmp_path, spec)
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    trees = []
    for path in (whole, target):
        saved = read_archive(path, tmp_path)
        try:
            trees.append(
                [(p, e.kind, e.size, e.mode) for p, e in squash(saved.layers).walk()]
            )
        finally:
            saved.close()
    assert trees[0] == trees[1]


def test_reading_a_left_out_file_fills_every_hole_from_a_second_save(tmp_path):
    data, target, holes = spooled(tmp_path, L.ImageSpec(stack()))
    saves = []

    def fill():
        saves.append(1)
        spool.fill(holes, chunks(data, 1000), target)

    holes.fill = fill
    saved = read_archive(target, tmp_path)
    try:
        for layer in saved.layers:
            layer.holes = holes
        tree = squash(saved.layers)
        assert saved.read(tree.get("keep.pyc")) == b"k" * 7000  # never left out
        assert saved.read(tree.get("app/main.pyc"), 0, 4) == b"\x42" * 4  # a head
        assert saves == []
        # The alias stays while the profile removes its target's name.
        assert saved.read(tree.get("app/alias")) == b"n" * 9000
        assert saves == [1]
        assert saved.read(tree.get(LONG)) == b"long" * 3000
        assert saves == [1]  # every hole was filled at once
    finally:
        saved.close()
    assert target.read_bytes() == data


@pytest.mark.parametrize("change", ["header", "shorter", "longer"])
def test_a_second_save_that_differs_is_refused(tmp_path, change):
    data, target, holes = spooled(tmp_path, L.ImageSpec(stack()))
    first = holes.starts[0]
    if change == "header":
        other = data[: first - 200] + b"X" + data[first - 199 :]
    elif change == "shorter":
        other = data[: holes.ends[-1] - 1]
    else:
        other = data + bytes(512)
    with pytest.raises(ArchiveError, match="changed"):
        spool.fill(holes, chunks(other, 999), target)


def test_removes_file_agrees_with_select_on_every_file():
    tree_paths = ["app/a.pyc", "app/keep.pyc", "cache/x/y", "cache/z.py", "b.py"]
    tree_paths += ["deep/cache/q", "deep/ok.txt", "lib/keep/inner.pyc"]
    rules = ruleset(["*.pyc", "cache/", "!keep.pyc"], keep=["lib/keep/"])
    tree = make_tree(*tree_paths)
    removed = select(tree, rules).removed
    removes = removes_file(rules)
    for path, entry in tree.walk():
        if entry.is_file:
            assert removes(path) == (path in removed), path
