"""The compose stack, on a real container engine: build the image, bring the stack up with a tiny teacher,
query it with a key, attack it through the `attack` profile, and bring it down and up again.

Slow (the first image build downloads torch: minutes) and marked `container`. Skips only where no engine
works (see ``find_engine``). ``STINGY_CONTAINER_BUILD_FLAGS`` adds flags to the image build and
``STINGY_BASE_IMAGE`` replaces its base image (for machines that cannot reach Docker Hub).
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.deploy.engine import REPO, Engine, find_engine

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(2400)]

IMAGE = "stingy-teacher:test"
BUDGET = 5000            # images per key (STINGY_BUDGET_IMAGES)
ATTACK_QUERIES = 300     # the attacker's --budget
RELEASED = 2             # stingy, r = 0.2 of Fashion-MNIST's 10 classes
READY_TIMEOUT_S = 600    # the teacher (1 epoch on 2,000 images) trains before the API can load it
# the runtime stage's last steps, rebuilt when only the source changes: the wheel, its install, docker/ files
SOURCE_LAYERS = 3


@dataclass
class Stack:
    engine: Engine
    project: str
    env: dict[str, str]
    url: str
    key: str

    overrides: tuple[str, ...] = ()

    def compose(self, *args: str, timeout_s: float = 600) -> str:
        return self.engine.run(self.engine.compose_cmd(self.project, *args, overrides=self.overrides), timeout_s, self.env).stdout

    def logs(self, service: str) -> str:
        done = self.engine.run(self.engine.compose_cmd(self.project, "logs", service, overrides=self.overrides), 120, self.env,
                               check=False)
        return done.stdout + done.stderr

    def volume_file(self, volume: str, path: str) -> str:
        return self.engine.read_volume_file(f"{self.project}_{volume}", path, IMAGE)

    def up(self) -> None:
        self.compose("up", "-d")
        wait_ready(self.url, READY_TIMEOUT_S, lambda: self.logs("teacher") + self.logs("api"))

    def budget_remaining(self) -> int:
        response = httpx.get(f"{self.url}/v1/model", headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        assert response.status_code == 200, response.text
        return int(response.headers["X-Budget-Remaining"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, timeout_s: float, diagnostics) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"{url}/readyz not ready after {timeout_s} s:\n{diagnostics()[-6000:]}")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("L", (28, 28), bytes((seed * 37 + i * 11) % 256 for i in range(28 * 28))).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def engine() -> Engine:
    found, reason = find_engine()
    if found is None:
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    seconds = engine.build(IMAGE)
    print(f"image build: {seconds:.1f} s")
    return IMAGE


@pytest.fixture
def stack(engine: Engine, image: str, tmp_path: Path) -> Iterator[Stack]:
    key = secrets.token_hex(16)
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# the test's key\nalice:{key}\n")
    keys_file.chmod(0o644)  # the image runs as a non-root user; compose mounts secret files as they are
    port = free_port()
    env = {
        "STINGY_IMAGE": image, "STINGY_PUBLISH": f"127.0.0.1:{port}", "STINGY_API_KEYS_SECRET": str(keys_file),
        "STINGY_TEACHER_EPOCHS": "1", "STINGY_TEACHER_TRAIN_SUBSET": "2000", "STINGY_BUDGET_IMAGES": str(BUDGET),
        "STINGY_ATTACK_BUDGET": str(ATTACK_QUERIES), "STINGY_ATTACK_EPOCHS": "1",
    }
    stack = Stack(engine, f"stingytest{uuid.uuid4().hex[:8]}", env, f"http://127.0.0.1:{port}", key)
    try:
        yield stack
    finally:
        engine.run(engine.compose_cmd(stack.project, "--profile", "attack", "down", "-v", overrides=stack.overrides), 300, env,
                   check=False)


def test_a_change_outside_the_dependencies_reuses_their_layers(engine: Engine, image: str, tmp_path: Path) -> None:
    context = tmp_path / "context"  # the repository without what .dockerignore keeps out anyway
    shutil.copytree(REPO, context, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__"))
    for name in ("app/__init__.py", "pyproject.toml"):  # the source, and pyproject.toml outside its dependency list
        with open(context / name, "a") as source:
            source.write(f"\n# a change that leaves the dependencies alone {uuid.uuid4().hex}\n")
    changed = f"{IMAGE}-source-change"
    try:
        seconds = engine.build(changed, context)
        print(f"rebuild after a source change: {seconds:.1f} s")
        before, after = engine.layers(image), engine.layers(changed)
    finally:
        engine.run([engine.cli, "rmi", changed], 120, check=False)
    assert after != before
    assert len(after) == len(before) > SOURCE_LAYERS
    assert after[:-SOURCE_LAYERS] == before[:-SOURCE_LAYERS]


def test_stack_trains_serves_is_attacked_and_keeps_its_state(stack: Stack, tiny_teacher: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    stack.up()
    print(f"first up (teacher trained): {time.monotonic() - started:.1f} s")
    assert "teacher: trained" in stack.logs("teacher")
    api = stack.engine.container(stack.project, "api")
    assert stack.engine.healthy(api)
    assert stack.engine.run([stack.engine.cli, "exec", api, "id", "-u"], 60).stdout.strip() == "10001"  # not root

    assert httpx.post(f"{stack.url}/v1/predict", files={"files": ("x.png", png(0), "image/png")}, timeout=30).status_code == 401
    headers = {"Authorization": f"Bearer {stack.key}"}
    model = httpx.get(f"{stack.url}/v1/model", headers=headers, timeout=30).json()
    assert (model["num_classes"], model["released_per_image"], model["class_names"][9]) == (10, RELEASED, "Ankle boot")
    response = httpx.post(f"{stack.url}/v1/predict", headers=headers, timeout=30,
                          files=[("files", (f"{i}.png", png(i), "image/png")) for i in range(3)])
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for prediction in predictions:
        assert len(prediction["top"]) == RELEASED
        assert prediction["label"] == prediction["top"][0]["class"]
    assert stack.budget_remaining() == BUDGET - 3

    started = time.monotonic()
    stack.compose("--profile", "attack", "run", "--rm", "--no-deps", "attacker", timeout_s=900)
    print(f"attack profile: {time.monotonic() - started:.1f} s")
    report = json.loads(stack.volume_file("attack", "attack/report.json"))
    assert report["queries"] == ATTACK_QUERIES
    assert {row["strategy"].split(":")[0] for row in report["strategies"]} >= {"naive", "hard_label"}
    assert all(row["student_accuracy"] is not None or row["diverged"] for row in report["strategies"])
    spent = BUDGET - stack.budget_remaining()
    assert spent == 3 + ATTACK_QUERIES
    trained = stack.volume_file("teacher", "run/result.json")

    stack.compose("down")
    started = time.monotonic()
    stack.up()
    print(f"second up (teacher reused): {time.monotonic() - started:.1f} s")
    assert "nothing to train" in stack.logs("teacher")
    assert stack.volume_file("teacher", "run/result.json") == trained
    assert BUDGET - stack.budget_remaining() == spent

    stack.compose("down")
    own = tmp_path / "own.safetensors"
    shutil.copy(tiny_teacher, own)
    own.chmod(0o644)
    stack.env["STINGY_OWN_CHECKPOINT"], stack.overrides = str(own), ("compose.checkpoint.yaml",)
    stack.up()
    assert "nothing to train" in stack.logs("teacher")
    served = httpx.get(f"{stack.url}/v1/model", headers=headers, timeout=30).json()
    assert served["class_names"][0] == "pattern_0"  # the synthetic dataset's, not Fashion-MNIST's
    assert BUDGET - stack.budget_remaining() == spent
