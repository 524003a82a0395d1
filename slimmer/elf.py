"""What the dynamic loader reads from an ELF file, and where it looks.

Only the ELF header, the program headers and the dynamic table are read:
that is all ld.so uses, so files without section headers (stripped with
`sstrip`, or built that way) work too. pyelftools supplies the struct
layouts; they are built once per (class, byte order, machine), not once
per file, which keeps the parse cheap on images with thousands of ELF files.
"""

from __future__ import annotations

import io
import posixpath
import re
from dataclasses import dataclass
from itertools import product

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.elf.structs import ELFStructs

from slimmer.errors import SlimmerError

ELF_MAGIC = b"\x7fELF"
# Bytes needed to see e_ident: magic, class, byte order (ELF gABI, "e_ident").
IDENT_SIZE = 16
# Caps on what one file may make us read; real values are far smaller.
MAX_HEADERS = 1024
MAX_DYNAMIC = 1 << 16
MAX_STRING = 4096

# Debian multiarch triplets (the dirs /lib/<triplet> and /usr/lib/<triplet>).
MULTIARCH = {
    "EM_X86_64": ("x86_64-linux-gnu",),
    "EM_386": ("i386-linux-gnu",),
    "EM_AARCH64": ("aarch64-linux-gnu",),
    "EM_ARM": ("arm-linux-gnueabihf", "arm-linux-gnueabi"),
    "EM_PPC64": ("powerpc64le-linux-gnu",),
    "EM_S390": ("s390x-linux-gnu",),
    "EM_RISCV": ("riscv64-linux-gnu",),
    "EM_MIPS": ("mips64el-linux-gnuabi64", "mipsel-linux-gnu"),
}
# Image config "architecture" to ELF machine and word size, for LD_PRELOAD.
ARCHITECTURES = {
    "amd64": ("EM_X86_64", 64),
    "arm64": ("EM_AARCH64", 64),
    "386": ("EM_386", 32),
    "arm": ("EM_ARM", 32),
    "ppc64le": ("EM_PPC64", 64),
    "s390x": ("EM_S390", 64),
    "riscv64": ("EM_RISCV", 64),
}
# ldconfig follows `include` without a limit; a loop must still end.
MAX_INCLUDE_DEPTH = 8
# AT_PLATFORM values the kernel passes, for the $PLATFORM token.
PLATFORMS = {
    "EM_X86_64": ("x86_64",),
    "EM_386": ("i686", "i586", "i486", "i386"),
    "EM_AARCH64": ("aarch64",),
}
# ld.so(8) "Dynamic string tokens": $NAME or ${NAME}.
TOKEN = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)\b)")

_STRUCTS: dict[tuple, ELFStructs] = {}


class MalformedElf(SlimmerError):
    """An ELF file whose headers cannot be read; callers log and skip it."""


@dataclass(frozen=True)
class ElfInfo:
    """The loader-relevant facts of one ELF file."""

    # (EI_CLASS, EI_DATA, e_machine): ld.so skips a library that differs.
    kind: tuple
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]

    @property
    def machine(self):
        return self.kind[2]

    @property
    def bits(self) -> int:
        return self.kind[0]


def read_elf(stream) -> ElfInfo | None:
    """The loader facts of the file in `stream`, or None if it is no ELF file.

    Raises MalformedElf when it starts like an ELF file but cannot be read.
    """
    stream.seek(0)
    ident = stream.read(IDENT_SIZE)
    if not ident.startswith(ELF_MAGIC):
        return None
    try:
        return _parse(stream, ident)
    except ELFError as exc:
        raise MalformedElf(f"unreadable ELF headers: {exc}") from exc


def _parse(stream, ident: bytes) -> ElfInfo:
    header, structs = _header(stream, ident)
    phdrs = _program_headers(stream, header, structs)
    interp, dynamic = None, None
    for phdr in phdrs:
        if phdr["p_type"] == "PT_INTERP":
            interp = _cstring(_read(stream, phdr["p_offset"], phdr["p_filesz"]))
        elif phdr["p_type"] == "PT_DYNAMIC":
            dynamic = phdr
    kind = (structs.elfclass, structs.little_endian, header["e_machine"])
    if dynamic is None:
        return ElfInfo(kind, interp, (), (), ())

    tags = _dynamic_tags(stream, dynamic, structs)

    def strings(tag: str) -> tuple[str, ...]:
        values = [value for name, value in tags if name == tag]
        if not values:
            return ()
        strtab = _file_offset(phdrs, _first(tags, "DT_STRTAB"))
        return tuple(_cstring(_read(stream, strtab + v, MAX_STRING)) for v in values)

    return ElfInfo(
        kind,
        interp,
        strings("DT_NEEDED"),
        _split_path(strings("DT_RPATH")),
        _split_path(strings("DT_RUNPATH")),
    )


def _header(stream, ident: bytes):
    # ELF gABI: EI_CLASS is 1 (32-bit) or 2 (64-bit); EI_DATA 1 (LSB) or 2 (MSB).
    bits = {1: 32, 2: 64}.get(ident[4])
    little = {1: True, 2: False}.get(ident[5])
    if bits is None or little is None:
        raise MalformedElf(f"bad ELF class or byte order {ident[4:6]!r}")
    header = struct_parse(_structs(little, bits).Elf_Ehdr, stream, stream_pos=0)
    osabi = header["e_ident"]["EI_OSABI"]
    return header, _structs(little, bits, header["e_machine"], osabi)


def _structs(little: bool, bits: int, machine=None, osabi=None) -> ELFStructs:
    key = (little, bits, machine, osabi)
    structs = _STRUCTS.get(key)
    if structs is None:
        structs = ELFStructs(little_endian=little, elfclass=bits)
        structs.create_basic_structs()
        if machine is not None:
            structs.create_advanced_structs(None, machine, osabi)
        _STRUCTS[key] = structs
    return structs


def _program_headers(stream, header, structs) -> list:
    count, size = header["e_phnum"], header["e_phentsize"]
    if count == 0:
        return []
    if count > MAX_HEADERS or size != structs.Elf_Phdr.sizeof():
        raise MalformedElf(f"bad program header table ({count} x {size} bytes)")
    stream.seek(header["e_phoff"])
    table = io.BytesIO(stream.read(count * size))
    return [struct_parse(structs.Elf_Phdr, table, i * size) for i in range(count)]


def _dynamic_tags(stream, phdr, structs) -> list[tuple[str, int]]:
    size = structs.Elf_Dyn.sizeof()
    data = _read(stream, phdr["p_offset"], min(phdr["p_filesz"], MAX_DYNAMIC))
    table = io.BytesIO(data)
    tags = []
    for index in range(len(data) // size):
        tag = struct_parse(structs.Elf_Dyn, table, index * size)
        if tag["d_tag"] == "DT_NULL":
            break
        tags.append((tag["d_tag"], tag["d_val"]))
    return tags


def _first(tags, name: str) -> int | None:
    return next((value for tag, value in tags if tag == name), None)


def _file_offset(phdrs, address: int | None) -> int:
    # ELF gABI: dynamic pointers are virtual addresses; a PT_LOAD maps them.
    if address is None:
        raise MalformedElf("strings in the dynamic table but no DT_STRTAB")
    for phdr in phdrs:
        start = phdr["p_vaddr"]
        if phdr["p_type"] == "PT_LOAD" and start <= address < start + phdr["p_filesz"]:
            return address - start + phdr["p_offset"]
    raise MalformedElf(f"address {address:#x} lies in no PT_LOAD segment")


def _read(stream, offset: int, size: int) -> bytes:
    stream.seek(offset)
    data = stream.read(min(size, MAX_DYNAMIC))
    if not data:
        raise MalformedElf(f"offset {offset:#x} lies past the end of the file")
    return data


def _cstring(data: bytes) -> str:
    # Tree paths come from tar names decoded as UTF-8 with surrogateescape.
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _split_path(values: tuple[str, ...]) -> tuple[str, ...]:
    # NOTE: an empty element means the process's working directory to ld.so;
    # that is unknown here, so such elements are dropped.
    return tuple(part for value in values for part in value.split(":") if part)


def expand_tokens(directory: str, origin: str, info: ElfInfo) -> list[str]:
    """Every directory `directory` may stand for once its tokens are expanded.

    ld.so(8): $ORIGIN is the directory of the object; $LIB and $PLATFORM
    depend on the system, so every plausible value is tried.
    """
    values = {
        "ORIGIN": (origin,),
        "LIB": ("lib", "lib64", *(f"lib/{t}" for t in MULTIARCH.get(info.machine, ()))),
        "PLATFORM": PLATFORMS.get(info.machine, ()),
    }
    pieces = TOKEN.split(directory)
    # re.split with two groups gives: text, braced name, bare name, text, ...
    texts = pieces[::3]
    names = [a or b for a, b in zip(pieces[1::3], pieces[2::3], strict=True)]
    results = []
    for choice in product(*(values[name] for name in names)):
        parts = [texts[0]]
        for value, text in zip(choice, texts[1:], strict=True):
            parts += [value, text]
        results.append("".join(parts))
    return results


def default_dirs(info: ElfInfo) -> list[str]:
    """The loader's built-in directories for `info`'s kind, in search order.

    glibc's trusted dirs differ by distribution (Debian: the multiarch dirs,
    /lib, /usr/lib; Fedora: /lib64, /usr/lib64); the union is searched, and
    the kind check keeps a 32-bit library from standing in for a 64-bit one.
    musl's default path adds /usr/local/lib.
    """
    triplets = MULTIARCH.get(info.machine, ())
    dirs = [f"{top}/{triplet}" for triplet in triplets for top in ("/lib", "/usr/lib")]
    wide = ("/lib64", "/usr/lib64") if info.bits == 64 else ("/lib32", "/usr/lib32")
    return [*dirs, "/lib", "/usr/lib", *wide, "/usr/local/lib"]


def parse_ld_so_conf(text: str) -> list[tuple[str, str]]:
    """The ("dir", path) and ("include", pattern) lines of an ld.so.conf file.

    ldconfig(8): `#` starts a comment, `include` takes glob patterns, and
    every other line names one directory (a legacy `=TYPE` suffix is cut
    off, as ldconfig does); `hwcap` lines are obsolete.
    """
    items = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = line.split()
        if not words or words[0] == "hwcap":
            continue
        if words[0] == "include":
            items += [("include", pattern) for pattern in words[1:]]
        else:
            items.append(("dir", line.split("=", 1)[0].rstrip().rstrip("/") or "/"))
    return items


class LibrarySearch:
    """ld.so(8)'s search for shared libraries, over an image's files.

    `view` looks paths up in the image: resolve(path) follows symlinks and
    returns None or an object with `path` (a tree path), `entry` and `links`;
    elf(entry, path) gives an ElfInfo or None; read_text(path) and
    glob(pattern) serve the ld.so.conf files. Each match comes with the
    $ORIGIN the loaded library gets: the directory it was found in.
    """

    def __init__(self, view, workdir: str, env: dict[str, str]):
        self.view, self.workdir = view, workdir
        # ld.so(8): LD_LIBRARY_PATH is separated by colons or semicolons.
        self.library_path = self.absolute(
            re.split(r"[:;]", env.get("LD_LIBRARY_PATH", ""))
        )
        self._searches: dict[tuple, list] = {}
        self._conf_dirs: list[str] | None = None

    def absolute(self, dirs) -> list[str]:
        # NOTE: an empty element means the process's working directory,
        # which is unknown here, so it is dropped.
        return [posixpath.join(self.workdir, d) for d in dirs if d]

    def expand(self, dirs, origin: str, info: ElfInfo) -> tuple[str, ...]:
        expanded = [d for each in dirs for d in expand_tokens(each, origin, info)]
        return tuple(self.absolute(expanded))

    def needed(self, name: str, info: ElfInfo, origin: str, rpath) -> list:
        """Where ld.so finds the DT_NEEDED `name` of an object like `info`.

        `rpath` holds the object's own DT_RPATH dirs, then those of the
        objects that loaded it, expanded.
        """
        if "/" in name:
            # ld.so(8): a name with a slash is a path, loaded as it is.
            paths = self.expand((name,), origin, info)
            dirs, name = [posixpath.dirname(p) for p in paths], posixpath.basename(name)
        else:
            # ld.so(8), search order: DT_RPATH (only when there is no
            # DT_RUNPATH), LD_LIBRARY_PATH, DT_RUNPATH, the ld.so.cache
            # (built from ld.so.conf), then the default dirs.
            dirs = [
                *(() if info.runpath else rpath),
                *self.library_path,
                *self.expand(info.runpath, origin, info),
                *self.conf_dirs(),
                *default_dirs(info),
            ]
        return self.first_match(name, dirs, info.kind)

    def preload(self, name: str, architecture: str | None) -> list:
        """Where ld.so finds an LD_PRELOAD or /etc/ld.so.preload entry."""
        if "/" in name:
            path = posixpath.join(self.workdir, name)
            dirs, name = [posixpath.dirname(path)], posixpath.basename(path)
        else:
            machine, bits = ARCHITECTURES.get(architecture, ("EM_X86_64", 64))
            stub = ElfInfo((bits, True, machine), None, (), (), ())
            dirs = [*self.library_path, *self.conf_dirs(), *default_dirs(stub)]
        return self.first_match(name, dirs, None)

    def first_match(self, name: str, dirs: list[str], kind: tuple | None) -> list:
        """(file, origin) of the first ELF file `name` of `kind` in `dirs`."""
        dirs = list(dict.fromkeys(dirs))
        key = (name, kind, tuple(dirs))
        if key not in self._searches:
            self._searches[key] = self._first_match(name, dirs, kind)
        return self._searches[key]

    def _first_match(self, name: str, dirs: list[str], kind: tuple | None) -> list:
        matches = []
        for directory in dirs:
            where = self.view.resolve(directory)
            if where is None or where.entry.children is None:
                continue
            # glibc 2.33+: a dir's glibc-hwcaps subdirs come first; which one
            # the CPU picks is unknown here, so every match there is kept.
            hwcaps = where.entry.children.get("glibc-hwcaps")
            for sub in sorted(hwcaps.children or ()) if hwcaps else ():
                found = self.view.resolve(f"{directory}/glibc-hwcaps/{sub}/{name}")
                if self._fits(found, kind):
                    origin = posixpath.join("/", where.path, "glibc-hwcaps", sub)
                    matches.append((found, origin))
            found = self.view.resolve(f"{directory}/{name}")
            if self._fits(found, kind):
                matches.append((found, posixpath.join("/", where.path)))
                break
        return matches

    def _fits(self, found, kind: tuple | None) -> bool:
        # ld.so skips a file of another class or machine and searches on.
        if found is None:
            return False
        info = self.view.elf(found.entry, found.path)
        return info is not None and (kind is None or info.kind == kind)

    def conf_dirs(self) -> list[str]:
        """The directories /etc/ld.so.conf names, includes followed in order."""
        if self._conf_dirs is None:
            self._conf_dirs = self._read_conf("/etc/ld.so.conf", 0)
        return self._conf_dirs

    def _read_conf(self, path: str, depth: int) -> list[str]:
        text = self.view.read_text(path)
        if text is None or depth > MAX_INCLUDE_DEPTH:
            return []
        dirs = []
        for kind, value in parse_ld_so_conf(text):
            if kind == "dir":
                dirs.append(value)
                continue
            # ldconfig: a relative include is relative to the including file.
            pattern = posixpath.join(posixpath.dirname(path), value)
            for match in self.view.glob(pattern):
                dirs += self._read_conf(f"/{match}", depth + 1)
        return dirs
