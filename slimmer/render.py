"""Everything a person reads: tables, sizes and progress bars.

The only module that draws. Results go to stdout; progress goes to stderr
and only when stderr is a terminal and `-q` was not given.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import (
    Progress as Bar,
)
from rich.table import Table
from rich.text import Text

from slimmer.pipeline import Progress
from slimmer.report import Report

UNITS = ("B", "kB", "MB", "GB", "TB")


def human(size: int | float) -> str:
    """Decimal units, as `docker images` shows sizes."""
    value = float(size)
    for unit in UNITS:
        if abs(value) < 1000 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def printable(path: str) -> str:
    # Names that are not UTF-8 arrive as surrogate escapes; show their bytes.
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class BarProgress(Progress):
    """Progress bars on stderr, one task per step."""

    def __init__(self, console: Console):
        self._bar = Bar(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = None

    def __enter__(self):
        self._bar.start()
        return self

    def __exit__(self, *exc):
        self._bar.stop()

    def step(self, name, total=None):
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[-1].total or 0)
            self._bar.stop_task(self._task)
        self._task = self._bar.add_task(name, total=total)

    def advance(self, amount):
        if self._task is not None:
            self._bar.advance(self._task, amount)


def report(console: Console, report: Report) -> None:
    _headline(console, report)
    if report.squash_only:
        console.print("No profile given: the image was only squashed.")
    _rules(console, report)
    _top(console, report)
    _guarded(console, report)
    _dangling(console, report)
    _smoke(console, report)
    _packages(console, report)
    if report.bisect and report.command != "apply":
        bisection(console, report.bisect)
    for item in report.breaks:
        console.print(
            f"[yellow]breaks[/] ({item['profile']}): " + escape(item["breaks"])
        )
    for note in report.notes:
        console.print(f"note: {note}", markup=False)


def _headline(console, report):
    source = report.source
    console.print(
        f"source  {source['ref']}  {source['id'][:19]}  {human(source['size'])}"
    )
    if report.result:
        result = report.result
        saved = source["size"] - result["size"]
        share = 100 * result["size"] / source["size"] if source["size"] else 100
        console.print(
            f"result  {result['tag']}  {result['id'][:19]}  {human(result['size'])}"
            f"  ({share:.0f}% of the source, {human(saved)} smaller)"
        )
    tally = report.tally
    verb = "would remove" if report.command == "plan" else "removed"
    console.print(f"{verb} {plural(tally.files, 'file')}, {human(tally.bytes)}")


def _rules(console, report):
    rows = [count for count in report.tally.rules if count.files]
    if not rows:
        return
    table = Table(title="per rule", title_justify="left")
    for column in ("profile", "rule", "files"):
        table.add_column(column, justify="right" if column == "files" else "left")
    table.add_column("size", justify="right")
    for count in sorted(rows, key=lambda c: -c.bytes):
        table.add_row(
            count.profile, Text(count.pattern), str(count.files), human(count.bytes)
        )
    console.print(table)
    if report.unmatched and report.command == "plan":
        console.print(
            "rules that matched nothing: "
            + ", ".join(f"{u['profile']}:{u['pattern']}" for u in report.unmatched),
            markup=False,
        )
    elif report.unmatched:
        console.print(
            f"{len(report.unmatched)} rules matched nothing (`slimmer plan` lists them)"
        )


def _top(console, report):
    if not report.tally.top:
        return
    table = Table(title="largest removed directories", title_justify="left")
    table.add_column("directory", overflow="fold")
    table.add_column("size", justify="right")
    for path, size in report.tally.top:
        table.add_row(Text(printable(path)), human(size))
    console.print(table)


def _guarded(console, report):
    for item in report.guarded:
        console.print(
            escape(
                f"kept {printable(item['path'])}: needed by {item['needed_by']} "
                f"(rule {item['rule']['profile']}:{item['rule']['pattern']})"
            )
        )


def _dangling(console, report):
    for item in report.dangling:
        console.print(
            escape(
                f"symlink {printable(item['path'])} -> {printable(item['target'])}"
                " now points at a removed path"
            )
        )


def _smoke(console, report):
    for item in report.smoke:
        mark = "ok" if item["result_rc"] == 0 else "FAILED"
        console.print(f"smoke {mark}: {item['command']}", markup=False)
    imports = report.imports
    if imports.get("error"):
        console.print(f"import check: {imports['error']}", markup=False)
    elif imports:
        console.print(
            f"import check: {imports.get('checked', 0)} modules, "
            f"{len(imports.get('broken', []))} broken"
        )


def _packages(console, report):
    for item in report.packages:
        console.print(
            f"package {item['package']} lost "
            f"{plural(item['files_removed'], 'file')}; "
            "the package database still lists it as installed",
            markup=False,
        )


def bisection(console: Console, found: dict) -> None:
    """What --bisect found: the culprit rules and a keep line to fix them."""
    if not found.get("culprits"):
        console.print("bisect: no rule removed anything, so none is to blame")
        return
    rules = found.get("rules") or [
        {"profile": "?", "pattern": p} for p in found["culprits"]
    ]
    names = ", ".join(f"{r['profile']}:{r['pattern']}" for r in rules)
    console.print(
        f"bisect: the culprit rules are {names} (found in {found['probes']} probes)",
        markup=False,
    )
    if found.get("keep"):
        console.print(
            f"to fix, add this line to a profile: {found['keep']}", markup=False
        )
    if not found.get("minimal", True):
        console.print(
            "bisect stopped at its probe limit; the set may not be the smallest",
            markup=False,
        )


def profiles_table(console: Console, profiles) -> None:
    table = Table()
    for column in ("name", "source", "description"):
        table.add_column(column)
    for profile in profiles:
        table.add_row(profile.name, Text(profile.source), Text(profile.description))
    console.print(table)


def profile_detail(console: Console, profile, ruleset) -> None:
    console.print(f"[bold]{profile.name}[/]  ({profile.source})")
    console.print(profile.description)
    if profile.extends:
        console.print("extends: " + ", ".join(profile.extends))
    if profile.breaks:
        console.print(f"breaks: {profile.breaks}")
    console.print("rules (with everything it extends):")
    for rule in ruleset.rules:
        console.print(f"  {rule.profile:<16} {rule.pattern}", markup=False)
    for line in profile.keep:
        console.print(f"  keep             {line}", markup=False)
    for command in ruleset.smoke:
        console.print(f"  smoke            {command}", markup=False)


def analysis(console: Console, document: dict) -> None:
    source = document["source"]
    console.print(
        f"image  {source['ref']}  {source['id'][:19]}  {human(source['size'])}",
        markup=False,
    )
    table = Table(title="layers", title_justify="left")
    for column in ("#", "size", "added", "changed", "deleted", "created by"):
        table.add_column(column, justify="left" if column == "created by" else "right")
    for layer in document["layers"]:
        table.add_row(
            str(layer["index"]),
            human(layer["size"]),
            str(layer["added"]),
            str(layer["changed"]),
            str(layer["deleted"]),
            Text(_short(layer["created_by"], 60)),
        )
    console.print(table)
    console.print(
        f"wasted {human(document['wasted_bytes'])} "
        f"(stored {human(document['stored_bytes'])}, shown "
        f"{human(document['merged_bytes'])}); efficiency {document['efficiency']:.3f}",
        markup=False,
    )
    _sizes(console, "largest directories", document["top_dirs"])
    _sizes(console, "largest files", document["top_files"])
    priced = Table(title="what each profile would remove", title_justify="left")
    priced.add_column("profile")
    priced.add_column("files", justify="right")
    priced.add_column("size", justify="right")
    for item in sorted(document["profiles"], key=lambda p: -p["bytes"]):
        priced.add_row(item["name"], str(item["files"]), human(item["bytes"]))
    console.print(priced)


def _sizes(console, title, rows):
    table = Table(title=title, title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    for row in rows:
        table.add_row(Text(printable(row["path"])), human(row["bytes"]))
    console.print(table)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
