"""The Docker daemon, reached through the docker SDK.

A thin layer: each call says what it takes, returns and raises, and turns
SDK errors into slimmer's own with `raise ... from`. Nothing here prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from slimmer.errors import DaemonError, ImageNotFound

log = logging.getLogger(__name__)

SAVE_CHUNK = 1 << 20
# Errors that mean the daemon went away or never answered.
_UNREACHABLE = (
    docker.errors.DockerException,
    requests.exceptions.ConnectionError,
    ConnectionError,
)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    size: int
    repo_tags: tuple[str, ...]
    config: dict  # the image's runtime config: Env, Cmd, User, ...


@dataclass(frozen=True)
class RunResult:
    exit_code: int  # -1 when the run timed out
    output: str
    timed_out: bool = False


class Daemon:
    """The local Docker Engine."""

    def __init__(self, client: docker.DockerClient | None = None):
        try:
            self.client = client or docker.from_env(timeout=600)
            self.client.ping()
        except _UNREACHABLE as exc:
            message = f"cannot reach the Docker daemon: {short_error(exc)}"
            raise DaemonError(message) from exc
        self.api = self.client.api

    def inspect(self, ref: str) -> ImageInfo:
        """The image `ref` names. Raises ImageNotFound or DaemonError."""
        try:
            attrs = self.api.inspect_image(ref)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(f"no such image: {ref}") from exc
        except _UNREACHABLE as exc:
            raise DaemonError(f"cannot inspect {ref}: {short_error(exc)}") from exc
        return ImageInfo(
            attrs["Id"],
            attrs.get("Size", 0),
            tuple(attrs.get("RepoTags") or ()),
            attrs.get("Config") or {},
        )

    def image_ids(self) -> set[str]:
        """The id of every image the daemon holds, untagged ones included."""
        try:
            return set(self.api.images(all=True, quiet=True))
        except _UNREACHABLE as exc:
            raise DaemonError(f"cannot list images: {short_error(exc)}") from exc

    def exists(self, ref: str) -> bool:
        try:
            self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return False
        except _UNREACHABLE as exc:
            raise DaemonError(f"cannot inspect {ref}: {short_error(exc)}") from exc
        return True

    def save(
        self, image_id: str, target: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """Write `docker save` of `image_id` to the file `target`."""
        with open(target, "wb") as sink:
            for chunk in self.save_stream(image_id):
                sink.write(chunk)
                if progress:
                    progress(len(chunk))

    def save_stream(self, image_id: str) -> Iterator[bytes]:
        """`docker save` of `image_id`, as the daemon sends it."""
        try:
            yield from self.api.get_image(image_id, chunk_size=SAVE_CHUNK)
        except _UNREACHABLE as exc:
            raise DaemonError(
                f"docker save of {image_id} failed: {short_error(exc)}"
            ) from exc

    def load(self, archive: Iterable[bytes]) -> None:
        """`docker load` the archive streamed from `archive`."""
        try:
            for message in self.api.load_image(archive, quiet=True):
                if "error" in message or "errorDetail" in message:
                    raise DaemonError(f"docker load failed: {message.get('error')}")
        except _UNREACHABLE as exc:
            raise DaemonError(f"docker load failed: {short_error(exc)}") from exc

    def tag(self, image_id: str, target: str) -> None:
        repository, tag = split_ref(target)
        try:
            self.api.tag(image_id, repository, tag, force=True)
        except _UNREACHABLE as exc:
            raise DaemonError(f"cannot tag {target}: {short_error(exc)}") from exc

    def remove_image(self, image_id: str) -> None:
        """Remove an image slimmer created; a missing one is not an error."""
        try:
            self.api.remove_image(image_id, force=True, noprune=False)
        except docker.errors.ImageNotFound:
            pass
        except _UNREACHABLE as exc:
            log.warning("could not remove image %s: %s", image_id, short_error(exc))


def split_ref(ref: str) -> tuple[str, str]:
    """`repo[:tag]` as (repo, tag); a colon in a registry port is no tag."""
    name = ref.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def short_error(exc: BaseException) -> str:
    """The first line of an error, for one-line messages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
