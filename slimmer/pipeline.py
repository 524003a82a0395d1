"""The pipeline: save, squash, prune, write, load, smoke test, tag.

`prepare` runs the steps `plan` and `apply` share, up to the prune step,
so the two cannot disagree. `apply` then runs the smoke tests on the
source, writes, loads and tests the candidate, and tags it only when every
test passed. Whatever goes wrong, Ctrl-C included, the source image is
untouched, the work folder is removed, a candidate that is not tagged is
removed too, and the target tag keeps what it pointed to.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slimmer import assemble, bisect, guards, importcheck, links, packages, smoke
from slimmer.archive import SavedImage, read_archive
from slimmer.daemon import Daemon, ImageInfo, split_ref
from slimmer.errors import SlimmerError, SmokeFailed
from slimmer.profiles import resolve
from slimmer.prune import select
from slimmer.report import Report, tally, write_lines_atomically
from slimmer.rules import Ruleset
from slimmer.squash import squash
from slimmer.tree import Tree
from slimmer.writer import WrittenLayer, write_layer

log = logging.getLogger(__name__)


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
    ref: str
    profiles: list[str] = field(default_factory=list)
    tag: str | None = None
    smoke: list[str] = field(default_factory=list)
    no_smoke: bool = False
    import_check: bool = True
    smoke_timeout: float = 120.0
    bisect: bool = False
    removed_list: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    workdir: Path | None = None  # parent of the work folder


@dataclass
class Prepared:
    """What the shared steps produce."""

    source: ImageInfo
    saved: SavedImage
    tree: Tree
    ruleset: Ruleset
    removed: dict  # path -> rule, guards already restored
    report: Report


@contextlib.contextmanager
def work_folder(parent: Path | None) -> Iterator[Path]:
    """A private temp folder, removed however the block ends."""
    path = Path(tempfile.mkdtemp(prefix="slimmer-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def default_tag(ref: str) -> str:
    """`REPO:TAG-slim`, or `REPO:latest-slim` when the ref has no tag."""
    repository, tag = split_ref(ref)
    return f"{repository}:{tag}-slim"


def prepare(
    daemon: Daemon, options: Options, workdir: Path, progress: Progress, command: str
) -> Prepared:
    """Resolve profiles, save and squash the source, and prune the tree."""
    ruleset = resolve(options.profiles, options.cwd)
    source = daemon.inspect(options.ref)

    progress.step("save", source.size)
    archive = workdir / "source.tar"
    daemon.save(source.id, archive, progress.advance)
    saved = read_archive(archive, workdir)
    try:
        return _prune(source, saved, ruleset, options, progress, command)
    except BaseException:
        saved.close()
        raise


def _prune(source, saved, ruleset, options, progress, command) -> Prepared:
    progress.step("squash", len(saved.layers))
    tree = squash(saved.layers)

    progress.step("prune")
    removed = dict(select(tree, ruleset).removed)
    kept = guards.find_guards(tree, saved, saved.config, removed)
    for guard in kept:
        _restore(removed, guard.path)

    report = Report(
        command=command,
        source={"ref": options.ref, "id": source.id, "size": source.size},
        profiles=[profile.name for profile in ruleset.profiles],
        tally=tally(tree, removed, list(ruleset.rules)),
        guarded=[_guard_json(guard) for guard in kept],
        dangling=links.dangling(tree, removed),
        packages=packages.lost_files(tree, saved, removed),
        breaks=[{"profile": p, "breaks": text} for p, text in ruleset.breaks],
    )
    report.unmatched = [
        {"profile": count.profile, "pattern": count.pattern}
        for count in report.tally.rules
        if count.files == 0 and not count.pattern.startswith("!")
    ]
    return Prepared(source, saved, tree, ruleset, removed, report)


def _restore(removed: dict, path: str) -> None:
    # A guarded file stays, and so must every directory above it.
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        removed.pop("/".join(parts[:depth]), None)


def _guard_json(guard) -> dict:
    rule = guard.rule
    return {
        "path": "/" + guard.path,
        "needed_by": guard.needed_by,
        "rule": {"profile": rule.profile, "pattern": rule.pattern},
    }


def _write_removed_list(options: Options, prepared: Prepared) -> None:
    if options.removed_list:
        lines = ("/" + path for path in prepared.removed)
        write_lines_atomically(options.removed_list, lines)


def plan(daemon: Daemon, options: Options, progress: Progress | None = None) -> Report:
    """What `apply` would remove. Writes no image and runs no container."""
    progress = progress or Progress()
    with work_folder(options.workdir) as workdir:
        prepared = prepare(daemon, options, workdir, progress, "plan")
        try:
            _write_removed_list(options, prepared)
        finally:
            prepared.saved.close()
        return prepared.report


def apply(daemon: Daemon, options: Options, progress: Progress | None = None) -> Report:
    """Slim the image; tag the candidate only when its smoke tests pass.

    Raises SmokeBrokenOnSource (nothing written) or SmokeFailed (rolled
    back; with `options.bisect` its `bisect` names the culprit rules), and
    KeyboardInterrupt after the same rollback.
    """
    progress = progress or Progress()
    target = options.tag or default_tag(options.ref)
    with work_folder(options.workdir) as workdir:
        prepared = prepare(daemon, options, workdir, progress, "apply")
        try:
            return _build_and_test(daemon, options, prepared, workdir, target, progress)
        except SlimmerError as exc:
            exc.report = prepared.report
            raise
        finally:
            prepared.saved.close()


def _build_and_test(daemon, options, prepared, workdir, target, progress) -> Report:
    report = prepared.report
    runner = smoke.Runner(daemon, options.smoke_timeout)
    suite = _baseline(runner, options, prepared, progress)
    # The tests pass on the source: only now is anything written.
    _write_removed_list(options, prepared)

    candidate = _write(daemon, prepared, prepared.removed, workdir, progress)
    try:
        _load(daemon, candidate, progress)
        try:
            suite.check(candidate.id, progress.step)
        finally:
            report.smoke, report.imports = suite.smoke_json(), suite.imports_json()
        result = daemon.inspect(candidate.id)
        _commit(daemon, candidate.id, target)
    except BaseException as exc:
        _discard(daemon, candidate)
        if isinstance(exc, SmokeFailed) and options.bisect:
            exc.bisect = report.bisect = _bisect(
                daemon, prepared, suite.failing(), workdir, progress
            )
        raise
    report.result = {"tag": target, "id": result.id, "size": result.size}
    return report


def _baseline(runner, options, prepared, progress) -> smoke.Suite:
    """Run every smoke test on the source; raises SmokeBrokenOnSource."""
    notes = prepared.report.notes
    if options.no_smoke:
        notes.append("smoke tests were turned off (--no-smoke)")
        return smoke.Suite(runner)
    commands = list(prepared.ruleset.smoke) + list(options.smoke)
    pythons = []
    if options.import_check:
        pythons = importcheck.interpreters(prepared.tree, prepared.saved.config)
    return smoke.baseline(
        runner, prepared.source.id, commands, pythons, notes, progress.step
    )


@dataclass
class Candidate:
    """An image written to the work folder, about to be loaded."""

    id: str
    existed: bool  # the daemon had this image before: never remove it
    config: bytes
    layer: WrittenLayer


def _write(daemon, prepared, removed, workdir, progress) -> Candidate:
    progress.step("write", sum(e.size for _, e in prepared.tree.walk() if e.is_file))
    layer = write_layer(
        prepared.tree,
        prepared.saved.layers,
        removed,
        workdir / "layer.tar",
        progress.advance,
    )
    config = assemble.new_config(
        prepared.saved.config, layer.diff_id, _summary(prepared)
    )
    blob = assemble.config_bytes(config)
    image = assemble.image_id(blob)
    return Candidate(image, daemon.exists(image), blob, layer)


def _load(daemon: Daemon, candidate: Candidate, progress: Progress) -> None:
    progress.step("load", candidate.layer.size)
    held = smoke.DeferredInterrupt()
    layer = candidate.layer
    stream = assemble.stream_archive(candidate.config, layer.path, layer.diff_id)
    try:
        daemon.load(_sent(stream, progress, held))
    except BaseException:
        held.release(reraise=False)
        raise
    held.release()
    layer.path.unlink()


def _sent(chunks, progress: Progress, held: smoke.DeferredInterrupt):
    for chunk in chunks:
        yield chunk
        progress.advance(len(chunk))
    # Every byte is with the daemon, which finishes the load even if we go:
    # hold Ctrl-C until it answers, so that the image it makes is removed.
    held.hold()


def _commit(daemon: Daemon, image: str, target: str) -> None:
    held = smoke.DeferredInterrupt()
    held.hold()
    try:
        daemon.tag(image, target)
    finally:
        # Once tagged, the run is done: a Ctrl-C now must not undo it.
        held.release(reraise=False)


def _discard(daemon: Daemon, candidate: Candidate) -> None:
    with smoke.DeferredInterrupt():
        if not candidate.existed:
            daemon.remove_image(candidate.id)


def _bisect(daemon, prepared, failing, workdir, progress) -> dict | None:
    """Probe subsets of the rules for the smallest one that still breaks."""
    rules = bisect.relevant_rules(prepared.ruleset.rules, prepared.removed)
    if not rules:
        prepared.report.notes.append("bisect: no rule removed anything")
        return bisect.as_json(bisect.Bisection([], 0))

    def breaks(subset: list) -> bool:
        chosen = set(subset)
        progress.step(f"bisect: probe {len(chosen)} of {len(rules)} rules")
        removed = {p: r for p, r in prepared.removed.items() if r in chosen}
        probe = _write(daemon, prepared, removed, workdir, progress)
        try:
            _load(daemon, probe, progress)
            return failing.breaks(probe.id)
        finally:
            _discard(daemon, probe)

    try:
        found = bisect.ddmin(rules, breaks)
    except SlimmerError as exc:
        prepared.report.notes.append(f"bisect stopped: {exc}")
        return None
    log.info("bisect: %d probes", found.probes)
    return bisect.as_json(found)


def _summary(prepared: Prepared) -> str:
    names = ", ".join(prepared.report.profiles) or "none (squash only)"
    return f"squashed; profiles: {names}"
