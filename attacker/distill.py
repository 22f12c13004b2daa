"""Train students from the stored responses: one per strategy, plus the scratch baseline.

The transfer set is every stored response (its dataset position gives the image and the attacker's own
label). Each strategy trains ``student`` on it with :func:`training.runs.run_training`; the scratch
baseline trains the same architecture with the same configuration on the same images with the true labels
only. Students are evaluated on the dataset's ``test`` split, the attacker's held-out data.

Each finished training appends one line to ``DIR/distill.jsonl`` and is skipped when asked again for
the same experiment (student, configuration, stored responses); an interrupted one continues from its
last epoch (``DIR/students/<strategy>/state.pt``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from attacker.store import ResponseStore, StoreError
from attacker.strategies import Strategy
from training.data import ImageDataset, load_dataset
from training.engine import METRICS_FILE, STATE_FILE, TrainConfig
from training.io import append_json_line, atomic_write_json, read_json_lines
from training.objectives import CrossEntropy, Objective
from training.runs import RESULT_FILE, run_training

RESULTS = "distill.jsonl"
STUDENTS = "students"
RUN_KEY = "attack-run.json"
SCRATCH = "scratch"
STUDENT_CHECKPOINT = "student.safetensors"


@dataclass(frozen=True)
class TransferSet:
    """The stored responses joined with the attacker's images and labels."""

    train: ImageDataset
    test: ImageDataset
    released: Tensor
    digest: str
    server_top1_accuracy: float

    @property
    def queries(self) -> int:
        return len(self.train)


def load_transfer_set(out: str | Path, data_root: str | None = None) -> TransferSet:
    """The transfer set of the store in ``out`` (``data_root`` overrides the one the manifest records)."""
    store = ResponseStore(out)
    manifest = store.manifest()
    responses = store.responses()
    if len(responses) == 0:
        raise StoreError(f"{out} holds no responses yet; run `stingy-attack query` first")
    data = manifest["dataset"]
    root = data_root if data_root is not None else data.get("root")
    options = dict(data.get("options") or {})
    train = load_dataset(data["name"], data["split"], root, **options)
    expected = manifest["identity"]["dataset_size"]
    if len(train) != expected:
        raise StoreError(f"{data['name']}/{data['split']} has {len(train)} images here but the store was made with {expected}")
    test = load_dataset(data["name"], "test", root, **options)
    transfer = train.select(responses.positions)
    agreement = float((responses.top1() == transfer.labels).double().mean()) * 100.0
    return TransferSet(transfer, test, responses.dense(train.info.num_classes), responses.digest(), agreement)


def experiment_key(student: str, config: TrainConfig, transfer: TransferSet) -> str:
    """Identifies what every student of one report shares: architecture, training settings and data."""
    document = {"student": student, "config": config_document(config), "responses": transfer.digest, "test": len(transfer.test)}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def distill(
    out: str | Path, student: str, strategies: list[Strategy], config: TrainConfig, data_root: str | None = None,
) -> list[dict[str, Any]]:
    """Train (or reuse) the scratch baseline and one student per strategy; returns their records.

    ``config`` is shared; augmentation is always off (a stored response belongs to the exact image queried)
    and each strategy's ``grad_clip`` replaces ``config.grad_clip``.
    """
    folder = Path(out)
    config = replace(config, augment=False)
    transfer = load_transfer_set(folder, data_root)
    experiment = experiment_key(student, config, transfer)
    shared = {"experiment": experiment, "student_arch": student, "queries": transfer.queries,
              "responses_sha256": transfer.digest, "server_top1_accuracy": round(transfer.server_top1_accuracy, 4)}
    records = [_train(folder, SCRATCH, None, CrossEntropy(), config, transfer, shared)]
    for strategy in strategies:
        records.append(_train(folder, strategy.spec(), strategy, strategy.objective(transfer.released),
                              replace(config, grad_clip=strategy.grad_clip), transfer, shared))
    return records


def config_document(config: TrainConfig) -> dict[str, Any]:
    """``config`` as the JSON the records hold (lists, not tuples)."""
    return {**asdict(config), "milestones": list(config.milestones)}


def finished_records(out: str | Path) -> list[dict[str, Any]]:
    """Every record of ``DIR/distill.jsonl``, oldest first."""
    return read_json_lines(Path(out) / RESULTS)


def _train(
    folder: Path, label: str, strategy: Strategy | None, objective: Objective, config: TrainConfig,
    transfer: TransferSet, shared: dict[str, Any],
) -> dict[str, Any]:
    kind, name = ("scratch", None) if strategy is None else ("strategy", label)
    for record in reversed(finished_records(folder)):
        if (record.get("experiment"), record.get("kind"), record.get("strategy")) == (shared["experiment"], kind, name):
            print(f"[distill] {label}: already trained ({_describe(record['result'])})")
            return record
    run_dir = folder / STUDENTS / re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
    run_key = {"experiment": shared["experiment"], "kind": kind, "strategy": label}
    resume = _prepare_run_dir(run_dir, run_key)
    result = run_training(
        arch=shared["student_arch"], objective=objective, train=transfer.train, test=transfer.test, config=config,
        out=run_dir, checkpoint_name=STUDENT_CHECKPOINT, resume=resume, desc=label,
        extra={"attack_strategy": label, "queries": transfer.queries},
    )
    record = {
        **shared, "kind": kind, "strategy": name,
        "parameters": None if strategy is None else strategy.parameters(), "objective": objective.describe(),
        "config": config_document(config), "result": result.summary(), "folder": str(run_dir.relative_to(folder)),
        "finished": round(time.time(), 3),
    }
    append_json_line(folder / RESULTS, record)
    print(f"[distill] {label}: {_describe(record['result'])}")
    return record


def _prepare_run_dir(run_dir: Path, run_key: dict[str, Any]) -> bool:
    """True when ``run_dir`` holds an interrupted run of this very training (continue it); otherwise
    clear what an older training left there and return False."""
    key_file = run_dir / RUN_KEY
    if key_file.is_file() and json.loads(key_file.read_text()) == run_key:
        return (run_dir / STATE_FILE).is_file()
    if run_dir.exists():
        for name in (STATE_FILE, METRICS_FILE, RESULT_FILE, STUDENT_CHECKPOINT):
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_json(key_file, run_key)
    return False


def _describe(result: dict[str, Any]) -> str:
    if result.get("diverged"):
        return f"DIVERGED at step {result.get('diverged_step')}"
    return f"test accuracy {result.get('test_accuracy'):.2f}% in {result.get('seconds', 0.0):.1f}s"
