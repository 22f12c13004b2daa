"""The leakage report of an attack folder: ``report.json``, ``report.md`` and ``report.png``.

One row per strategy of the latest experiment (the students that share the latest scratch baseline's
architecture, training settings and stored responses), each with the fields docs/design.md (Attack folders) names:
``strategy``, ``queries``, ``student_arch``, ``student_accuracy``, ``scratch_accuracy`` and
``leakage = student_accuracy - scratch_accuracy`` (percentage points), plus ``diverged``,
``diverged_step``, ``max_grad_norm`` and ``seconds``. A diverged student has ``student_accuracy`` and
``leakage`` ``null``: it is reported as diverged, never as a low accuracy. A scratch baseline that learned
nothing (:mod:`training.baseline`: below chance + 10 points) makes every ``leakage`` ``null`` too: the report
then headlines no strategy and its ``warning`` says so and what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: files only, no display
import matplotlib.pyplot as plt
from matplotlib import transforms

from attacker.distill import finished_records
from attacker.store import ResponseStore
from attacker.strategies import STRATEGIES
from training.baseline import accuracy_of, baseline_learned, baseline_warning, chance_accuracy
from training.io import atomic_path, atomic_write_json, atomic_write_text

FORMAT = "stingy-teacher/attack-report/1"
REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
REMEDY = "query more images (--budget, up to the whole split) or train the students longer (--epochs)"


class ReportError(Exception):
    """Nothing to report yet."""


def build_report(out: str | Path) -> dict[str, Any]:
    """The report document of the attack folder ``out`` (nothing is written)."""
    folder = Path(out)
    manifest = ResponseStore(folder).manifest()
    records = finished_records(folder)
    scratch = next((r for r in reversed(records) if r.get("kind") == "scratch"), None)
    if scratch is None:
        raise ReportError(f"{folder} holds no trained students yet; run `stingy-attack distill` first")
    experiment = scratch["experiment"]
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == "strategy" and record.get("experiment") == experiment:
            latest.pop(record["strategy"], None)
            latest[record["strategy"]] = record
    scratch_accuracy = _accuracy(scratch["result"])
    num_classes = int(manifest["identity"]["num_classes"])
    learned = scratch_accuracy is None or baseline_learned(scratch_accuracy, num_classes)  # a diverged one: no leakage anyway
    warning = None if learned else baseline_warning("the scratch baseline", scratch_accuracy, num_classes, REMEDY)
    rows = [_row(record, scratch_accuracy, learned) for record in latest.values()]
    best = max((row for row in rows if row["leakage"] is not None), key=lambda row: row["leakage"], default=None)
    sessions = manifest.get("sessions", [])
    return {
        "format": FORMAT,
        "server": {**manifest["server"], "max_classes_seen": manifest.get("max_classes_seen")},
        "dataset": manifest["dataset"]["name"], "split": manifest["dataset"]["split"], "test_split": "test",
        "queries": scratch["queries"],
        "query_seconds": round(sum(float(s.get("seconds", 0.0)) for s in sessions), 3),
        "query_status": sessions[-1].get("status") if sessions else None,
        "server_top1_accuracy": scratch["server_top1_accuracy"],
        "student_arch": scratch["student_arch"], "train_config": scratch["config"],
        "scratch": {"accuracy": scratch_accuracy, "chance": round(chance_accuracy(num_classes), 4), "learned": learned,
                    **_stability(scratch["result"])},
        "strategies": rows,
        "most_leaking": None if best is None else {key: best[key] for key in ("strategy", "leakage", "student_accuracy")},
        "warning": warning,
    }


def write_report(out: str | Path) -> dict[str, Any]:
    """Build the report and write ``report.json``, ``report.md`` and ``report.png`` into ``out``."""
    folder = Path(out)
    report = build_report(folder)
    atomic_write_json(folder / REPORT_JSON, report)
    atomic_write_text(folder / REPORT_MD, render_markdown(report))
    with atomic_path(folder / REPORT_PNG) as tmp:
        plot(report, tmp)
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the setting, one table row per strategy, and the chart."""
    server, config = report["server"], report["train_config"]
    scratch = report["scratch"]
    policy = server.get("policy")
    lines = [
        f"# Leakage report: `{server['model']}` at {server['url']}",
        "",
        f"- Server: protocol {server['protocol']}, model `{server['model']}`"
        + (f" version {server['version']}" if server.get("version") else "")
        + (f", declared policy `{_compact(policy)}`" if policy else "")
        + f", releases {server.get('released_per_image') or '?'} classes per image "
        f"(at most {server.get('max_classes_seen')} in any stored response).",
        f"- Transfer set: {report['dataset']}/{report['split']}, {report['queries']} images queried "
        f"({report['query_seconds']:.1f} s, last session: {report['query_status']}); the released top-1 class "
        f"matches the true label on {report['server_top1_accuracy']:.2f}% of them.",
        f"- Students: `{report['student_arch']}`, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"{config['optimizer']} lr {config['lr']:g}, no augmentation; test accuracy on {report['dataset']}/{report['test_split']}.",
        f"- Scratch baseline (same student, same images, true labels only): {_percent(scratch['accuracy'], scratch)} "
        f"(chance: {scratch['chance']:.2f}%).",
        "",
        "| strategy | student accuracy | scratch accuracy | leakage (pp) | queries | max grad norm | time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["strategies"]:
        leakage = "n/a" if row["leakage"] is None else f"{row['leakage']:+.2f}"
        lines.append(
            f"| `{row['strategy']}` | {_percent(row['student_accuracy'], row)} | {_percent(row['scratch_accuracy'], scratch)} "
            f"| {leakage} | {row['queries']} | {row['max_grad_norm']:.3g} | {row['seconds']:.1f} s |"
        )
    best = report["most_leaking"]
    lines += [""]
    if report["warning"] is not None:
        lines.append(f"**No leakage is measured**: {report['warning']}.")
    elif best is not None:
        lines.append(f"Most leakage: `{best['strategy']}`, {best['leakage']:+.2f} pp "
                     f"(student {best['student_accuracy']:.2f}% vs scratch {scratch['accuracy']:.2f}%).")
    else:
        lines.append("No strategy produced a measurable leakage (every student or the baseline diverged).")
    lines += ["", "Leakage = student accuracy - scratch accuracy. A diverged student is reported as diverged, not as an accuracy.", ""]
    lines += [f"- `{name}`: {cls.summary}" for name, cls in STRATEGIES.items()
              if any(row["strategy"].split(":")[0] == name for row in report["strategies"])]
    lines += ["", f"![student vs scratch accuracy]({REPORT_PNG})", ""]
    return "\n".join(lines)


def compare(folders: Sequence[str | Path]) -> str:
    """Several attack folders side by side (e.g. the same attack on a normal and a stingy server), as
    Markdown: one column per folder, one row per strategy, each cell the student accuracy and its leakage."""
    reports = [build_report(folder) for folder in folders]
    labels = [_server_label(report) for report in reports]
    strategies = list(dict.fromkeys(row["strategy"] for report in reports for row in report["strategies"]))
    lines = [
        f"Students `{'`, `'.join(sorted({r['student_arch'] for r in reports}))}`; cells: student test accuracy "
        "(leakage = student - scratch, in pp).", "",
        "| strategy | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(reports),
        "| scratch (labels only) | " + " | ".join(_percent(r["scratch"]["accuracy"], r["scratch"]) for r in reports) + " |",
    ]
    for strategy in strategies:
        cells = []
        for report in reports:
            row = next((row for row in report["strategies"] if row["strategy"] == strategy), None)
            leakage = "" if row is None or row["leakage"] is None else f" ({row['leakage']:+.2f} pp)"
            cells.append("-" if row is None else _percent(row["student_accuracy"], row) + leakage)
        lines.append(f"| `{strategy}` | " + " | ".join(cells) + " |")
    lines.append("")
    for label, report in zip(labels, reports):
        best = report["most_leaking"]
        if report["warning"] is not None:
            lines.append(f"- No leakage is measured through the {label}: {report['warning']}.")
        elif best is not None:
            lines.append(f"- Most leakage through the {label}: `{best['strategy']}`, student {best['student_accuracy']:.2f}%, "
                         f"{best['leakage']:+.2f} pp against scratch.")
    return "\n".join(lines) + "\n"


def _server_label(report: dict[str, Any]) -> str:
    server = report["server"]
    name = (server.get("policy") or {}).get("name", "unknown-policy")
    return f"{name} server (N={server.get('released_per_image') or '?'}, {report['queries']} queries)"


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Two panels: student accuracy per strategy against the scratch line, and the leakage in pp.
    Diverged students get no bar, only the word DIVERGED across their slot."""
    rows = report["strategies"]
    scratch = report["scratch"]["accuracy"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(rows) + 4), 4.5))
    positions = list(range(len(rows)))
    for axis, key in ((left, "student_accuracy"), (right, "leakage")):
        measured = [(p, row[key], row["leakage"]) for p, row in zip(positions, rows) if row[key] is not None]
        bars = axis.bar([p for p, _, _ in measured], [v for _, v, _ in measured],
                        color=["#c0504d" if (leak or 0.0) < 0 else "#4f81bd" for _, _, leak in measured])
        labels = [f"{v:+.2f} pp" if key == "leakage" else f"{v:.2f}%" for _, v, _ in measured]
        axis.bar_label(bars, labels, label_type="center" if key == "student_accuracy" else "edge", fontsize=8,
                       color="white" if key == "student_accuracy" else "black", padding=2)
        across = transforms.blended_transform_factory(axis.transData, axis.transAxes)
        for position, row in zip(positions, rows):
            if row["diverged"]:
                axis.text(position, 0.5, f"DIVERGED\n(step {row['diverged_step']})", transform=across, rotation=90,
                          ha="center", va="center", fontweight="bold", color="#7f7f7f", fontsize=9)
        axis.set_xticks(positions, [row["strategy"] for row in rows], rotation=20, ha="right", fontsize=8)
        axis.set_xlim(-0.6, len(rows) - 0.4)
    if scratch is not None:
        left.axhline(scratch, color="black", linestyle="--", linewidth=1, label=f"scratch {scratch:.2f}%")
        left.legend(loc="lower right", fontsize=8)
    left.set_ylim(0, 100)
    left.set_ylabel("student test accuracy (%)")
    right.axhline(0, color="black", linewidth=0.8)
    if report["warning"] is not None:
        right.text(0.5, 0.5, "scratch baseline near chance:\nno leakage measured", transform=right.transAxes, ha="center",
                   va="center", color="#7f7f7f", fontweight="bold")
    right.margins(y=0.2)
    right.set_ylabel("leakage: student - scratch (pp)")
    server = report["server"]
    figure.suptitle(f"{report['student_arch']} students from {server['model']} "
                    f"(N={server.get('released_per_image') or '?'}, {report['queries']} queries)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)


def _row(record: dict[str, Any], scratch_accuracy: float | None, learned: bool) -> dict[str, Any]:
    """One strategy's row; ``leakage`` is null when either student diverged or the baseline did not learn."""
    student_accuracy = _accuracy(record["result"])
    measured = learned and student_accuracy is not None and scratch_accuracy is not None
    leakage = round(student_accuracy - scratch_accuracy, 4) if measured else None  # type: ignore[operator]
    return {
        "strategy": record["strategy"], "queries": record["queries"], "student_arch": record["student_arch"],
        "student_accuracy": student_accuracy, "scratch_accuracy": scratch_accuracy, "leakage": leakage,
        **_stability(record["result"]), "grad_clip": record["config"].get("grad_clip"),
        "parameters": record["parameters"], "objective": record["objective"],
    }


def _accuracy(result: dict[str, Any]) -> float | None:
    """The test accuracy of a finished training, rounded; ``None`` for a diverged one."""
    value = accuracy_of(result)
    return None if value is None else round(value, 4)


def _stability(result: dict[str, Any]) -> dict[str, Any]:
    return {"diverged": bool(result.get("diverged")), "diverged_step": result.get("diverged_step"),
            "max_grad_norm": float(result.get("max_grad_norm", 0.0)), "seconds": float(result.get("seconds", 0.0)),
            "epochs_run": result.get("epochs_run")}


def _percent(value: float | None, stability: dict[str, Any]) -> str:
    if value is None:
        return f"DIVERGED (step {stability.get('diverged_step')})" if stability.get("diverged") else "n/a"
    return f"{value:.2f}%"


def _compact(policy: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in policy.items())
