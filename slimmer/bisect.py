"""`--bisect`: the smallest set of rules whose removal breaks a smoke test.

Delta debugging (Zeller and Hildebrandt's ddmin, "Simplifying and
Isolating Failure-Inducing Input", 2002) over the rules that removed
something. A probe removes only the paths of a subset of rules and says
whether the tests still fail; the result is 1-minimal: taking any one rule
out of it makes the failure go away. The probes themselves (write, load,
test, remove) are the caller's; this module only chooses the subsets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Each probe writes and loads a whole image, so their number is capped.
MAX_PROBES = 32


@dataclass
class Bisection:
    culprits: list
    probes: int
    # False when the probe budget ran out before the set was 1-minimal.
    minimal: bool = True


class _Exhausted(Exception):
    pass


class _Tester:
    """Runs probes, each subset at most once, within the budget."""

    def __init__(self, items: Sequence, breaks: Callable[[list], bool], budget: int):
        self.items, self.breaks_fn, self.budget = items, breaks, budget
        self.known: dict[frozenset, bool] = {}
        self.probes = 0

    def breaks(self, indices: tuple[int, ...]) -> bool:
        key = frozenset(indices)
        if key not in self.known:
            if self.probes >= self.budget:
                raise _Exhausted
            self.probes += 1
            self.known[key] = self.breaks_fn([self.items[i] for i in sorted(key)])
        return self.known[key]


def relevant_rules(rules: Sequence[T], removed: dict) -> list[T]:
    """The rules that removed at least one path, in the order given."""
    used = set(removed.values())
    return [rule for rule in dict.fromkeys(rules) if rule in used]


def ddmin(
    items: Sequence[T], breaks: Callable[[list[T]], bool], budget: int = MAX_PROBES
) -> Bisection:
    """A 1-minimal subset of `items` for which `breaks(subset)` is true.

    `breaks(items)` itself is known to be true and is not probed; the empty
    subset is taken to pass (the source passed every test).
    """
    tester = _Tester(items, breaks, budget)
    current = tuple(range(len(items)))
    tester.known[frozenset(current)] = True
    granularity, minimal = 2, True
    try:
        while len(current) > 1:
            step = _reduce(current, granularity, tester)
            if step is None:
                break
            current, granularity = step
    except _Exhausted:
        minimal = False
    return Bisection([items[i] for i in current], tester.probes, minimal)


def _reduce(current: tuple, n: int, tester: _Tester) -> tuple | None:
    """One ddmin step: a smaller failing set and its granularity, or None."""
    chunks = _split(current, n)
    for chunk in chunks:
        if tester.breaks(chunk):
            return chunk, 2
    for chunk in chunks:
        rest = tuple(i for i in current if i not in chunk)
        if tester.breaks(rest):
            return rest, max(n - 1, 2)
    if n < len(current):
        return current, min(len(current), 2 * n)
    return None


def _split(items: tuple, n: int) -> list[tuple]:
    """`items` cut into `n` contiguous chunks of near-equal size."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for index in range(n):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def keep_line(patterns: Sequence[str]) -> str:
    """A profile line that keeps what `patterns` remove: `keep` wins over all.

    A TOML basic string, escaped as JSON escapes it (TOML 1.0, "String").
    """
    return "keep = " + json.dumps("\n".join(patterns), ensure_ascii=False)


def as_json(result: Bisection) -> dict:
    """`{"culprits", "rules", "probes", "minimal", "keep"}`; no culprit, no keep."""
    culprits = result.culprits
    patterns = [rule.pattern for rule in culprits]
    document = {
        "culprits": patterns,
        "rules": [{"profile": r.profile, "pattern": r.pattern} for r in culprits],
        "probes": result.probes,
        "minimal": result.minimal,
    }
    if patterns:
        document["keep"] = keep_line(patterns)
    return document
