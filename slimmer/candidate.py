"""The candidate on the daemon: load it, tag it, or remove it again.

Loading streams a `docker save` archive (destinations.docker_archive) to
the daemon. Ctrl-C is held from the last byte sent until the daemon
answers, so that an image it made is known and can be removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from slimmer.daemon import Daemon
from slimmer.destinations import docker_archive
from slimmer.errors import DaemonError
from slimmer.ocilayout import LAYER_TYPES, Blob
from slimmer.smoke import DeferredInterrupt
from slimmer.writer import WrittenLayer

log = logging.getLogger(__name__)

PLAIN = LAYER_TYPES["none"]


@dataclass
class Candidate:
    """An image written to the work folder, about to be loaded."""

    id: str
    config: dict
    config_blob: bytes
    layer: WrittenLayer
    base: list[Blob] = field(default_factory=list)  # plain layers kept below
    # The daemon had this image before: never remove it. True until checked.
    existed: bool = True

    def layers(self) -> list[Blob]:
        """Every layer as an uncompressed tar, bottom first."""
        layer = self.layer
        return [*self.base, Blob(layer.diff_id, layer.size, PLAIN, layer.path)]

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.layers())


def load(daemon: Daemon, candidate: Candidate, progress, keep_file=False) -> None:
    """Load the candidate; its layer file goes unless `keep_file`."""
    progress.step("load", candidate.layer.size)
    candidate.existed = daemon.exists(candidate.id)
    send(daemon, docker_archive(candidate.config_blob, candidate.layers()), progress)
    if not keep_file:
        candidate.layer.path.unlink()


def load_source(daemon: Daemon, image, progress, loaded: list[str]) -> str:
    """Put a source read from elsewhere on the daemon, untagged; its id.

    The id is added to `loaded` before the load starts, unless the daemon
    had the image already, so the caller removes exactly what came in.
    """
    if daemon.exists(image.info.id):
        return image.info.id
    progress.step("load the source for the smoke tests", image.info.size)
    loaded.append(image.info.id)
    send(daemon, docker_archive(image.config_blob, image.plain_layers()), progress)
    if not daemon.exists(image.info.id):
        raise DaemonError(f"the daemon loaded the source, but not as {image.info.id}")
    return image.info.id


def send(daemon: Daemon, stream, progress) -> None:
    held = DeferredInterrupt()
    try:
        daemon.load(_sent(stream, progress, held))
    except BaseException:
        held.release(reraise=False)
        raise
    held.release()


def _sent(chunks, progress, held: DeferredInterrupt):
    for chunk in chunks:
        yield chunk
        progress.advance(len(chunk))
    # Every byte is with the daemon, which finishes the load even if we go:
    # hold Ctrl-C until it answers, so that the image it makes is removed.
    held.hold()


def commit(daemon: Daemon, image: str, target: str) -> None:
    held = DeferredInterrupt()
    held.hold()
    try:
        daemon.tag(image, target)
    finally:
        # Once tagged, the run is done: a Ctrl-C now must not undo it.
        held.release(reraise=False)


def discard(daemon: Daemon, candidate: Candidate) -> None:
    with DeferredInterrupt():
        if not candidate.existed:
            daemon.remove_image(candidate.id)


def remove_loaded(daemon: Daemon, loaded: list[str]) -> None:
    """Remove the sources load_source put on the daemon."""
    with DeferredInterrupt():
        for image_id in loaded:
            daemon.remove_image(image_id)
