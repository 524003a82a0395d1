"""How slimmer's time and memory grow: 10x the paths, and a few huge files.

    python3 bench/scaling.py [--keep] [--write bench/RESULTS.md]

Builds two synthetic one-layer images without `docker build` (see
synthetic.py), loads them, and measures `slimmer plan -p python-rust` and
`slimmer apply --no-smoke` on each, and on a base image (the example) to compare.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
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
    slimmer,
    slimmer_env,
    timed,
    write_section,
)
from synthetic import few_huge_files, many_small_files, save_archive

GIB = 1 << 30
EXAMPLE = "slimmer-example:latest"
SMALL, HUGE = "slimmer-bench/many-small:tmp", "slimmer-bench/few-huge:tmp"
RESULT = "slimmer-bench/scaling-result:tmp"


@dataclass
class Row:
    name: str
    ref: str
    paths: int = 0
    size: int = 0  # bytes, as the daemon counts them
    save: float = 0.0  # `docker save > /dev/null`, for scale
    plan: Sample | None = None
    apply: Sample | None = None
    note: str = ""


def ensure_disk(folder: Path, need: int) -> None:
    """Refuse to start when `need` bytes are not free where the data goes."""
    for path in (folder, Path(docker("info", "--format", "{{.DockerRootDir}}"))):
        free = shutil.disk_usage(path).free
        if free < need:
            raise BenchError(
                f"{path}: {free / GIB:.0f} GiB free, need {need / GIB:.0f}"
            )


def build(ref: str, members, work: Path) -> int:
    """Write the archive, `docker load` it, delete it; returns member count."""
    archive = work / "image.tar"
    start = time.perf_counter()
    try:
        count = save_archive(archive, ref, members)
        written = time.perf_counter() - start
        loaded = timed(["docker", "load", "-q", "-i", str(archive)])
    finally:
        archive.unlink(missing_ok=True)
    print(
        f"{ref}: {count:,} members, written in {written:.0f} s, "
        f"loaded in {loaded:.0f} s",
        file=sys.stderr,
    )
    return count


def measure(row: Row, work: Path) -> Row:
    """Save, plan and apply on `row.ref`, once each."""
    env, log, tmp = slimmer_env(), work / f"{row.name}.log", work / "tmp"
    row.size = inspect(row.ref)["Size"]
    row.save = timed(["docker", "save", row.ref])
    plan = slimmer("plan", "-p", "python-rust", row.ref)
    row.plan = run_measured(plan, log, tmp, env)
    apply = slimmer("apply", "--no-smoke", "-t", RESULT, row.ref)
    try:
        row.apply = run_measured(apply, log, tmp, env)
        result = inspect(RESULT)["RootFS"]["Layers"][0]
    finally:
        remove_tag(RESULT)
    others = holders(result)
    if others:
        row.note = f"the result's layer was already held by {others}: no unpacking"
    print(
        f"{row.name}: plan {row.plan.wall:.0f} s, apply {row.apply.wall:.0f} s",
        file=sys.stderr,
    )
    return row


def table(rows: list[Row]) -> str:
    lines = [
        "| image | paths | size (MB) | `docker save` (s) | plan (s) | plan RSS (MB) "
        "| apply (s) | apply RSS (MB) | apply temp disk (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.paths:,} | {mb(row.size)} | {row.save:.1f} "
            f"| {row.plan.wall:.1f} | {mb(row.plan.rss)} | {row.apply.wall:.1f} "
            f"| {mb(row.apply.rss)} | {mb(row.apply.tmp)} |"
        )
    return "\n".join(lines)


def growth(base: Row, row: Row) -> str:
    """How `row` grew against `base`, per path and per byte."""
    paths, size = row.paths / base.paths, row.size / base.size
    extra = row.apply.rss - base.apply.rss
    per_path = ""
    if row.paths > base.paths:
        per_path = f", {extra / (row.paths - base.paths):+.0f} bytes per extra path"
    return (
        f"- **{row.name}** against the base: paths ×{paths:.3g}, bytes "
        f"×{size:.3g}. Plan time ×{row.plan.wall / base.plan.wall:.2f}, apply "
        f"time ×{row.apply.wall / base.apply.wall:.2f} (`docker save` "
        f"×{row.save / base.save:.2f}). Apply costs {_us(row)} µs per path "
        f"(base {_us(base)}) and {_s_per_gb(row):.1f} s per GB (base "
        f"{_s_per_gb(base):.1f}). Peak RSS: apply ×{row.apply.rss / base.apply.rss:.2f}"
        f" ({extra / MB:+.0f} MB{per_path}), plan "
        f"×{row.plan.rss / base.plan.rss:.2f}."
    )


def _us(row: Row) -> str:
    return f"{row.apply.wall / row.paths * 1e6:,.0f}"


def _s_per_gb(row: Row) -> float:
    return row.apply.wall / (row.size / 1e9)


def report(rows: list[Row], args, facts: list[str]) -> str:
    base = rows[0]
    parts = [
        f"## Scaling, {now()}",
        f"Command: `python3 bench/scaling.py {' '.join(sys.argv[1:])}` (base "
        f"{args.base}, {args.files:,} small files, {args.huge_count} × "
        f"{args.huge_gib} GiB). Each figure is one "
        "run. Plan is `slimmer plan -p python-rust`; apply is `slimmer apply "
        "--no-smoke` with no profile (squash, write, load). The synthetic images "
        "are one layer: the many-small image holds 1 KiB random files, 625 to "
        "a folder; the few-huge image holds files of random 4 MiB blocks, "
        "rotated so that no two chunks are equal. Paths of the base image are "
        "counted from `docker export`.",
        "\n".join(
            f"- {fact}" for fact in [*facts, f"load average at end: {load_average()}"]
        ),
        table(rows),
        "\n".join(growth(base, row) for row in rows[1:]),
        "\n".join(f"- NOTE: {row.name}: {row.note}" for row in rows if row.note),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def synthetic(args) -> list[tuple[Row, object, int]]:
    """Each synthetic image: its row, its members, and the disk it needs.

    At the peak, during slimmer's load, the disk holds the image, slimmer's
    two temp files, the daemon's unpacked upload and the result: six copies
    with room to spare. The archive itself is gone by then.
    """
    small = args.files * (1024 + 512)
    huge = args.huge_count * args.huge_gib * GIB
    return [
        (Row("many small files", SMALL), many_small_files(args.files), 6 * small),
        (
            Row("few huge files", HUGE),
            few_huge_files(args.huge_count, args.huge_gib * GIB),
            6 * huge,
        ),
    ]


def run(args, work: Path) -> list[Row]:
    rows = [
        measure(Row(f"base: `{args.base}`", args.base, count_paths(args.base)), work)
    ]
    for row, members, need in synthetic(args):
        ensure_disk(work, need)
        try:
            row.paths = build(row.ref, members, work)
            rows.append(measure(row, work))
        finally:
            if not args.keep:
                remove_tag(row.ref)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=EXAMPLE, help="the image to compare with")
    parser.add_argument("--files", type=int, default=640_000)
    parser.add_argument("--huge-gib", type=int, default=2)
    parser.add_argument("--huge-count", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the images")
    parser.add_argument("--write", type=Path, help="also write it to this file")
    args = parser.parse_args()
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="slimmer-scaling-") as work:
        try:
            rows = run(args, Path(work))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    text = report(rows, args, facts)
    print(text)
    if args.write:
        write_section(args.write, "scaling.py", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
