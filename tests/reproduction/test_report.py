"""The benchmark report against the recorded ``fmnist-cpu`` run (docs/results/fmnist-cpu): no difference is
reported against a scratch baseline that learned nothing (training.baseline), and the report says what to change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.reproduction.report import baseline_warnings, comparison_table, findings, stability_table
from training.reproduction.results import PRESET_FILE, RESULTS_FILE, Results

RECORDED = Path(__file__).resolve().parents[2] / "docs" / "results" / "fmnist-cpu"


def _recorded(tmp_path: Path, mlp_scratch: float | None = None) -> Results:
    """The recorded run, with the scratch ``mlp`` student's accuracy replaced by ``mlp_scratch`` when given."""
    shutil.copy(RECORDED / PRESET_FILE, tmp_path / PRESET_FILE)
    rows = [json.loads(line) for line in (RECORDED / RESULTS_FILE).read_text().splitlines()]
    for row in rows:
        if mlp_scratch is not None and row["key"] == "scratch/mlp":
            row["test_accuracy"] = mlp_scratch
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Results.load(tmp_path)


def test_the_recorded_baselines_learned(tmp_path: Path) -> None:
    results = _recorded(tmp_path)
    assert results.num_classes == 10 and baseline_warnings(results) == []
    assert "mlp: -77.07" in " ".join(findings(results))  # the stingy-KD mlp student against its 87.07% baseline
    assert "(c) Nasty teacher (tau_A 4, omega 0.04) accuracy 90.02% (-0.80 vs normal)." in " ".join(findings(results))


def test_no_difference_is_reported_against_a_baseline_near_chance(tmp_path: Path) -> None:
    results = _recorded(tmp_path, mlp_scratch=15.74)  # chance is 10% for 10 classes: it learned nothing
    (warning,) = baseline_warnings(results)
    assert warning.startswith("the scratch `mlp` student reached only 15.74% (chance is 10.00% for 10 classes")
    assert "--max-epochs" in warning and "--train-subset" in warning
    table = comparison_table(results, "cnn_small")
    assert "| Student baseline | - | 15.74 (near chance) | 86.74 | 90.94 |" in table
    mlp_cells = [line.split(" | ")[2] for line in table.splitlines()[2:]]
    assert all("(" not in cell or cell == "15.74 (near chance)" for cell in mlp_cells), mlp_cells  # accuracies, no deltas
    assert "mlp: not measured (scratch baseline near chance)" in " ".join(findings(results))
    mlp_rows = [line for line in stability_table(results).splitlines() if "/mlp/" in line]
    assert mlp_rows and all("| diverged (step" in line for line in mlp_rows)  # only divergence: no collapse against it
    assert "lenet5" in stability_table(results)  # the other students are judged as before


def test_a_cell_not_run_is_not_called_near_chance(tmp_path: Path) -> None:
    """A folder where the stingy mlp cell was not run (e.g. `run --only` left it out) reports nothing for it."""
    results = _recorded(tmp_path)
    rows = [r for r in results.rows if not (r.get("student") == "mlp" and r.get("policy") == results.stingy())]
    text = " ".join(findings(Results(results.preset, rows)))
    assert "(points): lenet5: diverged (step 93), self: -5.09." in text and "near chance" not in text


def test_rows_written_before_seeds_were_recorded_match_newer_rows_of_the_same_folder(tmp_path: Path) -> None:
    """A folder resumed by newer code mixes rows without ``seed`` (older code) and rows with the schedule's seed:
    the collapsed run still finds its normal-KD reference and its clipping twin (cifar10-cpu was such a folder)."""
    recorded = _recorded(tmp_path)
    stingy = [line for line in stability_table(recorded).splitlines() if "`kd/cnn_small/lenet5/stingy(sparse_ratio=0.2)/" in line]
    rows = [json.loads(line) for line in (tmp_path / RESULTS_FILE).read_text().splitlines()]
    assert all("seed" not in row for row in rows)
    for row in rows:  # newer code wrote the stingy runs: they record the preset's student seed
        if row.get("policy") == {"name": "stingy", "sparse_ratio": 0.2}:
            row["seed"] = recorded.preset["student_config"]["seed"]
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    mixed = [line for line in stability_table(Results.load(tmp_path)).splitlines() if "`kd/cnn_small/lenet5/stingy(sparse_ratio=0.2)/" in line]
    assert stingy and mixed == stingy and "no normal-KD reference" not in mixed[0]


def test_report_takes_the_folder_either_way(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``stingy-bench report DIR`` and ``stingy-bench report --out DIR`` (as ``stingy-attack report``)."""
    from training.reproduction.cli import main

    _recorded(tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 0 and (tmp_path / "report.md").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a benchmark folder" in capsys.readouterr().err


def test_self_kd_deltas_are_against_the_scratch_student_everywhere(tmp_path: Path) -> None:
    """Self-KD (cnn_small from cnn_small): table, findings and stability table all measure against the scratch
    cnn_small student (90.94%), never against the teacher."""
    results = _recorded(tmp_path)
    table = comparison_table(results, "cnn_small")
    stingy_row = next(line for line in table.splitlines() if line.startswith("| cnn_small (stingy) |"))
    assert stingy_row.rstrip(" |").endswith("85.85 (**-5.09**)")
    assert "self: -5.09" in " ".join(findings(results))
    assert "| 85.85 | -5.09 |" in stability_table(results)


def test_top_vs_least_is_compared_where_they_differ(tmp_path: Path) -> None:
    """Claim (e)'s comparison at every swept ratio but r = 0.1 (N = 1: one policy), counterexamples included."""
    text = " ".join(findings(_recorded(tmp_path)))
    assert ("(e) Top vs least logits, the paper's attacker: cnn_small -> mlp: r = 0.2: top 10.00 vs least 10.00, "
            "r = 0.3: top 79.90 vs least 82.49,") in text
    assert "cnn_small -> lenet5: r = 0.2: top 83.36 vs least 84.50," in text and "r = 0.1: top" not in text


def test_least_keeping_one_class_is_the_stingy_point(tmp_path: Path) -> None:
    """With K = 10, least at r = 0.1 keeps N = 1 (the top-1 logit), as stingy at r = 0.1 does: one row, looked up as
    the stingy run; least at r = 0.2 (N = 2) stays its own point."""
    results = _recorded(tmp_path)
    least, stingy = {"name": "least", "sparse_ratio": 0.1}, {"name": "stingy", "sparse_ratio": 0.1}
    assert not [row for row in results.rows if row.get("policy") == least]
    for clip in (None, 5.0):
        assert results.kd("cnn_small", "mlp", least, 20.0, clip) == results.kd("cnn_small", "mlp", stingy, 20.0, clip)
        assert results.kd("cnn_small", "mlp", stingy, 20.0, clip).n == 1
    two = {"name": "least", "sparse_ratio": 0.2}
    (row,) = results.kd("cnn_small", "mlp", two, 20.0, 5.0).rows
    assert row["policy"] == two


def _two_seeds(tmp_path: Path, step: float = 2.0) -> Results:
    """The recorded run as if run with ``--seeds 0 1``: every student row twice, its accuracy ``-step`` (seed 0) and
    ``+step`` (seed 1) around the recorded one (same mean; std 2.83 and spread 4.00 for step 2)."""
    preset = json.loads((RECORDED / PRESET_FILE).read_text())
    (tmp_path / PRESET_FILE).write_text(json.dumps({**preset, "seeds": [0, 1]}))
    rows = []
    for row in map(json.loads, (RECORDED / RESULTS_FILE).read_text().splitlines()):
        if row["type"] == "teacher":
            rows.append(row)
            continue
        for seed, sign in ((0, -1), (1, 1)):
            shifted = None if row["test_accuracy"] is None else row["test_accuracy"] + sign * step
            rows.append({**row, "key": f"{row['key']}/seed={seed}", "seed": seed, "test_accuracy": shifted})
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Results.load(tmp_path)


def test_seeds_show_mean_and_std_and_mark_differences_within_the_spread(tmp_path: Path) -> None:
    results = _two_seeds(tmp_path)
    table = comparison_table(results, "cnn_small")
    assert "| Student baseline | - | 87.07 ± 2.83 (n=2) | 86.74 ± 2.83 (n=2) | 90.94 ± 2.83 (n=2) |" in table
    normal = next(line for line in table.splitlines() if line.startswith("| cnn_small (normal) |"))
    assert "| 86.85 ± 2.83 (n=2) (≈ -0.22) |" in normal  # 0.22 apart, spread 4.00: the seeds cannot tell them apart
    stingy = next(line for line in table.splitlines() if line.startswith("| cnn_small (stingy) |"))
    assert "| 10.00 ± 2.83 (n=2) (**-77.07**) | 2 of 2 diverged (steps 93, 93) |" in stingy
    text = " ".join(findings(results))
    assert "attacker clipping at 5 (points): mlp: -3.86 ± 4.00 ≈, lenet5: -3.38 ± 4.00 ≈, self: -7.43 ± 4.00." in text
    assert "mlp: nasty 85.71 ± 2.83 (n=2) vs stingy 10.00 ± 2.83 (n=2)" in text
    assert "mlp (clip 5): nasty 85.55 ± 2.83 (n=2) ≈ stingy 83.21 ± 2.83 (n=2)" in text
    assert "cnn_small -> mlp: r = 0.2: top 83.21 ± 2.83 (n=2) ≈ least 82.94 ± 2.83 (n=2)" in text  # 0.27 apart
    assert "r = 0.8: top 84.91 ± 2.83 (n=2) vs least 77.28 ± 2.83 (n=2)" in text  # 7.63 apart: more than the spread 4.00
    stability = stability_table(results)
    for seed, delta in ((0, "-9.17"), (1, "-5.17")):  # one collapse rule, per run: 79.90 -+ 2 against the scratch mean 87.07
        key = f"kd/cnn_small/mlp/stingy(sparse_ratio=0.3)/tau=20/alpha=0.9/clip=none/seed={seed}"
        line = next(line for line in stability.splitlines() if f"`{key}`" in line)
        assert f"| {delta} | 410 | 5.65 | {82.42 + (2 if seed else -2):.2f} |" in line


def test_a_seeded_report_says_how_teachers_and_students_were_seeded(tmp_path: Path) -> None:
    from training.reproduction.report import write_report

    _two_seeds(tmp_path)
    report = write_report(tmp_path).read_text()
    assert "Seeds 0, 1: every student cell (scratch baselines included) was trained once per seed" in report
    assert "Teachers (normal and nasty) were trained once, on seed 0" in report
    assert (tmp_path / "fig2_sparse_ratio.png").is_file() and (tmp_path / "fig3_epochs.png").is_file()


def test_unseeded_report_renders_as_committed(tmp_path: Path) -> None:
    """A folder run without --seeds (keys without a seed, rows without one) renders exactly the committed report
    (after an intended change to the report, re-render it: ``stingy-bench report docs/results/fmnist-cpu``)."""
    from training.reproduction.report import write_report

    _recorded(tmp_path)
    shutil.copy(RECORDED / "notes.md", tmp_path / "notes.md")
    assert write_report(tmp_path).read_text() == (RECORDED / "report.md").read_text()


def test_the_committed_three_seed_report_is_what_its_results_render(tmp_path: Path) -> None:
    """docs/results/fmnist-seeds (the README's claims): its report.md is what the current code renders from its
    results.jsonl, preset.json and notes.md (re-render after an intended change: ``stingy-bench report
    docs/results/fmnist-seeds``)."""
    import shutil

    from training.reproduction.report import write_report

    seeded = RECORDED.parent / "fmnist-seeds"
    for name in ("results.jsonl", "preset.json", "notes.md"):
        shutil.copy(seeded / name, tmp_path / name)
    assert write_report(tmp_path).read_text() == (seeded / "report.md").read_text()
