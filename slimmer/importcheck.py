"""The automatic import check for Python images.

Every top-level module that imports in the source must import in the
candidate. One container per image runs a small driver script; the driver
imports each module in its own interpreter process, so one module's side
effects or crash cannot hide another's result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from slimmer.daemon import Daemon
from slimmer.errors import DaemonError
from slimmer.tree import Tree

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAMES = ("python3", "python")
PER_MODULE_TIMEOUT = 60

# Runs inside the container, under the first interpreter found. argv:
# a JSON object {interpreter: [module, ...] or null}; null means "find the
# top-level modules of that interpreter's site-packages and dist-packages".
DRIVER = r"""
import json, os, subprocess, sys
LISTER = '''
import json, os, sys
SUFFIXES = (".py", ".so", ".pyd")
found = set()
for d in sys.path:
    if not d.endswith(("site-packages", "dist-packages")) or not os.path.isdir(d):
        continue
    for name in os.listdir(d):
        path = os.path.join(d, name)
        stem = name.split(".")[0]
        if not stem.isidentifier() or stem == "__pycache__":
            continue
        if os.path.isdir(path) and "." not in name:
            found.add(stem)
        elif name.endswith(SUFFIXES):
            found.add(stem)
print(json.dumps(sorted(found)))
'''
def run(argv, timeout):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           cwd="/")
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    except OSError as exc:
        return 127, str(exc)
    lines = (p.stderr or p.stdout).strip().splitlines()
    return p.returncode, lines[-1] if lines else ""
request = json.loads(sys.argv[1])
timeout = int(sys.argv[2])
report, seen = {}, set()
for interpreter, modules in request.items():
    real = os.path.realpath(interpreter)
    if real in seen or not os.access(real, os.X_OK):
        continue
    seen.add(real)
    if modules is None:
        rc, out = run([interpreter, "-c", LISTER], timeout)
        modules = json.loads(out) if rc == 0 else []
    results = {}
    for module in modules:
        rc, out = run([interpreter, "-c", "import " + module], timeout)
        results[module] = None if rc == 0 else (out or "exit %d" % rc)
    report[interpreter] = results
print("SLIMMER-IMPORTS " + json.dumps(report))
"""


@dataclass
class ImportCheck:
    """Which modules imported where: {interpreter: {module: error or None}}."""

    source: dict[str, dict[str, str | None]] = field(default_factory=dict)
    candidate: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def importable(self) -> dict[str, list[str]]:
        """The modules that import in the source, per interpreter."""
        return {
            interpreter: [name for name, error in modules.items() if error is None]
            for interpreter, modules in self.source.items()
        }

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
    """Python interpreters on the image's PATH, in PATH order."""
    path = DEFAULT_PATH
    for item in (config.get("config") or {}).get("Env") or []:
        if item.startswith("PATH="):
            path = item[len("PATH=") :]
    found = []
    for directory in path.split(":"):
        for name in NAMES:
            candidate = f"{directory.rstrip('/')}/{name}"
            if tree.get(candidate.lstrip("/")) is not None and candidate not in found:
                found.append(candidate)
    return found


def run_check(
    daemon: Daemon, image_id: str, request: dict[str, list[str] | None], timeout: float
) -> dict[str, dict[str, str | None]]:
    """Run the driver in one container; return its findings."""
    first = next(iter(request))
    argv = ["-c", DRIVER, json.dumps(request), str(PER_MODULE_TIMEOUT)]
    run = daemon.run(image_id, argv, timeout, entrypoint=[first])
    for line in run.output.splitlines():
        if line.startswith("SLIMMER-IMPORTS "):
            return json.loads(line.split(" ", 1)[1])
    raise DaemonError(
        f"the import check did not finish in {image_id[:19]} "
        f"(exit {run.exit_code}): {run.output.strip()[-200:]}"
    )
