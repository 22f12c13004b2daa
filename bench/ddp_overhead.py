"""DDP overhead on this machine (not a test): the same teacher run as one process and as N gloo processes.

    python -m bench.ddp_overhead --procs 2 --epochs 3 --out docs/results/distributed/ddp_cpu.json

Both runs train ``cnn_small`` on the synthetic set (``--images`` training images) at the same global batch
(one process: ``--batch-size * procs``; DDP: ``--batch-size`` per process), one thread per process, on
CPU. Records each run's wall time (process start to exit, torchrun's start-up included), its mean
epoch time after the first epoch, training images per second from those epochs, the ratio DDP/single,
the final test accuracies, and ``uptime`` before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(command: list[str], out: Path, images: int) -> dict[str, Any]:
    env = {**os.environ, "STINGY_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - began
    result = json.loads((out / "result.json").read_text())
    later = [h["epoch_seconds"] for h in result["history"][1:]] or [result["history"][0]["epoch_seconds"]]
    epoch = sum(later) / len(later)
    return {"wall_seconds": round(wall, 2), "mean_epoch_seconds": round(epoch, 3), "images_per_second": round(images / epoch, 1),
            "test_accuracy": result["test_accuracy"], "command": " ".join(command[1:])}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32, help="per process (the single run uses batch-size * procs)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    common = ["teacher", "--dataset", "synthetic", "--arch", "cnn_small", "--train-subset", str(args.images), "--epochs", str(args.epochs),
              "--lr", "0.05", "--device", "cpu", "--seed", "0"]
    record: dict[str, Any] = {"uptime_before": _uptime(), "procs": args.procs, "epochs": args.epochs, "train_images": args.images,
                              "global_batch": args.batch_size * args.procs}
    with tempfile.TemporaryDirectory() as tmp:
        single, ddp = Path(tmp) / "single", Path(tmp) / "ddp"
        record["single"] = _run([sys.executable, "-m", "training.cli", *common, "--batch-size", str(args.batch_size * args.procs),
                                 "--out", str(single)], single, args.images)
        record["ddp"] = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.procs),
                              "-m", "training.cli", *common, "--batch-size", str(args.batch_size), "--out", str(ddp)], ddp, args.images)
    record["uptime_after"] = _uptime()
    record["ddp_over_single_epoch_time"] = round(record["ddp"]["mean_epoch_seconds"] / record["single"]["mean_epoch_seconds"], 3)
    record["ddp_over_single_wall"] = round(record["ddp"]["wall_seconds"] / record["single"]["wall_seconds"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
