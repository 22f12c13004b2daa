"""``DIR/report.md`` from a benchmark folder: the paper's tables, the stability table, measured findings
for the paper's claims, and links to the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.baseline import accuracy_of, baseline_warning
from training.data import DATASETS
from training.io import atomic_write_text
from training.reproduction.figures import all_figures
from training.reproduction.paper import PAPER_TABLES, PaperStudent, PaperTable
from training.reproduction.results import NORMAL, Results, student_arch

REPORT_FILE = "report.md"
NOTES_FILE = "notes.md"  # written by hand beside the results (what was run and why, what the numbers say)
COLLAPSE_POINTS = 5.0  # a student this many points below its scratch baseline counts as collapsed
REMEDY = "train longer (raise or drop --max-epochs) or on more images (raise or drop --train-subset)"


def _fmt(value: float | None, reference: float | None = None, bold_below: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}"
    if reference is not None:
        delta = value - reference
        text += f" ({'**' if bold_below and delta < -COLLAPSE_POINTS else ''}{delta:+.2f}{'**' if bold_below and delta < -COLLAPSE_POINTS else ''})"
    return text


def _cell(row: dict[str, Any] | None, reference: float | None) -> str:
    if row is None:
        return "not run"
    if row.get("diverged"):
        return f"diverged (step {row['diverged_step']})"
    return _fmt(accuracy_of(row), reference, bold_below=True)


def comparison_table(results: Results, teacher: str) -> str:
    """Tables 1-4 layout: teacher accuracy (delta against the normal teacher) and student accuracy after KD,
    delta against the scratch student of the same architecture (self-KD included)."""
    students = results.preset["students"]
    header = ["Teacher network", "Teacher accuracy", *[("Teacher self" if s == "self" else s) for s in students]]
    normal_teacher = results.teacher(teacher)
    normal_accuracy = normal_teacher["accuracy"]["normal"] if normal_teacher else None

    def baseline(student: str) -> float | None:  # self-KD too: the scratch student of the same architecture
        return results.baseline(student_arch(student, teacher))

    def scratch_cell(student: str) -> str:
        arch = student_arch(student, teacher)
        value = accuracy_of(results.scratch(arch))
        return _fmt(value) + (" (near chance)" if value is not None and results.baseline(arch) is None else "")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| Student baseline | - | " + " | ".join(scratch_cell(s) for s in students) + " |")
    kinds: list[tuple[str, str, dict[str, Any], float | None]] = [("normal", teacher, NORMAL, normal_accuracy)]
    nasty = results.teacher(f"{teacher}-nasty")
    if nasty:
        kinds.append(("nasty", f"{teacher}-nasty", NORMAL, nasty["accuracy"]["normal"]))
    kinds.append(("stingy", teacher, results.stingy(), normal_teacher["accuracy"]["stingy"] if normal_teacher else None))
    for grad_clip in results.clip_variants:
        for label, source, policy, teacher_accuracy in kinds:
            teacher_text = _fmt(teacher_accuracy, None if label == "normal" else normal_accuracy)
            cells = [_cell(results.kd(source, student_arch(s, teacher), policy, results.tau, grad_clip), baseline(s)) for s in students]
            suffix = f", attacker clips at {grad_clip:g}" if grad_clip else ""
            lines.append(f"| {teacher} ({label}{suffix}) | {teacher_text} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stability_table(results: Results) -> str:
    """Claim (f): for every distillation run that collapsed, did its gradients explode, and what does clipping give?"""
    clip = results.preset.get("clip_norm")
    lines = [
        "| run | accuracy | vs scratch | max grad norm (pre-clip) | normal-KD max grad norm | with clipping | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results.rows:
        if row["type"] != "student" or row["teacher"] is None or row["grad_clip"] is not None:
            continue
        scratch = results.baseline(row["student"])
        value = accuracy_of(row)
        collapsed = row.get("diverged") or (value is not None and scratch is not None and value < scratch - COLLAPSE_POINTS)
        if not collapsed:
            continue
        base = row["teacher"].removesuffix("-nasty")  # the normal teacher's normal KD is the reference
        normal = results.kd(base, row["student"], NORMAL, row["tau"]) or results.kd(base, row["student"], NORMAL, results.tau)
        clipped = results.kd(row["teacher"], row["student"], row["policy"], row["tau"], clip) if clip else None
        lines.append(
            f"| `{row['key']}` | {_cell(row, None)} | {_fmt(value - scratch) if value is not None and scratch is not None else '-'} | "
            f"{row['max_grad_norm']:.3g} | {normal['max_grad_norm']:.3g} | "
            f"{_cell(clipped, None) if clipped else 'not run'} | {_verdict(row, clipped, normal)} |"
            if normal else f"| `{row['key']}` | {_cell(row, None)} | - | {row['max_grad_norm']:.3g} | - | - | {_verdict(row, clipped, None)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else "No distillation run collapsed (none fell more than 5 points below its scratch baseline)."


def _verdict(row: dict[str, Any], clipped: dict[str, Any] | None, normal: dict[str, Any] | None) -> str:
    """Exploded or wrong function: the run's gradient norms against normal KD's, and what clipping changes."""
    if row.get("diverged"):
        return f"diverged: non-finite loss at step {row['diverged_step']}"
    growth = f"gradients {row['max_grad_norm'] / max(normal['max_grad_norm'], 1e-12):.3g}x normal KD's" if normal else "no normal-KD reference"
    if clipped is None or accuracy_of(clipped) is None:
        return growth
    recovered = accuracy_of(clipped) - (accuracy_of(row) or 0.0)
    if recovered > COLLAPSE_POINTS:
        return f"unstable optimisation: {growth}; clipping recovers {recovered:+.1f} points"
    return f"learned a wrong function: {growth}; clipping changes {recovered:+.1f} points"


def findings(results: Results) -> list[str]:
    """Measured answers to the paper's claims, from the first teacher's runs."""
    teacher = results.preset["teachers"][0]
    out: list[str] = []
    normal = results.teacher(teacher)
    if normal:
        same = normal["accuracy"]["stingy"] == normal["accuracy"]["normal"]
        out.append(f"(a) Teacher accuracy: normal {normal['accuracy']['normal']:.2f}%, stingy {normal['accuracy']['stingy']:.2f}% "
                   f"({'identical' if same else 'DIFFERENT'}).")
    for grad_clip in results.clip_variants:
        deltas = []
        for student in results.preset["students"]:
            arch = student_arch(student, teacher)
            scratch, stingy = results.baseline(arch), results.kd(teacher, arch, results.stingy(), results.tau, grad_clip)
            if stingy is not None and stingy.get("diverged"):
                deltas.append(f"{student}: diverged (step {stingy['diverged_step']})")
            elif scratch is not None and accuracy_of(stingy) is not None:
                deltas.append(f"{student}: {accuracy_of(stingy) - scratch:+.2f}")
            elif accuracy_of(results.scratch(arch)) is not None:
                deltas.append(f"{student}: not measured (scratch baseline near chance)")
        attacker = f"attacker clipping at {grad_clip:g}" if grad_clip else "the paper's attacker"
        if deltas:
            out.append(f"(b) Stingy-KD student minus scratch student, {attacker} (points): " + ", ".join(deltas) + ".")
    nasty = results.teacher(f"{teacher}-nasty")
    if nasty and normal:
        pairs = []
        for student in results.preset["students"]:
            arch = student_arch(student, teacher)
            for grad_clip in results.clip_variants:
                n = _cell(results.kd(f"{teacher}-nasty", arch, NORMAL, results.tau, grad_clip), None)
                s = _cell(results.kd(teacher, arch, results.stingy(), results.tau, grad_clip), None)
                pairs.append(f"{student}{f' (clip {grad_clip:g})' if grad_clip else ''}: nasty {n} vs stingy {s}")
        out.append(f"(c) Nasty teacher (tau_A {nasty['nasty_tau']:g}, omega {nasty['nasty_omega']:g}) accuracy {nasty['accuracy']['normal']:.2f}% "
                   f"({nasty['accuracy']['normal'] - normal['accuracy']['normal']:+.2f} vs normal). Students: " + "; ".join(pairs) + ".")
    sweep = results.preset.get("ratio_sweep")
    temps = results.preset.get("temperature_sweep")
    for grad_clip in results.clip_variants:
        attacker = f", attacker clipping at {grad_clip:g}" if grad_clip else ", the paper's attacker"
        if sweep:
            parts = []
            for pair_teacher, student in sweep["pairs"]:
                arch = student_arch(student, pair_teacher)

                def at(name: str, ratio: float | None = None) -> float | None:
                    policy = {"name": name} if ratio is None else {"name": name, "sparse_ratio": ratio}
                    return accuracy_of(results.kd(pair_teacher, arch, policy, results.tau, grad_clip))

                smooth = [v for v in (at("stingy_smooth", r) for r in sweep["values"]) if v is not None]
                sparse = {r: v for r, v in ((r, at("stingy", r)) for r in sweep["values"]) if v is not None}
                worst = min(sparse, key=sparse.__getitem__) if sparse else None
                parts.append(
                    f"{pair_teacher} -> {student}: scratch {_fmt(accuracy_of(results.scratch(arch)))}, "
                    f"stingy-smooth at worst {_fmt(min(smooth, default=None))}, reverse {_fmt(at('reverse'))}, "
                    f"stingy-sparse at worst {_fmt(sparse.get(worst) if worst is not None else None)} (r = {worst}), "
                    f"{len(sweep['values']) - len(sparse)} of {len(sweep['values'])} sparse ratios diverged"
                )
            out.append(f"(d, e) Sparse-ratio sweep{attacker}: " + "; ".join(parts) + ".")
        if temps:
            parts = []
            for pair_teacher, student in temps["pairs"]:
                arch = student_arch(student, pair_teacher)
                values = [(t, results.kd(pair_teacher, arch, results.stingy(), t, grad_clip)) for t in temps["values"]]
                parts.append(f"{pair_teacher} -> {student}: " + ", ".join(f"tau {t:g}: {_cell(row, None)}" for t, row in values))
            out.append(f"(e) Temperature sweep (stingy){attacker}: " + "; ".join(parts) + ".")
    return out


def paper_comparison(results: Results, paper: PaperTable) -> str:
    """The paper's table beside ours: for each of our students, the paper's rows for the same architecture (and
    its self-KD column for our self-KD student), then ours per attacker; cells are accuracy (delta against the
    scratch student of that row's source), ours with stingy-smooth too. Paper students we did not run are listed."""
    teacher = results.preset["teachers"][0]
    smooth = {"name": "stingy_smooth", "sparse_ratio": results.sparse_ratio}
    kinds = (("normal", teacher, NORMAL), ("nasty", f"{teacher}-nasty", NORMAL), ("stingy", teacher, results.stingy()))
    lines = [
        "| Student | Source | scratch | normal KD | Nasty Teacher KD | stingy KD | stingy-smooth KD |",
        "|---|---|---|---|---|---|---|",
    ]

    def paper_row(student: PaperStudent) -> str:
        base = student.accuracy["scratch"]
        cells = [_fmt(student.accuracy[kind], base) for kind, _, _ in kinds]
        what = f"paper, {paper.teacher} teacher" + (" (self-KD)" if student.self_kd else "")
        return f"| {student.label} | {what} | {base:.2f} | " + " | ".join(cells) + " | - |"

    normal, nasty = results.teacher(teacher), results.teacher(f"{teacher}-nasty")
    paper_teacher = paper.teacher_accuracy
    lines.append(f"| Teacher itself | paper, {paper.teacher} | - | {paper_teacher['normal']:.2f} | "
                 f"{_fmt(paper_teacher['nasty'], paper_teacher['normal'])} | {_fmt(paper_teacher['stingy'], paper_teacher['normal'])} | - |")
    ours_normal = normal["accuracy"]["normal"] if normal else None
    lines.append(f"| Teacher itself | ours, {teacher} | - | {_fmt(ours_normal)} | "
                 f"{_fmt(nasty['accuracy']['normal'], ours_normal) if nasty else 'not run'} | "
                 f"{_fmt(normal['accuracy']['stingy'], ours_normal) if normal else 'not run'} | - |")
    matched: set[str] = set()
    for entry in results.preset["students"]:
        arch = student_arch(entry, teacher)
        for student in paper.students:
            if student.arch == arch or (student.self_kd and entry == "self"):
                matched.add(student.label)
                lines.append(paper_row(student))
        scratch = results.baseline(arch)
        for grad_clip in results.clip_variants:
            cells = [_cell(results.kd(source, arch, policy, results.tau, grad_clip), scratch) for _, source, policy in kinds]
            cells.append(_cell(results.kd(teacher, arch, smooth, results.tau, grad_clip), scratch))
            attacker = f"attacker clipping at {grad_clip:g}" if grad_clip else "the paper's attacker"
            what = f"ours, {teacher} teacher{' (self-KD)' if entry == 'self' else ''}, {attacker}"
            lines.append(f"| {arch} | {what} | {_fmt(accuracy_of(results.scratch(arch)))} | " + " | ".join(cells) + " |")
    for student in paper.students:
        if student.label not in matched:
            lines += [paper_row(student), f"| {student.arch} | ours | not in this preset | | | | |"]
    return "\n".join(lines)


def baseline_warnings(results: Results) -> list[str]:
    """One sentence per scratch student that learned nothing (:mod:`training.baseline`), saying what to change."""
    classes = results.num_classes
    out = []
    for arch in dict.fromkeys(student_arch(s, t) for t in results.preset["teachers"] for s in results.preset["students"] if s != "self"):
        value = accuracy_of(results.scratch(arch))
        if classes is not None and value is not None and results.baseline(arch) is None:
            out.append(baseline_warning(f"the scratch `{arch}` student", value, classes, REMEDY))
    return out


def write_report(folder: Path) -> Path:
    """Render ``folder/report.md`` and the figures beside it; returns the report's path."""
    results = Results.load(folder)
    preset = results.preset
    figures = all_figures(results, folder)
    done = len(results.rows)
    lines = [
        f"# Benchmark `{preset['name']}`", "", preset["summary"], "",
        f"Dataset `{preset['dataset']}`; KD with tau = {preset['tau']:g}, alpha = {preset['alpha']:g}; stingy sparse ratio r = {preset['sparse_ratio']:g}; "
        f"{done} finished runs (`results.jsonl`). Teachers: {preset['teacher_config']['epochs']} epochs; students: "
        f"{preset['student_config']['epochs']} epochs, lr {preset['student_config']['lr']:g}, augmentation {'on' if preset['student_config']['augment'] else 'off'}"
        + (f"; train subset {preset['train_subset']}" if preset.get("train_subset") else "") + ".",
        "", "Cells: student test accuracy (%), in brackets the difference to the student trained from scratch "
        "of the same architecture (for *Teacher self* too: the scratch student of the teacher's architecture, as in "
        "the findings and the stability table); differences below -5 points in bold. A `least` run keeping N = 1 class "
        "releases the same top-1 logit as `stingy` at that ratio: it is one point, the stingy run's, in every table and figure.", "",
    ]
    note = DATASETS[preset["dataset"]].note if preset["dataset"] in DATASETS else ""
    if note:
        lines += [f"**Data.** {note}", ""]
    if (folder / NOTES_FILE).is_file():
        lines += [(folder / NOTES_FILE).read_text().strip(), ""]
    paper = PAPER_TABLES.get(preset["name"])
    if paper:
        lines += [f"## Beside {paper.caption}", "", "In brackets: the difference to the scratch student of the same row "
                  "(the teacher: to its normal accuracy); the paper's are computed from its reported accuracies.", "",
                  paper_comparison(results, paper), ""]
    warnings = baseline_warnings(results)
    if warnings:
        lines += ["**Baselines near chance: no difference is reported against them.**", ""] + [f"- {w}." for w in warnings] + [""]
    for teacher in preset["teachers"]:
        lines += [f"## Teacher {teacher}", "", comparison_table(results, teacher), ""]
    lines += ["## Stability of the collapsed students (claim f)", "", stability_table(results), "", "## Findings", ""]
    lines += [f"- {item}" for item in findings(results)]
    lines += ["", "## Figures", ""] + [f"![{path.stem}]({path.name})" for path in figures]
    path = folder / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
