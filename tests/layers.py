"""Factories for hand-made layers and images.

A layer is a list of members built by the small helpers below; `layer_tar`
turns it into tar bytes and `save_archive` into a `docker save` archive in
either layout, ready for `docker load` or for slimmer's reader directly.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

MTIME = 1_700_000_000


@dataclass
class Member:
    info: tarfile.TarInfo
    data: bytes = b""
    raw: bytes = b""  # a member already encoded, written as is (see sparse)


def _info(name, kind, mode, uid=0, gid=0, mtime=MTIME, **extra):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def file(name, data=b"", mode=0o644, uid=0, gid=0, xattrs=None, **extra):
    if isinstance(data, str):
        data = data.encode()
    info = _info(name, tarfile.REGTYPE, mode, uid, gid, size=len(data), **extra)
    for key, value in (xattrs or {}).items():
        info.pax_headers[f"SCHILY.xattr.{key}"] = value
    return Member(info, data)


def directory(name, mode=0o755, uid=0, gid=0, **extra):
    return Member(_info(name, tarfile.DIRTYPE, mode, uid, gid, **extra))


def symlink(name, target, **extra):
    return Member(_info(name, tarfile.SYMTYPE, 0o777, linkname=target, **extra))


def hardlink(name, target, mode=0o644, **extra):
    return Member(_info(name, tarfile.LNKTYPE, mode, linkname=target, **extra))


def whiteout(path):
    """Hide `path` of the lower layers (OCI image spec, "Whiteouts")."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o600)


def opaque(directory_path):
    """Hide every lower child of a directory ("Opaque Whiteout")."""
    prefix = f"{directory_path}/" if directory_path else ""
    return file(f"{prefix}.wh..wh..opq", mode=0o600)


def chardev(name, major, minor, mode=0o666):
    return Member(_info(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor))


def blockdev(name, major, minor, mode=0o660):
    return Member(_info(name, tarfile.BLKTYPE, mode, devmajor=major, devminor=minor))


def fifo(name, mode=0o644):
    return Member(_info(name, tarfile.FIFOTYPE, mode))


def sparse(name, size, chunks, mode=0o644, style="pax", mtime=MTIME):
    """A sparse file of `size` bytes holding `chunks` [(offset, bytes)].

    style "pax" is GNU tar's PAX format 1.0 (a map in the data, which the
    daemon reads); "gnu" is the old GNU 'S' member, which it refuses.
    """
    data = b"".join(chunk for _, chunk in chunks)
    if style == "gnu":
        return Member(None, raw=_gnu_sparse(name, size, chunks, mode, mtime))
    # GNU tar manual, "PAX Format, Versions 1.0": decimal numbers, one a
    # line: the entry count, then offset and size of each data chunk.
    table = f"{len(chunks)}\n" + "".join(f"{o}\n{len(c)}\n" for o, c in chunks)
    body = _pad(table.encode()) + data
    stand_in = f"GNUSparseFile.0/{name.rpartition('/')[2]}"
    info = _info(stand_in, tarfile.REGTYPE, mode, mtime=mtime)
    info.size = len(body)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(size),
    }
    return Member(None, raw=info.tobuf(tarfile.PAX_FORMAT) + _pad(body))


def _gnu_sparse(name, size, chunks, mode, mtime) -> bytes:
    # GNU tar manual, "Old GNU Format": up to four (offset, size) pairs in
    # the header from byte 386, the real size at byte 483.
    assert len(chunks) <= 4, "more chunks need extension headers"
    info = _info(name, tarfile.GNUTYPE_SPARSE, mode, mtime=mtime)
    info.size = sum(len(chunk) for _, chunk in chunks)
    encoded = info.tobuf(tarfile.GNU_FORMAT)
    header = bytearray(encoded[-tarfile.BLOCKSIZE :])
    for at, (offset, chunk) in enumerate(chunks):
        start = 386 + 24 * at
        header[start : start + 12] = tarfile.itn(offset, 12, tarfile.GNU_FORMAT)
        header[start + 12 : start + 24] = tarfile.itn(
            len(chunk), 12, tarfile.GNU_FORMAT
        )
    header[483:495] = tarfile.itn(size, 12, tarfile.GNU_FORMAT)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    long_name = encoded[: -tarfile.BLOCKSIZE]
    return long_name + bytes(header) + _pad(b"".join(c for _, c in chunks))


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def layer_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=fmt, errors="surrogateescape"
    ) as archive:
        for member in members:
            if member.raw:
                archive.fileobj.write(member.raw)
                archive.offset += len(member.raw)
                continue
            archive.addfile(
                member.info, io.BytesIO(member.data) if member.data else None
            )
    return buffer.getvalue()


@dataclass
class ImageSpec:
    layers: list[list[Member]]
    config: dict = field(default_factory=dict)  # the runtime "config" part
    tags: list[str] | None = None
    compression: str = "none"  # none, gzip, zstd
    # legacy; oci (Docker 25+); oci-bare (no manifest.json); oci-links (the
    # manifest names legacy <id>/layer.tar symlinks into blobs/)
    layout: str = "legacy"
    format: int = tarfile.PAX_FORMAT  # of the layer tars


def _compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=1)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_config(spec: ImageSpec, layer_tars: list[bytes]) -> dict:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": spec.config,
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{_sha(t)}" for t in layer_tars],
        },
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
            for i in range(len(layer_tars))
        ],
    }


def save_archive(spec: ImageSpec) -> bytes:
    """A `docker save` archive of `spec`, in its layout."""
    tars = [layer_tar(members, spec.format) for members in spec.layers]
    blobs = [_compress(t, spec.compression) for t in tars]
    config = json.dumps(image_config(spec, tars)).encode()
    files: dict[str, bytes] = {}
    if spec.layout.startswith("oci"):
        names = [f"blobs/sha256/{_sha(b)}" for b in blobs]
        config_name = f"blobs/sha256/{_sha(config)}"
    else:
        names = [f"{_sha(t)}/layer.tar" for t in tars]
        config_name = f"{_sha(config)}.json"
    files[config_name] = config
    files.update(zip(names, blobs, strict=True))
    if spec.layout.startswith("oci"):
        files.update(_oci_index(spec, config, blobs))
    links = {}
    if spec.layout == "oci-links":
        # Legacy names kept as symlinks to the blobs that hold the layers.
        links = {
            f"{_sha(t)}/layer.tar": f"../{n}" for t, n in zip(tars, names, strict=True)
        }
        names = list(links)
    if spec.layout != "oci-bare":
        manifest = [{"Config": config_name, "RepoTags": spec.tags, "Layers": names}]
        files["manifest.json"] = json.dumps(manifest).encode()
    return _outer_tar(files, links)


def _oci_index(spec: ImageSpec, config: bytes, blobs: list[bytes]) -> dict:
    """index.json and the image manifest blob (OCI image-layout spec)."""
    suffix = {"gzip": "+gzip", "zstd": "+zstd"}.get(spec.compression, "")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("config.v1+json", config),
        "layers": [_descriptor(f"layer.v1.tar{suffix}", blob) for blob in blobs],
    }
    blob = json.dumps(manifest).encode()
    descriptor = _descriptor("manifest.v1+json", blob)
    if spec.tags:
        descriptor["annotations"] = {"io.containerd.image.name": spec.tags[0]}
    index = {"schemaVersion": 2, "manifests": [descriptor]}
    return {
        f"blobs/sha256/{_sha(blob)}": blob,
        "index.json": json.dumps(index).encode(),
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
    }


def _descriptor(kind: str, blob: bytes) -> dict:
    return {
        "mediaType": f"application/vnd.oci.image.{kind}",
        "digest": f"sha256:{_sha(blob)}",
        "size": len(blob),
    }


def _outer_tar(files: dict[str, bytes], links=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as outer:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            outer.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            outer.addfile(_info(name, tarfile.SYMTYPE, 0o777, linkname=target))
    return buffer.getvalue()
