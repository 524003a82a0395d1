"""The command line: parse, call the library, render, map errors to exits.

This is the one place that turns exceptions into what the user sees: a
red one-line error and the exit code the error carries (DESIGN.md), with
the traceback only under -v.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from slimmer import __version__, pipeline, render
from slimmer.errors import EXIT_ERROR, SlimmerError, SmokeBrokenOnSource, SmokeFailed
from slimmer.report import dumps

log = logging.getLogger("slimmer")
INTERRUPTED = 130


class Context:
    def __init__(self, verbose: int, quiet: int):
        self.verbose, self.quiet = verbose, quiet
        self.out = Console(highlight=False, soft_wrap=True, emoji=False)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

    def progress(self) -> pipeline.Progress:
        if self.quiet or not self.err.is_terminal:
            return pipeline.Progress()
        return render.BarProgress(self.err)


def handle_errors(command):
    """Run `command`; report a SlimmerError or Ctrl-C as one line and exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context().obj
        try:
            return command(*args, **kwargs)
        except SlimmerError as exc:
            _explain(ctx, exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            ctx.err.print(
                "[red]interrupted[/]: nothing was tagged; the work "
                "folder and any candidate image were removed"
            )
            sys.exit(INTERRUPTED)
        except OSError as exc:
            _fail(ctx, escape(str(exc)))
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            _fail(
                ctx,
                f"internal error: {type(exc).__name__}: {escape(str(exc))}"
                + ("" if ctx.verbose else " (run with -v for the traceback)"),
            )

    return wrapper


def _fail(ctx: Context, message: str) -> None:
    if ctx.verbose:
        ctx.err.print_exception()
    ctx.err.print(f"[red]error[/]: {message}")
    sys.exit(EXIT_ERROR)


def _explain(ctx: Context, exc: SlimmerError) -> None:
    if ctx.verbose:
        ctx.err.print_exception()
    results = getattr(exc, "results", None) or []
    if isinstance(exc, SmokeFailed | SmokeBrokenOnSource):
        for result in results:
            if result.result_rc not in (None, 0) or result.source_rc != 0:
                _show_outputs(ctx, result)
    ctx.err.print(f"[red]error[/]: {escape(str(exc))}")
    if getattr(exc, "bisect", None):
        render.bisection(ctx.err, exc.bisect)
    report = getattr(exc, "report", None)
    if report is not None and getattr(ctx, "json", False):
        document = report.as_json()
        document["error"] = {"message": str(exc), "exit_code": exc.exit_code}
        click.echo(dumps(document))


def _show_outputs(ctx: Context, result) -> None:
    ctx.err.print(f"--- source output of: {result.command}", markup=False)
    ctx.err.print(result.source_output.rstrip() or "(none)", markup=False)
    if result.result_rc is not None:
        ctx.err.print("--- candidate output:", markup=False)
        ctx.err.print(result.result_output.rstrip() or "(none)", markup=False)


def _configure_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(
        level=level, format="%(levelname)s %(message)s", stream=sys.stderr
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slimmer")
@click.option("-v", "--verbose", count=True, help="More detail; -vv for debug.")
@click.option("-q", "--quiet", count=True, help="No progress, warnings only.")
@click.pass_context
def main(ctx, verbose, quiet):
    """Make existing container images smaller without rebuilding them.

    \b
    Examples:
      slimmer apply --profile python-rust semaphore:latest
      slimmer plan -p pycache --json myimage:1.0
      slimmer profiles list
    """
    _configure_logging(verbose, quiet)
    ctx.obj = Context(verbose, quiet)


def image_options(command):
    """Options that `plan` and `apply` share."""
    decorators = [
        click.argument("image"),
        click.option(
            "-p",
            "--profile",
            "profiles",
            multiple=True,
            metavar="NAME|PATH",
            help="Removal profile: a built-in or project name, or a "
            "path to a .toml file. Repeatable.",
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
        ),
        click.option(
            "--removed-list",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write every removed path to this file, one a line.",
        ),
        click.option(
            "--workdir",
            type=click.Path(file_okay=False, exists=True, path_type=Path),
            help="Where the temporary work folder goes (default: $TMPDIR).",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _options(ctx, image, profiles, removed_list, workdir, **extra):
    return pipeline.Options(
        ref=image,
        profiles=list(profiles),
        removed_list=removed_list,
        workdir=workdir,
        cwd=Path.cwd(),
        **extra,
    )


def _daemon():
    from slimmer.daemon import Daemon

    return Daemon()


def _emit(ctx: Context, report, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(report.as_json()))
    else:
        render.report(ctx.out, report)


@main.command()
@image_options
@click.option(
    "-t", "--tag", metavar="NEW", help="Tag for the result. Default: REPO:TAG-slim."
)
@click.option(
    "--smoke",
    "smoke_commands",
    multiple=True,
    metavar="CMD",
    help="Shell command that must succeed in the candidate as it "
    "does in the source. Repeatable.",
)
@click.option(
    "--no-smoke",
    is_flag=True,
    help="Run no smoke test at all, the automatic ones included.",
)
@click.option(
    "--no-import-check", is_flag=True, help="Skip the automatic Python import check."
)
@click.option(
    "--bisect",
    is_flag=True,
    help="When a smoke test or the import check fails, find the smallest set "
    "of rules that breaks it; each probe writes, loads and tests an image.",
)
@click.option(
    "--smoke-timeout",
    type=click.FloatRange(min=1),
    default=120,
    show_default=True,
    help="Seconds each smoke test may take; also each module's limit in the "
    "import check.",
)
@click.pass_obj
@handle_errors
def apply(
    ctx,
    image,
    profiles,
    as_json,
    removed_list,
    workdir,
    tag,
    smoke_commands,
    no_smoke,
    no_import_check,
    bisect,
    smoke_timeout,
):
    """Slim IMAGE and tag the result, once its smoke tests pass.

    Squashes IMAGE's layers, removes what the profiles name, loads the
    result, runs each smoke test on IMAGE and on the result, and only then
    tags the result. IMAGE itself is never changed. With no profile, the
    image is only squashed.

    \b
    Examples:
      slimmer apply --profile python-rust semaphore:latest
      slimmer apply -p pycache -p docs --smoke 'python3 -c "import ssl"' app:1.2
      slimmer apply app:1.2 -t app:flat        # squash only
      slimmer apply -p ./team.toml --json app:1.2 > report.json
      slimmer apply -p python-rust --bisect app:1.2   # which rule broke it?

    \b
    Exit codes: 0 done, 1 error, 2 usage, 3 smoke test failed on the
    result (rolled back), 4 smoke test fails on IMAGE itself.
    """
    ctx.json = as_json
    options = _options(
        ctx,
        image,
        profiles,
        removed_list,
        workdir,
        tag=tag,
        smoke=list(smoke_commands),
        no_smoke=no_smoke,
        import_check=not no_import_check,
        smoke_timeout=smoke_timeout,
        bisect=bisect,
    )
    daemon = _daemon()
    with ctx.progress() as progress:
        report = pipeline.apply(daemon, options, progress)
    _emit(ctx, report, as_json)


@main.command()
@image_options
@click.pass_obj
@handle_errors
def plan(ctx, image, profiles, as_json, removed_list, workdir):
    """Show what `apply` would remove from IMAGE, and why. Changes nothing.

    Runs apply's pipeline up to the prune step: no image is written and no
    container is created.

    \b
    Examples:
      slimmer plan -p python-rust semaphore:latest
      slimmer plan -p pycache --removed-list removed.txt app:1.2
    """
    ctx.json = as_json
    options = _options(ctx, image, profiles, removed_list, workdir)
    daemon = _daemon()
    with ctx.progress() as progress:
        report = pipeline.plan(daemon, options, progress)
    _emit(ctx, report, as_json)


@main.group()
def profiles():
    """List and show removal profiles.

    \b
    Examples:
      slimmer profiles list
      slimmer profiles show python-rust
    """


@profiles.command("list")
@click.pass_obj
@handle_errors
def profiles_list(ctx):
    """List built-in and project profiles, and where each comes from.

    \b
    Example:
      slimmer profiles list
    """
    from slimmer.profiles import available_profiles

    found = available_profiles(Path.cwd())
    render.profiles_table(ctx.out, sorted(found.values(), key=lambda p: p.name))


@profiles.command("show")
@click.argument("name")
@click.pass_obj
@handle_errors
def profiles_show(ctx, name):
    """Show one profile: source, description, rules and what it breaks.

    \b
    Example:
      slimmer profiles show rust-toolchain
    """
    from slimmer.profiles import available_profiles, load_profile_file, resolve

    ruleset = resolve([name], Path.cwd())
    found = available_profiles(Path.cwd())
    profile = found.get(name) or load_profile_file(Path(name))
    render.profile_detail(ctx.out, profile, ruleset)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        from slimmer.analyze import parse_size

        try:
            return parse_size(value)
        except SlimmerError as exc:
            self.fail(str(exc), param, ctx)


@main.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--max-wasted", type=SizeType(), help="Fail (exit 5) above this waste.")
@click.option(
    "--min-efficiency",
    type=click.FloatRange(0, 1),
    help="Fail (exit 5) below this efficiency.",
)
@click.option("--max-size", type=SizeType(), help="Fail (exit 5) above this size.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Where the temporary work folder goes (default: $TMPDIR).",
)
@click.pass_obj
@handle_errors
def analyze(ctx, image, as_json, max_wasted, min_efficiency, max_size, workdir):
    """Show where IMAGE's bytes went and what each profile would win back.

    Per layer: its size, the command that made it, and the paths it added,
    changed and deleted. Wasted bytes are file bytes a layer stores that
    the merged tree no longer shows, because a later layer overwrote or
    deleted them. Efficiency is merged file bytes / stored file bytes:
    1.0 means no layer hides anything of another.

    SIZE is bytes or a number with a unit: 10MB, 1.5GiB, 500kB. Gates can
    also be set in slimmer.toml, in an [analyze] table with max_wasted,
    min_efficiency and max_size; options win.

    \b
    Examples:
      slimmer analyze semaphore:latest
      slimmer analyze --json app:1.2 > analysis.json
      slimmer analyze --max-wasted 10MB --min-efficiency 0.9 app:1.2
    """
    from slimmer import analyze as study

    gates = study.project_gates(Path.cwd())
    for name, value in (
        ("max_wasted", max_wasted),
        ("max_size", max_size),
        ("min_efficiency", min_efficiency),
    ):
        if value is not None:
            setattr(gates, name, value)
    daemon = _daemon()
    with ctx.progress() as progress:
        source, analysis = study.analyze(daemon, image, Path.cwd(), workdir, progress)
    document = study.as_json(image, source, analysis)
    if as_json:
        click.echo(dumps(document))
    else:
        render.analysis(ctx.out, document)
    study.check_gates(analysis, source.size, gates)
