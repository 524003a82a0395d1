"""Image locations: the text forms, their canonical text, and `--to` defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimmer.errors import EXIT_USAGE, SlimmerError
from slimmer.locations import (
    DAEMON,
    DOCKER_ARCHIVE,
    OCI,
    OCI_ARCHIVE,
    REGISTRY,
    Location,
    LocationError,
    default_destination,
    parse_location,
)

DIGEST = "sha256:" + "ab" * 32


def test_bare_ref_is_the_daemon():
    location = parse_location("semaphore:latest")
    assert location == Location(DAEMON, ref="semaphore:latest")


def test_bare_ref_with_a_registry_port_is_still_the_daemon():
    location = parse_location("localhost:5000/team/app:1.2")
    assert (location.kind, location.ref) == (DAEMON, "localhost:5000/team/app:1.2")


def test_docker_daemon_prefix_names_the_daemon_as_skopeo_does():
    assert parse_location("docker-daemon:app:1") == Location(DAEMON, ref="app:1")


def test_bare_ref_by_digest_is_the_daemon():
    location = parse_location(f"app@{DIGEST}")
    assert (location.kind, location.ref) == (DAEMON, f"app@{DIGEST}")


def test_docker_archive_takes_the_rest_as_its_path():
    location = parse_location("docker-archive:/tmp/a:b/image.tar")
    assert location == Location(DOCKER_ARCHIVE, path=Path("/tmp/a:b/image.tar"))


def test_oci_archive_path():
    location = parse_location("oci-archive:out/image.tar")
    assert location == Location(OCI_ARCHIVE, path=Path("out/image.tar"))


def test_oci_folder_without_tag():
    assert parse_location("oci:layout") == Location(OCI, path=Path("layout"))


def test_oci_folder_with_tag():
    location = parse_location("oci:/srv/layout:v1.2")
    assert (location.path, location.tag) == (Path("/srv/layout"), "v1.2")


def test_oci_tag_may_hold_colons_since_the_first_colon_ends_the_folder():
    assert parse_location("oci:layout:a:b").tag == "a:b"


def test_registry_with_port_and_tag():
    location = parse_location("docker://127.0.0.1:5000/team/app:1.0")
    assert location == Location(
        REGISTRY, host="127.0.0.1:5000", repository="team/app", tag="1.0"
    )


def test_registry_without_tag_means_latest():
    location = parse_location("docker://registry.example.com/app")
    assert (location.tag, location.reference) == ("latest", "latest")


def test_registry_by_digest_has_no_tag_and_references_the_digest():
    location = parse_location(f"docker://localhost/app@{DIGEST}")
    assert (location.tag, location.digest, location.reference) == (
        None,
        DIGEST,
        DIGEST,
    )


def test_registry_with_tag_and_digest_references_the_digest():
    location = parse_location(f"docker://localhost/app:1@{DIGEST}")
    assert (location.tag, location.reference) == ("1", DIGEST)


def test_registry_on_ipv6_loopback():
    location = parse_location("docker://[::1]:5000/app:1")
    assert (location.host, location.repository) == ("[::1]:5000", "app")


@pytest.mark.parametrize(
    "text",
    [
        "semaphore:latest",
        "docker-archive:x.tar",
        "oci-archive:x.tar",
        "oci:dir",
        "oci:dir:v1",
        "docker://127.0.0.1:5000/a/b:c",
        f"docker://localhost/a@{DIGEST}",
    ],
)
def test_canonical_text_parses_back_to_the_same_location(text):
    assert str(parse_location(text)) == text
    assert parse_location(str(parse_location(text))) == parse_location(text)


@pytest.mark.parametrize(
    "text", ["docker-archive:/tmp/with space.tar", "oci:/tmp/oci dir/x:tag"]
)
def test_paths_with_spaces_are_fine(text):
    assert " " in str(parse_location(text).path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("app latest", "expected .HOST/.REPO"),
        ("newcomer/caf\udce9:1", "expected .HOST/.REPO"),
        ("a" * 256, "expected .HOST/.REPO"),
        ("bogus:/x", "expected .HOST/.REPO"),
        ("docker://app:1", "name the registry"),
        ("docker://library/app", "name the registry"),
        ("docker://registry.example.com/App", "bad repository"),
        ("docker://registry.example.com/app:bad/tag", "bad repository"),
        ("docker://registry.example.com/app:-tag", "bad tag"),
        ("docker://registry.example.com/app@sha256:zz", "bad digest"),
        ("docker://bad_host.example.com/app", "bad host"),
        ("http://registry.example.com/app", "use docker://"),
        ("dir:/tmp/x", "cannot read or write dir:"),
        ("oci:", "path is missing"),
        ("oci:dir:", "empty tag"),
        ("docker-archive:", "path is missing"),
        ("app@sha256:zz", "bad image ref"),
    ],
)
def test_malformed_location_is_a_usage_error(text, says):
    with pytest.raises(LocationError, match=says) as raised:
        parse_location(text)
    assert raised.value.exit_code == EXIT_USAGE
    assert isinstance(raised.value, SlimmerError)
    assert "\n" not in str(raised.value)


def test_default_destination_of_a_daemon_ref_appends_slim_to_the_tag():
    assert str(default_destination(parse_location("app:1.0"))) == "app:1.0-slim"


def test_default_destination_of_a_daemon_ref_without_tag_is_latest_slim():
    source = parse_location("localhost:5000/app")
    assert str(default_destination(source)) == "localhost:5000/app:latest-slim"


def test_default_destination_of_a_docker_archive_is_beside_it():
    source = parse_location("docker-archive:out/x.tar")
    assert default_destination(source) == parse_location(
        "docker-archive:out/x-slim.tar"
    )


def test_default_destination_of_an_archive_without_suffix():
    source = parse_location("oci-archive:out/x")
    assert default_destination(source).path == Path("out/x-slim")


def test_default_destination_of_an_oci_archive_is_beside_it():
    source = parse_location("oci-archive:x.tar")
    assert str(default_destination(source)) == "oci-archive:x-slim.tar"


def test_default_destination_of_an_oci_folder_is_a_new_tag_in_it():
    source = parse_location("oci:layout:v1")
    assert str(default_destination(source)) == "oci:layout:v1-slim"


def test_default_destination_of_an_untagged_oci_folder_is_latest_slim():
    assert default_destination(parse_location("oci:layout")).tag == "latest-slim"


def test_default_destination_of_a_registry_tag():
    source = parse_location("docker://127.0.0.1:5000/a/b:t")
    assert str(default_destination(source)) == "docker://127.0.0.1:5000/a/b:t-slim"


def test_default_destination_of_a_registry_digest_is_latest_slim():
    source = parse_location(f"docker://127.0.0.1:5000/a@{DIGEST}")
    assert str(default_destination(source)) == "docker://127.0.0.1:5000/a:latest-slim"


def test_default_tag_past_128_characters_is_refused():
    source = parse_location("docker://localhost/app:" + "t" * 126)
    with pytest.raises(LocationError, match="too long"):
        default_destination(source)
