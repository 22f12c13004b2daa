"""Reading a benchmark folder back: the recorded preset and the results rows, with lookups by run fields.

A student lookup returns a :class:`~training.reproduction.cells.Cell`: every run of that setting, one per seed
(``stingy-bench run --seeds``). Teachers are trained once (on the preset's seed), so a teacher lookup is one row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defense import make_policy
from training.baseline import baseline_learned
from training.reproduction.cells import Cell
from training.io import read_json_lines

RESULTS_FILE = "results.jsonl"
PRESET_FILE = "preset.json"


class BenchmarkError(Exception):
    """A benchmark folder or preset problem the user must fix (printed as one line)."""


def _with_seed(row: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its training seed: rows written before runs recorded one trained with their schedule's seed
    (the preset's ``teacher_config`` or ``student_config``), so a folder resumed by newer code compares alike."""
    if "seed" in row:
        return row
    config = preset.get("teacher_config" if row.get("type") == "teacher" else "student_config") or {}
    return {**row, "seed": config.get("seed")}


def releases_as_stingy(name: str, params: dict[str, Any], num_classes: int) -> bool:
    """Whether policy ``name(**params)`` releases exactly what ``stingy`` with the same ``params`` releases for
    ``K = num_classes``: ``least`` keeping ``N = max(1, round(r K)) = 1`` class keeps the top-1 logit too."""
    return name == "least" and make_policy(name, **params).keep_count(num_classes) == 1


@dataclass(frozen=True)
class Results:
    """The preset document and every finished run of one benchmark folder, one row per distinct policy: a
    ``least`` run that keeps N = 1 class releases exactly what ``stingy`` at the same ratio releases (the top-1
    logit), so it is dropped and looked up as that stingy run (:meth:`same_policy`): one point, not two."""

    preset: dict[str, Any]
    rows: list[dict[str, Any]]

    @classmethod
    def load(cls, folder: Path) -> Results:
        if not (folder / PRESET_FILE).is_file():
            raise BenchmarkError(f"{folder} is not a benchmark folder (no {PRESET_FILE}); run `stingy-bench run` first")
        preset = json.loads((folder / PRESET_FILE).read_text())
        rows = [_with_seed(row, preset) for row in read_json_lines(folder / RESULTS_FILE)]
        loaded = cls(preset, rows)
        distinct = [r for r in rows if not r.get("policy") or loaded.same_policy(r["policy"]) == r["policy"]]
        return cls(loaded.preset, distinct)

    def same_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """``policy``, or the stingy policy that releases the same logits: ``least`` keeping N = 1 of K classes
        (``N = max(1, round(r K))``) is stingy at that ratio. K is known once a teacher finished."""
        classes = self.num_classes
        params = {k: v for k, v in policy.items() if k != "name"}
        if classes is not None and releases_as_stingy(str(policy.get("name")), params, classes):
            return {**policy, "name": "stingy"}
        return policy

    def teacher(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["type"] == "teacher" and r["teacher"] == name), None)

    def scratch(self, arch: str) -> Cell:
        """The ``arch`` students trained from scratch (one per seed)."""
        return Cell(tuple(r for r in self.rows if r["type"] == "student" and r["teacher"] is None and r["student"] == arch))

    @property
    def num_classes(self) -> int | None:
        """K, from the first finished teacher's class names (None before any teacher finished)."""
        return next((len(r["class_names"]) for r in self.rows if r["type"] == "teacher" and r.get("class_names")), None)

    def baseline(self, arch: str) -> Cell | None:
        """The scratch ``arch`` students when they learned (:mod:`training.baseline`: their mean accuracy at least
        chance + 10 points), else None: differences are measured only against a baseline that learned."""
        cell = self.scratch(arch)
        classes = self.num_classes
        if cell.mean is None or (classes is not None and not baseline_learned(cell.mean, classes)):
            return None
        return cell

    def kd(self, teacher: str, student: str, policy: dict[str, Any], tau: float, clip: float | None = None) -> Cell:
        """The distillation runs with exactly these settings, one per seed (``alpha`` is the preset's; ``policy`` as
        :meth:`same_policy`)."""
        policy = self.same_policy(policy)
        return Cell(tuple(
            row for row in self.rows
            if row["type"] == "student" and row["teacher"] == teacher and row["student"] == student and row["policy"] == policy
            and row["tau"] == tau and row["grad_clip"] == clip
        ))

    @property
    def seeds(self) -> list[int] | None:
        """The students' seeds (``--seeds``), or None when the folder was run without them (one run per cell)."""
        seeds = self.preset.get("seeds")
        return list(seeds) if seeds else None

    @property
    def sparse_ratio(self) -> float:
        return float(self.preset["sparse_ratio"])

    @property
    def clip_variants(self) -> tuple[float | None, ...]:
        """The attackers of every distillation run: unclipped (the paper's), and clipping when the preset has twins."""
        clip = self.preset.get("clip_norm")
        return (None, float(clip)) if clip else (None,)

    @property
    def tau(self) -> float:
        return float(self.preset["tau"])

    def stingy(self, ratio: float | None = None) -> dict[str, Any]:
        return {"name": "stingy", "sparse_ratio": self.sparse_ratio if ratio is None else ratio}


NORMAL = {"name": "normal"}


def student_arch(student: str, teacher_arch: str) -> str:
    """The architecture a preset's student entry names: ``"self"`` is the teacher's own."""
    return teacher_arch if student == "self" else student

