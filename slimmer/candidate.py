"""The candidate on the daemon: load it, tag it, or remove it again.

Loading streams a `docker save` archive (destinations.docker_archive) to
the daemon. Ctrl-C is held from the last byte sent until the daemon
answers, so that an image it made is known and can be removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from slimmer.assemble import config_bytes, image_id
from slimmer.daemon import Daemon
from slimmer.destinations import docker_archive, layer_first_archive
from slimmer.errors import DaemonError
from slimmer.ocilayout import LAYER_TYPES, Blob
from slimmer.smoke import DeferredInterrupt
from slimmer.writer import StreamedLayer, WrittenLayer

log = logging.getLogger(__name__)

PLAIN = LAYER_TYPES["none"]
SEND_BATCH = 1 << 20


@dataclass
class Candidate:
    """The new image: its layer, and its config once the layer's digest
    is known.

    A layer written to the work folder (a WrittenLayer) is known at once;
    a StreamedLayer is made on its way into `docker load`, so `id`,
    `config` and `config_blob` stay None until that load has sent it.
    """

    layer: WrittenLayer | StreamedLayer
    make_config: Callable[[str], dict]  # the config, given the layer's diff_id
    base: list[Blob] = field(default_factory=list)  # plain layers kept below
    id: str | None = None
    config: dict | None = None
    config_blob: bytes | None = None
    # The daemon had this image before: never remove it. True until checked.
    existed: bool = True

    def __post_init__(self):
        if self.layer.diff_id:
            self.finish()

    def finish(self) -> None:
        """Make the config, now that the layer's diff_id is known."""
        self.config = self.make_config(self.layer.diff_id)
        self.config_blob = config_bytes(self.config)
        self.id = image_id(self.config_blob)

    def layers(self) -> list[Blob]:
        """Every layer as an uncompressed tar, bottom first."""
        layer = self.layer
        return [*self.base, Blob(layer.diff_id, layer.size, PLAIN, layer.path)]

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.base) + self.layer.size


def load(daemon: Daemon, candidate: Candidate, progress, keep_file=False) -> None:
    """Load the candidate; a layer file goes unless `keep_file`.

    A streamed layer is written as it is sent. Its image id is known only
    at the end, so the images the daemon held before are listed first, to
    know whether the candidate was among them.
    """
    progress.step("load", candidate.layer.size)
    if isinstance(candidate.layer, StreamedLayer):
        before = daemon.image_ids()
        try:
            send(daemon, _streamed(candidate), progress)
        finally:
            # Also on Ctrl-C held until the daemon answered: the image it
            # made is then known, and removed unless it was there before.
            candidate.existed = candidate.id is None or candidate.id in before
        return
    candidate.existed = daemon.exists(candidate.id)
    send(daemon, docker_archive(candidate.config_blob, candidate.layers()), progress)
    if not keep_file:
        candidate.layer.path.unlink()


def _streamed(candidate: Candidate):
    layer = candidate.layer

    def config() -> bytes:
        candidate.finish()
        return candidate.config_blob

    return layer_first_archive(layer.size, layer.chunks(), config)


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
    for chunk in _batched(chunks):
        yield chunk
        progress.advance(len(chunk))
    # Every byte is with the daemon, which finishes the load even if we go:
    # hold Ctrl-C until it answers, so that the image it makes is removed.
    held.hold()


def _batched(chunks, size: int = SEND_BATCH):
    """The chunks joined into pieces of about `size` bytes.

    Each piece goes out as one HTTP chunk and one send(2): a layer of many
    small files would otherwise cost a few system calls per file.
    """
    pending, held = [], 0
    for chunk in chunks:
        if len(chunk) >= size and not pending:
            yield chunk
            continue
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def commit(daemon: Daemon, image: str, target: str, done: DeferredInterrupt) -> None:
    """Tag the candidate. `done` holds Ctrl-C from here on, and the caller
    releases it without raising once its work folder is gone: once the
    tag has moved the run is done, and a Ctrl-C must not undo or deny it."""
    done.hold()
    daemon.tag(image, target)


def discard(daemon: Daemon, candidate: Candidate) -> None:
    with DeferredInterrupt():
        if candidate.id and not candidate.existed:
            daemon.remove_image(candidate.id)


def remove_loaded(daemon: Daemon, loaded: list[str]) -> None:
    """Remove the sources load_source put on the daemon."""
    with DeferredInterrupt():
        for image_id in loaded:
            daemon.remove_image(image_id)
