"""The paper's Table 1 beside ours in a ``cifar10-cpu`` report, from a small hand-written results file."""

from __future__ import annotations

import json
from pathlib import Path

from training.reproduction.paper import PAPER_TABLES, TABLE1_CIFAR10
from training.reproduction.presets import PRESETS
from training.reproduction.report import NOTES_FILE, paper_comparison, write_report
from training.reproduction.results import PRESET_FILE, RESULTS_FILE, Results

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
KD = "tau=20/alpha=0.9"


def _teacher(name: str, normal: float, stingy: float) -> dict:
    return {"key": f"teacher/{name}", "type": "teacher", "teacher": name, "arch": "resnetc20", "nasty": name.endswith("-nasty"),
            "nasty_tau": 4.0, "nasty_omega": 0.04, "accuracy": {"normal": normal, "stingy": stingy}, "test_accuracy": normal,
            "class_names": CLASSES, "sample_logits": [[0.0] * 10], "sample_labels": [0], "diverged": False, "diverged_step": None,
            "max_grad_norm": 2.0, "history": [{"epoch": 1, "test_accuracy": normal}]}


def _student(arch: str, accuracy: float, teacher: str | None = None, policy: dict | None = None, clip: float | None = None) -> dict:
    key = f"scratch/{arch}" if teacher is None else f"kd/{teacher}/{arch}/{policy['name']}/{KD}/clip={clip or 'none'}"
    return {"key": key, "type": "student", "student": arch, "teacher": teacher, "policy": policy, "tau": 20.0 if teacher else None,
            "alpha": 0.9 if teacher else None, "grad_clip": clip, "test_accuracy": accuracy, "diverged": False, "diverged_step": None,
            "max_grad_norm": 3.0, "history": [{"epoch": 1, "test_accuracy": accuracy}]}


def _folder(tmp_path: Path) -> Path:
    """A partial cifar10-cpu run: both teachers, both scratch students, the cnn's stingy and stingy-smooth runs."""
    stingy, smooth = {"name": "stingy", "sparse_ratio": 0.2}, {"name": "stingy_smooth", "sparse_ratio": 0.2}
    rows = [_teacher("resnetc20", 80.0, 80.0), _teacher("resnetc20-nasty", 78.5, 78.5), _student("cnn", 60.0),
            _student("resnetc20", 75.0), _student("cnn", 52.5, "resnetc20", stingy), _student("cnn", 58.25, "resnetc20", stingy, 5.0),
            _student("cnn", 61.0, "resnetc20", smooth)]
    (tmp_path / PRESET_FILE).write_text(json.dumps(PRESETS["cifar10-cpu"].to_json()))
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def test_table1_beside_ours(tmp_path: Path) -> None:
    assert PAPER_TABLES["cifar10-cpu"] is TABLE1_CIFAR10
    lines = paper_comparison(Results.load(_folder(tmp_path)), TABLE1_CIFAR10).splitlines()
    assert "| Teacher itself | paper, ResNet-18 | - | 95.13 | 94.56 (-0.57) | 95.13 (+0.00) | - |" in lines
    assert "| Teacher itself | ours, resnetc20 | - | 80.00 | 78.50 (-1.50) | 80.00 (+0.00) | - |" in lines
    assert "| CNN | paper, ResNet-18 teacher | 86.64 | 87.75 (+1.11) | 71.83 (-14.81) | 82.77 (-3.87) | - |" in lines
    assert ("| cnn | ours, resnetc20 teacher, the paper's attacker | 60.00 | not run | not run | 52.50 (**-7.50**) | 61.00 (+1.00) |"
            in lines)
    assert "| cnn | ours, resnetc20 teacher, attacker clipping at 5 | 60.00 | not run | not run | 58.25 (-1.75) | not run |" in lines
    # our self-KD resnetc20 student sits under the paper's ResNetC-20 column and its ResNet-18 self-KD column
    self_rows = [i for i, line in enumerate(lines) if line.startswith(("| ResNetC-20 | paper", "| ResNet-18 | paper, ResNet-18 teacher (self-KD)"))]
    assert len(self_rows) == 2 and lines[self_rows[1] + 1].startswith("| resnetc20 | ours, resnetc20 teacher (self-KD), the paper's attacker | 75.00 |")
    assert lines[-2].startswith("| ResNetC-32 | paper") and lines[-1].startswith("| resnetc32 | ours | not in this preset")


def test_report_says_the_data_is_jpeg_and_holds_the_notes(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / NOTES_FILE).write_text("## What this run shows\n\nHand-written summary.\n")
    report = write_report(folder).read_text()
    assert "re-encoded as JPEG files" in report and "Hand-written summary." in report
    assert "## Beside the paper's Table 1" in report
    # a run not finished yet is not counted as diverged
    assert "resnetc20 -> self: scratch 75.00, stingy-smooth at worst -, reverse -, stingy-sparse at worst -, 0 of 1 sparse ratios diverged, 1 not run." in report
    assert report.index("Hand-written summary.") < report.index("## Beside the paper's Table 1") < report.index("## Teacher resnetc20")


def test_the_committed_cifar10_cpu_report_is_what_its_results_render(tmp_path: Path) -> None:
    """docs/results/cifar10-cpu: report.md is what the current code renders from its results.jsonl, preset.json
    and notes.md (re-render after an intended change: ``stingy-bench report docs/results/cifar10-cpu``)."""
    committed = Path(__file__).resolve().parents[2] / "docs" / "results" / "cifar10-cpu"
    for name in (RESULTS_FILE, PRESET_FILE, NOTES_FILE):
        (tmp_path / name).write_bytes((committed / name).read_bytes())
    assert write_report(tmp_path).read_text() == (committed / "report.md").read_text()
