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
    return file(f"{directory_path}/.wh..wh..opq", mode=0o600)


def chardev(name, major, minor, mode=0o666):
    return Member(_info(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor))


def blockdev(name, major, minor, mode=0o660):
    return Member(_info(name, tarfile.BLKTYPE, mode, devmajor=major, devminor=minor))


def fifo(name, mode=0o644):
    return Member(_info(name, tarfile.FIFOTYPE, mode))


def layer_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=fmt, errors="surrogateescape"
    ) as archive:
        for member in members:
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
    layout: str = "legacy"  # legacy or oci


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
    tars = [layer_tar(members) for members in spec.layers]
    blobs = [_compress(t, spec.compression) for t in tars]
    config = json.dumps(image_config(spec, tars)).encode()
    files: dict[str, bytes] = {}
    if spec.layout == "oci":
        names = [f"blobs/sha256/{_sha(b)}" for b in blobs]
        config_name = f"blobs/sha256/{_sha(config)}"
    else:
        names = [f"{_sha(t)}/layer.tar" for t in tars]
        config_name = f"{_sha(config)}.json"
    files[config_name] = config
    files.update(zip(names, blobs, strict=True))
    manifest = [{"Config": config_name, "RepoTags": spec.tags, "Layers": names}]
    files["manifest.json"] = json.dumps(manifest).encode()
    if spec.layout == "oci":
        files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return _outer_tar(files)


def _outer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as outer:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            outer.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
