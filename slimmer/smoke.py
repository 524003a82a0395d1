"""Smoke tests: prove the candidate still works, against the source.

Every command runs first on the source, then on the candidate, each in a
fresh container with no network, as the image's own user, with a
timeout. A command that fails on the source is a broken test, not a
broken profile, and stops the run before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slimmer.daemon import Daemon, RunResult
from slimmer.errors import SmokeBrokenOnSource, SmokeFailed

log = logging.getLogger(__name__)

SHELL = ["/bin/sh", "-c"]


@dataclass
class SmokeResult:
    command: str
    source_rc: int
    result_rc: int | None = None
    source_output: str = ""
    result_output: str = ""

    @property
    def passed(self) -> bool:
        return self.result_rc == 0

    def as_json(self) -> dict:
        return {
            "command": self.command,
            "source_rc": self.source_rc,
            "result_rc": self.result_rc,
        }


def run_on_source(
    daemon: Daemon, image_id: str, commands: list[str], timeout: float
) -> list[SmokeResult]:
    """Baseline: run each command on the source. Raises SmokeBrokenOnSource."""
    results = []
    for command in commands:
        run = daemon.run(image_id, [command], timeout, entrypoint=SHELL)
        log.info("source: %s -> %s", command, _describe(run))
        results.append(SmokeResult(command, run.exit_code, None, run.output))
        if run.exit_code != 0:
            raise SmokeBrokenOnSource(
                f"smoke test fails on the source image ({_describe(run)}), so the "
                f"test itself is wrong: {command}",
                results,
            )
    return results


def run_on_candidate(
    daemon: Daemon, image_id: str, results: list[SmokeResult], timeout: float
) -> list[SmokeResult]:
    """Run each baseline command on the candidate. Raises SmokeFailed."""
    for result in results:
        run = daemon.run(image_id, [result.command], timeout, entrypoint=SHELL)
        log.info("candidate: %s -> %s", result.command, _describe(run))
        result.result_rc, result.result_output = run.exit_code, run.output
    failed = [result for result in results if not result.passed]
    if failed:
        first = failed[0]
        raise SmokeFailed(
            f"smoke test failed on the candidate (exit {first.result_rc}): "
            f"{first.command}",
            results,
        )
    return results


def _describe(run: RunResult) -> str:
    return "timed out" if run.timed_out else f"exit {run.exit_code}"
