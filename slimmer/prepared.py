"""The steps `plan` and `apply` share: read one image, squash it, prune it.

Both run exactly this, so they cannot disagree about what goes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slimmer import links, packages, sources
from slimmer.archive import SavedImage
from slimmer.daemon import ImageInfo
from slimmer.ocilayout import platform_text
from slimmer.prune import guarded
from slimmer.report import Report, tally, write_lines_atomically
from slimmer.rules import Ruleset
from slimmer.squash import squash
from slimmer.tree import Tree

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What the shared steps produce, for one platform's image."""

    source: ImageInfo
    saved: SavedImage
    tree: Tree
    ruleset: Ruleset
    removed: Mapping  # path -> rule (a prune.RemovedPaths), guards already restored
    report: Report
    image: sources.Image | None = None
    base: int = 0  # layers kept under the new one (--keep-base)


def prepare(opened, choice, ruleset, options, progress, command) -> Prepared:
    """Read one image and prune it; the caller closes `prepared.image`."""
    image = opened.read(choice)
    try:
        if choice.platform is None:
            sources.check_platform(image, options.platforms, opened.location)
        return _prune(image, ruleset, options, progress, command)
    except BaseException:
        image.close()
        raise


def _prune(image: sources.Image, ruleset, options, progress, command) -> Prepared:
    saved = image.saved
    progress.step("squash", len(saved.layers))
    tree = squash(saved.layers)

    progress.step("prune")
    removed, kept = guarded(tree, ruleset, saved, saved.config)

    source = image.info
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
    if image.platform and not image.on_daemon:
        # An image read from a location may be one platform of an index.
        report.source["platform"] = platform_text(image.platform)
    report.unmatched = [
        {"profile": count.profile, "pattern": count.pattern}
        for count in report.tally.rules
        if count.files == 0 and not count.pattern.startswith("!")
    ]
    return Prepared(source, saved, tree, ruleset, removed, report, image)


def _guard_json(guard) -> dict:
    rule = guard.rule
    return {
        "path": "/" + guard.path,
        "needed_by": guard.needed_by,
        "rule": {"profile": rule.profile, "pattern": rule.pattern},
    }


class Listing:
    """The --removed-list file: every platform's removed paths, once each."""

    def __init__(self, target: Path | None):
        self.target, self.paths = target, {}

    def add(self, prepared: Prepared) -> None:
        if self.target:
            self.paths.update(dict.fromkeys("/" + p for p in prepared.removed))
            write_lines_atomically(self.target, self.paths)
