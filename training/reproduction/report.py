"""``DIR/report.md`` from a benchmark folder: the paper's tables, the stability table, measured findings
for the paper's claims, and links to the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.baseline import accuracy_of, baseline_warning
from training.data import DATASETS
from training.io import atomic_write_text
from training.reproduction.cells import Cell, spread, within_spread
from training.reproduction.figures import all_figures
from training.reproduction.paper import PAPER_TABLES, PaperStudent, PaperTable
from training.reproduction.results import NORMAL, Results, student_arch

REPORT_FILE = "report.md"
NOTES_FILE = "notes.md"  # written by hand beside the results (what was run and why, what the numbers say)
COLLAPSE_POINTS = 5.0  # a student this many points below its scratch baseline counts as collapsed
REMEDY = "train longer (raise or drop --max-epochs) or on more images (raise or drop --train-subset)"


def collapsed(delta: float) -> bool:
    """The one definition of collapse: a student (a run, or a cell's mean) more than :data:`COLLAPSE_POINTS`
    below its scratch baseline (the scratch students' mean). A diverged run has collapsed too."""
    return delta < -COLLAPSE_POINTS


def _fmt(value: float | None, reference: float | None = None, bold_below: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}"
    if reference is not None:
        delta = value - reference
        bold = "**" if bold_below and collapsed(delta) else ""
        text += f" ({bold}{delta:+.2f}{bold})"
    return text


def _value(cell: Cell) -> str:
    """A cell's accuracy: the plain number for one run, ``mean ± std (n=N)`` for several."""
    if cell.mean is None:
        return "-"
    return f"{cell.mean:.2f}" + (f" ± {cell.std:.2f} (n={len(cell.accuracies)})" if cell.std is not None else "")


def _diverged(cell: Cell) -> str:
    steps = ", ".join(str(row["diverged_step"]) for row in cell.diverged)
    where = f"step{'s' if len(cell.diverged) > 1 else ''} {steps}"
    return f"diverged ({where})" if cell.n == 1 else f"{len(cell.diverged)} of {cell.n} diverged ({where})"


def _cell(cell: Cell, reference: Cell | None) -> str:
    """A table cell: accuracy, the difference to ``reference`` (bold when collapsed, ``≈`` when within the
    spread, :func:`~training.reproduction.cells.within_spread`), and how many of its runs diverged."""
    if not cell:
        return "not run"
    if cell.mean is None:
        return _diverged(cell)
    text = _value(cell)
    if reference is not None and reference.mean is not None:
        delta = cell.mean - reference.mean
        bold = "**" if collapsed(delta) else ""
        text += f" ({'≈ ' if within_spread(cell, reference) else ''}{bold}{delta:+.2f}{bold})"
    return text + (f" [{_diverged(cell)}]" if cell.diverged else "")


def _difference(a: Cell, b: Cell) -> str:
    """``mean(a) - mean(b)``, with its spread when known and ``≈`` when within it."""
    assert a.mean is not None and b.mean is not None
    width = spread(a, b)
    return f"{a.mean - b.mean:+.2f}" + (f" ± {width:.2f}" if width is not None else "") + (" ≈" if within_spread(a, b) else "")


def comparison_table(results: Results, teacher: str) -> str:
    """Tables 1-4 layout: teacher accuracy (delta against the normal teacher) and student accuracy after KD,
    delta against the scratch student of the same architecture (self-KD included)."""
    students = results.preset["students"]
    header = ["Teacher network", "Teacher accuracy", *[("Teacher self" if s == "self" else s) for s in students]]
    normal_teacher = results.teacher(teacher)
    normal_accuracy = normal_teacher["accuracy"]["normal"] if normal_teacher else None

    def baseline(student: str) -> Cell | None:  # self-KD too: the scratch student of the same architecture
        return results.baseline(student_arch(student, teacher))

    def scratch_cell(student: str) -> str:
        arch = student_arch(student, teacher)
        cell = results.scratch(arch)
        return _value(cell) + (" (near chance)" if cell.mean is not None and results.baseline(arch) is None else "")

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
    """Claim (f): for every distillation run (every seed) that collapsed (:func:`collapsed`), did its gradients
    explode, and what does clipping give? Its references are the normal-KD run and the clipping twin of its seed."""
    clip = results.preset.get("clip_norm")
    lines = [
        "| run | accuracy | vs scratch | max grad norm (pre-clip) | normal-KD max grad norm | with clipping | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results.rows:
        if row["type"] != "student" or row["teacher"] is None or row["grad_clip"] is not None:
            continue
        baseline = results.baseline(row["student"])
        scratch = baseline.mean if baseline else None
        value = accuracy_of(row)
        if not (row.get("diverged") or (value is not None and scratch is not None and collapsed(value - scratch))):
            continue
        base = row["teacher"].removesuffix("-nasty")  # the normal teacher's normal KD is the reference
        seed = row.get("seed")
        normal = (results.kd(base, row["student"], NORMAL, row["tau"]) or results.kd(base, row["student"], NORMAL, results.tau)).seed(seed)
        clipped = results.kd(row["teacher"], row["student"], row["policy"], row["tau"], clip).seed(seed) if clip else None
        run = _cell(Cell((row,)), None)
        lines.append(
            f"| `{row['key']}` | {run} | {_fmt(value - scratch) if value is not None and scratch is not None else '-'} | "
            f"{row['max_grad_norm']:.3g} | {normal['max_grad_norm']:.3g} | "
            f"{_cell(Cell((clipped,)), None) if clipped else 'not run'} | {_verdict(row, clipped, normal)} |"
            if normal else f"| `{row['key']}` | {run} | - | {row['max_grad_norm']:.3g} | - | - | {_verdict(row, clipped, None)} |"
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
            if stingy.mean is None and stingy.diverged:
                deltas.append(f"{student}: {_diverged(stingy)}")
            elif scratch is not None and stingy.mean is not None:
                deltas.append(f"{student}: {_difference(stingy, scratch)}" + (f" [{_diverged(stingy)}]" if stingy.diverged else ""))
            elif stingy and results.scratch(arch).mean is not None:  # a cell not run (e.g. left out by --only) says nothing
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
                n = results.kd(f"{teacher}-nasty", arch, NORMAL, results.tau, grad_clip)
                s = results.kd(teacher, arch, results.stingy(), results.tau, grad_clip)
                pairs.append(f"{student}{f' (clip {grad_clip:g})' if grad_clip else ''}: nasty {_cell(n, None)} "
                             f"{'≈' if within_spread(n, s) else 'vs'} stingy {_cell(s, None)}")
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

                def at(name: str, ratio: float | None = None) -> Cell:
                    policy = {"name": name} if ratio is None else {"name": name, "sparse_ratio": ratio}
                    return results.kd(pair_teacher, arch, policy, results.tau, grad_clip)

                def worst(name: str) -> tuple[float | None, Cell]:  # the ratio with the lowest mean accuracy
                    cells = [(r, at(name, r)) for r in sweep["values"]]
                    return min(((r, c) for r, c in cells if c.mean is not None), key=lambda rc: rc[1].mean, default=(None, Cell()))

                (_, smooth), (ratio, sparse), reverse = worst("stingy_smooth"), worst("stingy"), at("reverse")
                sparse_cells = [at("stingy", r) for r in sweep["values"]]
                diverged = sum(bool(cell) and cell.mean is None for cell in sparse_cells)  # a run not (yet) run did not diverge
                missing = sum(not cell for cell in sparse_cells)
                parts.append(
                    f"{pair_teacher} -> {student}: scratch {_value(results.scratch(arch))}, "
                    f"stingy-smooth at worst {_value(smooth)}, reverse {_value(reverse)}, "
                    f"stingy-sparse at worst {_value(sparse)}{f' (r = {ratio})' if ratio is not None else ''}"
                    f"{' (≈ reverse)' if within_spread(sparse, reverse) else ''}, "
                    f"{diverged} of {len(sweep['values'])} sparse ratios diverged{f', {missing} not run' if missing else ''}"
                    + (f" (in every seed), {sum(bool(at('stingy', r).diverged) for r in sweep['values'])} in some seed" if results.seeds else "")
                )
            out.append(f"(d, e) Sparse-ratio sweep{attacker}: " + "; ".join(parts) + ".")
            if "least" in results.preset.get("ratio_policies", ()):
                out.append(f"(e) Top vs least logits{attacker}: " + "; ".join(
                    top_vs_least(results, pair_teacher, student, grad_clip) for pair_teacher, student in sweep["pairs"]) + ".")
        if temps:
            parts = []
            for pair_teacher, student in temps["pairs"]:
                arch = student_arch(student, pair_teacher)
                values = [(t, results.kd(pair_teacher, arch, results.stingy(), t, grad_clip)) for t in temps["values"]]
                parts.append(f"{pair_teacher} -> {student}: " + ", ".join(f"tau {t:g}: {_cell(cell, None)}" for t, cell in values))
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
            lines.append(f"| {arch} | {what} | {_value(results.scratch(arch))} | " + " | ".join(cells) + " |")
    for student in paper.students:
        if student.label not in matched:
            lines += [paper_row(student), f"| {student.arch} | ours | not in this preset | | | | |"]
    return "\n".join(lines)


def top_vs_least(results: Results, teacher: str, student: str, grad_clip: float | None) -> str:
    """Stingy (top-N) against least-N at each swept ratio where they differ (N = 1 is one policy), ``≈`` between
    them when the difference is within the spread."""
    arch = student_arch(student, teacher)
    parts = []
    for ratio in results.preset["ratio_sweep"]["values"]:
        least = {"name": "least", "sparse_ratio": ratio}
        if results.same_policy(least)["name"] != "least":
            continue
        top, bottom = (results.kd(teacher, arch, policy, results.tau, grad_clip) for policy in (results.stingy(ratio), least))
        parts.append(f"r = {ratio:g}: top {_cell(top, None)} {'≈' if within_spread(top, bottom) else 'vs'} least {_cell(bottom, None)}")
    return f"{teacher} -> {student}: " + ", ".join(parts)


def baseline_warnings(results: Results) -> list[str]:
    """One sentence per scratch student that learned nothing (:mod:`training.baseline`), saying what to change."""
    classes = results.num_classes
    out = []
    for arch in dict.fromkeys(student_arch(s, t) for t in results.preset["teachers"] for s in results.preset["students"] if s != "self"):
        value = results.scratch(arch).mean
        if classes is not None and value is not None and results.baseline(arch) is None:
            out.append(baseline_warning(f"the scratch `{arch}` student", value, classes, REMEDY))
    return out


def seeds_paragraph(results: Results) -> str:
    """What a multi-seed folder's numbers are, and the spread rule (:mod:`training.reproduction.cells`)."""
    seeds = results.seeds or []
    return (
        f"Seeds {', '.join(map(str, seeds))}: every student cell (scratch baselines included) was trained once per seed; "
        "the seed sets the student's initialisation and data order. Teachers (normal and nasty) were trained once, on seed "
        f"{results.preset['teacher_config']['seed']}: the attacker cannot retrain the victim. A cell shows mean ± sample standard "
        "deviation (n = the runs that did not diverge) and how many of its runs diverged; a single run shows its plain number. "
        "A difference of means is given ± its spread sqrt(std_a² + std_b²) and marked ≈ when it is not larger than that "
        "spread: the seeds cannot tell the two cells apart. The stability table lists each collapsed run (each seed) on its own."
    )


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
    if results.seeds:
        lines += [seeds_paragraph(results), ""]
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
