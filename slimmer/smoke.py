"""Smoke tests: prove the candidate still works, against the source.

Every command runs first on the source, then on the candidate, each in a
fresh container with no network, as the image's own user, with a
timeout. A command that fails on the source is a broken test, not a
broken profile, and stops the run before anything is written. For Python
images the import check (importcheck.py) runs the same way, one container
per image.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import threading
import uuid
from dataclasses import dataclass, field

import docker.errors
import requests.exceptions

from slimmer.daemon import Daemon, RunResult, short_error
from slimmer.errors import DaemonError, SmokeBrokenOnSource, SmokeFailed
from slimmer.importcheck import DriverFailed, ImportCheck, error_line, run_check

log = logging.getLogger(__name__)

# How the runtime says the command itself cannot start in the image.
_CANNOT_EXEC = re.compile(
    r"executable file not found|no such file or directory|OCI runtime|"
    r"permission denied|exec format error",
    re.IGNORECASE,
)

SHELL = ["/bin/sh", "-c"]
# Only the end of a long output is kept: that is where errors are.
OUTPUT_LIMIT = 64 * 1024
_UNREACHABLE = (docker.errors.DockerException, requests.exceptions.ConnectionError)
# requests raises either when a read times out, depending on where it was.
_TIMED_OUT = (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)


class DeferredInterrupt:
    """Holds Ctrl-C (SIGINT) while the daemon finishes what it was asked.

    Between hold() and release() a SIGINT is noted, not raised; release()
    then raises KeyboardInterrupt. Only the main thread receives signals,
    and a SIGINT that is ignored stays ignored, so elsewhere it does nothing.
    """

    def __init__(self):
        self.pending = False
        self._previous = None

    def hold(self) -> None:
        if self._previous is not None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
            return
        self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum, frame) -> None:
        log.info("interrupt held until the daemon answers")
        self.pending = True

    def release(self, reraise: bool = True) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGINT, self._previous)
        self._previous = None
        if self.pending and reraise:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self):
        self.hold()
        return self

    def __exit__(self, kind, value, traceback):
        # An error already on its way out wins over a held interrupt.
        self.release(reraise=kind is None)
        return False


class Runner:
    """Runs one command per throwaway container, labelled `slimmer`."""

    def __init__(self, daemon: Daemon, timeout: float):
        self.api, self.timeout = daemon.api, timeout
        self.labels = {"slimmer": "smoke", "slimmer.run": uuid.uuid4().hex[:12]}

    def run(
        self, image: str, argv: list[str], timeout: float, entrypoint: list[str]
    ) -> RunResult:
        """Run `argv` in a new container of `image`; it is removed after."""
        container = None
        try:
            # A container made but not yet known here could not be removed.
            with DeferredInterrupt():
                container = self.api.create_container(
                    image,
                    argv,
                    entrypoint=entrypoint,
                    labels=self.labels,
                    host_config=self.api.create_host_config(network_mode="none"),
                )["Id"]
            self.api.start(container)
            return self._wait(container, timeout)
        except docker.errors.APIError as exc:
            # The image cannot run the command (no shell, say): the test
            # fails as a shell would. Any other refusal is the daemon's.
            if _CANNOT_EXEC.search(str(exc)):
                return RunResult(127, f"cannot run: {short_error(exc)}")
            message = f"the daemon refused a container: {short_error(exc)}"
            raise DaemonError(message) from exc
        except _UNREACHABLE as exc:
            raise DaemonError(f"cannot run a container: {short_error(exc)}") from exc
        finally:
            if container is not None:
                with DeferredInterrupt():
                    self._remove(container)

    def bind(self, image: str):
        """run() for one image: `(argv, timeout, entrypoint) -> RunResult`."""
        return functools.partial(self.run, image)

    def _wait(self, container: str, timeout: float) -> RunResult:
        try:
            status = self.api.wait(container, timeout=timeout)["StatusCode"]
        except _TIMED_OUT:
            state = self.api.inspect_container(container)["State"]
            if not state.get("Running"):
                return RunResult(state.get("ExitCode", 1), self._logs(container))
            log.info("container %s timed out after %s s", container[:12], timeout)
            # It may have ended on its own meanwhile.
            with contextlib.suppress(docker.errors.APIError):
                self.api.kill(container)
            return RunResult(-1, self._logs(container), timed_out=True)
        return RunResult(status, self._logs(container))

    def _logs(self, container: str) -> str:
        data = self.api.logs(container, stdout=True, stderr=True)
        return data[-OUTPUT_LIMIT:].decode("utf-8", "replace")

    def _remove(self, container: str) -> None:
        try:
            self.api.remove_container(container, force=True)
        except (*_UNREACHABLE, OSError) as exc:
            log.warning("could not remove container %s: %s", container[:12], exc)


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
    runner: Runner, image_id: str, commands: list[str]
) -> list[SmokeResult]:
    """Baseline: run each command on the source. Raises SmokeBrokenOnSource."""
    results = []
    for command in commands:
        run = runner.run(image_id, [command], runner.timeout, SHELL)
        log.info("source: %s -> %s", command, _describe(run))
        results.append(SmokeResult(command, run.exit_code, None, run.output))
        if run.timed_out:
            raise SmokeBrokenOnSource(
                f"smoke test timed out on the source image after "
                f"{runner.timeout:g} s; raise --smoke-timeout or fix the test: "
                f"{command}",
                results,
            )
        if run.exit_code != 0:
            raise SmokeBrokenOnSource(
                f"smoke test fails on the source image ({_describe(run)}), so the "
                f"test itself is wrong: {command}",
                results,
            )
    return results


def run_on_candidate(
    runner: Runner, image_id: str, results: list[SmokeResult]
) -> list[SmokeResult]:
    """Run each baseline command on the candidate. Raises SmokeFailed."""
    for result in results:
        run = runner.run(image_id, [result.command], runner.timeout, SHELL)
        log.info("candidate: %s -> %s", result.command, _describe(run))
        result.result_rc, result.result_output = run.exit_code, run.output
    failed = [result for result in results if not result.passed]
    if failed:
        first = failed[0]
        how = "timed out" if first.result_rc == -1 else f"exit {first.result_rc}"
        raise SmokeFailed(
            f"smoke test failed on the candidate ({how}): {first.command}", results
        )
    return results


def _describe(run: RunResult) -> str:
    return "timed out" if run.timed_out else f"exit {run.exit_code}"


def _quiet(name: str, total: int | None = None) -> None:
    pass


@dataclass
class Suite:
    """The smoke tests of one run, with what they gave on the source."""

    runner: Runner
    commands: list[SmokeResult] = field(default_factory=list)
    imports: ImportCheck | None = None
    # The import check's own run, when its driver failed on the candidate.
    driver: SmokeResult | None = None

    def check(self, image_id: str, step=_quiet) -> None:
        """Run every test on `image_id`. Raises SmokeFailed."""
        if self.commands:
            step("smoke tests on the candidate")
            run_on_candidate(self.runner, image_id, self.commands)
        if self.imports is not None:
            step("import check on the candidate")
            self._check_imports(image_id)

    def breaks(self, image_id: str) -> bool:
        """Whether any test fails on `image_id`."""
        try:
            self.check(image_id)
        except SmokeFailed:
            return True
        return False

    def _check_imports(self, image_id: str) -> None:
        request = self.imports.importable()
        try:
            found = run_check(self.runner.bind(image_id), request, self.runner.timeout)
        except DriverFailed as exc:
            ran = f"{self.imports.checked()} modules imported on the source"
            self.driver = SmokeResult("import check", 0, 1, ran, exc.output)
            raise SmokeFailed(
                f"the import check failed on the candidate: {exc}", [self.driver]
            ) from exc
        self.imports.candidate = found
        lost = self.imports.broken()
        if lost:
            python, module, error = lost[0]
            others = sorted({name for _, name, _ in lost} - {module})
            also = f" (also broken: {', '.join(others)})" if others else ""
            raise SmokeFailed(
                f"module {module} imports in the source but not in the candidate "
                f"({python}): {error}{also}"
            )

    def failing(self) -> Suite:
        """A suite of only the tests that failed on the candidate."""
        part = Suite(self.runner)
        part.commands = [
            SmokeResult(r.command, r.source_rc, None, r.source_output)
            for r in self.commands
            if r.result_rc not in (None, 0)
        ]
        if part.commands or self.imports is None:
            return part
        if self.driver is not None:
            # Python itself broke: a probe needs only to see if it starts.
            part.imports = ImportCheck({python: {} for python in self.imports.source})
            return part
        lost: dict[str, dict] = {}
        for python, module, _ in self.imports.broken():
            lost.setdefault(python, {})[module] = None
        part.imports = ImportCheck(lost) if lost else None
        return part

    def smoke_json(self) -> list[dict]:
        return [result.as_json() for result in self.commands]

    def imports_json(self) -> dict:
        if self.imports is None or not (self.imports.candidate or self.driver):
            return {}
        broken = self.imports.broken() if self.driver is None else []
        document = {
            "checked": self.imports.checked(),
            "broken": [{"python": p, "module": m, "error": e} for p, m, e in broken],
        }
        if self.driver is not None:
            document["error"] = error_line(self.driver.result_output)
        return document


def baseline(
    runner: Runner,
    source_id: str,
    commands: list[str],
    pythons: list[str],
    notes: list[str],
    step=_quiet,
) -> Suite:
    """Run every test on the source first. Raises SmokeBrokenOnSource.

    An import check whose driver cannot run on the source is skipped, with
    a note: nothing in the source can be compared.
    """
    suite = Suite(runner)
    if commands:
        step("smoke tests on the source")
        suite.commands = run_on_source(runner, source_id, commands)
    if pythons:
        step("import check on the source")
        request = dict.fromkeys(pythons)
        try:
            found = run_check(runner.bind(source_id), request, runner.timeout)
        except DriverFailed as exc:
            notes.append(f"import check skipped: {exc}")
        else:
            suite.imports = ImportCheck(source=found) if found else None
    return suite
