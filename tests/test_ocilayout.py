"""OCI layouts, OCI archives and registries: read, write, and check with skopeo.

Fixture images are made by hand (registry_fixture.make_layout) or by
skopeo from a `docker save` archive; what slimmer writes is checked by
skopeo reading it back. No Docker daemon is used.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile

import layers as L
import pytest
import zstandard
from registry_fixture import make_layout, sha, skopeo

from slimmer import archive, compress, ocilayout, ociwrite
from slimmer.errors import ArchiveError, ImageNotFound, SlimmerError
from slimmer.locations import parse_location
from slimmer.squash import squash

pytest_plugins = ["registry_fixture"]

BASE = [L.directory("etc"), L.file("etc/os-release", "ID=hand-made\n")]
APP = [L.directory("app"), L.file("app/main.py", "print('hi')\n", mode=0o755)]
STACK = [BASE, APP]


def tars(stack=STACK) -> list[bytes]:
    return [L.layer_tar(members) for members in stack]


def layer_bytes(layer: archive.Layer) -> bytes:
    with layer.open() as stream:
        return stream.read()


def names(layer_tar: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as opened:
        return opened.getnames()


def read(text: str, workdir, platform=None) -> ocilayout.SourceImage:
    return ocilayout.read(parse_location(text), workdir, platform)


def rebuilt(image: ocilayout.SourceImage) -> ocilayout.PlatformImage:
    """The same image, to write again: its config and its original blobs."""
    return ocilayout.PlatformImage(image.platform, image.saved.config, image.blobs)


@pytest.fixture
def opened():
    """Keeps what a test opens, and closes it when the test is done."""
    images = []

    def keep(image):
        images.append(image)
        return image

    yield keep
    for image in images:
        image.close()


@pytest.fixture
def work(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def legacy_archive(tmp_path):
    """A legacy `docker save` archive of STACK, which skopeo copies from."""
    path = tmp_path / "legacy.tar"
    path.write_bytes(L.save_archive(L.ImageSpec(STACK, config={"Cmd": ["/app"]})))
    return path


def sample_tar(tmp_path, size=3_500_000):
    # Several gzip work units, compressible but not trivially.
    rng = random.Random(7)
    words = [bytes(rng.randrange(97, 123) for _ in range(8)) for _ in range(500)]
    data = b" ".join(rng.choice(words) for _ in range(size // 8))[:size]
    path = tmp_path / "layer.tar"
    path.write_bytes(data)
    return path, data


# -- compression ---------------------------------------------------------------


def test_gzip_blob_decompresses_to_the_tar(tmp_path):
    path, data = sample_tar(tmp_path)
    done = compress.compress_layer(path, tmp_path, compress.GZIP, threads=2)
    blob = done.path.read_bytes()
    assert gzip.decompress(blob) == data
    assert (done.digest, done.size) == (sha(blob), len(blob))


def test_gzip_blob_is_the_same_on_one_or_several_threads(tmp_path):
    path, _ = sample_tar(tmp_path)
    (tmp_path / "one").mkdir()
    one = compress.compress_layer(path, tmp_path / "one", compress.GZIP, threads=1)
    several = compress.compress_layer(path, tmp_path, compress.GZIP, threads=3)
    assert one.digest == several.digest


def test_zstd_blob_decompresses_to_the_tar(tmp_path):
    path, data = sample_tar(tmp_path)
    done = compress.compress_layer(path, tmp_path, compress.ZSTD, threads=2)
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(done.path.read_bytes())
    )
    assert reader.read() == data
    assert done.digest == sha(done.path.read_bytes())


def test_zstd_blob_is_the_same_on_one_or_several_threads(tmp_path):
    path, _ = sample_tar(tmp_path)
    (tmp_path / "one").mkdir()
    one = compress.compress_layer(path, tmp_path / "one", compress.ZSTD, threads=1)
    several = compress.compress_layer(path, tmp_path, compress.ZSTD, threads=2)
    assert one.digest == several.digest


def test_empty_tar_compresses_to_a_valid_gzip(tmp_path):
    path = tmp_path / "empty.tar"
    path.write_bytes(b"")
    done = compress.compress_layer(path, tmp_path, compress.GZIP)
    assert gzip.decompress(done.path.read_bytes()) == b""


def test_no_compression_hashes_the_tar_in_place(tmp_path):
    path, data = sample_tar(tmp_path, 5000)
    done = compress.compress_layer(path, tmp_path, compress.NONE)
    assert done == (path, sha(data), len(data))


def test_unknown_compression_is_refused(tmp_path):
    path, _ = sample_tar(tmp_path, 10)
    with pytest.raises(ValueError, match="unknown compression"):
        compress.compress_layer(path, tmp_path, "lz4")


# -- reading layouts ---------------------------------------------------------------


def test_hand_made_layout_gives_config_and_uncompressed_layers(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)])
    image = read(f"oci:{tmp_path / 'lay'}:v1", work)
    try:
        assert [layer_bytes(layer) for layer in image.saved.layers] == tars()
        assert image.saved.config["rootfs"]["diff_ids"] == [sha(t) for t in tars()]
        assert [b.descriptor() for b in image.blobs] == image.manifest["layers"]
        assert image.platform == {"os": "linux", "architecture": "amd64"}
    finally:
        image.close()


def test_uncompressed_layers_are_read_in_place(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)], gzipped=False)
    image = read(f"oci:{tmp_path / 'lay'}", work)
    try:
        assert all(layer.path.parent.name == "sha256" for layer in image.saved.layers)
        assert [layer_bytes(layer) for layer in image.saved.layers] == tars()
    finally:
        image.close()


def test_squash_reads_an_oci_layout(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)])
    image = read(f"oci:{tmp_path / 'lay'}", work)
    try:
        tree = squash(image.saved.layers)
        assert {"etc/os-release", "app/main.py"} <= {path for path, _ in tree.walk()}
    finally:
        image.close()


def test_layout_with_two_tags_needs_one_named(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", [BASE])], tag="base")
    make_layout(tmp_path / "lay", [("amd64", STACK)], tag="app")
    with pytest.raises(ArchiveError, match=r"several images \(app, base\)"):
        read(f"oci:{tmp_path / 'lay'}", work)


def test_tag_picks_its_image_from_the_layout(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", [BASE])], tag="base")
    make_layout(tmp_path / "lay", [("amd64", STACK)], tag="app")
    image = read(f"oci:{tmp_path / 'lay'}:base", work)
    image.close()
    assert len(image.blobs) == 1


def test_unknown_tag_is_image_not_found(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)], tag="v1")
    with pytest.raises(ImageNotFound, match="no image tagged 'v2'"):
        read(f"oci:{tmp_path / 'lay'}:v2", work)


def test_folder_without_index_json_is_not_a_layout(tmp_path, work):
    with pytest.raises(ArchiveError, match="not an OCI image layout"):
        read(f"oci:{tmp_path}", work)


def test_manifest_that_fails_its_digest_is_refused(tmp_path, work):
    top = make_layout(tmp_path / "lay", [("amd64", STACK)])
    path = tmp_path / "lay" / "blobs" / "sha256" / top["digest"].split(":")[1]
    path.write_bytes(
        path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2')
    )
    with pytest.raises(ArchiveError, match="fails its digest"):
        read(f"oci:{tmp_path / 'lay'}", work)


def test_oci_folder_written_by_skopeo_is_read(opened, tmp_path, work, legacy_archive):
    skopeo("copy", f"docker-archive:{legacy_archive}", f"oci:{tmp_path / 'sk'}:v1")
    image = opened(read(f"oci:{tmp_path / 'sk'}:v1", work))
    assert [layer_bytes(layer) for layer in image.saved.layers] == tars()
    assert image.saved.config["config"] == {"Cmd": ["/app"]}


def test_oci_archive_written_by_skopeo_is_read(opened, tmp_path, work, legacy_archive):
    skopeo(
        "copy", f"docker-archive:{legacy_archive}", f"oci-archive:{tmp_path / 'a.tar'}"
    )
    image = opened(read(f"oci-archive:{tmp_path / 'a.tar'}", work))
    assert [layer_bytes(layer) for layer in image.saved.layers] == tars()


def test_docker_archive_with_an_index_is_read_as_a_layout(opened, tmp_path, work):
    # Docker 25+ saves an OCI layout (index.json, blobs/) plus manifest.json.
    make_layout(tmp_path / "lay", [("amd64", STACK)])
    with tarfile.open(tmp_path / "saved.tar", "w") as saved:
        for path in sorted((tmp_path / "lay").rglob("*")):
            saved.add(path, str(path.relative_to(tmp_path / "lay")), recursive=False)
    image = opened(read(f"docker-archive:{tmp_path / 'saved.tar'}", work))
    assert [layer_bytes(layer) for layer in image.saved.layers] == tars()


def test_legacy_docker_archive_is_left_to_archive_py(work, legacy_archive):
    with pytest.raises(ArchiveError, match="no index.json"):
        read(f"docker-archive:{legacy_archive}", work)


def test_legacy_docker_archive_layers_are_blobs_named_by_diff_id(
    tmp_path, legacy_archive
):
    saved = archive.read_archive(legacy_archive, tmp_path)
    saved.close()
    blobs = ocilayout.uncompressed_blobs(saved)
    assert [b.digest for b in blobs] == [sha(t) for t in tars()]


# -- two platforms ---------------------------------------------------------------


@pytest.fixture
def two_platforms(tmp_path):
    arm_layer = [L.directory("etc"), L.file("etc/arch", "arm64\n")]
    amd_layer = [L.directory("etc"), L.file("etc/arch", "amd64\n")]
    root = tmp_path / "multi"
    make_layout(root, [("amd64", [BASE, amd_layer]), ("arm64", [BASE, arm_layer])])
    return root


def test_two_platform_index_lists_both(two_platforms, work):
    with ocilayout.Source(parse_location(f"oci:{two_platforms}:v1"), work) as source:
        found = [platform for platform, _ in source.platforms()]
    assert found == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64"},
    ]


def test_platform_picks_one_image_of_an_index(two_platforms, work):
    image = read(f"oci:{two_platforms}", work, platform="linux/arm64")
    try:
        assert image.saved.config["architecture"] == "arm64"
        assert names(layer_bytes(image.saved.layers[1])) == ["etc", "etc/arch"]
    finally:
        image.close()


def test_index_read_without_a_platform_names_them(two_platforms, work):
    with pytest.raises(SlimmerError, match="holds linux/amd64, linux/arm64"):
        read(f"oci:{two_platforms}", work)


def test_platform_missing_from_the_index_is_image_not_found(two_platforms, work):
    with pytest.raises(ImageNotFound, match="no image for linux/s390x"):
        read(f"oci:{two_platforms}", work, platform="linux/s390x")


def test_two_platform_index_written_back_keeps_both(two_platforms, tmp_path, work):
    with ocilayout.Source(parse_location(f"oci:{two_platforms}"), work) as source:
        images = [source.image(d, p) for p, d in source.platforms()]
    out = tmp_path / "out"
    ociwrite.write_layout(
        parse_location(f"oci:{out}:slim"), [rebuilt(i) for i in images]
    )
    for image in images:
        image.close()
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{out}:slim").stdout)
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == [
        "amd64",
        "arm64",
    ]
    skopeo("copy", "--all", f"oci:{out}:slim", f"oci:{tmp_path / 'copy'}:slim")
    arm = read(f"oci:{tmp_path / 'copy'}:slim", work, platform="linux/arm64")
    arm.close()
    assert arm.saved.config["architecture"] == "arm64"


# -- writing layouts ---------------------------------------------------------------


def test_written_oci_folder_keeps_reused_blobs_and_skopeo_reads_it(
    opened, tmp_path, work, legacy_archive
):
    make_layout(tmp_path / "lay", [("amd64", STACK)])
    image = read(f"oci:{tmp_path / 'lay'}", work)
    out = tmp_path / "out"
    ociwrite.write_layout(parse_location(f"oci:{out}:slim"), [rebuilt(image)])
    image.close()
    inspected = json.loads(skopeo("inspect", f"oci:{out}:slim").stdout)
    assert inspected["Layers"] == [b.digest for b in image.blobs]
    skopeo("copy", f"oci:{out}:slim", f"docker-archive:{tmp_path / 'back.tar'}")
    back = opened(archive.read_archive(tmp_path / "back.tar", work))
    assert [layer_bytes(layer) for layer in back.layers] == tars()


def new_layer_archive(tmp_path, work, method) -> str:
    """An oci-archive of one new layer (APP), compressed with `method`."""
    layer_tar = tmp_path / "new.tar"
    layer_tar.write_bytes(tars()[1])
    blob = ociwrite.layer_blob(layer_tar, work, method)
    config = L.image_config(L.ImageSpec([APP]), [tars()[1]])
    platform = {"os": "linux", "architecture": "amd64"}
    target = parse_location(f"oci-archive:{tmp_path / 'out.tar'}")
    ociwrite.write_layout(target, [ocilayout.PlatformImage(platform, config, [blob])])
    raw = json.loads(skopeo("inspect", "--raw", str(target)).stdout)
    assert raw["layers"][0]["mediaType"] == ocilayout.LAYER_TYPES[method]
    return str(target)


@pytest.mark.parametrize("method", [compress.GZIP, compress.NONE])
def test_new_layer_in_an_oci_archive_is_valid_for_skopeo(
    opened, tmp_path, work, method
):
    target = new_layer_archive(tmp_path, work, method)
    # A docker-archive holds plain tars: skopeo decompresses with Go's gzip.
    skopeo("copy", target, f"docker-archive:{tmp_path / 'back.tar'}")
    back = opened(archive.read_archive(tmp_path / "back.tar", work))
    assert [layer_bytes(layer) for layer in back.layers] == [tars()[1]]


def test_new_zstd_layer_in_an_oci_archive_is_valid_for_skopeo(tmp_path, work):
    target = new_layer_archive(tmp_path, work, compress.ZSTD)
    # Recompressing to gzip makes skopeo read the layer with Go's zstd.
    options = ["--dest-compress", "--dest-compress-format", "gzip"]
    skopeo("copy", *options, target, f"oci:{tmp_path / 'back'}")
    copied = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'back'}").stdout)
    hexdigest = copied["layers"][0]["digest"].split(":")[1]
    layer = tmp_path / "back" / "blobs" / "sha256" / hexdigest
    assert gzip.decompress(layer.read_bytes()) == tars()[1]


def test_writing_a_second_tag_keeps_the_first(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)], tag="v1")
    image = read(f"oci:{tmp_path / 'lay'}:v1", work)
    image.close()
    ociwrite.write_layout(
        parse_location(f"oci:{tmp_path / 'lay'}:v1-slim"), [rebuilt(image)]
    )
    index = json.loads((tmp_path / "lay" / "index.json").read_text())
    tags = [m["annotations"][ocilayout.REF_NAME] for m in index["manifests"]]
    assert tags == ["v1", "v1-slim"]


def test_rewriting_a_tag_replaces_its_entry(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)], tag="v1")
    image = read(f"oci:{tmp_path / 'lay'}:v1", work)
    image.close()
    changed = rebuilt(image)
    changed.config = dict(changed.config, author="slimmer tests")
    top = ociwrite.write_layout(parse_location(f"oci:{tmp_path / 'lay'}:v1"), [changed])
    index = json.loads((tmp_path / "lay" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [top]


def test_blob_already_in_the_layout_is_not_written_again(tmp_path, work):
    make_layout(tmp_path / "lay", [("amd64", STACK)], tag="v1")
    image = read(f"oci:{tmp_path / 'lay'}:v1", work)
    image.close()
    blob_path = image.blobs[0].path
    before = blob_path.stat().st_mtime_ns
    ociwrite.write_layout(
        parse_location(f"oci:{tmp_path / 'lay'}:v2"), [rebuilt(image)]
    )
    assert blob_path.stat().st_mtime_ns == before


# -- registries -----------------------------------------------------------------


def hand_made_image(tmp_path, work, stack=STACK):
    make_layout(tmp_path / "src", [("amd64", stack)])
    image = read(f"oci:{tmp_path / 'src'}", work)
    image.close()
    return image


def test_pushed_image_is_valid_for_skopeo(opened, registry, tmp_path, work):
    image = hand_made_image(tmp_path, work)
    target = parse_location(f"docker://{registry.host}/push/app:v1")
    digest = ociwrite.push(target, [rebuilt(image)])
    inspected = json.loads(skopeo("inspect", str(target)).stdout)
    assert (inspected["Digest"], inspected["Layers"]) == (
        digest,
        [b.digest for b in image.blobs],
    )
    skopeo("copy", str(target), f"docker-archive:{tmp_path / 'back.tar'}")
    back = opened(archive.read_archive(tmp_path / "back.tar", work))
    assert [layer_bytes(layer) for layer in back.layers] == tars()


def test_pull_reads_what_skopeo_pushed(
    opened, registry, tmp_path, work, legacy_archive
):
    target = f"docker://{registry.host}/pull/app:v1"
    skopeo("copy", f"docker-archive:{legacy_archive}", target)
    image = opened(ocilayout.pull(parse_location(target), work))
    assert [layer_bytes(layer) for layer in image.saved.layers] == tars()
    assert all(b.origin == f"{registry.host}/pull/app" for b in image.blobs)


def test_pushing_the_same_image_twice_sends_each_layer_once(registry, tmp_path, work):
    image = hand_made_image(tmp_path, work, [[L.file("twice", "unique to this test")]])
    target = parse_location(f"docker://{registry.host}/again/app:v1")
    ociwrite.push(target, [rebuilt(image)])
    ociwrite.push(target, [rebuilt(image)])
    assert registry.uploads(image.blobs[0].digest) == 1


def test_pulled_layers_pushed_to_another_repository_are_mounted(
    registry, tmp_path, work
):
    image = hand_made_image(tmp_path, work, [[L.file("mounted", "mount me")]])
    source = parse_location(f"docker://{registry.host}/base/app:v1")
    ociwrite.push(source, [rebuilt(image)])
    pulled = ocilayout.pull(source, work)
    pulled.close()
    ociwrite.push(
        parse_location(f"docker://{registry.host}/derived/app:v1"), [rebuilt(pulled)]
    )
    digest = pulled.blobs[0].digest
    assert registry.uploads(digest) == 1
    assert registry.requests("POST", "/v2/derived/app/blobs/uploads/?mount=")


def test_two_platform_index_pushed_and_pulled_per_platform(
    opened, registry, two_platforms, work
):
    with ocilayout.Source(parse_location(f"oci:{two_platforms}"), work) as source:
        images = [source.image(d, p) for p, d in source.platforms()]
    for image in images:
        image.close()
    target = parse_location(f"docker://{registry.host}/multi/app:v1")
    ociwrite.push(target, [rebuilt(i) for i in images])
    raw = json.loads(skopeo("inspect", "--raw", str(target)).stdout)
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == [
        "amd64",
        "arm64",
    ]
    arm = json.loads(
        skopeo("inspect", str(target), options=["--override-arch", "arm64"]).stdout
    )
    assert arm["Architecture"] == "arm64"
    pulled = opened(ocilayout.pull(target, work, platform="linux/arm64"))
    assert names(layer_bytes(pulled.saved.layers[1])) == ["etc", "etc/arch"]


def test_pull_refuses_a_location_that_is_not_a_registry(tmp_path, work):
    with pytest.raises(SlimmerError, match="not a registry"):
        ocilayout.pull(parse_location(f"oci:{tmp_path}"), work)


def test_push_refuses_a_digest_as_the_target(registry, tmp_path, work):
    image = hand_made_image(tmp_path, work)
    target = parse_location(f"docker://{registry.host}/a@{sha(b'x')}")
    with pytest.raises(SlimmerError, match="name a docker:// tag"):
        ociwrite.push(target, [rebuilt(image)])
