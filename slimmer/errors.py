"""The exception family. Each error carries the exit code the CLI returns."""

import errno

# Exit codes, as in DESIGN.md.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SMOKE_CANDIDATE = 3
EXIT_SMOKE_SOURCE = 4
EXIT_THRESHOLD = 5


class SlimmerError(Exception):
    """Base of every error slimmer reports to the user as one line."""

    exit_code = EXIT_ERROR


class DaemonError(SlimmerError):
    """The Docker daemon is unreachable or refused a request."""


class ImageNotFound(SlimmerError):
    """The image ref names no image the daemon knows."""


class ProfileError(SlimmerError):
    """A profile is missing, malformed, or its `extends` form a cycle."""


class ArchiveError(SlimmerError):
    """A saved image archive or one of its layers cannot be read."""


class SmokeFailed(SlimmerError):
    """A smoke test passed on the source but failed on the candidate."""

    exit_code = EXIT_SMOKE_CANDIDATE

    def __init__(self, message, results=None, bisect=None):
        super().__init__(message)
        self.results = results or []
        self.bisect = bisect


class SmokeBrokenOnSource(SlimmerError):
    """A smoke test already fails on the source: the test itself is wrong."""

    exit_code = EXIT_SMOKE_SOURCE

    def __init__(self, message, results=None):
        super().__init__(message)
        self.results = results or []


class ThresholdExceeded(SlimmerError):
    """An `analyze` gate (--max-wasted, --min-efficiency, --max-size) failed."""

    exit_code = EXIT_THRESHOLD


# The user pressed Ctrl-C; everything slimmer created was removed. Python
# raises KeyboardInterrupt, which the CLI maps to this code.
EXIT_INTERRUPTED = 130


def os_error_text(exc: OSError) -> str:
    """An OSError as one line; a full disk says what the user can change."""
    if exc.errno == errno.ENOSPC:
        return (
            f"no space left on the device of {exc.filename or 'the work folder'}; "
            f"give slimmer more room with --workdir DIR (default $TMPDIR)"
        )
    return str(exc)
