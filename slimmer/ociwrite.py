"""Write images as OCI layouts, OCI archives, or to a registry.

Each platform's image gets an OCI image manifest; several platforms get
an image index too (OCI image spec, "Image Index"), each entry carrying
its platform. The shapes (`Blob`, `PlatformImage`) are in ocilayout.py.
Blobs are content-addressed, so one that is already there is skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
from pathlib import Path

from slimmer import archive, compress
from slimmer.assemble import config_bytes
from slimmer.errors import ArchiveError, SlimmerError
from slimmer.locations import OCI, OCI_ARCHIVE, REGISTRY, Location
from slimmer.ocilayout import (
    LAYER_TYPES,
    OCI_CONFIG,
    REF_NAME,
    Blob,
    PlatformImage,
    blob_name,
    digest_of,
    ref_name_of,
)
from slimmer.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient

log = logging.getLogger(__name__)
LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'  # OCI image spec, "oci-layout"


def layer_blob(tar: Path, workdir: Path, compression: str = compress.GZIP) -> Blob:
    """Compress a layer tar into a blob, described for a manifest."""
    done = compress.compress_layer(tar, workdir, compression)
    return Blob(done.digest, done.size, LAYER_TYPES[compression], done.path)


def _documents(images: list[PlatformImage]) -> tuple[dict, list[tuple]]:
    """The top descriptor, and each (digest, bytes, media type) to store:
    configs, manifests, and an index when there are several platforms."""
    if not images:
        raise SlimmerError("no image to write")
    documents, tops = [], []
    for image in images:
        config = config_bytes(image.config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _describe(config, OCI_CONFIG),
            "layers": [layer.descriptor() for layer in image.layers],
        }
        if image.annotations:
            manifest["annotations"] = image.annotations
        body = _json(manifest)
        documents += [(digest_of(config), config, OCI_CONFIG)]
        documents += [(digest_of(body), body, OCI_MANIFEST)]
        tops.append(_describe(body, OCI_MANIFEST) | {"platform": image.platform})
    if len(tops) == 1:
        return tops[0], documents
    body = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": tops})
    documents.append((digest_of(body), body, OCI_INDEX))
    return _describe(body, OCI_INDEX), documents


def _describe(data: bytes, media_type: str) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def _json(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def write_layout(
    target: Location, images: list[PlatformImage], ref_name: str | None = None
) -> str:
    """Write `images` to an `oci:` folder or an `oci-archive:` tar.

    The entry carries `ref_name` (default: the `oci:` tag) as its
    `org.opencontainers.image.ref.name`; in a folder it replaces an entry
    of the same name and keeps the others. Returns the top digest.
    """
    top, documents = _documents(images)
    ref_name = ref_name or target.tag
    if ref_name:
        top["annotations"] = {REF_NAME: ref_name}
    layers = {blob.digest: blob for image in images for blob in image.layers}
    if target.kind == OCI:
        _write_folder(target.path, top, documents, layers.values())
    elif target.kind == OCI_ARCHIVE:
        _write_tar(target.path, top, documents, layers.values())
    else:
        raise SlimmerError(f"{target} is not an OCI layout")
    log.info("wrote %s (%s)", target, top["digest"])
    return top["digest"]


def _write_folder(root: Path, top: dict, documents, layers) -> None:
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    layout = root / "oci-layout"
    if not layout.exists():
        layout.write_bytes(LAYOUT_FILE)
    for blob in layers:
        _store(root / blob_name(blob.digest), blob)
    for digest, body, _kind in documents:
        path = root / blob_name(digest)
        if not path.exists():
            _atomic_write(path, body)
    index_path = root / "index.json"
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_bytes())
    name = ref_name_of(top)
    kept = [e for e in index.get("manifests") or [] if ref_name_of(e) != name]
    index["manifests"] = [*kept, top]
    _atomic_write(index_path, _json(index))


def _store(path: Path, blob: Blob) -> None:
    """Put a blob's bytes at `path` unless they are already there."""
    if path.exists() and path.stat().st_size == blob.size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    source, offset, size = blob.content()
    partial = path.with_name(path.name + ".partial")
    with open(source, "rb") as reader, open(partial, "wb") as sink:
        reader.seek(offset)
        _copy(reader, sink, size)
    partial.rename(path)


def _copy(reader, sink, size: int) -> None:
    while size > 0:
        piece = reader.read(min(size, archive.COPY_BUFFER))
        if not piece:
            raise ArchiveError("a blob's file ended early")
        sink.write(piece)
        size -= len(piece)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def _write_tar(path: Path, top: dict, documents, layers) -> None:
    partial = path.with_name(path.name + ".partial")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as out:
            _add(out, "oci-layout", LAYOUT_FILE)
            for blob in layers:
                source, offset, size = blob.content()
                info = tarfile.TarInfo(blob_name(blob.digest))
                info.size, info.mode = size, 0o644
                with open(source, "rb") as reader:
                    reader.seek(offset)
                    out.addfile(info, reader)
            for digest, body in {d: body for d, body, _ in documents}.items():
                _add(out, blob_name(digest), body)
            _add(out, "index.json", _json(index))
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _add(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    out.addfile(info, io.BytesIO(data))


def push(
    target: Location, images: list[PlatformImage], insecure=(), client=None
) -> str:
    """Push `images` to a `docker://` location; returns the top digest.

    A blob the repository has is not sent again; one pulled from another
    repository of the same registry is mounted from there.
    """
    if target.kind != REGISTRY or target.digest:
        raise SlimmerError(f"cannot push to {target}: name a docker:// tag")
    client = client or RegistryClient(target.host, insecure)
    repository = target.repository
    top, documents = _documents(images)
    layers = {blob.digest: blob for image in images for blob in image.layers}
    for blob in layers.values():
        host, _, source = blob.origin.partition("/")
        mount = source if host == target.host else ""
        content = blob.content() if blob.path is not None else None
        how = client.push_blob(repository, blob.digest, content, mount)
        log.info("layer %s: %s", blob.digest, how)
    for digest, body, kind in documents:
        if kind == OCI_CONFIG:
            client.push_blob(repository, digest, body)
    # Children first: a registry refuses an index whose manifests it lacks.
    for digest, body, kind in documents:
        if kind != OCI_CONFIG and digest != top["digest"]:
            client.put_manifest(repository, digest, body, kind)
    body = next(body for digest, body, _ in documents if digest == top["digest"])
    client.put_manifest(repository, target.tag, body, top["mediaType"])
    log.info("pushed %s (%s)", target, top["digest"])
    return top["digest"]
