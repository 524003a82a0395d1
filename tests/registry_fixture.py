"""Real registries and hand-made OCI images for the daemonless tests.

A test module loads this with `pytest_plugins = ["registry_fixture"]`, so
that each session fixture starts once for the whole run:

- `registry`: Debian's docker-registry, open, on 127.0.0.1;
- `auth_registry`: the same with htpasswd Basic auth (user `slim`);
- `token_registry`: the same with bearer tokens from a token server that
  runs here, on 127.0.0.1 too.

Each listens on a free port of 127.0.0.1 only, keeps its storage in a
temp folder, logs every request to a file the tests read, and is stopped
at the end of the session. `make_layout` writes an OCI image layout by
hand, independent of slimmer's writer; `skopeo` runs Debian's skopeo.

Test modules import helpers before pytest loads this as a plugin, too
late to rewrite asserts, so it has none: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import layers as L
import pytest
import requests

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USER, PASSWORD = "slim", "s3cret-pass"


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is not installed (.ci/run installs the {package} package)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Registry:
    """A docker-registry process on 127.0.0.1 and its request log."""

    def __init__(self, folder: Path, auth: dict | None = None):
        self.folder = folder
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = folder / "registry.log"
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(folder / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "slimmer-tests"},
        }
        if auth:
            config["auth"] = auth
        # JSON is YAML, which is what docker-registry reads.
        (folder / "config.yml").write_text(json.dumps(config))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [_need("docker-registry", "docker-registry"), "serve", "config.yml"],
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait()

    def _wait(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                requests.get(f"http://{self.host}/v2/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        pytest.fail("docker-registry did not answer within 20 s")

    def requests(self, method: str, fragment: str = "") -> list[str]:
        """Access-log lines of `method` requests whose URI holds `fragment`."""
        pattern = re.compile(rf'"{method} (\S+) HTTP/1\.1" (\d+)')
        return [
            match.group(1)
            for match in pattern.finditer(self.log.read_text())
            if fragment in match.group(1)
        ]

    def uploads(self, digest: str) -> int:
        """How many uploads of `digest` were completed (the final PUT)."""
        quoted = digest.replace(":", "%3A")
        return len(self.requests("PUT", f"digest={quoted}"))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    server = Registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


def bcrypt_hash(password: str) -> str | None:
    """A bcrypt hash for htpasswd (docker-registry reads only bcrypt)."""
    try:
        import bcrypt

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt

            salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5)
            hashed = crypt.crypt(password, salt)
            if hashed and hashed.startswith("$2"):
                return hashed
        except (ImportError, AttributeError, OSError):
            pass
    if shutil.which("htpasswd"):
        done = subprocess.run(
            ["htpasswd", "-nbB", USER, password], capture_output=True, text=True
        )
        return done.stdout.strip().partition(":")[2] or None
    return None


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    hashed = bcrypt_hash(PASSWORD)
    if hashed is None:
        pytest.skip("no bcrypt: no Python bcrypt, crypt blowfish or htpasswd")
    folder = tmp_path_factory.mktemp("auth-registry")
    (folder / "htpasswd").write_text(f"{USER}:{hashed}\n")
    auth = {"htpasswd": {"realm": "slimmer-tests", "path": str(folder / "htpasswd")}}
    server = Registry(folder, auth)
    yield server
    server.stop()


class TokenServer:
    """Issues registry tokens: RS256 JWTs (distribution's token spec).

    The registry trusts the key through a self-signed certificate; the
    JWT names the key by its libtrust key id.
    """

    service, issuer = "slimmer-tests", "slimmer-tests-issuer"

    def __init__(self, folder: Path, user: str, password: str):
        pytest.importorskip("cryptography", reason="the token server signs")
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = folder / "token.pem"
        self.certificate.write_bytes(_self_signed(self.key))
        self.expected = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
        self.scopes: list[list[str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self.server.server_port}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                query = parse_qs(urlsplit(self.path).query)
                if self.headers.get("Authorization") != issuer.expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                issuer.scopes.append(query.get("scope", []))
                body = json.dumps({"token": issuer.token(query.get("scope", []))})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        return Handler

    def token(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": _key_id(self.key.public_key())}
        claims = {
            "iss": self.issuer,
            "sub": USER,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(signature)}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _b64(data) -> str:
    data = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _key_id(public_key) -> str:
    # libtrust's key id: base32 of the first 240 bits of the SHA-256 of
    # the DER public key, in groups of four joined by colons.
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def _self_signed(key) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slimmer-tests")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(folder, USER, PASSWORD)
    auth = {
        "token": {
            "realm": tokens.realm,
            "service": tokens.service,
            "issuer": tokens.issuer,
            "rootcertbundle": str(tokens.certificate),
        }
    }
    server = Registry(folder, auth)
    server.tokens = tokens
    yield server
    server.stop()
    tokens.stop()


def docker_config(folder: Path, host: str, user=USER, password=PASSWORD) -> Path:
    """A Docker config file in `folder` with credentials for `host`."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return folder


def skopeo(*args: str, options=(), check: bool = True) -> subprocess.CompletedProcess:
    """Run `skopeo [options] VERB ARGS`, locations last.

    TLS checks are turned off only for the 127.0.0.1 registries.
    """
    verb, rest = args[0], list(args[1:])
    locations = [a for a in rest if ":" in a and not a.startswith("-")]
    tls = []
    if all(loc.startswith("docker://127.0.0.1:") for loc in locations if "//" in loc):
        if verb == "copy" and locations[0].startswith("docker://"):
            tls.append("--src-tls-verify=false")
        if verb == "copy" and locations[-1].startswith("docker://"):
            tls.append("--dest-tls-verify=false")
        if verb == "inspect" and locations[0].startswith("docker://"):
            tls.append("--tls-verify=false")
    tool = _need("skopeo", "skopeo")
    command = [tool, "--insecure-policy", *options, verb, *tls, *rest]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put_blob(root: Path, data: bytes) -> dict:
    digest = sha(data)
    path = root / "blobs" / "sha256" / digest.partition(":")[2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def make_layout(root: Path, images, tag: str | None = "v1", gzipped=True) -> dict:
    """Write an OCI image layout by hand; return its top descriptor.

    `images` is a list of (architecture, [layer members, ...]); more than
    one makes an image index. Layers are gzip-compressed unless told not.
    """
    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzipped else "")
    manifests = []
    for architecture, stack in images:
        tars = [L.layer_tar(members) for members in stack]
        config = L.image_config(L.ImageSpec(stack), tars)
        config["architecture"] = architecture
        blobs = [gzip.compress(t, mtime=0) if gzipped else t for t in tars]
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **_put_blob(root, json.dumps(config).encode()),
            },
            "layers": [{"mediaType": layer_type, **_put_blob(root, b)} for b in blobs],
        }
        entry = _put_blob(root, json.dumps(manifest).encode())
        entry["mediaType"] = manifest["mediaType"]
        entry["platform"] = {"os": "linux", "architecture": architecture}
        manifests.append(entry)
    top = manifests[0]
    if len(manifests) > 1:
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }
        top = {
            "mediaType": index["mediaType"],
            **_put_blob(root, json.dumps(index).encode()),
        }
    if tag:
        top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_path = root / "index.json"
    outer = {"schemaVersion": 2, "manifests": []}
    if index_path.exists():
        outer = json.loads(index_path.read_text())
    outer["manifests"].append(top)
    index_path.write_text(json.dumps(outer))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return top
