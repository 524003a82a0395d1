"""Where an image is read from or written to: an image location.

The text forms follow skopeo's transport names, so a user can paste the
same words into either tool:

- `REF` (a bare image ref): the local Docker daemon;
- `docker-archive:PATH`: a `docker save` archive, either layout;
- `oci-archive:PATH`: a tar of an OCI image layout;
- `oci:DIR[:TAG]`: an OCI image layout folder; TAG is the manifest's
  `org.opencontainers.image.ref.name` annotation;
- `docker://HOST/REPO[:TAG][@DIGEST]`: a registry, through the OCI
  distribution API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from slimmer.daemon import split_ref
from slimmer.errors import EXIT_USAGE, SlimmerError

DAEMON = "daemon"
DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"
OCI = "oci"
REGISTRY = "registry"

SUFFIX = "-slim"

# distribution/reference grammar: a path component, a tag and a digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
# An image id, short or whole, as the daemon accepts it in place of a ref.
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")
# A DNS name or IPv4 address, or a bracketed IPv6 address; then a port.
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
)
# skopeo transports slimmer does not read or write.
_UNSUPPORTED = ("dir", "containers-storage", "ostree", "sif", "tarball")


class LocationError(SlimmerError):
    """The text of an image location is malformed: a usage error."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Location:
    """A parsed image location; `str()` gives back its canonical text."""

    kind: str
    path: Path | None = None  # docker-archive, oci-archive, oci
    ref: str = ""  # daemon: the image ref as typed
    host: str = ""  # registry: host[:port]
    repository: str = ""  # registry: the repository name
    tag: str | None = None  # registry tag, or the oci ref.name
    digest: str | None = None  # registry: pinned manifest digest

    @property
    def reference(self) -> str:
        """What a registry's manifest URL names: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        if self.kind == DAEMON:
            return self.ref
        if self.kind == REGISTRY:
            text = f"docker://{self.host}/{self.repository}"
            text += f":{self.tag}" if self.tag else ""
            return text + (f"@{self.digest}" if self.digest else "")
        text = f"{self.kind}:{self.path}"
        return text + (f":{self.tag}" if self.kind == OCI and self.tag else "")


def parse_location(text: str) -> Location:
    """The location `text` names. Raises LocationError when it is malformed."""
    if not text:
        raise LocationError("bad image location: it is empty")
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme != "docker":
            raise LocationError(f"unsupported image location {text!r}: use docker://")
        return _parse_registry(text, rest)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in (DOCKER_ARCHIVE, OCI_ARCHIVE):
        return Location(prefix, path=_path(text, rest))
    if sep and prefix == OCI:
        return _parse_oci(text, rest)
    if sep and prefix == "docker-daemon":
        # skopeo's name for the local daemon.
        return _parse_daemon(text, rest)
    if sep and prefix in _UNSUPPORTED:
        raise LocationError(f"slimmer cannot read or write {prefix}: locations")
    return _parse_daemon(text, text)


def _path(text: str, rest: str) -> Path:
    if not rest:
        raise LocationError(f"bad image location {text!r}: the path is missing")
    return Path(rest)


def _parse_oci(text: str, rest: str) -> Location:
    # As skopeo: the first colon ends the folder, so a tag may hold colons.
    folder, sep, tag = rest.partition(":")
    if sep and not tag:
        raise LocationError(f"bad image location {text!r}: empty tag")
    return Location(OCI, path=_path(text, folder), tag=tag or None)


def _parse_daemon(text: str, ref: str) -> Location:
    name, _, digest = ref.partition("@")
    if not (_IMAGE_ID.fullmatch(ref) or _valid_name(name)) or (
        digest and not _DIGEST.fullmatch(digest)
    ):
        raise LocationError(
            f"bad image ref {text!r}: expected [HOST/]REPO[:TAG][@DIGEST] "
            "or an image id"
        )
    return Location(DAEMON, ref=ref)


def _valid_name(name: str) -> bool:
    """distribution/reference: [host/]repository[:tag], at most 255 long."""
    repository, tag = _split_tag(name)
    if tag is not None and not _TAG.fullmatch(tag):
        return False
    parts = repository.split("/")
    if len(parts) > 1 and (
        "." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
    ):
        if not _HOST.fullmatch(parts[0]):
            return False
        parts = parts[1:]
    path = "/".join(parts)
    return len(repository) <= 255 and bool(_REPOSITORY.fullmatch(path))


def _parse_registry(text: str, rest: str) -> Location:
    host, slash, remainder = rest.partition("/")
    # Docker's rule: the first component is a host only if it has a dot or
    # a port, or is localhost. slimmer never guesses Docker Hub.
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise LocationError(
            f"bad image location {text!r}: name the registry, "
            "as docker://HOST/REPO[:TAG]"
        )
    if not _HOST.fullmatch(host):
        raise LocationError(f"bad image location {text!r}: bad host {host!r}")
    name, _, digest = remainder.partition("@")
    repository, tag = _split_tag(name)
    if not _REPOSITORY.fullmatch(repository):
        raise LocationError(
            f"bad image location {text!r}: bad repository name {repository!r} "
            "(lowercase letters, digits and separators)"
        )
    if tag is not None and not _TAG.fullmatch(tag):
        raise LocationError(f"bad image location {text!r}: bad tag {tag!r}")
    if digest and not _DIGEST.fullmatch(digest):
        raise LocationError(f"bad image location {text!r}: bad digest {digest!r}")
    return Location(
        REGISTRY,
        host=host,
        repository=repository,
        tag=tag if tag is not None or digest else "latest",
        digest=digest or None,
    )


def _split_tag(name: str) -> tuple[str, str | None]:
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None


def default_destination(source: Location) -> Location:
    """Where `--to` points when not given: beside the source, same kind.

    A daemon ref and a registry tag get `-slim` appended to the tag (a ref
    by digest alone gets `latest-slim`); an archive gets `-slim` before its
    suffix; an OCI folder gets a new tag in the same folder.
    """
    if source.kind == DAEMON:
        repository, tag = split_ref(source.ref)
        return Location(DAEMON, ref=f"{repository}:{_slim_tag(tag)}")
    if source.kind in (DOCKER_ARCHIVE, OCI_ARCHIVE):
        return replace(source, path=_slim_path(source.path))
    if source.kind == OCI:
        return replace(source, tag=_slim_tag(source.tag or "latest"))
    if source.kind == REGISTRY:
        tag = _slim_tag(source.tag or "latest")
        return replace(source, tag=tag, digest=None)
    raise LocationError(f"unknown kind of image location: {source.kind}")


def _slim_tag(tag: str) -> str:
    slim = tag + SUFFIX
    if not _TAG.fullmatch(slim):
        raise LocationError(f"the default tag {slim!r} is too long; pass --to")
    return slim


def _slim_path(path: Path) -> Path:
    """`x.tar` → `x-slim.tar`; `x` → `x-slim`."""
    suffix = path.suffix
    return path.with_name(path.name.removesuffix(suffix) + SUFFIX + suffix)
