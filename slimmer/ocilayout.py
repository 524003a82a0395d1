"""Images in OCI layouts, OCI archives and registries, read and written.

The shapes:

- `Blob`: one content-addressed blob: its descriptor (digest, size,
  media type, annotations) and where its bytes are, a byte range of a
  local file. `origin` names the registry repository it came from, so a
  push to the same registry can mount it instead of sending it.
- `SourceImage`: one platform's image, read: `saved` is the
  `archive.SavedImage` the squash reads (config dict, uncompressed layer
  tars); `blobs` are the original layer blobs, in the same order, kept
  unchanged for `--keep-base`.
- `PlatformImage`: one platform's image to write: platform, config dict
  and its layer blobs, bottom first (ociwrite.py writes it).
- A candidate, `(platform dict, manifest descriptor)`, is what
  `Source.platforms()` lists, to pick one or slim each.

`Source`, `read` and `pull` read an `oci:` folder, an `oci-archive:` or a
Docker 25+ `docker-archive:` (it has an index.json), or a `docker://`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from slimmer import archive, compress
from slimmer.errors import ArchiveError, ImageNotFound, SlimmerError
from slimmer.locations import OCI, REGISTRY, Location
from slimmer.registry import (
    DOCKER_LIST,
    MANIFEST_TYPES,
    OCI_INDEX,
    RegistryClient,
)

REF_NAME = "org.opencontainers.image.ref.name"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    compress.NONE: "application/vnd.oci.image.layer.v1.tar",
    compress.GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    compress.ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}
# Docker's layer types name the same bytes; an OCI manifest uses OCI's.
DOCKER_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar": LAYER_TYPES[compress.NONE],
    "application/vnd.docker.image.rootfs.diff.tar.gzip": LAYER_TYPES[compress.GZIP],
}
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_DEPTH = 4


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str
    path: Path | None = None  # the file holding its bytes
    offset: int = 0  # where they start in that file
    annotations: dict = field(default_factory=dict)
    origin: str = ""  # "host/repository" it was pulled from, if any

    def descriptor(self) -> dict:
        media_type = DOCKER_LAYER_TYPES.get(self.media_type, self.media_type)
        found = {"mediaType": media_type, "digest": self.digest, "size": self.size}
        return found | ({"annotations": self.annotations} if self.annotations else {})

    def content(self):
        """What registry uploads take: (path, offset, size)."""
        if self.path is None:
            raise SlimmerError(f"blob {self.digest} has no local copy to send")
        return (self.path, self.offset, self.size)


@dataclass
class SourceImage:
    saved: archive.SavedImage
    platform: dict
    blobs: list[Blob]
    manifest: dict
    descriptor: dict

    def close(self) -> None:
        self.saved.close()


@dataclass
class PlatformImage:
    platform: dict  # {"os": ..., "architecture": ..., ["variant": ...]}
    config: dict
    layers: list[Blob]
    annotations: dict = field(default_factory=dict)


def parse_platform(text: str) -> dict:
    """`os/arch[/variant]` as an OCI platform dict."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise SlimmerError(f"bad platform {text!r}: use OS/ARCH[/VARIANT]")
    platform = {"os": parts[0], "architecture": parts[1]}
    return platform | ({"variant": parts[2]} if len(parts) == 3 else {})


def platform_text(platform: dict) -> str:
    keys = ("os", "architecture", "variant")
    return "/".join(platform[key] for key in keys if platform.get(key))


def matches(platform: dict, wanted: dict) -> bool:
    """Same OS and architecture; the variant too when `wanted` names one."""
    return all(platform.get(key) == value for key, value in wanted.items())


def uncompressed_blobs(saved: archive.SavedImage) -> list[Blob]:
    """Blobs for layers known only as plain tars (a legacy docker-archive).

    OCI image spec, "Layer": an uncompressed layer's digest is its diff_id.
    """
    diff_ids = saved.config["rootfs"]["diff_ids"]
    return [
        Blob(diff_id, layer.size, LAYER_TYPES[compress.NONE], layer.path, layer.offset)
        for diff_id, layer in zip(diff_ids, saved.layers, strict=True)
    ]


# -- where blobs are read from ---------------------------------------------


class _LayoutFolder:
    """An OCI image layout folder (OCI image spec, "Image Layout")."""

    def __init__(self, root: Path):
        self.root, self.name = root, f"oci:{root}"
        if not (root / "index.json").is_file():
            raise ArchiveError(f"{root} is not an OCI image layout: no index.json")

    def index(self) -> dict:
        return json.loads((self.root / "index.json").read_bytes())

    def where(self, descriptor: dict) -> tuple[Path, int, int]:
        path = self.root / blob_name(descriptor["digest"])
        if not path.is_file():
            raise ArchiveError(f"{self.name} lacks blob {descriptor['digest']}")
        return path, 0, path.stat().st_size

    def close(self) -> None:
        pass


class _LayoutTar:
    """An OCI layout inside a tar: oci-archive, or a Docker 25+ save."""

    def __init__(self, path: Path, kind: str):
        self.path, self.name = path, f"{kind}:{path}"
        try:
            self.members = archive.index_members(path)
        except (OSError, tarfile.TarError) as exc:
            raise ArchiveError(f"cannot read {self.name}: {exc}") from exc
        if "index.json" not in self.members:
            raise ArchiveError(f"{self.name} has no index.json (legacy layout?)")

    def index(self) -> dict:
        return json.loads(_read_range(self.path, *self.members["index.json"]))

    def where(self, descriptor: dict) -> tuple[Path, int, int]:
        name = blob_name(descriptor["digest"])
        if name not in self.members:
            raise ArchiveError(f"{self.name} lacks blob {descriptor['digest']}")
        return (self.path, *self.members[name])

    def close(self) -> None:
        pass


class _Registry:
    """A repository of a registry; blobs are downloaded into `cache`."""

    def __init__(self, location: Location, cache: Path, insecure):
        self.location, self.cache = location, cache
        self.name = str(location)
        self.client = RegistryClient(location.host, insecure)
        self.origin = f"{location.host}/{location.repository}"

    def index(self) -> dict:
        # The top document is an index or one manifest; make it an index.
        top = self.client.get_manifest(
            self.location.repository, self.location.reference
        )
        found = {
            "mediaType": top.media_type,
            "digest": top.digest,
            "size": len(top.body),
        }
        if self.location.tag:
            found["annotations"] = {REF_NAME: self.location.tag}
        return {"manifests": [found]}

    def where(self, descriptor: dict) -> tuple[Path, int, int]:
        digest = descriptor["digest"]
        target = self.cache / blob_name(digest).replace("/", "-")
        if not target.exists():
            if descriptor.get("mediaType") in MANIFEST_TYPES:
                body = self.client.get_manifest(self.location.repository, digest).body
                target.write_bytes(body)
            else:
                self.client.fetch_blob(self.location.repository, digest, target)
        return target, 0, target.stat().st_size

    def close(self) -> None:
        self.client.session.close()


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def blob_name(digest: str) -> str:
    # OCI image layout: blobs/<alg>/<encoded>; archive.py checks the digest.
    return archive.blob_path(digest)


def _read_range(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(offset)
        return stream.read(size)


# -- reading ---------------------------------------------------------------


class Source:
    """An image location opened for reading; use it as a context manager."""

    def __init__(self, location: Location, workdir: Path, insecure=(), on_blob=None):
        """`on_blob(size)` is called as each layer blob becomes local."""
        self.location, self.workdir = location, workdir
        self.on_blob = on_blob
        if location.kind == OCI:
            self.store = _LayoutFolder(location.path)
        elif location.kind == REGISTRY:
            self.store = _Registry(location, workdir, insecure)
        elif location.path is not None:
            self.store = _LayoutTar(location.path, location.kind)
        else:
            raise SlimmerError(f"{location} is not an OCI layout or a registry")
        self.origin = getattr(self.store, "origin", "")

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()

    def raw(self, descriptor: dict) -> bytes:
        """A small blob's bytes (a manifest, index or config), digest checked."""
        data = _read_range(*self.store.where(descriptor))
        digest = descriptor["digest"]
        if digest.startswith("sha256:") and digest_of(data) != digest:
            raise ArchiveError(f"{self.store.name}: blob {digest} fails its digest")
        return data

    def read_json(self, descriptor: dict) -> dict:
        """A manifest, index or config, checked against its digest."""
        try:
            document = json.loads(self.raw(descriptor))
        except ValueError as exc:
            raise ArchiveError(f"bad JSON blob in {self.store.name}: {exc}") from exc
        if not isinstance(document, dict):
            raise ArchiveError(f"bad JSON blob in {self.store.name}: not an object")
        return document

    def platforms(self) -> list[tuple[dict, dict]]:
        """(platform, manifest descriptor) for each image the location names."""
        found = []
        for descriptor in self._expand(self._chosen(), 0):
            platform = descriptor.get("platform")
            if not platform:
                manifest = self.read_json(descriptor)
                platform = _platform_of(self.read_json(manifest["config"]))
            found.append((platform, descriptor))
        return found

    def _chosen(self) -> list[dict]:
        entries = _checked_index(self.store)
        tag = self.location.tag if self.location.kind == OCI else None
        if tag is not None:
            entries = [e for e in entries if ref_name_of(e) == tag]
            if not entries:
                raise ImageNotFound(f"{self.store.name} has no image tagged {tag!r}")
        names = {ref_name_of(entry) for entry in entries}
        if len(names) > 1:
            listed = ", ".join(sorted(name or "(untagged)" for name in names))
            raise ArchiveError(
                f"{self.store.name} holds several images ({listed}); "
                "name one as oci:DIR:TAG"
            )
        if not entries:
            raise ArchiveError(f"{self.store.name} lists no image")
        return entries

    def _expand(self, descriptors: list[dict], depth: int) -> list[dict]:
        """Image manifests, found through nested indexes; no attestations."""
        if depth >= MAX_DEPTH:
            raise ArchiveError(f"{self.store.name}: indexes nest too deep")
        found = []
        for descriptor in descriptors:
            if descriptor.get("mediaType") in INDEX_TYPES:
                children = _descriptors(self.read_json(descriptor), self.store.name)
                found += self._expand(children, depth + 1)
            elif not _is_attestation(descriptor):
                found.append(descriptor)
        return found

    def image(self, descriptor: dict, platform: dict | None = None) -> SourceImage:
        """Read one manifest's image; layers land uncompressed in a subfolder."""
        manifest = self.read_json(descriptor)
        if not isinstance(manifest.get("config"), dict):
            raise ArchiveError(f"malformed image manifest in {self.store.name}")
        config = self.read_json(manifest["config"])
        layers = _descriptors(manifest, self.store.name, "layers")
        if not isinstance((config.get("rootfs") or {}).get("diff_ids"), list):
            raise ArchiveError(f"image config in {self.store.name} has no diff_ids")
        folder = Path(tempfile.mkdtemp(prefix="image-", dir=self.workdir))
        tags = [str(self.location)] if self.location.kind in (OCI, REGISTRY) else []
        saved = archive.SavedImage(config, manifest["config"]["digest"], [], tags)
        blobs = []
        try:
            for layer in layers:
                blob, piece = self._layer(layer, folder, saved)
                blobs.append(blob)
                saved.layers.append(piece)
                if self.on_blob:
                    self.on_blob(blob.size)
        except BaseException:
            saved.close()
            raise
        platform = platform or _platform_of(config)
        return SourceImage(saved, platform, blobs, manifest, descriptor)

    def _layer(self, descriptor, folder, saved) -> tuple[Blob, archive.Layer]:
        path, offset, size = self.store.where(descriptor)
        if descriptor.get("size", size) != size:
            raise ArchiveError(f"{self.store.name}: blob {descriptor['digest']} is cut")
        blob = Blob(
            descriptor["digest"],
            size,
            descriptor.get("mediaType", LAYER_TYPES[compress.NONE]),
            path,
            offset,
            dict(descriptor.get("annotations") or {}),
            self.origin,
        )
        fd = os.open(path, os.O_RDONLY)
        saved._fds.append(fd)
        piece = archive.Layer(path, offset, size, blob.digest, fd)
        try:
            plain = archive.uncompressed(piece, folder, saved)
        except (OSError, EOFError, ValueError) as exc:
            raise ArchiveError(f"cannot decompress layer {blob.digest}: {exc}") from exc
        if plain is not piece:  # the compressed blob is not read again
            saved._fds.remove(fd)
            os.close(fd)
        return blob, plain


def _checked_index(store) -> list[dict]:
    """The top index's entries, refused unless shaped as the spec says."""
    try:
        document = store.index()
    except ValueError as exc:
        raise ArchiveError(f"malformed index.json in {store.name}: {exc}") from exc
    return _descriptors(document, store.name)


def _descriptors(document, name: str, key: str = "manifests") -> list[dict]:
    # OCI image spec, "Image Index" and "Image Manifest": a list of
    # descriptors, each with at least a digest and a size.
    entries = document.get(key) if isinstance(document, dict) else None
    entries = [] if entries is None and key == "layers" else entries
    good = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("digest"), str) for e in entries
    )
    if not good:
        raise ArchiveError(f"malformed {key} list in {name}: not a list of descriptors")
    return entries


def _platform_of(config: dict) -> dict:
    # OCI image spec, "Image Configuration": os, architecture, variant.
    keys = ("os", "architecture", "variant")
    return {key: config[key] for key in keys if config.get(key)}


def ref_name_of(descriptor: dict) -> str | None:
    return (descriptor.get("annotations") or {}).get(REF_NAME)


def _is_attestation(descriptor: dict) -> bool:
    # BuildKit lists provenance as a manifest for platform unknown/unknown.
    annotations = descriptor.get("annotations") or {}
    kind = annotations.get("vnd.docker.reference.type")
    return kind == "attestation-manifest" or (
        (descriptor.get("platform") or {}).get("os") == "unknown"
    )


def read(
    location: Location, workdir: Path, platform: str | None = None, insecure=()
) -> SourceImage:
    """The one image at `location`, or the one for `platform` in an index."""
    with Source(location, workdir, insecure) as source:
        candidates = source.platforms()
        if platform:
            wanted = parse_platform(platform)
            candidates = [c for c in candidates if matches(c[0], wanted)]
            if not candidates:
                raise ImageNotFound(f"{location} has no image for {platform}")
        if len(candidates) > 1:
            names = ", ".join(platform_text(p) for p, _ in candidates)
            raise SlimmerError(f"{location} holds {names}; pick one with --platform")
        found, descriptor = candidates[0]
        return source.image(descriptor, found)


def pull(
    location: Location, workdir: Path, platform: str | None = None, insecure=()
) -> SourceImage:
    """`read` for a `docker://` location: blobs are downloaded to `workdir`."""
    if location.kind != REGISTRY:
        raise SlimmerError(f"{location} is not a registry location")
    return read(location, workdir, platform, insecure)
