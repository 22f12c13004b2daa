"""Searching the Nasty Teacher's ``(omega, tau_A)`` on a preset's data (``stingy-bench nasty-search``).

One folder ``DIR`` holds the preset's normal teacher, each listed student from scratch and by normal KD from
that teacher (the references), and per grid point a Nasty Teacher (Eq. 2, the preset's Nasty Teacher
schedule) with each student distilled from it by normal KD at the preset's tau and alpha, unclipped (the
paper's attacker). The runs go through :func:`~training.reproduction.runner.run_benchmark` into
``DIR/results.jsonl`` and ``DIR/runs/`` (finished runs are skipped, so a grid can be extended in the same
folder); then ``DIR/search.jsonl`` (this grid's rows, raw, each with its grid point or null),
``DIR/search.md`` (the table and the pick) and ``DIR/pick.json`` (:mod:`training.reproduction.nasty_pick`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.io import atomic_write_json, atomic_write_text
from training.reproduction.nasty_pick import Pick, pick, pick_document
from training.reproduction.nasty_table import SearchTable
from training.reproduction.plan import Run, StudentRun, TeacherRun, distil, nasty_teacher, policy_items
from training.reproduction.presets import NastySettings, Preset
from training.reproduction.results import student_arch
from training.reproduction.runner import run_benchmark

SEARCH_ROWS, SEARCH_REPORT, PICK_FILE = "search.jsonl", "search.md", "pick.json"


@dataclass(frozen=True)
class GridPoint:
    """One Nasty Teacher setting: adversarial weight ``omega`` and temperature ``tau`` (tau_A)."""

    omega: float
    tau: float

    @property
    def label(self) -> str:
        return f"omega={self.omega:g},tau={self.tau:g}"


def grid(omegas: Sequence[float], taus: Sequence[float]) -> list[GridPoint]:
    """Every ``(omega, tau)`` pair, duplicates dropped; ``ValueError`` unless all values are positive."""
    if any(value <= 0 for value in (*omegas, *taus)):
        raise ValueError("every --omega and --tau must be positive")
    return [GridPoint(omega, tau) for omega in dict.fromkeys(omegas) for tau in dict.fromkeys(taus)]


@dataclass(frozen=True)
class Search:
    """A search's settings: the preset, its teacher architecture, the grid, the students (entries of the
    preset's kind, ``"self"`` = the teacher's architecture) and the pick's teacher-accuracy tolerance."""

    preset: Preset
    teacher: str
    points: tuple[GridPoint, ...]
    students: tuple[str, ...]
    max_teacher_drop: float

    def student_archs(self) -> list[str]:
        return list(dict.fromkeys(student_arch(student, self.teacher) for student in self.students))

    def nasty(self, point: GridPoint) -> TeacherRun:
        own = self.preset.nasty.config if self.preset.nasty else None
        return nasty_teacher(self.preset, self.teacher, NastySettings(tau=point.tau, omega=point.omega, config=own), point.label)

    def runs(self) -> list[tuple[Run, GridPoint | None]]:
        """Every run in dependency order, each with its grid point (None for the references)."""
        normal = policy_items("normal")
        archs = self.student_archs()
        references: list[Run] = [TeacherRun(self.teacher, self.preset.teacher_config)]
        references += [StudentRun(arch, self.preset.student_config) for arch in archs]
        references += [distil(self.preset, self.teacher, arch, normal, self.preset.tau) for arch in archs]
        teachers = [(self.nasty(point), point) for point in self.points]
        students = [(distil(self.preset, run.name, arch, normal, self.preset.tau), point) for run, point in teachers for arch in archs]
        return [(run, None) for run in references[:1]] + teachers + [(run, None) for run in references[1:]] + students


def run_search(search: Search, out: Path, data_root: str | None = None, download: bool = False,
               **executor: Any) -> Pick:
    """Run ``search`` into ``out`` (``executor``: :func:`run_benchmark`'s executor options), write
    ``search.jsonl``, ``search.md`` and ``pick.json``, and return the pick."""
    runs = search.runs()
    done = run_benchmark(search.preset, out, data_root, download, runs=[run for run, _ in runs], **executor)
    rows = {row["key"]: row for row in done}
    mine = [{**rows[run.key], "grid": {"omega": point.omega, "tau": point.tau} if point else None} for run, point in runs]
    atomic_write_text(out / SEARCH_ROWS, "".join(json.dumps(row, sort_keys=True) + "\n" for row in mine))
    table = SearchTable.from_rows(search, rows)
    result = pick(table.settings, table.scratch, table.normal_teacher, table.num_classes, search.max_teacher_drop)
    atomic_write_json(out / PICK_FILE, pick_document(
        result, table.scratch, table.normal_teacher, table.num_classes, search.max_teacher_drop,
        preset=search.preset.name, teacher=search.teacher, kd_tau=search.preset.tau, alpha=search.preset.alpha,
        grid=[{"omega": point.omega, "tau": point.tau} for point in search.points]))
    atomic_write_text(out / SEARCH_REPORT, table.markdown(result, out))
    return result
