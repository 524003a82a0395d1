"""Guards: what stays whatever a rule says, and why.

Trees are built from tree.Entry records whose bytes live in a fake
contents object. ELF files are real: tiny programs built with gcc.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from python_image import profile_file

from slimmer.elf import ElfInfo, expand_tokens, parse_ld_so_conf
from slimmer.guards import Guard, find_guards
from slimmer.links import dangling
from slimmer.tree import DIRECTORY, REGULAR, SYMLINK, Entry, Tree

pytest_plugins = ["python_image"]

RULE = "rule:remove-everything"
EM_AARCH64 = 183
# ELF gABI: e_machine is the two bytes at offset 18.
E_MACHINE_OFFSET = 18


class FakeImage:
    """A Tree plus the bytes its regular files hold."""

    def __init__(self):
        self.tree = Tree()
        self.data: dict[tuple[int, int], bytes] = {}  # by inode
        self.opened = 0
        self.records = 0

    def _put(self, path: str, entry: Entry) -> Entry:
        node = self.tree.root
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.children.setdefault(
                part, Entry(-1, -1, -1, 0, DIRECTORY, 0o755)
            )
        node.children[parts[-1]] = entry
        return entry

    def _entry(self, kind, size=0, mode=0o644, linkname=None):
        # Each record gets its own header offset: its identity (inode).
        self.records += 1
        offset = self.records * 512
        return Entry(0, offset, offset + 512, size, kind, mode, linkname)

    def file(self, path: str, data: bytes | str = b"", mode: int = 0o755) -> Entry:
        if isinstance(data, str):
            data = data.encode()
        entry = self._entry(REGULAR, len(data), mode)
        self.data[entry.inode] = data
        return self._put(path, entry)

    def symlink(self, path: str, target: str) -> Entry:
        return self._put(path, self._entry(SYMLINK, mode=0o777, linkname=target))

    def directory(self, path: str) -> Entry:
        return self._put(path, self._entry(DIRECTORY))

    # The contents interface find_guards reads through.
    def read(self, entry: Entry, start: int = 0, size: int | None = None) -> bytes:
        end = entry.size if size is None else min(entry.size, start + size)
        return self.data[entry.inode][start:end]

    def open(self, entry: Entry):
        self.opened += 1
        return io.BytesIO(self.read(entry))


def config(entrypoint=None, cmd=None, env=None, workdir=None) -> dict:
    settings = {"Env": env or [], "Entrypoint": entrypoint, "Cmd": cmd}
    if workdir:
        settings["WorkingDir"] = workdir
    return {"architecture": "amd64", "config": settings}


def everything(image: FakeImage, *keep: str) -> dict[str, str]:
    """A `removed` map naming every path of the image except `keep`."""
    return {path: RULE for path, _ in image.tree.walk() if path not in keep}


def guards_of(image, conf, removed) -> dict[str, str]:
    return {
        guard.path: guard.needed_by
        for guard in find_guards(image.tree, image, conf, removed)
    }


@pytest.fixture(scope="module")
def elf(tmp_path_factory) -> dict[str, bytes]:
    """Real ELF files: app -> libfoo.so -> libbar.so, in several link flavours."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build ELF fixtures")
    work = tmp_path_factory.mktemp("elf")
    (work / "bar.c").write_text("int bar(void) { return 1; }\n")
    (work / "foo.c").write_text("int bar(void);\nint foo(void) { return bar(); }\n")
    (work / "app.c").write_text("int foo(void);\nint main(void) { return foo(); }\n")
    builds = {
        "libbar.so": ["-shared", "-fPIC", "bar.c"],
        "libfoo.so": ["-shared", "-fPIC", "foo.c", "-L.", "-lbar"],
        "app": ["app.c", "-L.", "-lfoo", "-Wl,-rpath-link,."],
        "app-runpath": [
            "app.c",
            "-L.",
            "-lfoo",
            "-Wl,-rpath-link,.",
            "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib",
        ],
        "app-rpath": [
            "app.c",
            "-L.",
            "-lfoo",
            "-Wl,-rpath-link,.",
            "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib",
        ],
    }
    for name, args in builds.items():
        subprocess.run(["gcc", "-o", name, *args], cwd=work, check=True)
    return {name: (work / name).read_bytes() for name in builds}


# -- entrypoint and cmd ---------------------------------------------------


def test_entrypoint_bare_name_resolves_through_path():
    image = FakeImage()
    image.file("usr/bin/tool", "#!\n")
    image.file("opt/tools/bin/tool", "first on PATH\n")
    conf = config(entrypoint=["tool"], env=["PATH=/opt/tools/bin:/usr/bin"])

    assert guards_of(image, conf, everything(image)) == {
        "opt/tools/bin/tool": "entrypoint"
    }


def test_entrypoint_path_search_skips_a_file_without_execute_permission():
    image = FakeImage()
    image.file("usr/local/bin/tool", "not executable\n", mode=0o644)
    image.file("usr/bin/tool", "runs\n")

    assert guards_of(image, config(entrypoint=["tool"]), everything(image)) == {
        "usr/bin/tool": "entrypoint"
    }


def test_cmd_first_word_is_guarded_beside_the_entrypoint():
    image = FakeImage()
    image.file("usr/local/bin/docker-entrypoint.sh", 'exec "$@"\n')
    image.file("usr/bin/postgres", "server\n")
    conf = config(entrypoint=["docker-entrypoint.sh"], cmd=["postgres", "-c", "x"])

    assert guards_of(image, conf, everything(image)) == {
        "usr/local/bin/docker-entrypoint.sh": "entrypoint",
        "usr/bin/postgres": "cmd",
    }


def test_entrypoint_through_symlink_chain_and_merged_usr_dir_symlink():
    image = FakeImage()
    image.symlink("bin", "usr/bin")
    image.symlink("usr/bin/app", "/etc/alternatives/app")
    image.symlink("etc/alternatives/app", "../../usr/lib/app/real")
    image.file("usr/lib/app/real", "the program\n")
    image.file("usr/lib/app/unrelated", "not needed\n")

    assert guards_of(image, config(entrypoint=["/bin/app"]), everything(image)) == {
        "bin": "entrypoint",
        "usr/bin/app": "entrypoint",
        "etc/alternatives/app": "entrypoint",
        "usr/lib/app/real": "entrypoint",
    }


def test_relative_entrypoint_resolves_from_the_working_dir():
    image = FakeImage()
    image.file("srv/app/run", "app\n")

    conf = config(entrypoint=["./run"], workdir="/srv/app")
    assert guards_of(image, conf, everything(image)) == {"srv/app/run": "entrypoint"}


def test_symlink_loop_terminates_and_guards_nothing():
    image = FakeImage()
    image.symlink("usr/bin/loop", "loop2")
    image.symlink("usr/bin/loop2", "/usr/bin/loop")

    assert guards_of(image, config(entrypoint=["loop"]), everything(image)) == {}


# -- shebang interpreters -------------------------------------------------


def test_shebang_via_env_guards_env_and_the_command_found_on_path():
    image = FakeImage()
    image.file("usr/local/bin/run", "#!/usr/bin/env python3\nprint(1)\n")
    image.file("usr/bin/env", "env\n")
    image.symlink("usr/bin/python3", "python3.11")
    image.file("usr/bin/python3.11", "python\n")
    image.file("usr/bin/perl", "perl\n")

    assert guards_of(image, config(entrypoint=["run"]), everything(image)) == {
        "usr/local/bin/run": "entrypoint",
        "usr/bin/env": "shebang of usr/local/bin/run",
        "usr/bin/python3": "shebang of usr/local/bin/run",
        "usr/bin/python3.11": "shebang of usr/local/bin/run",
    }


def test_shebang_env_with_split_option_finds_the_command():
    image = FakeImage()
    image.file("app/run", "#!/usr/bin/env -S FOO=1 python3 -u\n")
    image.file("usr/bin/env", "env\n")
    image.file("usr/bin/python3", "python\n")

    assert set(
        guards_of(image, config(entrypoint=["/app/run"]), everything(image))
    ) == {"app/run", "usr/bin/env", "usr/bin/python3"}


def test_shebang_with_argument_names_the_interpreter_only():
    image = FakeImage()
    image.file("entry.sh", "#!/bin/sh -e\nexec app\n")
    image.file("bin/sh", "shell\n")

    assert guards_of(image, config(cmd=["/entry.sh"]), everything(image)) == {
        "entry.sh": "cmd",
        "bin/sh": "shebang of entry.sh",
    }


def test_shebang_interpreters_are_followed_recursively():
    image = FakeImage()
    image.file("app/run", "#!/app/wrapper\n")
    image.file("app/wrapper", "#!/bin/sh\n")
    image.file("bin/sh", "shell\n")

    assert guards_of(image, config(entrypoint=["/app/run"]), everything(image)) == {
        "app/run": "entrypoint",
        "app/wrapper": "shebang of app/run",
        "bin/sh": "shebang of app/wrapper",
    }


# -- shared libraries -----------------------------------------------------


def test_elf_needing_a_removed_lib_guards_it_and_its_own_needs(elf):
    image = FakeImage()
    image.file("usr/bin/app", elf["app"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])
    image.file("usr/lib/libunused.so", elf["libbar.so"])

    assert guards_of(image, config(), everything(image, "usr/bin/app")) == {
        "usr/lib/libfoo.so": "usr/bin/app",
        "usr/lib/libbar.so": "usr/lib/libfoo.so",
    }


def test_runpath_with_origin_is_searched_before_the_default_dirs(elf):
    image = FakeImage()
    image.file("opt/app/bin/app", elf["app-runpath"])
    image.file("opt/app/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])

    assert guards_of(image, config(), everything(image, "opt/app/bin/app")) == {
        "opt/app/lib/libfoo.so": "opt/app/bin/app",
        "usr/lib/libbar.so": "opt/app/lib/libfoo.so",
    }


def test_rpath_of_the_executable_also_serves_its_libraries(elf):
    image = FakeImage()
    image.file("opt/app/bin/app", elf["app-rpath"])
    image.file("opt/app/lib/libfoo.so", elf["libfoo.so"])
    image.file("opt/app/lib/libbar.so", elf["libbar.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])

    # ld.so(8): libfoo has no DT_RUNPATH, so its loader's DT_RPATH applies.
    assert guards_of(image, config(), everything(image, "opt/app/bin/app")) == {
        "opt/app/lib/libfoo.so": "opt/app/bin/app",
        "opt/app/lib/libbar.so": "opt/app/lib/libfoo.so",
    }


def test_ld_so_conf_include_adds_search_dirs(elf):
    image = FakeImage()
    image.file("etc/ld.so.conf", "# local\ninclude /etc/ld.so.conf.d/*.conf\n")
    image.file("etc/ld.so.conf.d/vendor.conf", "/opt/vendor/lib\n")
    image.file("etc/ld.so.conf.d/ignored.txt", "/opt/decoy\n")
    image.file("usr/bin/app", elf["app"])
    image.file("opt/vendor/lib/libfoo.so", elf["libfoo.so"])
    image.file("opt/decoy/libbar.so", elf["libbar.so"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])

    assert guards_of(image, config(), everything(image, "usr/bin/app")) == {
        "opt/vendor/lib/libfoo.so": "usr/bin/app",
        "usr/lib/libbar.so": "opt/vendor/lib/libfoo.so",
    }


def test_ld_library_path_from_the_config_env_is_searched(elf):
    image = FakeImage()
    image.file("usr/bin/app", elf["app"])
    image.file("srv/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])
    conf = config(env=["LD_LIBRARY_PATH=/srv/lib"])

    assert set(guards_of(image, conf, everything(image, "usr/bin/app"))) == {
        "srv/lib/libfoo.so",
        "usr/lib/libbar.so",
    }


def test_library_of_another_machine_is_passed_over(elf):
    foreign = bytearray(elf["libfoo.so"])
    foreign[E_MACHINE_OFFSET : E_MACHINE_OFFSET + 2] = EM_AARCH64.to_bytes(2, "little")
    image = FakeImage()
    image.file("usr/bin/app", elf["app"])
    image.file("lib/libfoo.so", bytes(foreign))
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])

    assert set(guards_of(image, config(), everything(image, "usr/bin/app"))) == {
        "usr/lib/libfoo.so",
        "usr/lib/libbar.so",
    }


def test_loader_of_a_kept_elf_is_guarded_through_merged_usr_symlinks(elf):
    image = FakeImage()
    image.file("usr/bin/app", elf["app"])
    image.symlink("lib64", "usr/lib64")
    image.symlink(
        "usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    # Any ELF file stands in for the loader; only its presence matters.
    image.file("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", elf["libbar.so"])

    assert guards_of(image, config(), everything(image, "usr/bin/app")) == {
        "lib64": "usr/bin/app",
        "usr/lib64/ld-linux-x86-64.so.2": "usr/bin/app",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "usr/bin/app",
    }


def test_lib_needed_only_by_a_removed_binary_is_not_guarded(elf):
    image = FakeImage()
    image.file("usr/bin/app", elf["app"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])
    image.file("usr/bin/kept", "not an ELF file\n")

    assert guards_of(image, config(), everything(image, "usr/bin/kept")) == {}


def test_entrypoint_elf_in_removed_is_guarded_with_its_libraries(elf):
    image = FakeImage()
    image.file("usr/local/bin/app", elf["app"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])

    assert guards_of(image, config(entrypoint=["app"]), everything(image)) == {
        "usr/local/bin/app": "entrypoint",
        "usr/lib/libfoo.so": "usr/local/bin/app",
        "usr/lib/libbar.so": "usr/lib/libfoo.so",
    }


def test_ld_preload_library_is_guarded(elf):
    image = FakeImage()
    image.file("usr/lib/x86_64-linux-gnu/libjemalloc.so.2", elf["libbar.so"])
    image.file("usr/lib/x86_64-linux-gnu/libother.so", elf["libbar.so"])
    conf = config(env=["LD_PRELOAD=libjemalloc.so.2"])

    assert guards_of(image, conf, everything(image)) == {
        "usr/lib/x86_64-linux-gnu/libjemalloc.so.2": "LD_PRELOAD"
    }


def test_malformed_elf_is_skipped_and_logged(elf, caplog):
    image = FakeImage()
    image.file("usr/bin/broken", b"\x7fELF\x02\x01\x01" + b"\xff" * 120)
    image.file("usr/bin/app", elf["app"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])
    kept = ("usr/bin/broken", "usr/bin/app")

    with caplog.at_level(logging.INFO, logger="slimmer.guards"):
        guards = guards_of(image, config(), everything(image, *kept))

    assert set(guards) == {"usr/lib/libfoo.so", "usr/lib/libbar.so"}
    assert "usr/bin/broken" in caplog.text


def test_libraries_are_not_parsed_when_no_removed_path_could_be_one(elf):
    image = FakeImage()
    image.file("usr/bin/app", elf["app"])
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/python3/__pycache__/x.pyc", b"\x00" * 100)

    removed = {"usr/lib/python3/__pycache__/x.pyc": RULE}
    assert find_guards(image.tree, image, config(), removed) == []
    assert image.opened == 0


def test_braced_origin_token_expands_like_the_bare_one():
    info = ElfInfo((64, True, "EM_X86_64"), None, (), (), ())

    assert expand_tokens("${ORIGIN}/../lib:x", "/opt/app/bin", info) == [
        "/opt/app/bin/../lib:x"
    ]
    assert expand_tokens("$ORIGIN/lib", "/a", info) == ["/a/lib"]


def test_lib_token_expands_to_every_plausible_dir():
    info = ElfInfo((64, True, "EM_X86_64"), None, (), (), ())

    assert expand_tokens("/usr/$LIB/app", "/", info) == [
        "/usr/lib/app",
        "/usr/lib64/app",
        "/usr/lib/x86_64-linux-gnu/app",
    ]


def test_ld_so_conf_lines_drop_comments_hwcap_and_type_suffixes():
    text = (
        "# c\n/usr/local/lib/\nhwcap 1 nosegneg\ninclude a/*.conf b.conf\n/opt=libc6\n"
    )

    assert parse_ld_so_conf(text) == [
        ("dir", "/usr/local/lib"),
        ("include", "a/*.conf"),
        ("include", "b.conf"),
        ("dir", "/opt"),
    ]


# -- what find_guards returns ----------------------------------------------


def test_guards_name_only_removed_paths_and_leave_removed_unchanged(elf):
    image = FakeImage()
    image.symlink("bin", "usr/bin")
    image.file("usr/bin/sh", elf["app"])
    image.file("entry.sh", "#!/bin/sh\n")
    image.file("usr/lib/libfoo.so", elf["libfoo.so"])
    image.file("usr/lib/libbar.so", elf["libbar.so"])
    removed = {"usr/lib/libbar.so": RULE, "usr/share/doc": RULE, "entry.sh": RULE}
    before = dict(removed)

    guards = find_guards(image.tree, image, config(entrypoint=["/entry.sh"]), removed)

    assert guards == [
        Guard("entry.sh", "entrypoint", RULE),
        Guard("usr/lib/libbar.so", "usr/lib/libfoo.so", RULE),
    ]
    assert removed == before


def test_needed_by_is_the_first_reason_found():
    image = FakeImage()
    image.file("bin/sh", "shell\n")
    image.file("a.sh", "#!/bin/sh\n")

    conf = config(entrypoint=["/bin/sh"], cmd=["/a.sh"])
    assert guards_of(image, conf, everything(image)) == {
        "bin/sh": "entrypoint",
        "a.sh": "cmd",
    }


def test_host_filesystem_is_never_consulted():
    image = FakeImage()
    # /bin/sh exists on the host but not in this image.
    image.file("usr/local/bin/run", "#!/bin/sh\n")

    assert Path("/bin/sh").exists()
    assert guards_of(image, config(entrypoint=["run"]), everything(image)) == {
        "usr/local/bin/run": "entrypoint"
    }


# -- dangling symlinks ---------------------------------------------------------


def test_symlink_to_a_removed_file_dangles():
    image = FakeImage()
    image.file("etc/alternatives-target", "x")
    image.symlink("etc/link", "/etc/alternatives-target")
    assert dangling(image.tree, {"etc/alternatives-target": RULE}) == [
        {"path": "/etc/link", "target": "/etc/alternatives-target"}
    ]


def test_symlink_into_a_removed_directory_dangles():
    image = FakeImage()
    image.file("usr/share/man/man1/awk.1.gz", "x")
    image.symlink("etc/awk.1.gz", "../usr/share/man/man1/awk.1.gz")
    removed = everything_below(image, "usr/share/man")
    assert [item["path"] for item in dangling(image.tree, removed)] == ["/etc/awk.1.gz"]


def test_symlink_crossing_a_removed_symlink_dangles():
    image = FakeImage()
    image.file("opt/real/tool", "x")
    image.symlink("opt/current", "real")
    image.symlink("usr/bin/tool", "/opt/current/tool")
    found = dangling(image.tree, {"opt/current": RULE})
    assert found == [{"path": "/usr/bin/tool", "target": "/opt/current/tool"}]


def test_symlink_to_a_kept_file_or_a_removed_symlink_itself_is_not_listed():
    image = FakeImage()
    image.file("lib/libz.so.1.2", "x")
    image.symlink("lib/libz.so.1", "libz.so.1.2")
    image.symlink("lib/libz.so", "libz.so.1")
    assert dangling(image.tree, {"lib/libz.so": RULE}) == []


def test_symlink_already_dangling_in_the_source_is_not_listed():
    image = FakeImage()
    image.file("etc/passwd", "root\n")
    image.symlink("etc/broken", "/no/such/file")
    assert dangling(image.tree, {"etc/passwd": RULE}) == []


def test_symlink_naming_a_removed_symlink_of_a_loop_dangles():
    image = FakeImage()
    image.symlink("app/loop1", "loop2")
    image.symlink("app/loop2", "loop1")
    image.symlink("app/tolink", "loop1")
    found = dangling(image.tree, {"app/loop1": RULE})
    assert [item["path"] for item in found] == ["/app/loop2", "/app/tolink"]


def test_dangling_targets_resolve_in_the_image_not_on_the_host():
    image = FakeImage()
    # /etc/passwd exists on the host; here the rule removes the image's own.
    image.file("etc/passwd", "root\n")
    image.symlink("etc/users", "/etc/passwd")
    assert Path("/etc/passwd").exists()
    assert dangling(image.tree, {"etc/passwd": RULE})[0]["path"] == "/etc/users"


def everything_below(image: FakeImage, top: str) -> dict[str, str]:
    return {top: RULE, **{path: RULE for path, _ in image.tree.walk(top)}}


# -- on the real daemon: a rule naming a library a kept binary loads ----------

LIBS = "usr/lib/x86_64-linux-gnu"


def test_rule_naming_a_library_a_kept_binary_loads_is_overridden(
    python_image, images, slimmer, tmp_path
):
    tag = images.track("slimmer-safety/guarded:1")
    rules = [f"{LIBS}/libyaml-0.so*", f"{LIBS}/libexpat.so*", "usr/share/doc/"]
    profile = profile_file(tmp_path, "safety-guard", rules)
    smoke = "python3 -c 'import pyexpat, yaml; assert yaml.__with_libyaml__'"
    report = slimmer.json(
        "apply", "-p", profile, "-t", tag, "--smoke", smoke, python_image, check=0
    )
    guarded = {item["path"]: item for item in report["guarded"]}
    expat = guarded[f"/{LIBS}/libexpat.so.1"]
    assert expat["needed_by"] == "usr/bin/python3.11"
    assert expat["rule"] == {"profile": "safety-guard", "pattern": rules[1]}
    libyaml = guarded[f"/{LIBS}/libyaml-0.so.2.0.9"]
    assert libyaml["needed_by"].endswith("/_yaml.cpython-311-x86_64-linux-gnu.so")
    assert libyaml["rule"] == {"profile": "safety-guard", "pattern": rules[0]}
    assert {f"/{LIBS}/libyaml-0.so.2", f"/{LIBS}/libexpat.so.1.8.10"} <= set(guarded)
    assert report["smoke"] == [{"command": smoke, "source_rc": 0, "result_rc": 0}]
    assert report["result"]["tag"] == tag
