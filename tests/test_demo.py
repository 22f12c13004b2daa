"""The demo (the README's first command) runs end to end, and runs again over its own earlier output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.real_data
@needs_fashion_mnist
def test_the_demo_runs_and_reruns_over_its_own_output(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(tmp_path), "--epochs", "1",
               "--attack-budget", "300", "--attack-epochs", "1"]
    env = {**os.environ, "STINGY_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    outputs = []
    for _ in range(2):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs.append(done.stdout)
    first, second = outputs
    assert re.search(r'a wrong key gets HTTP 401: \{"error": "[^"]+", "code": "unauthorized"\}', first)  # JSON, not a dict
    assert "--access-log '' --budget-images 1000" in first  # the empty value is shown as the shell needs it
    normal, stingy = (float(re.search(rf"accuracy with {name} logits: ([0-9.]+)%", first)[1]) for name in ("normal", "stingy"))
    assert normal == stingy > 10.0, "claim (a): the stingy logits keep the teacher's accuracy"
    assert "stingy vs normal accuracy: equal; the same top-1 class on 10000 of 10000 test images" in first
    assert "reusing the teacher trained before" in second and "--- the attacker against a stingy server ---" in second
    for output in outputs:
        assert "| scratch (labels only) |" in output
        # 300 queries and 1 epoch may leave the scratch baseline near chance: then no leakage is headlined
        assert "Most leakage through the stingy server" in output or "No leakage is measured through the stingy server" in output
        assert "budget left for this key: 999 images" in output  # each run starts its key with the whole budget
