"""A Nasty Teacher search's results as the pick rule sees them, and ``search.md``: omega x tau_A -> the teacher's
accuracy, each student's accuracy and its drop against its scratch baseline, and the pick."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.baseline import accuracy_of, chance_accuracy
from training.reproduction.nasty_pick import PICK_RULE, Pick, Setting, edge_note, keeps_accuracy, mean_drop, student_drop
from training.reproduction.plan import StudentRun, TeacherRun
from training.reproduction.results import BenchmarkError

if TYPE_CHECKING:
    from training.reproduction.nasty_search import Search


def _teacher_accuracy(row: dict[str, Any]) -> float | None:
    return None if row["diverged"] else float(row["accuracy"]["normal"])


@dataclass(frozen=True)
class SearchTable:
    """The normal teacher's accuracy, K, the students' scratch and normal-KD accuracies, and every setting."""

    search: Search
    normal_teacher: float
    num_classes: int
    scratch: dict[str, float]
    normal_kd: dict[str, float | None]
    settings: list[Setting]

    @classmethod
    def from_rows(cls, search: Search, rows: dict[str, dict[str, Any]]) -> SearchTable:
        """From the results rows by key; :class:`BenchmarkError` when a reference has no accuracy to compare."""
        teacher = rows[TeacherRun(search.teacher, search.preset.teacher_config).key]
        normal = _teacher_accuracy(teacher)
        archs = search.student_archs()
        scratch = {arch: accuracy_of(rows[StudentRun(arch, search.preset.student_config).key]) for arch in archs}
        if normal is None or None in scratch.values():
            raise BenchmarkError("the normal teacher or a scratch student diverged: no reference to measure the search against")
        by_teacher: dict[str, dict[str, float | None]] = {}
        for run, _ in search.runs():
            if isinstance(run, StudentRun) and run.source is not None:
                by_teacher.setdefault(run.source.teacher, {})[run.arch] = accuracy_of(rows[run.key])
        settings = [Setting(point.omega, point.tau, _teacher_accuracy(rows[search.nasty(point).key]), by_teacher[search.nasty(point).name])
                    for point in search.points]
        return cls(search, normal, len(teacher["class_names"]), {a: float(v) for a, v in scratch.items() if v is not None},
                   by_teacher[search.teacher], settings)

    def _student_cells(self, accuracies: dict[str, float | None]) -> list[str]:
        cells = []
        for arch, accuracy in accuracies.items():
            drop = student_drop(self.scratch[arch], accuracy, self.num_classes)
            cells.append(f"{'diverged' if accuracy is None else f'{accuracy:.2f}'} ({drop:+.2f})")
        return cells

    def markdown(self, result: Pick, out: Path) -> str:
        """``search.md``: the settings, the table, the rule and the pick (``out``: the search folder, for the
        command that uses the pick)."""
        search, preset = self.search, self.search.preset
        archs = list(self.scratch)
        nasty_config = preset.nasty.config if preset.nasty and preset.nasty.config else preset.teacher_config
        header = ["omega", "tau_A", "teacher (vs normal)"] + [f"{arch} (drop)" for arch in archs] + ["mean drop", f"teacher within {search.max_teacher_drop:g}"]
        lines = [
            f"# Nasty Teacher search on `{preset.name}` (teacher `{search.teacher}`)", "",
            f"Each Nasty Teacher is trained by Eq. 2, `CE - omega tau_A^2 KL(p_tau_A^NT || p_tau_A^A)`, against the normal "
            f"teacher ({nasty_config.epochs} epochs, lr {nasty_config.lr:g}); each student is distilled from it by normal KD at "
            f"tau = {preset.tau:g}, alpha = {preset.alpha:g}, without gradient clipping (the paper's attacker), "
            f"{preset.student_config.epochs} epochs" + (f"; train subset {preset.train_subset}" if preset.train_subset else "") + ". "
            f"Cells: test accuracy (%), in brackets the drop against the student trained from scratch (positive: the "
            f"teacher hurt the student; a diverged student counts at chance, {chance_accuracy(self.num_classes):.2f}%). "
            "The normal teacher's row is what normal KD alone does to the students. Raw rows: `search.jsonl`.", "",
            "| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            "| scratch | - | - | " + " | ".join(f"{self.scratch[arch]:.2f}" for arch in archs) + " | - | - |",
            f"| normal teacher | - | {self.normal_teacher:.2f} | " + " | ".join(self._student_cells(self.normal_kd))
            + f" | {mean_drop(self.normal_kd, self.scratch, self.num_classes):+.2f} | - |",
        ]
        for setting in self.settings:
            teacher = "diverged" if setting.teacher_accuracy is None else f"{setting.teacher_accuracy:.2f} ({setting.teacher_accuracy - self.normal_teacher:+.2f})"
            kept = "yes" if keeps_accuracy(setting, self.normal_teacher, search.max_teacher_drop) else "no"
            lines.append(f"| {setting.omega:g} | {setting.tau:g} | {teacher} | " + " | ".join(self._student_cells(setting.students))
                         + f" | {mean_drop(setting.students, self.scratch, self.num_classes):+.2f} | {kept} |")
        lines += ["", "## Pick", "", f"Rule: {PICK_RULE.format(points=f'{search.max_teacher_drop:g}')}", ""]
        if result.works and result.setting is not None:
            edge = edge_note(result.setting, self.settings)
            lines += [f"**omega {result.setting.omega:g}, tau_A {result.setting.tau:g}**: {result.reason}." + (f" {edge}" if edge else ""), "",
                      f"Compare against it: `stingy-bench run --preset {preset.name} --nasty-from {out / 'pick.json'} --out DIR`."]
        else:
            lines += [f"**No pick.** {result.reason[0].upper()}{result.reason[1:]}."]
        return "\n".join(lines) + "\n"
