"""The automatic import check for Python images.

Every top-level module that imports in the source must import in the
candidate. One container per image runs a small driver script; the driver
imports each module in its own interpreter process, so one module's side
effects or crash cannot hide another's result.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from slimmer.daemon import RunResult
from slimmer.errors import SlimmerError
from slimmer.guards import DEFAULT_PATH, TreeView
from slimmer.tree import Tree

log = logging.getLogger(__name__)

NAMES = ("python3", "python")
RESULT_MARK = "SLIMMER-IMPORTS "
# How long the one container may take, in per-module timeouts, beyond
# one per module: the listing and the interpreters' own start-up.
SPARE_TIMEOUTS = 4
# The listing in the source: an unknown number of modules, so a cap.
LISTING_TIMEOUTS = 20

# Runs inside the container, under the first interpreter found. argv: a
# JSON object {interpreter: [module, ...] or null}, where null means "list
# the top-level modules of that interpreter's site- and dist-packages",
# then the per-module timeout in seconds.
DRIVER = r"""
import json, os, re, subprocess, sys
LISTER = '''
import json, os, sys
SUFFIXES = (".py", ".so", ".pyd")
found = set()
for d in sys.path:
    if not d.endswith(("site-packages", "dist-packages")) or not os.path.isdir(d):
        continue
    for name in os.listdir(d):
        stem = name.split(".")[0]
        if not stem.isidentifier() or stem == "__pycache__":
            continue
        if os.path.isdir(os.path.join(d, name)):
            if "." not in name:
                found.add(stem)
        elif name.endswith(SUFFIXES):
            found.add(stem)
print(json.dumps({"prefix": sys.prefix, "modules": sorted(found)}))
'''
ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
def run(argv, timeout, stdout=False):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                           timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired:
        return 124, "timed out after %d s" % timeout
    except OSError as exc:
        return 127, str(exc)
    if stdout:
        return p.returncode, p.stdout
    lines = [l for l in (p.stderr or p.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if ERROR.match(l)]
    return p.returncode, (errors or lines or [""])[-1]
request = json.loads(sys.argv[1])
timeout = int(sys.argv[2])
report, seen = {}, set()
for interpreter, modules in request.items():
    if not os.access(interpreter, os.X_OK):
        continue
    if modules is None:
        # Only stdout holds the listing; a warning on stderr must not hide it.
        rc, out = run([interpreter, "-c", LISTER], timeout, stdout=True)
        listing = json.loads(out) if rc == 0 else {"prefix": "", "modules": []}
        # A venv's python is a symlink to the system one, yet another sys.path.
        identity = (os.path.realpath(interpreter), listing["prefix"])
        if identity in seen:
            continue
        seen.add(identity)
        modules = listing["modules"]
    results = {}
    for module in modules:
        rc, out = run([interpreter, "-c", "import " + module], timeout)
        results[module] = None if rc == 0 else (out or "exit %d" % rc)
    report[interpreter] = results
print("SLIMMER-IMPORTS " + json.dumps(report))
"""

Results = dict[str, dict[str, str | None]]
Run = Callable[[list[str], float, list[str]], RunResult]


class DriverFailed(SlimmerError):
    """The import check's driver gave no result: its interpreter is broken."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


@dataclass
class ImportCheck:
    """Which modules imported where: {interpreter: {module: error or None}}."""

    source: Results = field(default_factory=dict)
    candidate: Results = field(default_factory=dict)

    def importable(self) -> dict[str, list[str]]:
        """The modules that import in the source, per interpreter."""
        return {
            interpreter: [name for name, error in modules.items() if error is None]
            for interpreter, modules in self.source.items()
        }

    def checked(self) -> int:
        return sum(len(names) for names in self.importable().values())

    def broken(self) -> list[tuple[str, str, str]]:
        """(interpreter, module, error) that import in the source only."""
        lost = []
        for interpreter, names in self.importable().items():
            results = self.candidate.get(interpreter, {})
            for name in names:
                error = results.get(name, "interpreter missing in the candidate")
                if error is not None:
                    lost.append((interpreter, name, error))
        return lost


def interpreters(tree: Tree, config: dict) -> list[str]:
    """Python interpreters on the image's PATH, in PATH order.

    Symlinks are followed inside the image, so a venv's `python3` counts,
    and a name whose link points nowhere does not.
    """
    path = DEFAULT_PATH
    for item in (config.get("config") or {}).get("Env") or []:
        if item.startswith("PATH="):
            path = item[len("PATH=") :]
    view = TreeView(tree, None)
    found = []
    for directory in path.split(":"):
        # NOTE: an empty or relative PATH element depends on the working
        # dir of whoever runs python; such elements are skipped.
        if not directory.startswith("/"):
            continue
        for name in NAMES:
            candidate = f"{directory.rstrip('/')}/{name}"
            target = view.resolve(candidate)
            # execvp(3): only a regular file with execute permission runs.
            if target is None or not target.entry.is_file:
                continue
            if target.entry.mode & 0o111 and candidate not in found:
                found.append(candidate)
    return found


def timeout_for(request: dict[str, list[str] | None], per_module: float) -> float:
    """How long the one container of the check may run."""
    if any(modules is None for modules in request.values()):
        return per_module * LISTING_TIMEOUTS
    count = sum(len(modules) for modules in request.values())
    return per_module * (count + SPARE_TIMEOUTS)


def run_check(
    run: Run, request: dict[str, list[str] | None], per_module: float
) -> Results:
    """Run the driver in one container; return its findings.

    `run(argv, timeout, entrypoint)` runs one container of the image under
    test. Raises DriverFailed when the driver reports nothing: its
    interpreter does not start, or the container timed out.
    """
    first = next(iter(request))
    seconds = max(1, int(per_module))
    argv = ["-c", DRIVER, json.dumps(request), str(seconds)]
    result = run(argv, timeout_for(request, per_module), [first])
    for line in result.output.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    if result.timed_out:
        reason = "timed out"
    else:
        reason = f"exit {result.exit_code}: {error_line(result.output)}"
    raise DriverFailed(f"{first} ran no import check ({reason})", result.output)


def error_line(output: str) -> str:
    """The line of a Python failure that names the error, else the last one."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    named = [line for line in lines if _ERROR.match(line)]
    return (named or lines or ["no output"])[-1]


_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
