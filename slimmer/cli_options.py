"""The options the commands share, and how they become pipeline Options."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from slimmer import pipeline
from slimmer.errors import SlimmerError

log = logging.getLogger("slimmer")


def _stack(command, decorators):
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def location_options(command):
    """Options for reading any image location."""
    decorators = [
        click.option(
            "--platform",
            "platforms",
            multiple=True,
            metavar="OS/ARCH[/VARIANT]",
            help="Only this platform of a multi-platform image. Repeatable.",
        ),
        click.option(
            "--insecure-registry",
            "insecure",
            multiple=True,
            metavar="HOST",
            help="Allow plain HTTP and unchecked TLS for this registry "
            "(loopback registries always are). Repeatable.",
        ),
    ]
    return _stack(command, decorators)


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
        location_options,
    ]
    return _stack(command, decorators)


def make_options(ctx, image, profiles, removed_list, workdir, **extra):
    extra["platforms"] = list(extra.get("platforms", ()))
    extra["insecure"] = list(extra.get("insecure", ()))
    return pipeline.Options(
        ref=image,
        profiles=list(profiles),
        removed_list=removed_list,
        workdir=workdir,
        cwd=Path.cwd(),
        **extra,
    )


def connect(required: bool = True, wanted: bool = True):
    """The daemon; when not `required`, None if it does not answer."""
    from slimmer.daemon import Daemon
    from slimmer.errors import DaemonError

    if required:
        return Daemon()
    if not wanted:
        return None
    try:
        return Daemon()
    except DaemonError as exc:
        log.info("working without a daemon: %s", exc)
        return None


def apply_options(command):
    """The options of `apply` beyond those `plan` has."""
    decorators = [
        click.option(
            "-t",
            "--tag",
            metavar="NEW",
            help="Daemon tag for the result, the same as --to NEW. "
            "Default: REPO:TAG-slim.",
        ),
        click.option(
            "--to",
            metavar="LOCATION",
            help="Where the result goes, any image location. Default: beside IMAGE, "
            "of the same kind: REPO:TAG-slim, PATH-slim.tar, oci:DIR:TAG-slim.",
        ),
        click.option(
            "--compression",
            type=click.Choice(["gzip", "zstd"]),
            help="Layer compression for registry and OCI outputs. Default: gzip.",
        ),
        click.option(
            "--keep-base",
            metavar="REF|N",
            help="Keep the base image's layers (or the lowest N) untouched and "
            "shared; squash and filter only the layers above.",
        ),
        click.option(
            "--smoke",
            "smoke_commands",
            multiple=True,
            metavar="CMD",
            help="Shell command that must succeed in the candidate as it "
            "does in the source. Repeatable.",
        ),
        click.option(
            "--no-smoke",
            is_flag=True,
            help="Run no smoke test at all, the automatic ones included.",
        ),
        click.option(
            "--no-import-check",
            is_flag=True,
            help="Skip the automatic Python import check.",
        ),
        click.option(
            "--bisect",
            is_flag=True,
            help="When a smoke test or the import check fails, find the smallest set "
            "of rules that breaks it; each probe writes, loads and tests an image.",
        ),
        click.option(
            "--smoke-timeout",
            type=click.FloatRange(min=1),
            default=120,
            show_default=True,
            help="Seconds each smoke test may take; also each module's limit in the "
            "import check.",
        ),
    ]
    return _stack(command, decorators)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        from slimmer.analyze import parse_size

        try:
            return parse_size(value)
        except SlimmerError as exc:
            self.fail(str(exc), param, ctx)
