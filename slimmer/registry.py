"""A small client of the OCI distribution API, on requests.

It does what moving an image needs and nothing more: manifests (get,
head, put), and blobs (get into a file with a digest check, head,
cross-repo mount, upload). registry_auth.py answers auth challenges.

Plain HTTP is tried only for a registry on loopback, as Docker allows, or
for a host the caller names as insecure (`--insecure-registry`); TLS
certificates are not checked for those either, as Docker does. Every
request has a timeout. Redirects are followed by hand: a loopback
registry may redirect only to itself; another registry may also send
blob downloads to storage elsewhere, over HTTPS, without our credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from slimmer.archive import COPY_BUFFER, FileSlice
from slimmer.errors import ImageNotFound
from slimmer.registry_auth import (
    HUB_API,
    HUB_HOSTS,
    TIMEOUT,
    Authenticator,
    Credentials,
    Endpoint,
    RegistryAuthError,
    RegistryError,
    endpoints,
    load_credentials,
    redirect_allowed,
    short,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 << 20  # blobs above this are uploaded in PATCH chunks
MAX_REDIRECTS = 5
Content = bytes | tuple[Path, int, int]  # a blob's bytes, or a file range
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)


class ManifestUnknown(RegistryError, ImageNotFound):
    """The registry has no manifest by that tag or digest."""


@dataclass(frozen=True)
class Manifest:
    body: bytes  # exactly as served: its sha256 is the digest
    media_type: str
    digest: str

    def json(self) -> dict:
        return json.loads(self.body)


def token_scope(repository: str, push: bool = False) -> str:
    """A token scope (distribution's token spec, "Requesting a Token")."""
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


class RegistryClient:
    """One registry host. Each call says what it takes, returns and raises."""

    def __init__(
        self,
        host: str,
        insecure: Iterable[str] = (),
        credentials: Credentials | None | bool = True,
        session: requests.Session | None = None,
        chunk_size: int = CHUNK_SIZE,
    ):
        """`credentials=True` reads them from the Docker config file."""
        self.host = host
        self.insecure = frozenset(insecure)
        if credentials is True:
            credentials = load_credentials(host)
        self.credentials = credentials or None
        self.session = session or requests.Session()
        self.chunk_size = chunk_size
        self.auth = Authenticator(host, self.credentials, self.session, self.insecure)
        self._endpoint: Endpoint | None = None

    # -- manifests -----------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest or index; raises ManifestUnknown, RegistryError."""
        response = self._call(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            token_scope(repository),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            missing=ManifestUnknown(f"no image {self.host}/{repository}:{reference}"),
        )
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise RegistryError(f"manifest {reference} from {self.host} is corrupt")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        if media_type not in MANIFEST_TYPES:
            media_type = json.loads(body).get("mediaType", media_type)
        return Manifest(body, media_type, digest)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry gives a tag (HEAD), or None if unknown."""
        response = self._call(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            token_scope(repository),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            ok=(200, 404),
        )
        if response.status_code == 404:
            return None
        return response.headers.get("Docker-Content-Digest")

    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """Store a manifest under a tag or its digest; returns its digest."""
        self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            token_scope(repository, push=True),
            headers={"Content-Type": media_type},
            body=lambda: body,
            ok=(201,),
        )
        return "sha256:" + hashlib.sha256(body).hexdigest()

    # -- blobs ---------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._call(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            token_scope(repository),
            ok=(200, 404),
        )
        return response.status_code == 200

    def fetch_blob(self, repository: str, digest: str, target: Path) -> int:
        """Stream a blob into `target`, checking its digest; returns its size."""
        response = self._call(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            token_scope(repository),
            stream=True,
            missing=RegistryError(f"{self.host}/{repository} lacks blob {digest}"),
        )
        hasher, size = _hasher(digest), 0
        partial = target.with_name(target.name + ".partial")
        try:
            with response, open(partial, "wb") as sink:
                for chunk in response.iter_content(COPY_BUFFER):
                    hasher.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
        except requests.exceptions.RequestException as exc:
            partial.unlink(missing_ok=True)
            raise RegistryError(
                f"download of {digest} from {self.host} broke: {short(exc)}"
            ) from exc
        if f"{hasher.name}:{hasher.hexdigest()}" != digest:
            partial.unlink()
            raise RegistryError(f"blob {digest} from {self.host} fails its digest")
        partial.rename(target)
        return size

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask for a cross-repo mount of `digest` from `source`; True if done."""
        scope = f"{token_scope(repository, push=True)} {token_scope(source)}"
        response = self._call(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope,
            params={"mount": digest, "from": source},
            ok=(201, 202),
        )
        # 202: the registry could not mount and opened an upload instead.
        if response.status_code == 202:
            self._cancel(response, scope)
        return response.status_code == 201

    def upload_blob(self, repository: str, digest: str, content: Content) -> None:
        """Upload a blob: one PUT, or PATCH chunks then a PUT when it is large.

        `content` is the bytes, or (path, offset, size) of a file's range.
        """
        scope = token_scope(repository, push=True)
        start = self._call("POST", f"/v2/{repository}/blobs/uploads/", scope, ok=(202,))
        url = self._location(start)
        if isinstance(content, bytes):
            self._finish(url, scope, digest, lambda: content)
            return
        path, offset, size = content
        with open(path, "rb") as source:
            done, fd = 0, source.fileno()
            while size - done > self.chunk_size:
                chunk = _Body(fd, offset + done, self.chunk_size)
                url = self._patch(url, scope, chunk, done)
                done += self.chunk_size
            rest = _Body(fd, offset + done, size - done) if size > done else None
            self._finish(url, scope, digest, lambda: rest.rewound() if rest else None)
        log.debug(
            "uploaded %s (%d bytes) to %s/%s", digest, size, self.host, repository
        )

    def push_blob(
        self, repository: str, digest: str, content: Content | None, mount_from=""
    ) -> str:
        """Make the blob present: "exists", "mounted" or "uploaded"."""
        if self.blob_exists(repository, digest):
            return "exists"
        mountable = mount_from and mount_from != repository
        if mountable and self.mount_blob(repository, digest, mount_from):
            return "mounted"
        if content is None:
            raise RegistryError(f"{self.host}/{repository} lacks {digest}; no copy")
        self.upload_blob(repository, digest, content)
        return "uploaded"

    # -- the request machinery -----------------------------------------

    def endpoint(self) -> Endpoint:
        """The base URL that answers `GET /v2/`, found once and kept."""
        if self._endpoint is None:
            api = HUB_API if self.host in HUB_HOSTS else self.host
            errors = []
            for candidate in endpoints(api, self.insecure):
                try:
                    self._send("GET", f"{candidate.url}/v2/", {}, candidate).close()
                except requests.exceptions.RequestException as exc:
                    errors.append(short(exc))
                    continue
                self._endpoint = candidate
                break
            else:
                raise RegistryError(f"cannot reach registry {self.host}: {errors[-1]}")
        return self._endpoint

    def _call(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        headers: dict | None = None,
        params: dict | None = None,
        body: Callable[[], object] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
        missing: RegistryError | None = None,
    ) -> requests.Response:
        """One API call, authorised on a 401 and retried once."""
        endpoint = self.endpoint()
        url = urljoin(endpoint.url, path)
        for attempt in range(2):
            kwargs = {"params": params, "stream": stream}
            if body is not None:
                kwargs["data"] = body()
            all_headers = {**(headers or {}), **self.auth.header(scope)}
            response = self._follow(method, url, all_headers, endpoint, kwargs)
            if response.status_code != 401:
                break
            response.close()
            if attempt:
                raise RegistryAuthError(f"authentication failed for {self.host}")
            self.auth.answer(response.headers.get("WWW-Authenticate", ""), scope)
        if response.status_code in ok:
            return response
        raise self._failure(response, method, path, missing)

    def _follow(self, method, url, headers, endpoint, kwargs) -> requests.Response:
        for _hop in range(MAX_REDIRECTS):
            same = urlsplit(url)[:2] == urlsplit(endpoint.url)[:2]
            hop_headers = headers if same else {}
            response = self._send(method, url, hop_headers, endpoint, **kwargs)
            target = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not target:
                return response
            response.close()
            target = urljoin(url, target)
            if not redirect_allowed(self.host, endpoint.url, target, self.insecure):
                raise RegistryError(
                    f"{self.host} redirected to {urlsplit(target).netloc}, "
                    "which slimmer does not follow"
                )
            url, method = target, "GET" if response.status_code == 303 else method
        raise RegistryError(f"{self.host}: too many redirects")

    def _send(self, method, url, headers, endpoint, **kwargs) -> requests.Response:
        # Storage a registry redirects to is checked, whatever the registry.
        elsewhere = urlsplit(url).netloc != urlsplit(endpoint.url).netloc
        try:
            return self.session.request(
                method,
                url,
                headers=headers,
                timeout=TIMEOUT,
                allow_redirects=False,
                verify=endpoint.verify or elsewhere,
                **kwargs,
            )
        except requests.exceptions.RequestException as exc:
            if self._endpoint is None:
                raise  # still probing: endpoint() tries the next one
            raise RegistryError(
                f"cannot reach registry {self.host}: {short(exc)}"
            ) from exc

    def _failure(self, response, method, path, missing) -> RegistryError:
        status, detail = response.status_code, _error_message(response)
        response.close()
        if status == 404 and missing is not None:
            return missing
        if status == 403:
            return RegistryAuthError(f"{self.host} denied {method} {path}")
        return RegistryError(f"{self.host}: {method} {path} answered {status}{detail}")

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host} opened an upload without a Location")
        return urljoin(response.url, location)

    def _patch(self, url: str, scope: str, chunk: _Body, begin: int) -> str:
        # Distribution spec, "Pushing a blob in chunks": inclusive byte range.
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{begin}-{begin + len(chunk) - 1}",
        }
        response = self._call(
            "PATCH", url, scope, headers=headers, body=chunk.rewound, ok=(202,)
        )
        return self._location(response)

    def _finish(self, url: str, scope: str, digest: str, body: Callable) -> None:
        self._call(
            "PUT",
            url,
            scope,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            body=body,
            ok=(201,),
        )

    def _cancel(self, response: requests.Response, scope: str) -> None:
        try:
            self._call("DELETE", self._location(response), scope, ok=(204, 404))
        except RegistryError as exc:
            log.debug("could not cancel an upload on %s: %s", self.host, exc)


class _Body(FileSlice):
    """A byte range of an open file, with a length requests can read."""

    def __init__(self, fd: int, start: int, size: int):
        super().__init__(fd, start, size)
        self.size = size

    def __len__(self) -> int:
        return self.size

    def rewound(self) -> _Body:
        self.seek(0)
        return self


def _hasher(digest: str):
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(f"unsupported digest algorithm in {digest}")
    return hashlib.new(algorithm)


def _error_message(response: requests.Response) -> str:
    # Distribution spec, "Error Codes": {"errors": [{"code", "message"}]}.
    try:
        errors = response.json().get("errors") or []
        return f": {errors[0].get('message') or errors[0].get('code')}"
    except (ValueError, AttributeError, IndexError, RuntimeError):
        return ""
    except requests.exceptions.RequestException:
        return ""
