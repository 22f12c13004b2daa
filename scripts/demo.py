"""The stingy-teacher demo, the whole story in a few minutes on a CPU:

1. the model owner trains a Fashion-MNIST teacher (or reuses the one trained before);
2. what leaves the model: its normal logits next to the stingy ones, and the accuracy under both;
3. the owner serves it with `stingy-serve` (stingy policy, an API key, a query budget) and a client queries it over HTTP;
4. a red-teamer attacks a normal server and a stingy server with `stingy-attack` and compares the leakage.

Run it through ``scripts/demo.sh``, which sets up the environment first.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import torch
from PIL import Image

from app.launch import running_server
from defense import make_policy, tempered_softmax
from training.checkpoint import load_checkpoint
from training.data import load_dataset
from training.engine import STATE_FILE, accuracy, predict_logits
from training.runs import RESULT_FILE

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "demo-secret"


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


COMMANDS = {"training.cli": "stingy-train", "attacker.cli": "stingy-attack"}


def run(module: str, *args: str) -> None:
    """``python -m module args``, shown as the console command a user would type."""
    print(f"$ {COMMANDS[module]} {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", module, *args], check=True)


def train_teacher(out: Path, epochs: int) -> Path:
    checkpoint = out / "teacher.safetensors"
    if checkpoint.is_file() and (out / RESULT_FILE).is_file():
        print(f"reusing the teacher trained before: {checkpoint} (delete {out} to retrain)")
        return checkpoint
    resume = "--resume" if (out / STATE_FILE).exists() else "--force"
    run("training.cli", "teacher", "--dataset", "fashion-mnist", "--arch", "cnn_small", "--epochs", str(epochs), "--out", str(out), resume)
    return checkpoint


def show_released_logits(checkpoint: Path, sparse_ratio: float, images: int) -> None:
    model, card = load_checkpoint(checkpoint)
    test = load_dataset(card.dataset, "test")
    logits = predict_logits(model, test, card.mean, card.std, desc="teacher on the test set")
    normal, stingy = make_policy("normal"), make_policy("stingy", sparse_ratio=sparse_ratio)
    n = stingy.released_count(card.num_classes)
    print(f"teacher: {card.arch} on {card.dataset}, {len(test)} test images, K={card.num_classes}, stingy N={n} (r={sparse_ratio})")
    normal_accuracy, stingy_accuracy = accuracy(logits, test.labels, normal), accuracy(logits, test.labels, stingy)
    print(f"  accuracy with normal logits: {normal_accuracy:.2f}%")
    print(f"  accuracy with stingy logits: {stingy_accuracy:.2f}%")
    same_top1 = int((stingy(logits).argmax(dim=-1) == normal(logits).argmax(dim=-1)).sum())
    verdict = "equal" if stingy_accuracy == normal_accuracy else f"not equal ({stingy_accuracy - normal_accuracy:+.2f} points)"
    print(f"  stingy vs normal accuracy: {verdict}; the same top-1 class on {same_top1} of {len(test)} test images")
    names = card.class_names
    for index in range(images):
        raw = logits[index : index + 1]
        released = stingy(raw)[0]
        soft_normal, soft_stingy = tempered_softmax(raw, 20.0)[0], tempered_softmax(released[None], 20.0)[0]
        print(f"\ntest image {index}: true class '{names[int(test.labels[index])]}'")
        print(f"  {'class':<12} {'normal logit':>12} {'stingy logit':>12} {'p_normal(tau=20)':>17} {'p_stingy(tau=20)':>17}")
        for k in torch.argsort(raw[0], descending=True).tolist():
            value = released[k].item()
            shown = f"{value:12.3f}" if value != float("-inf") else f"{'-inf':>12}"
            print(f"  {names[k]:<12} {raw[0, k].item():12.3f} {shown} {soft_normal[k].item():17.4f} {soft_stingy[k].item():17.4f}")


def query_over_http(checkpoint: Path, sparse_ratio: float, workdir: Path) -> None:
    test = load_dataset("fashion-mnist", "test")
    png = io.BytesIO()
    Image.fromarray(test.images[0, 0].numpy()).save(png, format="PNG")
    budget_db = workdir / "budget.sqlite3"
    budget_db.unlink(missing_ok=True)  # every demo run starts its key with the whole budget
    args = ["--checkpoint", str(checkpoint), "--policy", "stingy", "--sparse-ratio", str(sparse_ratio), "--access-log", "",
            "--budget-images", "1000", "--budget-db", str(budget_db), "--log-level", "warning"]
    print(f"$ STINGY_API_KEYS=demo:*** stingy-serve {shlex.join(args)}")
    with running_server(args, env={"STINGY_API_KEYS": f"demo:{API_KEY}"}) as server:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            print(f"\nserver ready at {server.url}")
            print(f"$ curl -H 'Authorization: Bearer ...' {server.url}/v1/model")
            print(json.dumps({k: v for k, v in client.get("/v1/model").json().items() if k != "class_names"}))
            print(f"\n$ curl -H 'Authorization: Bearer ...' -F files=@image0.png {server.url}/v1/predict")
            answer = client.post("/v1/predict", files=[("files", ("image0.png", png.getvalue(), "image/png"))])
            print(json.dumps(answer.json(), indent=1))
            print(f"budget left for this key: {answer.headers.get('X-Budget-Remaining')} images")
            body = {"inputs": [{"name": "images", "shape": [2, 1, 28, 28], "datatype": "UINT8", "data": test.images[:2].flatten().tolist()}]}
            print(f"\n$ curl -H 'Authorization: Bearer ...' -d '{{\"inputs\": [{{\"name\": \"images\", \"shape\": [2, 1, 28, 28], "
                  f"\"datatype\": \"UINT8\", \"data\": [...]}}]}}' {server.url}/v2/models/teacher/infer")
            outputs = client.post("/v2/models/teacher/infer", json=body).json()["outputs"]
            print(json.dumps({"outputs": outputs if len(json.dumps(outputs)) < 600 else outputs[:2]}, indent=None))
            refused = client.post("/v1/predict", headers={"Authorization": "Bearer wrong"}, files=[("files", ("x.png", png.getvalue(), "image/png"))])
            print(f"\na wrong key gets HTTP {refused.status_code}: {json.dumps(refused.json())}")


def attack(checkpoint: Path, sparse_ratio: float, workdir: Path, budget: int, epochs: int) -> list[Path]:
    folders = []
    for policy in ("normal", "stingy"):
        args = ["--checkpoint", str(checkpoint), "--policy", policy, "--access-log", "", "--log-level", "warning"]
        # The normal server releases every raw logit: stingy-serve refuses it without the explicit flag.
        args += ["--sparse-ratio", str(sparse_ratio)] if policy == "stingy" else ["--allow-disclosing-policy"]
        print(f"\n--- the attacker against a {policy} server ---")
        folders.append(workdir / f"attack-{policy}")
        # A store belongs to one server URL, and each demo run starts its servers on new ports: attack afresh.
        shutil.rmtree(folders[-1], ignore_errors=True)
        with running_server(args) as server:
            run("attacker.cli", "run", "--url", server.url, "--dataset", "fashion-mnist", "--student", "lenet5",
                "--budget", str(budget), "--epochs", str(epochs), "--out", str(folders[-1]))
    return folders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo", help="where the demo keeps its runs")
    parser.add_argument("--epochs", type=int, default=10, help="teacher epochs (10 reach about 91%% in about 2.5 minutes on 2 cores)")
    parser.add_argument("--sparse-ratio", type=float, default=0.2, help="the paper's r for 10 classes (N = 2)")
    parser.add_argument("--images", type=int, default=2, help="test images to show")
    parser.add_argument("--attack-budget", type=int, default=10_000, help="images the attacker queries")
    parser.add_argument("--attack-epochs", type=int, default=3, help="student epochs")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    step("1. The model owner trains a teacher")
    checkpoint = train_teacher(args.workdir / "teacher", args.epochs)
    step("2. What leaves the model: normal logits vs stingy logits")
    show_released_logits(checkpoint, args.sparse_ratio, args.images)
    step("3. Serving it: only the stingy top-N ever leaves the server")
    query_over_http(checkpoint, args.sparse_ratio, args.workdir)
    step("4. A red-teamer distils students through the API (stingy-attack)")
    folders = attack(checkpoint, args.sparse_ratio, args.workdir, args.attack_budget, args.attack_epochs)
    step("Leakage: student accuracy through each server")
    run("attacker.cli", "compare", *map(str, folders))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:  # the command has printed its own error
        print(f"demo: stopped: '{' '.join(map(str, error.cmd[2:]))}' exited with status {error.returncode}", file=sys.stderr)
        sys.exit(error.returncode or 1)
    except KeyboardInterrupt:
        sys.exit(130)
