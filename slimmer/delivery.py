"""Apply, for one platform's image: test, write, load, tag or hand over.

The smoke tests run on the source first; only then is anything written.
The candidate is loaded and tested on the daemon, then tagged (a daemon
destination) or removed again and handed to the pipeline, which writes
every platform's output to the destination at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slimmer import (
    assemble,
    bisect,
    candidate,
    compress,
    destinations,
    importcheck,
    keepbase,
    ociwrite,
    smoke,
    sources,
)
from slimmer.candidate import Candidate
from slimmer.errors import SlimmerError, SmokeFailed
from slimmer.locations import DAEMON, DOCKER_ARCHIVE, default_destination
from slimmer.ocilayout import PlatformImage, matches, platform_text
from slimmer.prepared import Listing, Prepared, prepare
from slimmer.report import Report
from slimmer.writer import StreamedLayer, write_layer

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One platform's apply: its report, result and output image."""

    report: Report
    result: dict
    output: PlatformImage | None = None


class Context:
    """What every platform's run of one apply shares."""

    def __init__(self, daemon, options, where, workdir, progress, done):
        self.daemon, self.options, self.where = daemon, options, where
        self.workdir, self.progress = workdir, progress
        # Held once the result is out (tagged or written); see commit().
        self.done = done
        self.listing = Listing(options.removed_list)
        self.compressed: dict = {}  # diff_id -> compressed base blob
        self._native: dict | None = None

    def native(self) -> dict:
        if self._native is None:
            self._native = sources.daemon_platform(self.daemon)
        return self._native

    def untested(self, platform: dict | None) -> str | None:
        """Why this image gets no smoke test, or None when it gets them."""
        if self.options.no_smoke:
            return "smoke tests were turned off (--no-smoke)"
        if self.where.source.kind == DAEMON or platform is None:
            return None
        if matches(platform, self.native()):
            return None
        return (
            f"{platform_text(platform)} was not smoke-tested: the daemon runs "
            f"{platform_text(self.native())} only"
        )


def refuse_untestable(context: Context, choices) -> None:
    # Smoke tests were asked for: refuse a run that could test nothing.
    if context.options.no_smoke or any(c.platform is None for c in choices):
        return
    reasons = [context.untested(c.platform) for c in choices]
    if all(reasons):
        raise SlimmerError(f"{reasons[0]}; pass --no-smoke to write it untested")


def apply_one(context: Context, opened, choice, ruleset, index: int) -> Run:
    options = context.options
    prepared = prepare(opened, choice, ruleset, options, context.progress, "apply")
    try:
        if options.keep_base:
            prepared.base = keepbase.layer_count(
                options.keep_base,
                opened.location,
                prepared.image,
                context.daemon,
                context.workdir,
                options.insecure,
            )
        why = context.untested(prepared.image.platform)
        if why and choice.platform is None and not options.no_smoke:
            raise SlimmerError(f"{why}; pass --no-smoke to write it untested")
        return _build_and_test(context, prepared, why, index)
    except SlimmerError as exc:
        exc.report = prepared.report
        raise
    finally:
        prepared.image.close()


def _build_and_test(context: Context, prepared: Prepared, why, index) -> Run:
    daemon, options = context.daemon, context.options
    report, suite, loaded = prepared.report, None, []
    try:
        if why is None:
            runner = smoke.Runner(daemon, options.smoke_timeout)
            source_id = prepared.source.id
            if not prepared.image.on_daemon:
                source_id = candidate.load_source(
                    daemon, prepared.image, context.progress, loaded
                )
            suite = _baseline(runner, options, prepared, source_id, context.progress)
        else:
            report.notes.append(why)
        # The tests pass on the source: only now is anything written.
        context.listing.add(prepared)
        made = _write(
            prepared,
            prepared.removed,
            context.workdir,
            context.progress,
            index,
            stream=context.where.target.kind == DAEMON,
        )
        result = _deliver(context, prepared, suite, made)
    finally:
        if loaded:
            candidate.remove_loaded(daemon, loaded)
    result.update(_extras(prepared, why is None))
    return Run(report, result, _output(context, prepared, made))


def _deliver(context: Context, prepared, suite, made: Candidate) -> dict:
    """Load and test the candidate; tag it when the daemon is the target."""
    daemon, target = context.daemon, context.where.target
    if target.kind != DAEMON and suite is None:
        return {"tag": str(target), "id": made.id, "size": made.size}
    try:
        candidate.load(daemon, made, context.progress, keep_file=target.kind != DAEMON)
        _check(suite, made, prepared.report, context.progress)
        if target.kind == DAEMON:
            result = daemon.inspect(made.id)
            candidate.commit(daemon, made.id, target.ref, context.done)
    except BaseException as exc:
        candidate.discard(daemon, made)
        if isinstance(exc, SmokeFailed) and context.options.bisect:
            exc.bisect = prepared.report.bisect = _bisect(
                daemon, prepared, suite.failing(), context.workdir, context.progress
            )
        raise
    if target.kind == DAEMON:
        return {"tag": target.ref, "id": result.id, "size": result.size}
    candidate.discard(daemon, made)
    return {"tag": str(target), "id": made.id, "size": made.size}


def _check(suite, made: Candidate, report: Report, progress) -> None:
    if suite is None:
        return
    try:
        suite.check(made.id, progress.step)
    finally:
        report.smoke, report.imports = suite.smoke_json(), suite.imports_json()


def _baseline(runner, options, prepared, source_id, progress) -> smoke.Suite:
    """Run every smoke test on the source; raises SmokeBrokenOnSource."""
    commands = list(prepared.ruleset.smoke) + list(options.smoke)
    pythons = []
    if options.import_check:
        pythons = importcheck.interpreters(prepared.tree, prepared.saved.config)
    return smoke.baseline(
        runner, source_id, commands, pythons, prepared.report.notes, progress.step
    )


def _write(prepared, removed, workdir, progress, index=0, stream=False) -> Candidate:
    """The candidate: its new layer written into the work folder, or, with
    `stream`, made ready to go straight into `docker load`."""
    saved, count = prepared.saved, prepared.base
    summary = _summary(prepared)
    if count:
        progress.step("write", _file_bytes(prepared))
        target = workdir / f"layer-{index}.tar"
        layer, _ = keepbase.upper_layer(
            prepared.tree, saved.layers, removed, count, target, progress.advance
        )
        base = prepared.image.plain_layers()[:count]
        return Candidate(
            layer,
            lambda diff_id: keepbase.new_config(saved.config, count, diff_id, summary),
            base,
        )
    if stream:
        progress.step("size the new layer")
        layer = StreamedLayer(prepared.tree, saved.layers, removed)
    else:
        progress.step("write", _file_bytes(prepared))
        target = workdir / f"layer-{index}.tar"
        layer = write_layer(
            prepared.tree, saved.layers, removed, target, progress.advance
        )
    return Candidate(
        layer, lambda diff_id: assemble.new_config(saved.config, diff_id, summary)
    )


def _file_bytes(prepared) -> int:
    return sum(entry.size for _, entry in prepared.tree.walk() if entry.is_file)


def _extras(prepared: Prepared, tested: bool) -> dict:
    """Result keys beyond tag, id and size, where they say something."""
    extras = {}
    if not prepared.image.on_daemon:
        extras["platform"] = platform_text(prepared.image.platform)
        extras["smoke_tested"] = tested
    if prepared.base:
        removed = prepared.report.tally.bytes
        hidden = keepbase.hidden_bytes(prepared.tree, prepared.removed, prepared.base)
        extras["base_layers"] = prepared.base
        extras["reclaimed_bytes"] = removed - hidden
        extras["hidden_base_bytes"] = hidden
        prepared.report.notes.append(
            keepbase.note(prepared.base, removed - hidden, hidden)
        )
    return extras


def _output(context: Context, prepared: Prepared, made: Candidate):
    """The image to write to a destination other than the daemon."""
    target, image = context.where.target, prepared.image
    if target.kind == DAEMON:
        return None
    if target.kind == DOCKER_ARCHIVE:
        return PlatformImage(image.platform, made.config, made.layers())
    method = context.options.compression or compress.GZIP
    context.progress.step(f"compress ({method})", made.layer.size)
    count = prepared.base
    if context.where.source.kind in (DAEMON, DOCKER_ARCHIVE):
        # A save holds plain tars: compress them as the new layer is.
        base = [
            destinations.compressed(blob, method, context.workdir, context.compressed)
            for blob in made.base
        ]
    else:
        base = image.blobs[:count]  # the original blobs, byte for byte
    top = ociwrite.layer_blob(made.layer.path, context.workdir, method)
    return PlatformImage(image.platform, made.config, [*base, top])


def store(context: Context, runs: list[Run]) -> str | None:
    """Write every platform's output to a non-daemon destination."""
    target = context.where.target
    if target.kind == DAEMON:
        return None
    context.progress.step(f"write {target}")
    tags = _archive_tags(context.where)
    digest = destinations.write(
        target, [run.output for run in runs], context.options.insecure, tags
    )
    context.done.hold()  # written: a Ctrl-C now must not deny it
    return digest


def _archive_tags(where) -> list[str]:
    # A docker-archive carries a tag, so that `docker load` names the image.
    if where.target.kind != DOCKER_ARCHIVE or where.source.kind != DAEMON:
        return []
    return [default_destination(where.source).ref]


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
        probe = _write(prepared, removed, workdir, progress, "probe", stream=True)
        try:
            candidate.load(daemon, probe, progress)
            return failing.breaks(probe.id)
        finally:
            candidate.discard(daemon, probe)

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
