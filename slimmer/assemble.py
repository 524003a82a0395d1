"""Assemble the new image: its config, and the archive `docker load` reads.

The config is carried through as a dict, so keys slimmer does not know
survive. The archive uses the legacy `docker save` layout, which every
daemon version loads, and is streamed rather than written to disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from slimmer import __version__
from slimmer.archive import COPY_BUFFER

BLOCK = tarfile.BLOCKSIZE


def new_config(source: dict, diff_id: str, summary: str) -> dict:
    """The source config with one layer and one more history entry.

    OCI image spec, "Image Configuration": `rootfs.diff_ids` lists the
    uncompressed layer digests, and history entries marked `empty_layer`
    own no layer, so the old history stays readable without its layers.
    """
    config = copy.deepcopy(source)
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    history = [dict(item, empty_layer=True) for item in config.get("history", [])]
    history.append(
        {
            # The source's own date keeps the result reproducible: the
            # same image and profiles give the same image id.
            "created": source.get("created", "1970-01-01T00:00:00Z"),
            "created_by": f"slimmer {__version__}: {summary}",
            "comment": "squashed by slimmer; earlier entries own no layer",
        }
    )
    config["history"] = history
    return config


def config_bytes(config: dict) -> bytes:
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def image_id(config_blob: bytes) -> str:
    return f"sha256:{hashlib.sha256(config_blob).hexdigest()}"


def stream_archive(config_blob: bytes, layer: Path, diff_id: str) -> Iterator[bytes]:
    """The image as a `docker save` archive, yielded in chunks."""
    config_name = f"{hashlib.sha256(config_blob).hexdigest()}.json"
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [], "Layers": [layer_name]}]
    yield from _small_member(config_name, config_blob)
    yield from _small_member("manifest.json", json.dumps(manifest).encode())
    size = layer.stat().st_size
    yield _header(layer_name, size)
    with open(layer, "rb") as source:
        while chunk := source.read(COPY_BUFFER):
            yield chunk
    yield _padding(size)
    yield b"\0" * (2 * BLOCK)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _small_member(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data + _padding(len(data))
