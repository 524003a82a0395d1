"""Who may talk to a registry: hosts and schemes, credentials, auth.

Credentials come from the user's Docker config file, as `docker login`
leaves them. A registry asks for them with a `WWW-Authenticate` challenge
on a 401: `Basic` wants them on every request; `Bearer` names a token
realm to trade them for a token scoped to one or more repositories
(distribution's "Token Authentication Specification").

LIMITATION: Docker credential helpers (`credsStore`, `credHelpers`) and
identity tokens are not read; only the base64 `auth` field of `auths`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from slimmer.errors import SlimmerError

log = logging.getLogger(__name__)

TIMEOUT = (10.0, 300.0)  # (connect, read) seconds, on every request
# Docker Hub's API and the key `docker login` files its credentials under.
HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
HUB_API = "registry-1.docker.io"
HUB_KEY = "index.docker.io"


class RegistryError(SlimmerError):
    """A registry is unreachable, or refused or botched a request."""


class RegistryAuthError(RegistryError):
    """The registry refused our credentials, or needs some we lack."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header (RFC 7235)."""

    scheme: str  # lowercased: "basic" or "bearer"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    url: str  # scheme://host[:port], no trailing slash
    verify: bool  # check the TLS certificate


def host_name(host: str) -> str:
    """`host[:port]` or `[v6]:port` without the port and brackets."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = host_name(host).lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def endpoints(host: str, insecure: Iterable[str] = ()) -> list[Endpoint]:
    """The base URLs to try for `host`, in order.

    HTTPS always comes first. Plain HTTP, and HTTPS without certificate
    checks, only for a loopback host or one named in `insecure`: what
    Docker's daemon does for its insecure registries.
    """
    if is_loopback(host) or host in set(insecure):
        return [Endpoint(f"https://{host}", False), Endpoint(f"http://{host}", False)]
    return [Endpoint(f"https://{host}", True)]


def redirect_allowed(registry: str, base: str, target: str, insecure=()) -> bool:
    """May a request to the registry at `base` follow a redirect to `target`?"""
    to = urlsplit(target)
    if (to.scheme, to.netloc) == urlsplit(base)[:2]:
        return True
    if is_loopback(registry):
        return False
    # Blob storage elsewhere (S3, a CDN): HTTPS, or a host named insecure.
    return to.scheme == "https" or (to.scheme == "http" and to.netloc in insecure)


_PARAM = re.compile(r'([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^,\s]*)')


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="…",service="…",scope="…"` as a Challenge, or None."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {}
    for key, value in _PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


def docker_config_path() -> Path:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder or Path.home() / ".docker") / "config.json"


def load_credentials(host: str, path: Path | None = None) -> Credentials | None:
    """The `auths` entry for `host` in the Docker config file, if any."""
    path = path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read Docker config {path}: {exc}") from exc
    wanted = _config_key(host)
    for key, entry in (config.get("auths") or {}).items():
        if _config_key(key) == wanted and entry.get("auth"):
            return _decode_auth(entry["auth"], path)
    if config.get("credsStore") or host in (config.get("credHelpers") or {}):
        log.warning(
            "%s names a credential helper for %s; slimmer reads only `auths`",
            path,
            host,
        )
    return None


def _config_key(key: str) -> str:
    # `docker login` files keys as host, https://host or https://host/v1/.
    netloc = urlsplit(key if "://" in key else f"//{key}").netloc.lower()
    return HUB_KEY if netloc in HUB_HOSTS else netloc


def _decode_auth(value: str, path: Path) -> Credentials:
    try:
        user, sep, password = base64.b64decode(value).decode().partition(":")
    except ValueError as exc:
        raise RegistryError(f"bad `auth` value in {path}: {exc}") from exc
    if not sep:
        raise RegistryError(f"bad `auth` value in {path}: no user:password")
    return Credentials(user, password)


class Authenticator:
    """The Authorization header for each scope, learnt from challenges."""

    def __init__(self, host: str, credentials, session, insecure=frozenset()):
        self.host, self.credentials = host, credentials
        self.session, self.insecure = session, insecure
        self._tokens: dict[str, str] = {}
        self._basic = False

    def header(self, scope: str) -> dict:
        """What to send with a request that needs `scope` (may be empty)."""
        if scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic and self.credentials:
            pair = f"{self.credentials.username}:{self.credentials.password}"
            encoded = base64.b64encode(pair.encode()).decode()
            return {"Authorization": f"Basic {encoded}"}
        return {}

    def answer(self, challenge_header: str, scope: str) -> None:
        """Get ready to retry after a 401 carrying `challenge_header`."""
        challenge = parse_challenge(challenge_header)
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise RegistryAuthError(f"{self.host} asks for an unknown kind of auth")
        if challenge.scheme == "bearer":
            self._tokens[scope] = self._fetch_token(challenge, scope)
        elif self.credentials:
            self._basic = True
        else:
            raise RegistryAuthError(
                f"{self.host} needs credentials; none in {docker_config_path()}"
            )

    def _fetch_token(self, challenge: Challenge, scope: str) -> str:
        """Trade the credentials (or none: anonymous) for a scoped token."""
        realm = challenge.params.get("realm", "")
        netloc = urlsplit(realm).netloc
        # Credentials travel in clear only to loopback or a named host.
        plain_ok = is_loopback(netloc) or netloc in self.insecure
        if not (
            realm.startswith("https://") or realm.startswith("http://") and plain_ok
        ):
            raise RegistryAuthError(f"{self.host} names a token realm slimmer refuses")
        asked = challenge.params.get("scope", "").split()
        scopes = list(dict.fromkeys(scope.split() + asked))
        params = {"service": challenge.params.get("service", ""), "scope": scopes}
        auth = None
        if self.credentials:
            auth = (self.credentials.username, self.credentials.password)
        try:
            response = self.session.get(
                realm, params=params, auth=auth, timeout=TIMEOUT, allow_redirects=False
            )
        except requests.exceptions.RequestException as exc:
            raise RegistryError(
                f"cannot reach {netloc} for a token: {short(exc)}"
            ) from exc
        return self._token_from(response, netloc)

    def _token_from(self, response: requests.Response, netloc: str) -> str:
        if response.status_code in (401, 403):
            raise RegistryAuthError(f"authentication failed for {self.host}")
        try:
            response.raise_for_status()
            document = response.json()
            return document.get("token") or document["access_token"]
        except (requests.exceptions.HTTPError, ValueError, KeyError) as exc:
            raise RegistryAuthError(f"no token from {netloc}: {short(exc)}") from exc


def short(exc: BaseException) -> str:
    """The first line of an exception's text, for a one-line message."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
