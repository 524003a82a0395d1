"""candidate.py's own parts that need no daemon."""

from __future__ import annotations

from slimmer.candidate import _batched


def test_send_batches_keep_every_byte_in_order():
    pieces = [b"a" * 700, b"b" * 3, b"c" * 5000, b"", b"d" * 10, b"e" * 4096]
    batches = list(_batched(iter(pieces), size=4096))
    assert b"".join(batches) == b"".join(pieces)
    assert [len(batch) for batch in batches] == [5703, 4106]


def test_a_big_chunk_with_nothing_pending_goes_as_it_is():
    big = b"x" * 10_000
    assert list(_batched(iter([big, b"y"]), size=4096)) == [big, b"y"]
