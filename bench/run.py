"""Issue 6's benchmark: slimmer beside the daemon's floor, docker export |
import and docker-squash, on one image, in one run.

    python3 bench/run.py [IMAGE] [--runs N] [--write bench/RESULTS.md]

The floor is `docker save IMAGE > /dev/null` plus `docker load` of slimmer's
`-p python-rust` result: the daemon must serialise the source and ingest the
result whatever tool runs in between. Each round runs every tool once, in
turn, so a change in background load touches them all alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from measure import (
    MB,
    BenchError,
    Sample,
    count_paths,
    docker,
    holders,
    inspect,
    load_average,
    machine,
    mb,
    now,
    remove_tag,
    run_measured,
    settle,
    slimmer,
    slimmer_env,
    timed,
    write_section,
)

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
SQUASH_VERSION = "1.2.2"
PYTHON_RUST = ["-p", "python-rust"]
ROWS = [  # key, label; "floor" is save + load of the same round
    ("save", "floor: `docker save` > /dev/null"),
    ("load", "floor: `docker load` of slimmer's python-rust result"),
    ("floor", "**floor** (save + load)"),
    ("rmi", "(`docker rmi` of that result; not in the floor)"),
    ("export", "`docker export \\| docker import`"),
    ("docker-squash", "docker-squash {version}, squash only"),
    ("slimmer", "`slimmer apply --no-smoke` (no profile)"),
    ("slimmer-python-rust", "`slimmer apply -p python-rust --no-smoke`"),
]


def tag(key: str) -> str:
    return f"slimmer-bench/{key}:tmp"


@dataclass
class Bench:
    image: str
    work: Path
    skip: set[str]
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    warm: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    squash_version: str = ""
    loads: list[float] = field(default_factory=list)  # 1-min load averages

    def add(self, key: str, sample: Sample | float) -> None:
        if not isinstance(sample, Sample):
            sample = Sample(sample)
        self.samples[key].append(sample)
        self.loads.append(os.getloadavg()[0])
        print(f"  {key}: {sample.wall:.1f} s", file=sys.stderr)


def check_cold(bench: Bench, key: str, diff_id: str) -> None:
    """Note when another image holds the result's layer: its load is cheaper."""
    bench.warm[key].update(holders(diff_id))


def warm_notes(bench: Bench) -> list[str]:
    return [
        f"- NOTE: {key}: the result's layer was already in the daemon (held by "
        f"{'; '.join(sorted(images))}), so its `docker load` did not unpack it"
        for key, images in bench.warm.items()
        if images
    ]


def prepare_floor(bench: Bench) -> Path:
    """Slim once with python-rust (a warm-up too) and save the result."""
    archive = bench.work / "floor.tar"
    argv = slimmer("apply", *PYTHON_RUST, "--no-smoke", "-t", tag("floor"), bench.image)
    run_measured(argv, bench.work / "warmup.log", bench.work / "tmp", slimmer_env())
    try:
        docker("save", "-o", str(archive), tag("floor"))
        diff_id = inspect(tag("floor"))["RootFS"]["Layers"][0]
    finally:
        remove_tag(tag("floor"))
    check_cold(bench, "floor", diff_id)
    return archive


def run_floor(bench: Bench, archive: Path) -> None:
    bench.add("save", timed(["docker", "save", bench.image]))
    remove_tag(tag("floor"))
    try:
        bench.add("load", timed(["docker", "load", "-q", "-i", str(archive)]))
        bench.add("rmi", timed(["docker", "rmi", tag("floor")]))
    finally:
        remove_tag(tag("floor"))


def run_export(bench: Bench) -> None:
    """`docker export | docker import` of a container made from the image."""
    container = docker("create", bench.image, "true")
    try:
        settle()
        start = time.perf_counter()
        export = subprocess.Popen(
            ["docker", "export", container], stdout=subprocess.PIPE
        )
        subprocess.run(
            ["docker", "import", "-", tag("export")],
            stdin=export.stdout,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        export.stdout.close()
        if export.wait() != 0:
            raise BenchError("docker export failed")
        bench.add("export", time.perf_counter() - start)
    finally:
        docker("rm", "-f", container)
        remove_tag(tag("export"))


def install_squash(bench: Bench) -> Path:
    """docker-squash from PyPI in a private venv; the pinned version if it can."""
    program = VENV / "bin" / "docker-squash"
    if not program.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q"]
        pinned = subprocess.run([*pip, f"docker-squash=={SQUASH_VERSION}"])
        if pinned.returncode != 0:
            subprocess.run([*pip, "docker-squash"], check=True)
    version = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, check=True
    )
    bench.squash_version = version.stdout.strip() or version.stderr.strip()
    return program


def run_squash(bench: Bench, program: Path) -> None:
    tmpdir = bench.work / "tmp-squash"
    try:
        argv = [str(program), "-t", tag("docker-squash"), bench.image]
        sample = run_measured(argv, tmpdir.with_suffix(".log"), tmpdir)
        bench.add("docker-squash", sample)
    finally:
        remove_tag(tag("docker-squash"))
        shutil.rmtree(tmpdir, ignore_errors=True)


def run_slimmer(bench: Bench, key: str, profiles: list[str]) -> None:
    tmpdir = bench.work / f"tmp-{key}"
    argv = slimmer("apply", *profiles, "--no-smoke", "-t", tag(key), bench.image)
    try:
        sample = run_measured(argv, tmpdir.with_suffix(".log"), tmpdir, slimmer_env())
        bench.add(key, sample)
        diff_id = inspect(tag(key))["RootFS"]["Layers"][0]
    finally:
        remove_tag(tag(key))
        shutil.rmtree(tmpdir, ignore_errors=True)
    check_cold(bench, key, diff_id)


def one_round(bench: Bench, archive: Path | None, squash: Path | None) -> None:
    if archive is not None:
        run_floor(bench, archive)
    if "export" not in bench.skip:
        run_export(bench)
    if squash is not None:
        run_squash(bench, squash)
    if "slimmer" not in bench.skip:
        run_slimmer(bench, "slimmer", [])
    if "slimmer-python-rust" not in bench.skip:
        run_slimmer(bench, "slimmer-python-rust", PYTHON_RUST)


def floor_walls(bench: Bench) -> list[float]:
    pairs = zip(bench.samples["save"], bench.samples["load"], strict=True)
    return [save.wall + load.wall for save, load in pairs]


def table(bench: Bench) -> str:
    """The Markdown table: median wall time, ratio to the floor, RSS, temp disk."""
    walls = {key: [s.wall for s in samples] for key, samples in bench.samples.items()}
    walls["floor"] = floor_walls(bench)
    floor = statistics.median(walls["floor"]) if walls["floor"] else None
    lines = [
        "| tool | median wall (s) | × floor | peak RSS (MB) | peak temp disk (MB) "
        "| runs (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, label in ROWS:
        if not walls.get(key):
            continue
        median = statistics.median(walls[key])
        ratio = "" if key in ("save", "load", "rmi") or not floor else median / floor
        samples = bench.samples.get(key) or [Sample(0)]
        rss = max((s.rss for s in samples if s.rss), default=None)
        tmp = max((s.tmp for s in samples if s.tmp is not None), default=None)
        lines.append(
            f"| {label.format(version=bench.squash_version)} | {median:.1f} "
            f"| {ratio and f'{ratio:.2f}'} | {mb(rss)} | {mb(tmp)} "
            f"| {', '.join(f'{w:.1f}' for w in walls[key])} |"
        )
    return "\n".join(lines)


def targets(bench: Bench, source_size: int) -> list[str]:
    """Issue 6's targets for `-p python-rust --no-smoke`, met or not."""
    runs = bench.samples.get("slimmer-python-rust")
    if not runs:
        return []
    wall = statistics.median(s.wall for s in runs)
    rss = max(s.rss for s in runs)
    tmp = max(s.tmp for s in runs)
    checks = []
    if bench.samples.get("load"):
        ratio = wall / statistics.median(floor_walls(bench))
        checks.append((f"wall time {ratio:.2f}× the floor", "≤ 1.5×", ratio <= 1.5))
    if bench.samples.get("docker-squash"):
        squash = bench.samples["docker-squash"]
        ratio = wall / statistics.median(s.wall for s in squash)
        theirs = max(s.rss for s in squash)
        checks.append(
            (f"wall time {ratio:.2f}× docker-squash's", "≤ 0.5×", ratio <= 0.5)
        )
        versus = f"peak RSS {mb(rss)} MB, docker-squash's {mb(theirs)} MB"
        checks.append((versus, "below docker-squash's", rss < theirs))
    checks.append((f"peak RSS {mb(rss)} MB", "≤ 100 MB", rss <= 100 * MB))
    size = f"peak temp disk {mb(tmp)} MB, source {mb(source_size)} MB"
    checks.append((size, "≤ the source's size", tmp <= source_size))
    return [
        f"- {what} (target {goal}): {'met' if ok else '**not met**'}"
        for what, goal, ok in checks
    ]


def describe(image: str) -> list[str]:
    info = inspect(image)
    return [
        f"image: `{image}` ({info['Id'][7:19]}), {mb(info['Size'])} MB, "
        f"{len(info['RootFS']['Layers'])} layers, {count_paths(image):,} paths",
    ]


def busy(bench: Bench) -> str:
    """How loaded the machine was: other work skews every figure."""
    low, high = min(bench.loads, default=0), max(bench.loads, default=0)
    return (
        f"1-min load average after each measurement: {low:.1f} to {high:.1f}; "
        f"at the end: {load_average()}"
    )


def report(bench: Bench, args, facts: list[str]) -> str:
    size = inspect(bench.image)["Size"]
    parts = [
        f"## Side by side: `{bench.image}`, {args.runs} runs, {now()}",
        f"Command: `python3 bench/run.py {' '.join(sys.argv[1:])}`. "
        "MB = 10^6 bytes. RSS and temp disk are peaks over all runs; "
        "temp disk is the size of the tool's TMPDIR.",
        "\n".join(f"- {fact}" for fact in [*facts, busy(bench)]),
        table(bench),
        "Issue 6's targets for slimmer with `-p python-rust --no-smoke`:",
        "\n".join(targets(bench, size)),
        "\n".join(warm_notes(bench)),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def run(bench: Bench, runs: int) -> None:
    archive = None if "floor" in bench.skip else prepare_floor(bench)
    squash = None if "docker-squash" in bench.skip else install_squash(bench)
    for number in range(1, runs + 1):
        print(f"round {number} of {runs}", file=sys.stderr)
        one_round(bench, archive, squash)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default="slimmer-example:latest")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="also write it to this file")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[key for key, _ in ROWS if key not in ("save", "load", "rmi")],
        help="leave a tool out (repeatable); 'floor' skips save and load",
    )
    args = parser.parse_args()
    facts = describe(args.image) + machine()
    with tempfile.TemporaryDirectory(prefix="slimmer-bench-") as work:
        bench = Bench(args.image, Path(work), set(args.skip))
        try:
            run(bench, args.runs)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    text = report(bench, args, facts)
    print(text)
    if args.write:
        write_section(args.write, f"run.py {args.image}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
