"""Synthetic images for the scaling run, made without `docker build`.

The layer streams straight into a `docker save` archive in the legacy
layout (manifest.json, `<config digest>.json`, `<id>/layer.tar`). The outer
header of the layer is written last, once its size and digest are known, so
the layer is neither held in memory nor copied twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

BLOCK = 512  # tar: every header and data area fills whole 512-byte blocks
MTIME = 1_700_000_000
CHUNK = 4 << 20
Member = tuple[tarfile.TarInfo, Iterable[bytes]]


class HashingWriter:
    """Write to `out`, counting and hashing every byte that passes."""

    def __init__(self, out):
        self.out, self.size, self.sha = out, 0, hashlib.sha256()

    def write(self, data) -> None:
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)


def _pad(size: int) -> bytes:
    return bytes(-size % BLOCK)


def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.size, member.mtime = kind, size, MTIME
    member.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    member.uname = member.gname = "root"
    return member


def write_layer(sink: HashingWriter, members: Iterable[Member]) -> int:
    """Write `members` as one tar into `sink`; returns how many."""
    count = 0
    for member, chunks in members:
        # GNU headers, not PAX: slimmer writes PAX, and a byte-equal result
        # would share the source's layer, so its load would unpack nothing.
        sink.write(member.tobuf(tarfile.GNU_FORMAT))
        written = 0
        for chunk in chunks:
            sink.write(chunk)
            written += len(chunk)
        if written != member.size:
            raise ValueError(f"{member.name}: wrote {written} of {member.size} bytes")
        sink.write(_pad(written))
        count += 1
    sink.write(bytes(2 * BLOCK))  # tar: the archive ends with two zero blocks
    return count


def _small_member(out, name: str, data: bytes) -> None:
    header = info(name, size=len(data)).tobuf(tarfile.GNU_FORMAT)
    out.write(header + data + _pad(len(data)))


def save_archive(path: Path, tag: str, members: Iterable[Member]) -> int:
    """Write a `docker save` archive of a one-layer image; returns the members."""
    with open(path, "w+b") as out:
        out.write(bytes(BLOCK))  # the layer's header, rewritten at the end
        layer = HashingWriter(out)
        count = write_layer(layer, members)
        out.write(_pad(layer.size))
        layer_name = f"{layer.sha.hexdigest()}/layer.tar"
        config = json.dumps(_config(f"sha256:{layer.sha.hexdigest()}")).encode()
        config_name = f"{hashlib.sha256(config).hexdigest()}.json"
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]
        _small_member(out, config_name, config)
        _small_member(out, "manifest.json", json.dumps(manifest).encode())
        out.write(bytes(2 * BLOCK))
        out.seek(0)
        # GNU format: one block, and sizes past 8 GiB in base-256.
        out.write(info(layer_name, size=layer.size).tobuf(tarfile.GNU_FORMAT))
    return count


def _config(diff_id: str) -> dict:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "bench"}],
    }


def many_small_files(
    count: int, size: int = 1024, per_dir: int = 625
) -> Iterator[Member]:
    """`count` files of `size` random bytes, `per_dir` to a folder, two deep."""
    pool = os.urandom(1 << 20)
    yield info("data", tarfile.DIRTYPE), ()
    for number in range(count):
        folder, index = divmod(number, per_dir)
        top, sub = divmod(folder, 64)
        if index == 0:
            if sub == 0:
                yield info(f"data/{top:03}", tarfile.DIRTYPE), ()
            yield info(f"data/{top:03}/{sub:02}", tarfile.DIRTYPE), ()
        start = number * 4099 % (len(pool) - size)
        data = pool[start : start + size]
        yield info(f"data/{top:03}/{sub:02}/f{number}.bin", size=size), (data,)


def few_huge_files(count: int, size: int) -> Iterator[Member]:
    """`count` files of `size` bytes each: a random block, rotated per chunk."""
    block = os.urandom(CHUNK)
    yield info("huge", tarfile.DIRTYPE), ()
    for number in range(count):
        yield info(f"huge/file{number}.bin", size=size), _rotated(block, size, number)


def _rotated(block: bytes, size: int, seed: int) -> Iterator[bytes]:
    # Each chunk starts at a new offset, so no two chunks are equal and a
    # compressor with a long window still finds nothing to fold.
    chunk = 0
    while size > 0:
        shift = (seed * 7919 + chunk * 4099) % len(block)
        data = block[shift:] + block[:shift]
        yield data[:size]
        size -= len(data)
        chunk += 1
