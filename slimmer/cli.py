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
from slimmer.cli_options import (
    SizeType,
    apply_options,
    connect,
    image_options,
    location_options,
    make_options,
)
from slimmer.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    SlimmerError,
    SmokeBrokenOnSource,
    SmokeFailed,
    os_error_text,
)
from slimmer.report import dumps

log = logging.getLogger("slimmer")


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
                "[red]interrupted[/]: everything slimmer made was removed "
                "(work folder, containers, candidate images); nothing was tagged"
            )
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            _fail(ctx, escape(os_error_text(exc)))
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
@click.option(
    "-q",
    "--quiet",
    count=True,
    help="No progress bars or info lines; results still print.",
)
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


def _emit(ctx: Context, report, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(report.as_json()))
    else:
        render.report(ctx.out, report)


@main.command()
@image_options
@apply_options
@click.pass_obj
@handle_errors
def apply(
    ctx,
    image,
    profiles,
    as_json,
    removed_list,
    workdir,
    platforms,
    insecure,
    tag,
    to,
    compression,
    keep_base,
    smoke_commands,
    no_smoke,
    no_import_check,
    bisect,
    smoke_timeout,
):
    """Slim IMAGE and store the result, once its smoke tests pass.

    Squashes IMAGE's layers, removes what the profiles name, runs each
    smoke test on IMAGE and on the result, and only then tags or writes
    the result. IMAGE itself is never changed. With no profile, the image
    is only squashed. A multi-platform IMAGE is slimmed per platform.

    Smoke tests run on the local daemon; an IMAGE from elsewhere is loaded
    there for them, untagged, and removed after. Platforms the daemon
    cannot run are written untested, with a note. With no daemon at all,
    pass --no-smoke.

    \b
    IMAGE and --to take any image location:
      REF                        an image of the local Docker daemon
      docker-archive:PATH        a `docker save` archive
      oci-archive:PATH           a tar of an OCI image layout
      oci:DIR[:TAG]              an OCI image layout folder
      docker://HOST/REPO[:TAG]   a registry; credentials from the Docker
                                 config file ($DOCKER_CONFIG/config.json)

    \b
    Examples:
      slimmer apply --profile python-rust semaphore:latest
      slimmer apply -p pycache -p docs --smoke 'python3 -c "import ssl"' app:1.2
      slimmer apply app:1.2 -t app:flat        # squash only
      slimmer apply -p ./team.toml --json app:1.2 > report.json
      slimmer apply -p python-rust --bisect app:1.2   # which rule broke it?
      slimmer apply -p python-rust --no-smoke docker://registry.example:5000/app:1.2
      slimmer apply -p docs --to oci:out:slim docker-archive:app.tar
      slimmer apply -p python-rust --keep-base debian:bookworm app:1.2

    \b
    Exit codes: 0 done, 1 error, 2 usage, 3 smoke test failed on the
    result (rolled back), 4 smoke test fails on IMAGE itself.
    """
    ctx.json = as_json
    options = make_options(
        ctx,
        image,
        profiles,
        removed_list,
        workdir,
        platforms=platforms,
        insecure=insecure,
        tag=tag,
        to=to,
        compression=compression,
        keep_base=keep_base,
        smoke=list(smoke_commands),
        no_smoke=no_smoke,
        import_check=not no_import_check,
        smoke_timeout=smoke_timeout,
        bisect=bisect,
    )
    daemon = connect(pipeline.needs_daemon(options), wanted=not no_smoke)
    with ctx.progress() as progress:
        report = pipeline.apply(daemon, options, progress)
    _emit(ctx, report, as_json)


@main.command()
@image_options
@click.pass_obj
@handle_errors
def plan(ctx, image, profiles, as_json, removed_list, workdir, platforms, insecure):
    """Show what `apply` would remove from IMAGE, and why. Changes nothing.

    Runs apply's pipeline up to the prune step: no image is written and no
    container is created. IMAGE is any image location, as for apply; a
    multi-platform IMAGE is planned per platform.

    \b
    Examples:
      slimmer plan -p python-rust semaphore:latest
      slimmer plan -p pycache --removed-list removed.txt app:1.2
      slimmer plan -p python-rust oci:layout:1.2 --platform linux/arm64
    """
    ctx.json = as_json
    options = make_options(
        ctx,
        image,
        profiles,
        removed_list,
        workdir,
        platforms=platforms,
        insecure=insecure,
    )
    daemon = connect(pipeline.needs_daemon(options, with_target=False), False)
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
@location_options
@click.pass_obj
@handle_errors
def analyze(
    ctx,
    image,
    as_json,
    max_wasted,
    min_efficiency,
    max_size,
    workdir,
    platforms,
    insecure,
):
    """Show where IMAGE's bytes went and what each profile would win back.

    Per layer: its size, the command that made it, and the paths it added,
    changed and deleted. Wasted bytes are file bytes a layer stores that
    the merged tree no longer shows, because a later layer overwrote or
    deleted them. Efficiency is merged file bytes / stored file bytes:
    1.0 means no layer hides anything of another.

    SIZE is bytes or a number with a unit: 10MB, 1.5GiB, 500kB. Gates can
    also be set in slimmer.toml, in an [analyze] table with max_wasted,
    min_efficiency and max_size; options win. IMAGE is any image location,
    as for apply; one platform of a multi-platform IMAGE at a time.

    \b
    Examples:
      slimmer analyze semaphore:latest
      slimmer analyze --json app:1.2 > analysis.json
      slimmer analyze --max-wasted 10MB --min-efficiency 0.9 app:1.2
      slimmer analyze --platform linux/amd64 docker://registry.example/app:1.2
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
    options = pipeline.Options(
        ref=image,
        workdir=workdir,
        platforms=list(platforms),
        insecure=list(insecure),
    )
    daemon = connect(pipeline.needs_daemon(options, with_target=False), False)
    with ctx.progress() as progress:
        source, analysis = pipeline.analyze(daemon, options, progress)
    document = study.as_json(image, source, analysis)
    if as_json:
        click.echo(dumps(document))
    else:
        render.analysis(ctx.out, document)
    study.check_gates(analysis, source.size, gates)
