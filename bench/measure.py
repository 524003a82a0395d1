"""What both benchmarks share: run a child and measure it, and ask docker.

A child's peak RSS comes from wait4(2), which reports the rusage of that one
child (and of its own waited children), so runs do not mix. Temp disk is
the peak size of a folder the child uses as TMPDIR, sampled every 0.2 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 10**6  # decimal, as docker prints sizes
SAMPLE_EVERY = 0.2


class BenchError(Exception):
    """A benchmark step failed; the message says which."""


@dataclass
class Sample:
    wall: float  # seconds
    rss: int | None = None  # peak resident set, bytes
    tmp: int | None = None  # peak size of the child's TMPDIR, bytes


def folder_size(path: Path) -> int:
    """Bytes the files below `path` occupy on disk."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


class DiskSampler:
    """Track the peak size of a folder from a thread, while a block runs."""

    def __init__(self, path: Path):
        self.path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, folder_size(self.path))
            if self._stop.wait(SAMPLE_EVERY):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def settle() -> None:
    """Write out what earlier steps left in the page cache, untimed.

    A load or rmi leaves hundreds of MB to write back; without this, the
    next step measured pays for the one before it.
    """
    os.sync()


def run_measured(argv, log: Path, tmpdir: Path | None = None, env=None) -> Sample:
    """Run `argv` to the end, its output to `log`; raise BenchError if it fails."""
    settle()
    env = dict(os.environ if env is None else env)
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    sampler = DiskSampler(tmpdir) if tmpdir else contextlib.nullcontext()
    with open(log, "ab") as out, sampler:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _pid, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise BenchError(f"{' '.join(map(str, argv))} failed: {' / '.join(tail)}")
    # Linux reports ru_maxrss in KiB.
    return Sample(wall, usage.ru_maxrss * 1024, sampler.peak if tmpdir else None)


def timed(argv, **kwargs) -> float:
    """Wall seconds of a command that must succeed; its output is discarded."""
    settle()
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def slimmer(*args: str) -> list[str]:
    """The command line of slimmer from this checkout."""
    return [sys.executable, "-m", "slimmer", "-q", *args]


def slimmer_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def exists(ref: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
    return done.returncode == 0


def inspect(ref: str) -> dict:
    return json.loads(docker("image", "inspect", ref))[0]


def remove_tag(ref: str) -> None:
    """Remove the tag `ref`; its image goes too once no other tag holds it."""
    if exists(ref):
        docker("rmi", ref)


def holders(diff_id: str) -> list[str]:
    """Images whose bottom layer is `diff_id`, by tag or short id."""
    ids = sorted(set(docker("image", "ls", "-aq", "--no-trunc").split()))
    found = []
    for image in json.loads(docker("image", "inspect", *ids)) if ids else []:
        if image["RootFS"].get("Layers", [None])[0] == diff_id:
            found.append(", ".join(image["RepoTags"]) or image["Id"][7:19])
    return found


def count_paths(image: str) -> int:
    """Paths a container of `image` sees (from `docker export`)."""
    container = docker("create", image, "true")
    try:
        export = subprocess.Popen(
            ["docker", "export", container], stdout=subprocess.PIPE
        )
        with tarfile.open(fileobj=export.stdout, mode="r|") as stream:
            count = sum(1 for _ in stream)
        export.wait()
    finally:
        docker("rm", "-f", container)
    return count


def machine() -> list[str]:
    """One line per fact about this machine, for RESULTS.md."""
    memory = Path("/proc/meminfo").read_text().split()[1]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    cpu = models[0] if models else platform.machine()
    root = docker("info", "--format", "{{.DockerRootDir}} ({{.Driver}})")
    df = output("df", "-h", "--output=size,avail,fstype", root.split()[0])
    df = df.splitlines()[-1].split()
    return [
        f"CPU: {os.cpu_count()} cores ({cpu})",
        f"memory: {int(memory) / (1 << 20):.1f} GiB",
        f"disk: docker root {root}, {df[0]} {df[2]}, {df[1]} free",
        f"kernel: {platform.release()}",
        f"docker: {docker('version', '--format', '{{.Server.Version}}')}",
        f"python: {platform.python_version()}",
        f"load average (1, 5, 15 min) at start: {load_average()}",
        f"slimmer commit: {git_commit()}",
    ]


def output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


def git_commit() -> str:
    """HEAD, and whether slimmer/ differs from it: others may be editing it."""
    commit = output("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = output("git", "-C", str(ROOT), "status", "--porcelain", "--", "slimmer")
    return commit + (" + uncommitted changes in slimmer/" if dirty else "")


def mb(value: int | None) -> str:
    return "–" if value is None else f"{value / MB:,.0f}"


def write_section(path: Path, name: str, text: str) -> None:
    """Put `text` between this script's markers in `path`, keeping the rest."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if start in old and end in old:
        head, _, rest = old.partition(start)
        tail = rest.partition(end)[2].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
