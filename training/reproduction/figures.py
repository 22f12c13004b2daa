"""The paper's figures from benchmark results, as PNG files (matplotlib, Agg backend).

Fig. 2 sparse-ratio sweep, Fig. 3 accuracy over epochs, Fig. 4 logit visualisation at tau = 4, Fig. 5 top vs
least logits, Fig. 6 temperature sweep. A point is a cell's mean accuracy over its seeds, with error bars (the
sample standard deviation) when it has several runs; a cell whose every run diverged is drawn as a red cross on
the x axis, never as a low accuracy, and a cell where only some seeds diverged gets a red plus there (its mean is
over the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from defense import make_policy, tempered_softmax  # noqa: E402
from training.reproduction.cells import Cell  # noqa: E402
from training.reproduction.results import NORMAL, Results, student_arch  # noqa: E402


# One colour per policy; the attacker that clips its gradient norm is the dashed line of the same colour.
POLICY_COLORS = {"stingy": "tab:blue", "stingy_smooth": "tab:orange", "least": "tab:red"}
KIND_COLORS = {"scratch": "gray", "normal": "tab:green", "nasty": "tab:orange", "stingy": "tab:blue"}


def _pair_axes(count: int, title: str) -> tuple[plt.Figure, list[Axes]]:
    fig, axes = plt.subplots(1, count, figsize=(max(6.5, 4.6 * count), 4.0), squeeze=False)
    fig.suptitle(title, fontsize=11)
    return fig, list(axes[0])


def _curve(ax: Axes, xs: Sequence[float], cells: Sequence[Cell], label: str, style: str, color: str | None = None) -> None:
    points = [(x, cell) for x, cell in zip(xs, cells) if cell]
    finite = [(x, cell.mean, cell.std or 0.0) for x, cell in points if cell.mean is not None]
    if finite:
        x, y, err = zip(*finite)
        if any(err):
            ax.errorbar(x, y, yerr=err, fmt=style, color=color, label=label, capsize=3)
        else:
            ax.plot(x, y, style, color=color, label=label)
    diverged = [x for x, cell in points if cell.mean is None]
    if diverged:  # at the bottom of the axes, whatever its limits
        ax.plot(diverged, [0.03] * len(diverged), "rx", markersize=9, transform=ax.get_xaxis_transform(), label=f"{label}: diverged")
    partly = [x for x, cell in points if cell.mean is not None and cell.diverged]
    if partly:  # the mean is over the seeds that did not diverge: say that some did
        ax.plot(partly, [0.03] * len(partly), "r+", markersize=9, transform=ax.get_xaxis_transform(), label=f"{label}: some seeds diverged")


def _level(ax: Axes, cell: Cell, label: str, style: str, color: str | None = None) -> None:
    """A horizontal line at ``cell``'s mean, with a band of one standard deviation when it has several runs."""
    if cell.mean is None:
        return
    color = color or ("gray" if "scratch" in label else "tab:green")
    ax.axhline(cell.mean, linestyle=style, color=color, label=f"{label} ({cell.mean:.1f}{f' ± {cell.std:.1f}' if cell.std else ''})")
    if cell.std:
        ax.axhspan(cell.mean - cell.std, cell.mean + cell.std, color=color, alpha=0.12)


def _attacker_label(label: str, grad_clip: float | None) -> str:
    return f"{label}, clip {grad_clip:g}" if grad_clip else label


def _attacker_style(style: str, grad_clip: float | None) -> str:
    """Solid for the paper's attacker, dashed for the one that clips its gradient norm."""
    return f"{style[0]}--" if grad_clip else style  # styles are a marker then a line


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sparse_ratio_figure(results: Results, out: Path, policies: Sequence[str], title: str, name: str) -> Path | None:
    sweep = results.preset.get("ratio_sweep")
    if not sweep:
        return None
    ratios = [float(r) for r in sweep["values"]]
    fig, axes = _pair_axes(len(sweep["pairs"]), title)
    styles = {"stingy": "o-", "stingy_smooth": "s--", "least": "^-."}
    for ax, (teacher, student) in zip(axes, sweep["pairs"]):
        arch = student_arch(student, teacher)
        _level(ax, results.scratch(arch), "scratch", ":")
        _level(ax, results.kd(teacher, arch, NORMAL, results.tau), "normal KD", "--")
        if "stingy_smooth" in policies and results.preset.get("reverse"):
            _level(ax, results.kd(teacher, arch, {"name": "reverse"}, results.tau), "reverse", "-.", "tab:purple")
        for policy in policies:
            label = "stingy-sparse" if policy == "stingy" else policy.replace("_", "-")
            for grad_clip in results.clip_variants:
                rows = [results.kd(teacher, arch, {"name": policy, "sparse_ratio": r}, results.tau, grad_clip) for r in ratios]
                _curve(ax, ratios, rows, _attacker_label(label, grad_clip), _attacker_style(styles.get(policy, "o-"), grad_clip),
                       POLICY_COLORS.get(policy))
        ax.set(title=f"{teacher} -> {student}", xlabel="sparse ratio r = N / K", ylabel="student test accuracy (%)")
        ax.legend(fontsize=7)
    return _save(fig, out / name)


def temperature_figure(results: Results, out: Path) -> Path | None:
    sweep = results.preset.get("temperature_sweep")
    if not sweep:
        return None
    taus = [float(t) for t in sweep["values"]]
    fig, axes = _pair_axes(len(sweep["pairs"]), f"Fig. 6: temperature (stingy, r = {results.sparse_ratio:g})")
    for ax, (teacher, student) in zip(axes, sweep["pairs"]):
        arch = student_arch(student, teacher)
        _level(ax, results.scratch(arch), "scratch", ":")
        for grad_clip in results.clip_variants:
            rows = [results.kd(teacher, arch, results.stingy(), t, grad_clip) for t in taus]
            _curve(ax, taus, rows, _attacker_label("stingy KD", grad_clip), _attacker_style("o-", grad_clip), POLICY_COLORS["stingy"])
        ax.set(title=f"{teacher} -> {student}", xlabel="temperature tau", ylabel="student test accuracy (%)")
        ax.legend(fontsize=7)
    return _save(fig, out / "fig6_temperature.png")


def _epoch_accuracies(cell: Cell) -> dict[int, list[float]]:
    """Test accuracy after each epoch, over the cell's runs that recorded it (a diverged run records none)."""
    out: dict[int, list[float]] = {}
    for row in cell.rows:
        for entry in row.get("history") or ():
            out.setdefault(entry["epoch"], []).append(entry["test_accuracy"])
    return out


def epochs_figure(results: Results, out: Path) -> Path | None:
    teacher = results.preset["teachers"][0]
    students = results.preset["students"]
    fig, axes = _pair_axes(len(students), f"Fig. 3: test accuracy over epochs ({teacher} teacher)")
    drawn = False
    for ax, student in zip(axes, students):
        arch = student_arch(student, teacher)
        series = {"scratch": results.scratch(arch)}
        for grad_clip in results.clip_variants:
            series[_attacker_label("normal KD", grad_clip)] = results.kd(teacher, arch, NORMAL, results.tau, grad_clip)
            series[_attacker_label("nasty KD", grad_clip)] = results.kd(f"{teacher}-nasty", arch, NORMAL, results.tau, grad_clip)
            series[_attacker_label("stingy KD", grad_clip)] = results.kd(teacher, arch, results.stingy(), results.tau, grad_clip)
        for label, cell in series.items():
            epochs = _epoch_accuracies(cell)
            if epochs:
                color = next(c for kind, c in KIND_COLORS.items() if label.startswith(kind))
                xs = sorted(epochs)
                means = [float(np.mean(epochs[x])) for x in xs]
                stds = [float(np.std(epochs[x], ddof=1)) if len(epochs[x]) > 1 else 0.0 for x in xs]
                style = "--" if "clip" in label else "-"
                if any(stds):
                    ax.errorbar(xs, means, yerr=stds, fmt=style, color=color, marker=".", label=label, capsize=2)
                else:
                    ax.plot(xs, means, style, color=color, marker=".", label=label)
                drawn = True
            if cell.diverged:
                steps = ", ".join(str(row["diverged_step"]) for row in cell.diverged)
                ax.plot([], [], "rx", label=f"{label}: {len(cell.diverged)} of {cell.n} diverged (step {steps})"
                        if cell.n > 1 else f"{label}: diverged at step {steps}")
        ax.set(title=f"student {student}", xlabel="epoch", ylabel="test accuracy (%)")
        ax.legend(fontsize=7)
    return _save(fig, out / "fig3_epochs.png") if drawn else None


def logits_figure(results: Results, out: Path, tau: float = 4.0, image: int = 0) -> Path | None:
    teacher = results.preset["teachers"][0]
    normal, nasty = results.teacher(teacher), results.teacher(f"{teacher}-nasty")
    if normal is None:
        return None
    raw = torch.tensor(normal["sample_logits"][image])[None]
    bars = {"normal": tempered_softmax(raw, tau)[0]}
    if nasty is not None:
        bars["nasty"] = tempered_softmax(torch.tensor(nasty["sample_logits"][image])[None], tau)[0]
    bars[f"stingy (r = {results.sparse_ratio:g})"] = tempered_softmax(make_policy("stingy", sparse_ratio=results.sparse_ratio)(raw), tau)[0]
    names = normal["class_names"]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(names)), 4.2))
    positions = np.arange(len(names))
    for offset, (label, probs) in enumerate(bars.items()):
        ax.bar(positions + (offset - (len(bars) - 1) / 2) * width, probs.numpy(), width, label=label)
    true_class = names[normal["sample_labels"][image]]
    ax.set(title=f"Fig. 4: teacher probabilities at tau = {tau:g}\n(test image {image}, true class: {true_class})", ylabel="probability")
    ax.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, out / "fig4_logits.png")


def all_figures(results: Results, out: Path) -> list[Path]:
    """Every figure the results support, written into ``out``."""
    made = [
        sparse_ratio_figure(results, out, ("stingy", "stingy_smooth"), "Fig. 2: sparse ratio (stingy-sparse, stingy-smooth, reverse)", "fig2_sparse_ratio.png"),
        epochs_figure(results, out),
        logits_figure(results, out),
        sparse_ratio_figure(results, out, ("stingy", "least"), "Fig. 5: top vs least logits", "fig5_top_vs_least.png")
        if "least" in results.preset.get("ratio_policies", ()) else None,
        temperature_figure(results, out),
    ]
    return [path for path in made if path is not None]
