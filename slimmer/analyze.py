"""Where an image's bytes went, and which profile would win them back.

Layers are applied one by one on a growing tree, so each layer's members
can be classed against what lay below: added, changed (replacing a lower
path) or deleted (a whiteout or opaque directory hiding lower paths).

Wasted bytes are file bytes that some layer stores but the merged tree no
longer shows, because a later layer overwrote or deleted them: the sum of
every layer's file bytes, less the bytes of the files in the merged tree.
Efficiency is the share of stored file bytes that the merged tree still
shows: 1.0 means no layer hides anything of another.
"""

from __future__ import annotations

import logging
import re
import tarfile
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from slimmer.archive import SavedImage
from slimmer.errors import ArchiveError, SlimmerError, ThresholdExceeded
from slimmer.profiles import available_profiles, resolve
from slimmer.prune import guarded
from slimmer.report import SCHEMA_VERSION, tally
from slimmer.squash import apply_layer, marker, members, normalize
from slimmer.tree import REGULAR, Tree

log = logging.getLogger(__name__)

TOP = 10
TOP_DEPTH = 4
UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass
class LayerStats:
    index: int
    size: int  # bytes of the layer's uncompressed tar
    created_by: str
    added: int = 0
    changed: int = 0
    deleted: int = 0
    file_bytes: int = 0  # bytes of the regular files this layer stores


@dataclass
class Analysis:
    layers: list[LayerStats] = field(default_factory=list)
    stored_bytes: int = 0
    merged_bytes: int = 0
    top_dirs: list[tuple[str, int]] = field(default_factory=list)
    top_files: list[tuple[str, int]] = field(default_factory=list)
    profiles: list[dict] = field(default_factory=list)

    @property
    def wasted_bytes(self) -> int:
        return self.stored_bytes - self.merged_bytes

    @property
    def efficiency(self) -> float:
        return self.merged_bytes / self.stored_bytes if self.stored_bytes else 1.0


def analyze_layers(saved: SavedImage) -> tuple[Tree, Analysis]:
    """Squash `saved` layer by layer, classing each layer's members."""
    tree, analysis = Tree(), Analysis()
    history = [
        item.get("created_by", "")
        for item in saved.config.get("history", [])
        if not item.get("empty_layer")
    ]
    for index, layer in enumerate(saved.layers):
        stats = LayerStats(
            index, layer.size, history[index] if index < len(history) else ""
        )
        _class_members(tree, layer, stats)
        apply_layer(tree, index, layer)
        analysis.layers.append(stats)
        analysis.stored_bytes += stats.file_bytes
    analysis.merged_bytes = _merged_bytes(tree)
    analysis.top_dirs, analysis.top_files = _largest(tree)
    return tree, analysis


def _class_members(tree: Tree, layer, stats: LayerStats) -> None:
    try:
        for info in members(layer):
            _class_member(tree, info, stats)
    except tarfile.TarError as exc:
        raise ArchiveError(f"layer {stats.index} is not a valid tar: {exc}") from exc


def _class_member(tree: Tree, info, stats: LayerStats) -> None:
    path = normalize(info.name)
    if not path:
        return
    meaning = marker(path)
    if meaning is None:
        if info.isreg():
            stats.file_bytes += info.size
        if tree.get(path) is None:
            stats.added += 1
        else:
            stats.changed += 1
    elif meaning[0] == "whiteout" and tree.get(meaning[1]) is not None:
        stats.deleted += 1
    elif meaning[0] == "opaque":
        directory = tree.get(meaning[1])
        stats.deleted += len(directory.children or {}) if directory else 0


def _merged_bytes(tree: Tree) -> int:
    # A file with several names counts once. Only the files Tree.links
    # names have several, so only their inodes are remembered.
    seen, total = set(), 0
    for _, entry in tree.walk():
        if entry.kind != REGULAR:
            continue
        if entry.inode in tree.links:
            if entry.inode in seen:
                continue
            seen.add(entry.inode)
        total += entry.size
    return total


def _largest(tree: Tree):
    """The largest directories (up to TOP_DEPTH deep) and files."""
    by_dir: dict[str, int] = defaultdict(int)
    files: list[tuple[int, str]] = []
    for path, entry in tree.walk():
        if entry.kind != REGULAR:
            continue
        parts = path.split("/")
        for depth in range(1, min(len(parts), TOP_DEPTH + 1)):
            by_dir["/" + "/".join(parts[:depth])] += entry.size
        files.append((entry.size, "/" + path))
        if len(files) > 4 * TOP:
            files = sorted(files, reverse=True)[:TOP]
    top_dirs = sorted(by_dir.items(), key=lambda item: -item[1])[:TOP]
    top_files = [(path, size) for size, path in sorted(files, reverse=True)[:TOP]]
    return top_dirs, top_files


def price_profiles(tree: Tree, saved: SavedImage, cwd: Path) -> list[dict]:
    """Bytes each known profile would remove, counted as `plan` counts."""
    priced = []
    for name in sorted(available_profiles(cwd)):
        ruleset = resolve([name], cwd)
        removed, _ = guarded(tree, ruleset, saved, saved.config)
        counted = tally(tree, removed, list(ruleset.rules))
        priced.append({"name": name, "files": counted.files, "bytes": counted.bytes})
    return priced


@dataclass
class Gates:
    max_wasted: int | None = None
    min_efficiency: float | None = None
    max_size: int | None = None


def check_gates(analysis: Analysis, image_size: int, gates: Gates) -> None:
    """Raise ThresholdExceeded naming every gate the image fails."""
    failed = []
    if gates.max_wasted is not None and analysis.wasted_bytes > gates.max_wasted:
        failed.append(
            f"wasted bytes {analysis.wasted_bytes} > max_wasted {gates.max_wasted}"
        )
    if gates.min_efficiency is not None and analysis.efficiency < gates.min_efficiency:
        failed.append(
            f"efficiency {analysis.efficiency:.3f} < min_efficiency "
            f"{gates.min_efficiency}"
        )
    if gates.max_size is not None and image_size > gates.max_size:
        failed.append(f"image size {image_size} > max_size {gates.max_size}")
    if failed:
        raise ThresholdExceeded("; ".join(failed))


def parse_size(text: str | int) -> int:
    """`10MB`, `1.5GiB`, `500kB` or plain bytes, as a number of bytes."""
    if isinstance(text, int):
        return text
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = found.group(2).lower() if found else None
    if found is None or unit not in UNITS:
        raise SlimmerError(f"not a size: {text!r} (try 10MB or 1.5GiB)")
    return int(float(found.group(1)) * UNITS[unit])


def project_gates(cwd: Path) -> Gates:
    """Gates from the `[analyze]` table of the nearest slimmer.toml."""
    here = Path(cwd).absolute()
    for folder in [here, *here.parents]:
        path = folder / "slimmer.toml"
        if path.is_file():
            return _gates_from(path)
    return Gates()


def _gates_from(path: Path) -> Gates:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("analyze", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SlimmerError(f"{path}: {exc}") from exc
    if not isinstance(table, dict):
        raise SlimmerError(f"{path}: [analyze] must be a table")
    unknown = set(table) - {"max_wasted", "min_efficiency", "max_size"}
    if unknown:
        raise SlimmerError(f"{path}: unknown keys in [analyze]: {sorted(unknown)}")
    gates = Gates()
    for key in ("max_wasted", "max_size"):
        if key in table:
            try:
                setattr(gates, key, parse_size(table[key]))
            except SlimmerError as exc:
                raise SlimmerError(f"{path}: {key}: {exc}") from exc
    if "min_efficiency" in table:
        try:
            gates.min_efficiency = float(table["min_efficiency"])
        except (TypeError, ValueError) as exc:
            raise SlimmerError(f"{path}: min_efficiency must be a number") from exc
    return gates


def as_json(ref: str, source, analysis: Analysis) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "analyze",
        "source": {"ref": ref, "id": source.id, "size": source.size},
        "layers": [vars(stats) for stats in analysis.layers],
        "stored_bytes": analysis.stored_bytes,
        "merged_bytes": analysis.merged_bytes,
        "wasted_bytes": analysis.wasted_bytes,
        "efficiency": round(analysis.efficiency, 4),
        "top_dirs": [{"path": p, "bytes": b} for p, b in analysis.top_dirs],
        "top_files": [{"path": p, "bytes": b} for p, b in analysis.top_files],
        "profiles": analysis.profiles,
    }
