"""When a scratch baseline learned enough to measure against: the one rule of the attack and benchmark reports.

A leakage (``student - scratch``, attack report) or a damage (``student - scratch``, benchmark report) means
something only when the scratch student, trained on the same images with their true labels alone, learned
the task. The rule: the baseline learned when its test accuracy is at least chance (``100 / K`` percent for
``K`` classes) plus :data:`LEARNED_MARGIN_POINTS` percentage points. Below that (e.g. 10.13% or 15.74% on
Fashion-MNIST, where chance is 10%) the reports headline no difference against it and say what to change.
"""

from __future__ import annotations

from typing import Any

LEARNED_MARGIN_POINTS = 10.0


def accuracy_of(row: dict[str, Any] | None) -> float | None:
    """The test accuracy of a run's record (``result.json``, a ``FitResult.summary()``), or None when missing or
    diverged: a diverged run has no accuracy to compare."""
    if row is None or row.get("diverged") or row.get("test_accuracy") is None:
        return None
    return float(row["test_accuracy"])


def chance_accuracy(num_classes: int) -> float:
    """The accuracy of guessing, in percent: ``100 / K``."""
    return 100.0 / num_classes


def learned_threshold(num_classes: int) -> float:
    """The least accuracy (percent) of a baseline that learned: ``100 / K + LEARNED_MARGIN_POINTS``."""
    return chance_accuracy(num_classes) + LEARNED_MARGIN_POINTS


def baseline_learned(accuracy: float | None, num_classes: int) -> bool:
    """True when a baseline of ``accuracy`` percent (``None``: diverged) learned the ``num_classes``-way task."""
    return accuracy is not None and accuracy >= learned_threshold(num_classes)


def baseline_warning(what: str, accuracy: float, num_classes: int, remedy: str) -> str:
    """One sentence for a report: ``what`` (e.g. "the scratch baseline") stayed near chance, so no difference
    against it is reported, and ``remedy`` says what to change."""
    return (f"{what} reached only {accuracy:.2f}% (chance is {chance_accuracy(num_classes):.2f}% for {num_classes} classes; "
            f"a baseline needs {learned_threshold(num_classes):.2f}% to count as learned), so no difference against it is "
            f"reported: {remedy}")
