"""The pipeline: save, squash, prune, write, load, smoke test, tag.

`prepare` runs the steps `plan` and `apply` share, up to the prune step,
so the two cannot disagree. `apply` then writes, loads and tests the
candidate, and tags it only when every smoke test passed. Whatever goes
wrong, the source image is untouched, the work folder is removed and a
candidate that is not tagged is removed too.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slimmer import assemble, guards, importcheck, smoke
from slimmer.archive import SavedImage, read_archive
from slimmer.daemon import Daemon, ImageInfo, split_ref
from slimmer.errors import SlimmerError, SmokeFailed
from slimmer.profiles import resolve
from slimmer.prune import select
from slimmer.report import Report, tally, write_lines_atomically
from slimmer.rules import Ruleset
from slimmer.squash import squash
from slimmer.tree import Tree
from slimmer.writer import write_layer

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

    progress.step("squash", len(saved.layers))
    tree = squash(saved.layers)

    progress.step("prune")
    plan = select(tree, ruleset)
    removed = dict(plan.removed)
    kept = guards.find_guards(tree, saved, saved.config, removed)
    for guard in kept:
        _restore(removed, guard.path)

    report = Report(
        command=command,
        source={"ref": options.ref, "id": source.id, "size": source.size},
        profiles=[profile.name for profile in ruleset.profiles],
        tally=tally(tree, removed, list(ruleset.rules)),
        guarded=[_guard_json(guard) for guard in kept],
        breaks=[{"profile": p, "breaks": text} for p, text in ruleset.breaks],
    )
    report.unmatched = [
        {"profile": count.profile, "pattern": count.pattern}
        for count in report.tally.rules
        if count.files == 0 and not count.pattern.startswith("!")
    ]
    if options.removed_list:
        write_lines_atomically(options.removed_list, ("/" + p for p in removed))
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


def plan(daemon: Daemon, options: Options, progress: Progress | None = None) -> Report:
    """What `apply` would remove. Writes no image and runs no container."""
    progress = progress or Progress()
    with work_folder(options.workdir) as workdir:
        prepared = prepare(daemon, options, workdir, progress, "plan")
        prepared.saved.close()
        return prepared.report


def apply(daemon: Daemon, options: Options, progress: Progress | None = None) -> Report:
    """Slim the image; tag the candidate only when its smoke tests pass."""
    progress = progress or Progress()
    target = options.tag or default_tag(options.ref)
    with work_folder(options.workdir) as workdir:
        prepared = prepare(daemon, options, workdir, progress, "apply")
        try:
            return _build_and_test(daemon, options, prepared, workdir, target, progress)
        finally:
            prepared.saved.close()


def _build_and_test(daemon, options, prepared, workdir, target, progress) -> Report:
    report = prepared.report
    baseline = _baseline(daemon, options, prepared, progress)

    progress.step("write", sum(e.size for _, e in prepared.tree.walk() if e.is_file))
    layer = write_layer(
        prepared.tree,
        prepared.saved.layers,
        prepared.removed,
        workdir / "layer.tar",
        progress.advance,
    )
    config = assemble.new_config(
        prepared.saved.config, layer.diff_id, _summary(prepared)
    )
    blob = assemble.config_bytes(config)
    candidate = assemble.image_id(blob)

    progress.step("load", layer.size)
    existed = daemon.exists(candidate)
    daemon.load(assemble.stream_archive(blob, layer.path, layer.diff_id))
    layer.path.unlink()
    try:
        _candidate_tests(daemon, options, candidate, baseline, report, progress)
        daemon.tag(candidate, target)
    except BaseException as exc:
        # Roll back: the candidate goes unless it was there before us.
        if not existed:
            daemon.remove_image(candidate)
        if isinstance(exc, SlimmerError):
            exc.report = report
        raise
    result = daemon.inspect(candidate)
    report.result = {"tag": target, "id": result.id, "size": result.size}
    return report


@dataclass
class Baseline:
    smoke: list = field(default_factory=list)
    imports: importcheck.ImportCheck | None = None


def _baseline(daemon, options, prepared, progress) -> Baseline:
    """Run every smoke test on the source first; raises SmokeBrokenOnSource."""
    baseline = Baseline()
    if options.no_smoke:
        prepared.report.notes.append("smoke tests were turned off (--no-smoke)")
        return baseline
    commands = list(prepared.ruleset.smoke) + list(options.smoke)
    if commands:
        progress.step("smoke tests on the source")
        baseline.smoke = smoke.run_on_source(
            daemon, prepared.source.id, commands, options.smoke_timeout
        )
    pythons = importcheck.interpreters(prepared.tree, prepared.saved.config)
    if options.import_check and pythons:
        progress.step("import check on the source")
        request = dict.fromkeys(pythons)
        try:
            found = importcheck.run_check(
                daemon, prepared.source.id, request, options.smoke_timeout * 5
            )
        except SlimmerError as exc:
            prepared.report.notes.append(f"import check skipped: {exc}")
        else:
            baseline.imports = importcheck.ImportCheck(source=found)
    return baseline


def _candidate_tests(daemon, options, candidate, baseline, report, progress):
    if baseline.smoke:
        progress.step("smoke tests on the candidate")
        try:
            smoke.run_on_candidate(
                daemon, candidate, baseline.smoke, options.smoke_timeout
            )
        finally:
            report.smoke = [result.as_json() for result in baseline.smoke]
    if baseline.imports is not None:
        progress.step("import check on the candidate")
        request = baseline.imports.importable()
        baseline.imports.candidate = importcheck.run_check(
            daemon, candidate, request, options.smoke_timeout * 5
        )
        lost = baseline.imports.broken()
        report.imports = {
            "checked": sum(len(names) for names in request.values()),
            "broken": [{"python": p, "module": m, "error": e} for p, m, e in lost],
        }
        if lost:
            python, module, error = lost[0]
            raise SmokeFailed(
                f"module {module} imports in the source but not in the candidate "
                f"({python}): {error}"
            )


def _summary(prepared: Prepared) -> str:
    names = ", ".join(prepared.report.profiles) or "none (squash only)"
    return f"squashed; profiles: {names}"
