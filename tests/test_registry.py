"""The registry client, against Debian's docker-registry on 127.0.0.1.

Rules about hosts (loopback, HTTPS, redirects) are checked by calling the
functions that decide them, never by connecting anywhere but 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from registry_fixture import PASSWORD, USER, docker_config, free_port, sha

from slimmer.errors import ImageNotFound
from slimmer.registry import (
    OCI_MANIFEST,
    Credentials,
    ManifestUnknown,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    endpoints,
    redirect_allowed,
)
from slimmer.registry_auth import is_loopback, load_credentials, parse_challenge

pytest_plugins = ["registry_fixture"]


def client(host, **kwargs) -> RegistryClient:
    kwargs.setdefault("credentials", None)
    return RegistryClient(host, **kwargs)


def blob_file(tmp_path: Path, data: bytes) -> tuple[str, tuple[Path, int, int]]:
    path = tmp_path / f"blob-{len(data)}"
    path.write_bytes(data)
    return sha(data), (path, 0, len(data))


def manifest_for(config_digest: str, size: int) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": size,
            },
            "layers": [],
        }
    ).encode()


# -- which hosts get plain HTTP ----------------------------------------------


def test_remote_host_gets_https_only():
    urls = [e.url for e in endpoints("registry.example.com:5000")]
    assert urls == ["https://registry.example.com:5000"]
    assert endpoints("registry.example.com")[0].verify


def test_remote_host_gets_plain_http_only_when_named_insecure():
    found = endpoints("registry.example.com", insecure={"registry.example.com"})
    assert [e.url for e in found] == [
        "https://registry.example.com",
        "http://registry.example.com",
    ]
    assert not any(e.verify for e in found)


def test_insecure_names_another_host_so_this_one_stays_https():
    found = endpoints("registry.example.com", insecure={"other.example.com"})
    assert [e.url for e in found] == ["https://registry.example.com"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1:5000", "127.1.2.3", "localhost:5000", "[::1]:5000", "::1"]
)
def test_loopback_host_may_use_plain_http(host):
    assert is_loopback(host)
    assert endpoints(host)[-1].url == f"http://{host}"


@pytest.mark.parametrize(
    "host", ["10.0.0.1:5000", "192.168.1.1", "localhost.example.com", "[fe80::1]:5"]
)
def test_private_or_named_host_is_not_loopback(host):
    assert not is_loopback(host)
    assert all(e.url.startswith("https://") for e in endpoints(host))


# -- redirects -------------------------------------------------------------


def test_redirect_within_the_same_host_is_followed():
    base = "http://127.0.0.1:5000"
    assert redirect_allowed("127.0.0.1:5000", base, f"{base}/storage/x")


def test_loopback_registry_may_not_redirect_elsewhere():
    base = "http://127.0.0.1:5000"
    assert not redirect_allowed("127.0.0.1:5000", base, "https://storage.example/x")
    assert not redirect_allowed("127.0.0.1:5000", base, "http://127.0.0.1:6000/x")


def test_remote_registry_may_send_blobs_to_https_storage():
    base = "https://registry.example.com"
    target = "https://bucket.s3.example.com/x"
    assert redirect_allowed("registry.example.com", base, target)


def test_remote_registry_may_not_downgrade_storage_to_plain_http():
    base = "https://registry.example.com"
    target = "http://bucket.example.com/x"
    assert not redirect_allowed("registry.example.com", base, target)


# -- challenges and the Docker config file -----------------------------------


def test_bearer_challenge_is_parsed_with_quoted_commas():
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",'
        'scope="repository:a/b:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }


def test_basic_challenge_is_parsed():
    assert parse_challenge('Basic realm="x"').scheme == "basic"


def test_empty_challenge_is_none():
    assert parse_challenge("") is None


@pytest.mark.parametrize(
    "key",
    ["reg.example:5000", "https://reg.example:5000", "http://reg.example:5000/v1/"],
)
def test_credentials_are_found_under_any_key_form_docker_login_uses(tmp_path, key):
    folder = docker_config(tmp_path, key)
    found = load_credentials("reg.example:5000", folder / "config.json")
    assert found == Credentials(USER, PASSWORD)


def test_docker_hub_credentials_sit_under_the_index_key(tmp_path):
    folder = docker_config(tmp_path, "https://index.docker.io/v1/")
    assert load_credentials("docker.io", folder / "config.json").username == USER


def test_credentials_of_another_host_are_not_used(tmp_path):
    folder = docker_config(tmp_path, "other.example")
    assert load_credentials("reg.example", folder / "config.json") is None


def test_missing_docker_config_means_no_credentials(tmp_path):
    assert load_credentials("reg.example", tmp_path / "none.json") is None


def test_docker_config_env_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, "reg.example")))
    assert load_credentials("reg.example") == Credentials(USER, PASSWORD)


def test_malformed_auth_field_is_an_error(tmp_path):
    bad = base64.b64encode(b"no-colon").decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"reg.example": {"auth": bad}}}))
    with pytest.raises(RegistryError, match="no user:password"):
        load_credentials("reg.example", path)


def test_credential_helper_is_not_run_and_gives_no_credentials(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "desktop"}))
    assert load_credentials("reg.example", path) is None
    assert "credential helper" in caplog.text


# -- an open registry ----------------------------------------------------------


def test_blob_round_trips_through_the_registry(registry, tmp_path):
    digest, content = blob_file(tmp_path, os.urandom(5000))
    reg = client(registry.host)
    assert reg.push_blob("rt/blob", digest, content) == "uploaded"
    size = reg.fetch_blob("rt/blob", digest, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == content[0].read_bytes()
    assert size == 5000


def test_loopback_registry_is_reached_over_plain_http(registry):
    assert client(registry.host).endpoint().url == f"http://{registry.host}"


def test_blob_exists_only_after_its_upload(registry, tmp_path):
    digest, content = blob_file(tmp_path, os.urandom(100))
    reg = client(registry.host)
    assert not reg.blob_exists("exists/blob", digest)
    reg.upload_blob("exists/blob", digest, content)
    assert reg.blob_exists("exists/blob", digest)


def test_pushing_the_same_blob_twice_sends_it_once(registry, tmp_path):
    digest, content = blob_file(tmp_path, os.urandom(3000))
    reg = client(registry.host)
    assert reg.push_blob("twice/blob", digest, content) == "uploaded"
    assert reg.push_blob("twice/blob", digest, content) == "exists"
    assert registry.uploads(digest) == 1


def test_blob_in_another_repository_is_mounted_not_sent(registry, tmp_path):
    digest, content = blob_file(tmp_path, os.urandom(4000))
    reg = client(registry.host)
    reg.push_blob("mount/source", digest, content)
    how = reg.push_blob("mount/target", digest, content, mount_from="mount/source")
    assert how == "mounted"
    assert registry.uploads(digest) == 1
    assert client(registry.host).blob_exists("mount/target", digest)


def test_large_blob_is_uploaded_in_chunks(registry, tmp_path):
    data = os.urandom(10_000)
    digest, content = blob_file(tmp_path, data)
    client(registry.host, chunk_size=4096).upload_blob("chunks/blob", digest, content)
    assert len(registry.requests("PATCH", "/v2/chunks/blob/blobs/uploads/")) == 2
    client(registry.host).fetch_blob("chunks/blob", digest, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_a_file_range_is_uploaded_as_the_blob(registry, tmp_path):
    data = os.urandom(2000)
    path = tmp_path / "padded"
    path.write_bytes(b"x" * 100 + data + b"y" * 100)
    reg = client(registry.host, chunk_size=700)
    reg.upload_blob("range/blob", sha(data), (path, 100, len(data)))
    reg.fetch_blob("range/blob", sha(data), tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_blob_with_a_wrong_digest_is_refused_by_the_registry(registry, tmp_path):
    _, content = blob_file(tmp_path, b"actual bytes")
    with pytest.raises(RegistryError, match="answered 400"):
        client(registry.host).upload_blob("wrong/blob", sha(b"other"), content)


def test_manifest_put_get_and_head(registry):
    reg = client(registry.host)
    config = b'{"architecture":"amd64","os":"linux"}'
    reg.push_blob("man/app", sha(config), config)
    body = manifest_for(sha(config), len(config))
    digest = reg.put_manifest("man/app", "v1", body, OCI_MANIFEST)
    fetched = reg.get_manifest("man/app", "v1")
    assert (fetched.body, fetched.digest, fetched.media_type) == (
        body,
        digest,
        OCI_MANIFEST,
    )
    assert reg.manifest_digest("man/app", "v1") == digest
    assert reg.get_manifest("man/app", digest).body == body


def test_unknown_tag_is_image_not_found(registry):
    with pytest.raises(ManifestUnknown, match="no image") as raised:
        client(registry.host).get_manifest("man/none", "v9")
    assert isinstance(raised.value, ImageNotFound)
    assert client(registry.host).manifest_digest("man/none", "v9") is None


def test_closed_port_is_a_one_line_error():
    with pytest.raises(RegistryError, match="cannot reach registry") as raised:
        client(f"127.0.0.1:{free_port()}").blob_exists("a", sha(b""))
    assert "\n" not in str(raised.value)


# -- Basic auth (htpasswd) ---------------------------------------------------


def test_basic_auth_with_credentials_from_the_docker_config(
    auth_registry, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "DOCKER_CONFIG", str(docker_config(tmp_path, auth_registry.host))
    )
    digest, content = blob_file(tmp_path, os.urandom(600))
    reg = RegistryClient(auth_registry.host)
    assert reg.push_blob("basic/app", digest, content) == "uploaded"
    assert reg.blob_exists("basic/app", digest)


def test_basic_auth_with_a_wrong_password_fails_in_one_line(auth_registry):
    reg = RegistryClient(auth_registry.host, credentials=Credentials(USER, "wrong"))
    with pytest.raises(RegistryAuthError) as raised:
        reg.blob_exists("basic/app", sha(b"x"))
    assert str(raised.value) == f"authentication failed for {auth_registry.host}"


def test_basic_auth_without_credentials_says_where_it_looked(
    auth_registry, tmp_path, monkeypatch
):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with pytest.raises(RegistryAuthError, match="needs credentials; none in"):
        RegistryClient(auth_registry.host).blob_exists("basic/app", sha(b"x"))


# -- bearer tokens ----------------------------------------------------------------


def test_bearer_token_flow_pushes_and_reads(token_registry, tmp_path):
    reg = client(token_registry.host, credentials=Credentials(USER, PASSWORD))
    digest, content = blob_file(tmp_path, os.urandom(700))
    assert reg.push_blob("bearer/app", digest, content) == "uploaded"
    assert reg.blob_exists("bearer/app", digest)
    # The token server is shared by the session, so earlier tests may have
    # asked for tokens too; one request must have asked to push here.
    wanted = ("bearer/app", frozenset({"pull", "push"}))
    assert any(wanted in _scopes(r) for r in token_registry.tokens.scopes)


def test_bearer_mount_asks_one_token_for_both_repositories(token_registry, tmp_path):
    reg = client(token_registry.host, credentials=Credentials(USER, PASSWORD))
    digest, content = blob_file(tmp_path, os.urandom(800))
    reg.push_blob("bearer/base", digest, content)
    how = reg.push_blob("bearer/derived", digest, content, mount_from="bearer/base")
    assert how == "mounted"
    # One token request names both repositories; the registry may list a
    # scope's actions in either order.
    both = {
        ("bearer/derived", frozenset({"pull", "push"})),
        ("bearer/base", frozenset({"pull"})),
    }
    assert both in [_scopes(request) for request in token_registry.tokens.scopes]


def test_bearer_token_refused_for_wrong_credentials(token_registry):
    reg = client(token_registry.host, credentials=Credentials(USER, "wrong"))
    with pytest.raises(RegistryAuthError) as raised:
        reg.blob_exists("bearer/app", sha(b"x"))
    assert str(raised.value) == f"authentication failed for {token_registry.host}"


# -- redirects, from a small fake registry on 127.0.0.1 ----------------------


class FakeRegistry:
    """Answers /v2/; redirects blob reads as told; counts requests."""

    def __init__(self, location: str, body: bytes = b""):
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                fake.paths.append(self.path)
                if "/blobs/" in self.path:
                    self.send_response(307)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if "/blobs/" not in self.path:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry():
    made = []

    def start(location: str, body: bytes = b"") -> FakeRegistry:
        made.append(FakeRegistry(location, body))
        return made[-1]

    yield start
    for fake in made:
        fake.stop()


def test_redirect_to_the_same_host_is_followed(fake_registry, tmp_path):
    data = b"blob bytes via a redirect"
    fake = fake_registry("/storage/blob", data)
    client(fake.host).fetch_blob("r/app", sha(data), tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == data
    assert fake.paths[-1] == "/storage/blob"


def test_redirect_of_a_loopback_registry_to_another_host_is_refused(
    fake_registry, tmp_path
):
    # 127.0.0.2:9 is loopback too, so even a bug here would stay on this machine.
    fake = fake_registry("http://127.0.0.2:9/storage/blob")
    with pytest.raises(RegistryError, match="redirected to 127.0.0.2:9"):
        client(fake.host).fetch_blob("r/app", sha(b"x"), tmp_path / "got")
    assert not (tmp_path / "got").exists()


def test_blob_whose_bytes_fail_the_digest_is_refused(fake_registry, tmp_path):
    fake = fake_registry("/storage/blob", b"not what was asked for")
    with pytest.raises(RegistryError, match="fails its digest"):
        client(fake.host).fetch_blob("r/app", sha(b"expected"), tmp_path / "got")
    assert list(tmp_path.iterdir()) == []


def _scopes(request: list[str]) -> set[tuple[str, frozenset]]:
    """A token request's scopes as (repository, actions), order left out."""
    found = set()
    for scope in request:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        found.add((name, frozenset(actions.split(","))))
    return found
