"""Which Nasty Teacher setting a search picks (``stingy-bench nasty-search``), and ``pick.json`` read back.

The rule (:func:`pick`, :data:`PICK_RULE`): among the grid points whose Nasty Teacher's test accuracy is
within ``max_teacher_drop`` points of the normal teacher's, the one whose students lose the most accuracy
against their scratch baselines, on average (:func:`student_drop`); ties go to the more accurate teacher. The
Nasty Teacher *works* on this data only when that mean drop is positive; otherwise the search says it could
not be made to work (Ma et al.'s claim: students clearly below scratch while the teacher keeps its accuracy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from training.baseline import chance_accuracy
from training.reproduction.results import BenchmarkError


PICK_RULE = ("among the settings whose Nasty Teacher's test accuracy is within {points} points of the normal teacher's, "
             "the one whose students lose the most accuracy against their scratch baselines on average (a diverged student "
             "counts at chance; ties: the more accurate teacher); the Nasty Teacher works on this data only when that mean "
             "drop is positive.")


@dataclass(frozen=True)
class Setting:
    """One grid point's outcome: its Nasty Teacher's test accuracy (None: diverged) and the test accuracy of
    each student distilled from it (None: diverged)."""

    omega: float
    tau: float
    teacher_accuracy: float | None
    students: dict[str, float | None]


@dataclass(frozen=True)
class Pick:
    """The chosen setting (None when no teacher kept its accuracy), whether it hurts students, and why."""

    setting: Setting | None
    works: bool
    reason: str


def student_drop(scratch: float, accuracy: float | None, num_classes: int) -> float:
    """``scratch - accuracy`` in points (positive: the teacher hurt the student). A diverged student counts
    at chance, ``100 / K``: it predicts no better than guessing."""
    return scratch - (chance_accuracy(num_classes) if accuracy is None else accuracy)


def mean_drop(students: dict[str, float | None], scratch: dict[str, float], num_classes: int) -> float:
    """The mean of :func:`student_drop` over ``students`` (architecture -> accuracy, None: diverged)."""
    return fmean(student_drop(scratch[name], accuracy, num_classes) for name, accuracy in students.items())


def keeps_accuracy(setting: Setting, normal_teacher: float, max_teacher_drop: float) -> bool:
    """True when the Nasty Teacher learned and lost at most ``max_teacher_drop`` points against the normal one."""
    return setting.teacher_accuracy is not None and normal_teacher - setting.teacher_accuracy <= max_teacher_drop


def pick(settings: list[Setting], scratch: dict[str, float], normal_teacher: float, num_classes: int,
         max_teacher_drop: float) -> Pick:
    """The search's pick by the rule of this module's docstring."""
    eligible = [s for s in settings if keeps_accuracy(s, normal_teacher, max_teacher_drop)]
    if not eligible:
        return Pick(None, False, f"no Nasty Teacher kept its accuracy within {max_teacher_drop:g} points of the normal "
                                 f"teacher's {normal_teacher:.2f}%: the Nasty Teacher could not be made to work on this data")
    best = max(eligible, key=lambda s: (mean_drop(s.students, scratch, num_classes), s.teacher_accuracy))
    drop = mean_drop(best.students, scratch, num_classes)
    within = f"{len(eligible)} of {len(settings)} settings keep the teacher within {max_teacher_drop:g} points of {normal_teacher:.2f}%"
    if drop <= 0:
        return Pick(best, False, f"{within}, and none hurts its students (the largest mean drop vs scratch is {drop:+.2f} "
                                 "points): the Nasty Teacher could not be made to work on this data")
    return Pick(best, True, f"{within}; omega {best.omega:g}, tau_A {best.tau:g} hurts its students most "
                            f"(mean drop vs scratch {drop:.2f} points)")


def edge_note(setting: Setting, settings: list[Setting]) -> str | None:
    """A sentence when ``setting`` has the grid's largest omega or its smallest or largest tau_A (a larger or
    other value there may hurt more: worth extending the grid), else None."""
    omegas, taus = {s.omega for s in settings}, {s.tau for s in settings}
    edges = []
    if len(omegas) == 1 or setting.omega == max(omegas):
        edges.append(f"the largest omega searched ({setting.omega:g})")
    if len(taus) == 1 or setting.tau in (min(taus), max(taus)):
        edges.append(f"an end of the tau_A range searched ({setting.tau:g})")
    return f"The pick lies on the grid's edge: {' and '.join(edges)}; a grid beyond it may hurt more." if edges else None


def pick_document(result: Pick, scratch: dict[str, float], normal_teacher: float, num_classes: int,
                  max_teacher_drop: float, **context: Any) -> dict[str, Any]:
    """``pick.json``: the picked ``omega`` and ``tau`` (null when none kept its accuracy), ``works``, the reason,
    the numbers behind it and ``context`` (preset, teacher, KD settings)."""
    setting = result.setting
    students = {} if setting is None else {
        name: {"scratch": scratch[name], "accuracy": accuracy, "drop": student_drop(scratch[name], accuracy, num_classes)}
        for name, accuracy in setting.students.items()}
    return {
        **context, "omega": setting.omega if setting else None, "tau": setting.tau if setting else None,
        "works": result.works, "reason": result.reason, "max_teacher_drop": max_teacher_drop,
        "normal_teacher_accuracy": normal_teacher, "teacher_accuracy": setting.teacher_accuracy if setting else None,
        "mean_drop": mean_drop(setting.students, scratch, num_classes) if setting else None, "students": students,
    }


def load_pick(path: Path, preset: str) -> tuple[float, float, dict[str, Any]]:
    """``(omega, tau, document)`` of a search's ``pick.json`` for ``preset``; :class:`BenchmarkError` when the
    file is missing or malformed, was searched on another preset, or picked nothing."""
    try:
        document = json.loads(path.read_text())
        omega, tau, searched = document["omega"], document["tau"], document["preset"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BenchmarkError(f"{path} is not a pick.json of stingy-bench nasty-search ({error})") from error
    if searched != preset:
        raise BenchmarkError(f"{path} was searched on preset {searched!r}, not {preset!r}; use --nasty-omega/--nasty-tau")
    if omega is None or tau is None:
        raise BenchmarkError(f"{path} picked no setting: {document.get('reason', 'no reason recorded')}")
    return float(omega), float(tau), document
