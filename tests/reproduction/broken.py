"""A benchmark folder in which some runs must fail, for the executors' failure tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.io import read_json_lines
from training.reproduction.plan import slug


def with_a_broken_nasty_teacher(smoke_run: Path, out: Path) -> tuple[set[str], list[str]]:
    """A copy of ``smoke_run`` at ``out`` whose nasty teacher's checkpoint is unreadable and whose rows of the
    students of that teacher and of ``scratch/mlp`` are gone: rerunning it, ``scratch/mlp`` succeeds and the
    others fail. Returns the keys of the rows kept and of the runs to redo."""
    shutil.copytree(smoke_run, out)
    rows = read_json_lines(out / "results.jsonl")
    redo = [row["key"] for row in rows if row["key"].startswith("kd/lenet5-nasty/") or row["key"] == "scratch/mlp"]
    (out / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows if row["key"] not in redo))
    for key in redo:
        shutil.rmtree(out / "runs" / slug(key))
    (out / "runs" / slug("teacher/lenet5-nasty") / "teacher.safetensors").write_bytes(b"not a checkpoint")
    return {row["key"] for row in rows if row["key"] not in redo}, redo
