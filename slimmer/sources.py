"""Open an image location for reading: one `Image` per platform.

Whatever the location, the pipeline gets the same shape: the
`archive.SavedImage` the squash reads (config dict and uncompressed layer
tars), the original layer blobs in the same order (what `--keep-base`
reuses), the config's exact bytes (its sha256 is the image id a daemon
would give it) and an `ImageInfo` for the report.

- a daemon ref is inspected and saved with `docker save`, as before;
- a `docker-archive:` is read in place by archive.py (both layouts);
- `oci:`, `oci-archive:` and `docker://` are read by ocilayout.py; a
  registry's blobs are downloaded into the work folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slimmer import spool
from slimmer.archive import SavedImage, read_archive
from slimmer.daemon import Daemon, ImageInfo
from slimmer.errors import ArchiveError, DaemonError, SlimmerError
from slimmer.locations import DAEMON, DOCKER_ARCHIVE, Location
from slimmer.ocilayout import (
    Blob,
    Source,
    matches,
    parse_platform,
    platform_text,
    uncompressed_blobs,
)

log = logging.getLogger(__name__)


class _Quiet:
    def step(self, name: str, total: int | None = None) -> None:
        log.info("%s", name)

    def advance(self, amount: int) -> None:
        pass


@dataclass
class Image:
    """One platform's image, read and ready to squash."""

    saved: SavedImage
    info: ImageInfo  # id, size (uncompressed layers off a daemon), tags
    platform: dict  # {"os": ..., "architecture": ..., ["variant": ...]}
    blobs: list[Blob]  # the original layer blobs, bottom first
    config_blob: bytes  # the config as stored; its sha256 is the image id
    on_daemon: bool  # the source is the daemon: it already has this image

    @property
    def diff_ids(self) -> list[str]:
        return list(self.saved.config["rootfs"]["diff_ids"])

    def plain_layers(self) -> list[Blob]:
        """The layers as uncompressed tars, named by their diff_ids."""
        for layer in self.saved.layers:
            layer.ensure(0, layer.size)  # copied whole: no hole may stay
        return uncompressed_blobs(self.saved)

    def close(self) -> None:
        self.saved.close()


@dataclass(frozen=True)
class Choice:
    """One image a location holds: its platform, if known before reading."""

    platform: dict | None
    descriptor: dict | None = None

    def text(self) -> str:
        return platform_text(self.platform) if self.platform else "its platform"


class Opened:
    """A source location, open: list its images, then read the chosen ones."""

    def __init__(
        self, location, workdir: Path, daemon, insecure=(), progress=None, removes=None
    ):
        """`removes(path)` says a regular file at `path` surely goes: a
        daemon source is then saved without its bytes (see spool.py)."""
        self.location, self.workdir, self.daemon = location, workdir, daemon
        self.progress = progress or _Quiet()
        self.removes = removes
        self._layout: Source | None = None
        if location.kind == DAEMON and daemon is None:
            raise DaemonError(f"{location} is on the Docker daemon, which is not here")
        if location.kind not in (DAEMON, DOCKER_ARCHIVE):
            self._layout = Source(location, workdir, insecure, self.progress.advance)

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._layout is not None:
            self._layout.store.close()

    def choices(self) -> list[Choice]:
        """Every image of the location; a daemon ref or archive holds one."""
        if self._layout is None:
            return [Choice(None)]
        return [Choice(p, d) for p, d in self._layout.platforms()]

    def read(self, choice: Choice) -> Image:
        """Read one image; raises ImageNotFound, ArchiveError, RegistryError."""
        if self.location.kind == DAEMON:
            return self._from_daemon()
        if self.location.kind == DOCKER_ARCHIVE:
            return self._from_archive(self.location.path)
        return self._from_layout(choice)

    def _from_daemon(self) -> Image:
        info = self.daemon.inspect(self.location.ref)
        self.progress.step("save", info.size)
        path = self.workdir / "source.tar"
        stream = self.daemon.save_stream(info.id)
        holes = spool.save(stream, path, self.removes, self.progress.advance)
        image = self._from_archive(path)
        image.info, image.on_daemon = info, True
        if holes:
            holes.fill = lambda: self._fill(holes, info.id, path)
            for layer in image.saved.layers:
                if layer.path == path:  # not a decompressed copy
                    layer.holes = holes
        return image

    def _fill(self, holes, image_id: str, path: Path) -> None:
        self.progress.step("save again: a kept file was left out", None)
        spool.fill(holes, self.daemon.save_stream(image_id), path)

    def _from_archive(self, path: Path) -> Image:
        self.progress.step("read", None)
        saved = read_archive(path, self.workdir)
        try:
            raw = archive_config(path, saved.config_digest)
            return _image(saved, raw, uncompressed_blobs(saved))
        except BaseException:
            saved.close()
            raise

    def _from_layout(self, choice: Choice) -> Image:
        total = _layers_size(self._layout, choice.descriptor)
        verb = "pull" if self.location.kind == "registry" else "read"
        self.progress.step(verb, total)
        read = self._layout.image(choice.descriptor, choice.platform)
        try:
            raw = self._layout.raw(read.manifest["config"])
            return _image(read.saved, raw, read.blobs, read.platform)
        except BaseException:
            read.close()
            raise


def _layers_size(layout: Source, descriptor: dict) -> int | None:
    try:
        manifest = layout.read_json(descriptor)
        return sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
    except (TypeError, ValueError, AttributeError):
        return None


def _image(saved, raw: bytes, blobs, platform=None) -> Image:
    config = saved.config
    info = ImageInfo(
        "sha256:" + hashlib.sha256(raw).hexdigest(),
        sum(layer.size for layer in saved.layers),
        tuple(saved.repo_tags),
        config.get("config") or {},
    )
    platform = platform or platform_of(config)
    return Image(saved, info, platform, list(blobs), raw, False)


def platform_of(config: dict) -> dict:
    # OCI image spec, "Image Configuration": os, architecture, variant.
    keys = ("os", "architecture", "variant")
    return {key: config[key] for key in keys if config.get(key)}


def archive_config(path: Path, config_digest: str) -> bytes:
    """The config's bytes, as a saved archive stores them.

    Both `docker save` layouts name the config by its sha256: the legacy
    one `<hex>.json`, the OCI one `blobs/sha256/<hex>`.
    """
    hexdigest = config_digest.removeprefix("sha256:")
    with _outer(path) as outer:
        for name in (f"{hexdigest}.json", f"blobs/sha256/{hexdigest}"):
            data = _member(outer, name)
            if data is not None:
                return data
    raise ArchiveError(f"{path}: the config {config_digest} is missing")


def archive_diff_ids(path: Path) -> list[str]:
    """The diff_ids of the image in a `docker save` archive.

    Reads only manifest.json and the config; no layer is touched.
    """
    try:
        with _outer(path) as outer:
            entry = json.loads(_member(outer, "manifest.json") or b"null")[0]
            config = json.loads(_member(outer, entry["Config"]) or b"null")
            return list(config["rootfs"]["diff_ids"])
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ArchiveError(f"malformed image archive {path}: {exc!r}") from exc


@contextlib.contextmanager
def _outer(path: Path) -> Iterator[tarfile.TarFile]:
    """The outer tar of a saved archive, its errors made ArchiveError."""
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed below
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError(f"cannot read image archive {path}: {exc}") from exc
    with tar:
        try:
            tar.getmembers()
        except (OSError, tarfile.TarError) as exc:
            raise ArchiveError(f"cannot read image archive {path}: {exc}") from exc
        yield tar


def _member(outer: tarfile.TarFile, name: str) -> bytes | None:
    wanted = name.removeprefix("./")
    for info in outer.getmembers():
        if info.isfile() and info.name.removeprefix("./") == wanted:
            return outer.extractfile(info).read()
    return None


def daemon_platform(daemon: Daemon) -> dict:
    """The platform the daemon runs containers for."""
    try:
        version = daemon.api.version()
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds
        raise DaemonError(f"cannot ask the Docker daemon its version: {exc}") from exc
    return {"os": version.get("Os", "linux"), "architecture": version.get("Arch", "")}


def select(
    choices: list[Choice], wanted: list[str], location: Location
) -> list[Choice]:
    """The choices whose known platform is one of `wanted` (all when none)."""
    if not wanted:
        return choices
    platforms = [parse_platform(text) for text in wanted]
    chosen = [
        c
        for c in choices
        if c.platform is None or any(matches(c.platform, p) for p in platforms)
    ]
    if not chosen:
        raise SlimmerError(f"{location} has no image for {', '.join(wanted)}")
    return chosen


def check_platform(image: Image, wanted: list[str], location: Location) -> None:
    """Refuse an image read from a daemon or archive that is not `wanted`."""
    platforms = [parse_platform(text) for text in wanted]
    if platforms and not any(matches(image.platform, p) for p in platforms):
        raise SlimmerError(
            f"{location} is {platform_text(image.platform)}, not {', '.join(wanted)}"
        )
