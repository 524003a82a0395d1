"""The pipeline: read, squash, prune, write, smoke test, then tag or store.

`prepare` (prepared.py) runs the steps `plan` and `apply` share, up to
the prune step, so the two cannot disagree. `apply` (delivery.py, per
platform) then runs the smoke tests on the source, writes the candidate,
loads and tests it, and only then tags it (a daemon destination) or
writes it to its location. Whatever goes wrong, Ctrl-C included, the
source image is untouched, the work folder is removed, a candidate that
is not tagged is removed too, and the target keeps what it pointed to.

Any image location is a source (sources.py) and a destination
(destinations.py). An index is slimmed per platform. The smoke tests need
a daemon: a source that is not on it is loaded there, untagged, for the
tests, and removed afterwards unless it was there before.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slimmer import delivery, keepbase, sources
from slimmer.daemon import split_ref
from slimmer.errors import DaemonError, SlimmerError
from slimmer.locations import (
    DAEMON,
    DOCKER_ARCHIVE,
    Location,
    LocationError,
    default_destination,
    parse_location,
)
from slimmer.ocilayout import matches
from slimmer.prepared import Listing, Prepared, prepare  # noqa: F401 - re-exported
from slimmer.profiles import resolve
from slimmer.prune import removes_file
from slimmer.report import Report
from slimmer.smoke import DeferredInterrupt

log = logging.getLogger(__name__)

NO_DAEMON = (
    "smoke tests need a Docker daemon and none answers (DOCKER_HOST or "
    "/var/run/docker.sock); pass --no-smoke to write the result untested"
)


class Progress:
    """Step and byte progress; the CLI passes one that draws bars."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def step(self, name: str, total: int | None = None) -> None:
        log.info("%s", name)

    def advance(self, amount: int) -> None:
        pass


@dataclass
class Options:
    ref: str  # the source: an image ref or any image location
    profiles: list[str] = field(default_factory=list)
    tag: str | None = None  # a daemon tag for the result (-t)
    smoke: list[str] = field(default_factory=list)
    no_smoke: bool = False
    import_check: bool = True
    smoke_timeout: float = 120.0
    bisect: bool = False
    removed_list: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    workdir: Path | None = None  # parent of the work folder
    to: str | None = None  # the destination location (--to)
    insecure: list[str] = field(default_factory=list)  # --insecure-registry
    platforms: list[str] = field(default_factory=list)  # --platform
    compression: str | None = None  # registry and OCI outputs; gzip if None
    keep_base: str | None = None  # --keep-base REF|N


@dataclass(frozen=True)
class Route:
    source: Location
    target: Location | None = None  # None for plan and analyze


@contextlib.contextmanager
def work_folder(parent: Path | None) -> Iterator[Path]:
    """A private temp folder, removed however the block ends."""
    path = Path(tempfile.mkdtemp(prefix="slimmer-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def route(options: Options, with_target: bool = True) -> Route:
    """The source and destination locations. Raises LocationError."""
    source = parse_location(options.ref)
    if not with_target:
        return Route(source)
    if options.tag and options.to:
        raise LocationError("give --to or -t/--tag, not both")
    if options.tag:
        target = parse_location(options.tag)
        if target.kind != DAEMON:
            raise LocationError("-t/--tag names a daemon tag; use --to for others")
    elif options.to:
        target = parse_location(options.to)
    else:
        target = default_destination(source)
    if target.kind != DAEMON and str(target) == str(source):
        raise LocationError(f"--to {target} is the source itself")
    if target.kind == DAEMON == source.kind and _same_tag(target.ref, source.ref):
        # Moving the source's own tag would hide the source from its users.
        raise LocationError(f"{target.ref} is the source's own tag; name another")
    return Route(source, target)


def _same_tag(one: str, other: str) -> bool:
    return "@" not in other and split_ref(one) == split_ref(other)


def needs_daemon(options: Options, with_target: bool = True) -> bool:
    """Whether the source, the destination or the base is on the daemon."""
    where = route(options, with_target)
    kinds = {where.source.kind, where.target.kind if where.target else None}
    if options.keep_base and not options.keep_base.isdigit():
        kinds.add(keepbase.base_location(options.keep_base, where.source).kind)
    return DAEMON in kinds


# -- the steps plan and apply share ------------------------------------------


def _open(where: Route, workdir, daemon, options: Options, progress, ruleset=None):
    """The source, open for reading.

    With a ruleset, a daemon source is saved without the bytes of files it
    surely removes (spool.py), unless --keep-base copies the lower layers
    whole.
    """
    removes = None
    if ruleset is not None and not ruleset.empty and not options.keep_base:
        removes = removes_file(ruleset)
    return sources.Opened(
        where.source, workdir, daemon, options.insecure, progress, removes
    )


def _choose(opened, options, where: Route, daemon, one=False) -> list:
    """The images to slim: every platform, or those of --platform.

    A daemon destination takes the daemon's own platform from an index
    unless --platform names one; `one` (or a destination that holds one
    image) refuses a choice of several.
    """
    choices = sources.select(opened.choices(), options.platforms, where.source)
    target = where.target.kind if where.target else None
    if len(choices) > 1 and target == DAEMON and not options.platforms:
        native = sources.daemon_platform(daemon)
        choices = [c for c in choices if matches(c.platform, native)] or choices
    if len(choices) > 1 and (one or target in (DAEMON, DOCKER_ARCHIVE)):
        held = ", ".join(choice.text() for choice in choices)
        what = str(where.target) if where.target else "this command"
        raise SlimmerError(
            f"{where.source} holds {held}; {what} takes one: pick it with --platform"
        )
    return choices


def plan(daemon, options: Options, progress: Progress | None = None) -> Report:
    """What `apply` would remove. Writes no image and runs no container.

    An index is planned per platform; the report is the first platform's,
    with a note giving the others' totals.
    """
    progress = progress or Progress()
    where = Route(parse_location(options.ref), None)
    ruleset = resolve(options.profiles, options.cwd)
    listing, reports = Listing(options.removed_list), []
    with (
        work_folder(options.workdir) as workdir,
        _open(where, workdir, daemon, options, progress, ruleset) as opened,
    ):
        for choice in sources.select(opened.choices(), options.platforms, where.source):
            prepared = prepare(opened, choice, ruleset, options, progress, "plan")
            try:
                listing.add(prepared)
                reports.append(prepared.report)
            finally:
                prepared.image.close()
    return _combined(reports, [None] * len(reports))


def analyze(daemon, options: Options, progress: Progress | None = None):
    """Read and study the one image `options.ref` names.

    Returns (ImageInfo, analyze.Analysis); an index needs --platform.
    """
    from slimmer import analyze as study  # analyze.py imports this module

    progress = progress or Progress()
    where = Route(parse_location(options.ref), None)
    with (
        work_folder(options.workdir) as workdir,
        _open(where, workdir, daemon, options, progress) as opened,
    ):
        (choice,) = _choose(opened, options, where, daemon, one=True)
        image = opened.read(choice)
        try:
            if choice.platform is None:
                sources.check_platform(image, options.platforms, where.source)
            progress.step("analyze", len(image.saved.layers))
            tree, analysis = study.analyze_layers(image.saved)
            progress.step("price profiles")
            analysis.profiles = study.price_profiles(tree, image.saved, options.cwd)
        finally:
            image.close()
    return image.info, analysis


# -- apply -------------------------------------------------------------------


def apply(daemon, options: Options, progress: Progress | None = None) -> Report:
    """Slim the image; tag or store the candidate only when its tests pass.

    `daemon` may be None when neither the source nor the destination is
    on the daemon; then smoke tests are refused unless `options.no_smoke`.
    Raises SmokeBrokenOnSource (nothing written) or SmokeFailed (rolled
    back; with `options.bisect` its `bisect` names the culprit rules), and
    KeyboardInterrupt after the same rollback.
    """
    progress = progress or Progress()
    where = route(options)
    if daemon is None and DAEMON in (where.source.kind, where.target.kind):
        raise DaemonError("cannot reach the Docker daemon")
    if daemon is None and not options.no_smoke:
        raise SlimmerError(NO_DAEMON)
    ruleset = resolve(options.profiles, options.cwd)
    done = DeferredInterrupt()
    try:
        with (
            work_folder(options.workdir) as workdir,
            _open(where, workdir, daemon, options, progress, ruleset) as opened,
        ):
            context = delivery.Context(daemon, options, where, workdir, progress, done)
            choices = _choose(opened, options, where, daemon)
            delivery.refuse_untestable(context, choices)
            runs = [
                delivery.apply_one(context, opened, choice, ruleset, index)
                for index, choice in enumerate(choices)
            ]
            digest = delivery.store(context, runs)
    finally:
        if done.pending:
            log.warning("interrupted after the result was out: it stays")
        done.release(reraise=False)
    return _combined([r.report for r in runs], [r.result for r in runs], digest)


def _combined(reports: list[Report], results: list, digest: str | None = None):
    """The first platform's report, with every platform's result in it."""
    first = reports[0]
    if results[0] is not None:
        first.result = dict(results[0])
        if digest:
            first.result["digest"] = digest
    if len(reports) > 1:
        names = [r.source.get("platform", "?") for r in reports]
        first.notes.append(
            f"{len(reports)} platforms: {', '.join(names)}; the tables are for "
            f"{names[0]} (--json lists each platform's result)"
        )
        if first.result is not None:
            first.result["platforms"] = [
                dict(result, removed=r.tally.bytes)
                for r, result in zip(reports, results, strict=True)
            ]
        for other in reports[1:]:
            name = other.source.get("platform")
            first.notes.append(
                f"{name}: removes {other.tally.files} files, {other.tally.bytes} bytes"
            )
            first.notes += [f"{name}: {note}" for note in other.notes]
    return first
