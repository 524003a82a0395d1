"""Write the slimmed image to a location other than the daemon.

- `docker-archive:PATH`: the legacy `docker save` layout, which every
  daemon version loads and skopeo reads: the config as `<hex>.json`, each
  layer as an uncompressed `<diff_id hex>/layer.tar`, and manifest.json.
  The same stream is what the pipeline sends the daemon to load.
- `oci:DIR[:TAG]`, `oci-archive:PATH` and `docker://`: ociwrite.py, with
  layers compressed by compress.py (gzip unless told zstd).

The daemon itself is written by the pipeline: it loads the candidate and
tags it only after the smoke tests pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from slimmer import compress, ociwrite
from slimmer.archive import COPY_BUFFER
from slimmer.assemble import config_bytes, image_id
from slimmer.errors import ArchiveError, SlimmerError
from slimmer.locations import DOCKER_ARCHIVE, OCI, OCI_ARCHIVE, REGISTRY, Location
from slimmer.ocilayout import LAYER_TYPES, Blob, PlatformImage, platform_text

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE


def docker_archive(
    config_blob: bytes, layers: list[Blob], repo_tags: Iterable[str] = ()
) -> Iterator[bytes]:
    """A legacy `docker save` archive of one image, yielded in chunks.

    `layers` are uncompressed tars named by their diff_ids (their
    `digest`), bottom first; a layer listed twice is stored once.
    """
    config_name = f"{hashlib.sha256(config_blob).hexdigest()}.json"
    names = [f"{blob.digest.removeprefix('sha256:')}/layer.tar" for blob in layers]
    manifest = [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": names}]
    yield from _small_member(config_name, config_blob)
    yield from _small_member("manifest.json", json.dumps(manifest).encode())
    stored = set()
    for name, blob in zip(names, layers, strict=True):
        if name not in stored:
            stored.add(name)
            yield from _file_member(name, blob)
    # Two zero blocks end a tar archive (POSIX ustar).
    yield b"\0" * (2 * BLOCK)


# The name of the one layer in a layer_first_archive; any path will do,
# since manifest.json names it.
STREAMED_LAYER = "layer/layer.tar"


def layer_first_archive(
    size: int, chunks: Iterable[bytes], config: Callable[[], bytes]
) -> Iterator[bytes]:
    """A `docker save` archive of a one-layer image whose layer is made as
    it goes: `chunks` must come to `size` bytes, and `config()` is asked
    for the config's bytes only after the last of them.

    The daemon unpacks the whole archive before it reads manifest.json, so
    the config and manifest may follow the layer.
    """
    yield _header(STREAMED_LAYER, size)
    yield from chunks
    yield b"\0" * (-size % BLOCK)
    config_blob = config()
    config_name = f"{hashlib.sha256(config_blob).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [], "Layers": [STREAMED_LAYER]}]
    yield from _small_member(config_name, config_blob)
    yield from _small_member("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * (2 * BLOCK)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


def _small_member(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data + b"\0" * (-len(data) % BLOCK)


def _file_member(name: str, blob: Blob) -> Iterator[bytes]:
    path, offset, size = blob.content()
    yield _header(name, size)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < size:
            chunk = os.pread(fd, min(COPY_BUFFER, size - done), offset + done)
            if not chunk:
                raise ArchiveError(f"layer {blob.digest} ends early in {path}")
            done += len(chunk)
            yield chunk
    finally:
        os.close(fd)
    yield b"\0" * (-size % BLOCK)


def write_docker_archive(
    path: Path, config_blob: bytes, layers: list[Blob], repo_tags=()
) -> None:
    """Write a `docker save` archive to `path`, whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as sink:
            for chunk in docker_archive(config_blob, layers, repo_tags):
                sink.write(chunk)
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def write(
    target: Location, images: list[PlatformImage], insecure=(), repo_tags=()
) -> str:
    """Write `images` to `target`; returns the top digest (or the image id).

    Raises SlimmerError when a docker-archive would need several images,
    RegistryError when a push fails, OSError when a file cannot be written.
    """
    if target.kind == DOCKER_ARCHIVE:
        if len(images) != 1:
            held = ", ".join(platform_text(image.platform) for image in images)
            raise SlimmerError(f"a docker-archive holds one image, not {held}")
        blob = config_bytes(images[0].config)
        write_docker_archive(target.path, blob, images[0].layers, repo_tags)
        return image_id(blob)
    if target.kind in (OCI, OCI_ARCHIVE):
        return ociwrite.write_layout(target, images)
    if target.kind == REGISTRY:
        return ociwrite.push(target, images, insecure)
    raise SlimmerError(f"slimmer does not write {target.kind} locations here")


def compressed(blob: Blob, method: str, workdir: Path, cache: dict[str, Blob]) -> Blob:
    """An uncompressed layer blob (a range of a file) as a compressed blob.

    The same diff_id is compressed once per run; the output does not
    depend on the cores used, so a rerun gives the same digest.
    """
    if blob.digest not in cache:
        name = "base-" + blob.digest.removeprefix("sha256:")[:24] + ".tar"
        done = compress.compress_layer(
            blob.path, workdir, method, part=(blob.offset, blob.size), name=name
        )
        cache[blob.digest] = Blob(
            done.digest, done.size, LAYER_TYPES[method], done.path
        )
    return cache[blob.digest]
