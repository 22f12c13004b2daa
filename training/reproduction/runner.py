"""Runs a preset's plan into ``DIR``: one folder per run under ``DIR/runs/`` and one JSON line per finished
run in ``DIR/results.jsonl``. A rerun skips finished runs and resumes an interrupted one from its last epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from defense import make_policy
from training.reproduction.plan import Run, StudentRun, TeacherRun, plan, slug
from training.reproduction.presets import Preset
from training.reproduction.pool import run_in_pool
from training.reproduction.ray_executor import run_on_ray
from training.reproduction.results import PRESET_FILE, RESULTS_FILE, BenchmarkError
from training.checkpoint import ModelCard, load_checkpoint
from training.data import ImageDataset, load_dataset
from training.devices import device_name, resolve_device
from training.engine import FitResult, TrainConfig, accuracy, predict_logits
from training.io import append_json_line, atomic_write_json, read_json_lines
from training.objectives import CachedTeacher, CrossEntropy, Distillation, LiveTeacher, NastyTraining, Objective
from training.runs import run_training, teacher_logits

SAMPLE_IMAGES = 8  # test images whose teacher logits are kept for the logit visualisation (Fig. 4)


class BenchmarkRunner:
    """Executes the runs of one preset, reusing loaded teachers and their training-set logits."""

    def __init__(self, preset: Preset, out: Path, data_root: str | None = None, download: bool = False) -> None:
        self.preset, self.out = preset, out
        self.train, self.test = load_splits(preset, data_root, download)
        self._teachers: dict[str, tuple[nn.Module, ModelCard]] = {}
        self._train_logits: dict[str, Tensor] = {}

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / slug(run.key)

    def execute(self, run: Run) -> dict[str, Any]:
        """Train ``run`` (resuming its folder) and return its results row: its key, its results and the
        machine it ran on. Every executor (one after another, ``--jobs``, Ray) runs a run through this."""
        fields = self._teacher(run) if isinstance(run, TeacherRun) else self._student(run)
        return {"key": run.key, **fields, "machine": machine(resolve_device(run.config.device))}

    def _teacher(self, run: TeacherRun) -> dict[str, Any]:
        objective: Objective = CrossEntropy()
        if run.nasty:
            objective = NastyTraining(self.teacher(run.arch)[0], tau=run.nasty.tau, omega=run.nasty.omega)
        result = self._train(run.arch, objective, run.config, run, "teacher.safetensors")
        model, card = self.teacher(run.name)
        logits = predict_logits(model, self.test, card.mean, card.std, desc="teacher on the test set")
        stingy = make_policy("stingy", sparse_ratio=self.preset.sparse_ratio)
        return {
            "type": "teacher", "teacher": run.name, "arch": run.arch, "nasty": run.nasty is not None,
            "nasty_tau": run.nasty.tau if run.nasty else None, "nasty_omega": run.nasty.omega if run.nasty else None,
            "accuracy": {"normal": accuracy(logits, self.test.labels), "stingy": accuracy(logits, self.test.labels, stingy)},
            "sample_logits": logits[:SAMPLE_IMAGES].tolist(), "sample_labels": self.test.labels[:SAMPLE_IMAGES].tolist(),
            "class_names": list(card.class_names), "seed": run.config.seed, **_result_fields(result),
        }

    def _student(self, run: StudentRun) -> dict[str, Any]:
        config = run.train_config
        objective: Objective = CrossEntropy()
        source = run.source
        if source is not None:
            policy = make_policy(**source.policy_config)
            if self.preset.teacher_cache:
                signal: CachedTeacher | LiveTeacher = CachedTeacher(self.train_logits(source.teacher), policy)
            else:
                signal = LiveTeacher(self.teacher(source.teacher)[0], policy)
            objective = Distillation(signal, tau=source.tau, alpha=source.alpha)
        result = self._train(run.arch, objective, config, run, "student.safetensors")
        return {
            "type": "student", "student": run.arch, "teacher": source.teacher if source else None,
            "policy": source.policy_config if source else None, "tau": source.tau if source else None,
            "alpha": source.alpha if source else None, "grad_clip": run.grad_clip, "seed": config.seed, **_result_fields(result),
        }

    def _train(self, arch: str, objective: Objective, config: TrainConfig, run: Run, checkpoint: str) -> FitResult:
        return run_training(arch=arch, objective=objective, train=self.train, test=self.test, config=config,
                            out=self.run_dir(run), checkpoint_name=checkpoint, resume=True, desc=run.key)

    def teacher(self, name: str) -> tuple[nn.Module, ModelCard]:
        """A trained teacher of this benchmark by run name (``resnet18``, ``resnet18-nasty``), loaded once."""
        if name not in self._teachers:
            path = self.out / "runs" / slug(f"teacher/{name}") / "teacher.safetensors"
            self._teachers[name] = load_checkpoint(path, resolve_device(self.preset.teacher_config.device))
        return self._teachers[name]

    def train_logits(self, name: str) -> Tensor:
        """Teacher ``name``'s logits on every (un-augmented) training image, computed once."""
        if name not in self._train_logits:
            model, card = self.teacher(name)
            self._train_logits[name] = teacher_logits(model, card, self.train, desc=f"{name} logits")
        return self._train_logits[name]


def load_splits(preset: Preset, data_root: str | None = None, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """The preset's training and test images (their subsets when the preset has them); ``download`` fetches
    a missing dataset. Raises the dataset errors of :mod:`training.data` (one line each)."""
    train = load_dataset(preset.dataset, "train", data_root, download=download, **preset.data_options)
    test = load_dataset(preset.dataset, "test", data_root, download=download, **preset.data_options)
    return (train.first(preset.train_subset) if preset.train_subset else train,
            test.first(preset.test_subset) if preset.test_subset else test)


def _result_fields(result: FitResult) -> dict[str, Any]:
    keep = ("epoch", "train_loss", "loss_terms", "test_accuracy", "max_grad_norm", "lr")
    return {**result.summary(), "history": [{k: h[k] for k in keep} for h in result.history]}


def machine(device: torch.device) -> dict[str, Any]:
    """Where a run trained, recorded in its row: torch's version, the device and its name, torch's CPU threads."""
    return {"torch": torch.__version__, "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads()}


def prepare_folder(preset: Preset, out: Path) -> None:
    """Record the preset in ``out``; refuse a folder that holds results of a different preset definition. Seeds
    may be added to a folder run with seeds (its ``seeds`` becomes the union, so a report covers every seed run),
    never to one run without them (its keys carry no seed) nor taken away from one run with them."""
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / PRESET_FILE
    document = json.loads(json.dumps(preset.to_json()))
    if recorded.is_file():
        existing = json.loads(recorded.read_text())
        if existing.get("name") != preset.name:
            raise BenchmarkError(f"{out} holds a run of preset {existing.get('name')!r}, not {preset.name!r}; use another --out")
        had, has = existing.get("seeds"), document.get("seeds")
        if bool(had) != bool(has):
            state = f"with --seeds {' '.join(map(str, had))}" if had else "without --seeds"
            raise BenchmarkError(f"{out} holds runs made {state}; run the same way or use another --out")
        if {**existing, "seeds": None} != {**document, "seeds": None}:
            raise BenchmarkError(f"{out} holds results of a different definition of preset {preset.name!r}; use another --out")
        if not had or set(has) <= set(had):
            return
        document["seeds"] = list(dict.fromkeys([*had, *has]))
    atomic_write_json(recorded, document)


def run_benchmark(
    preset: Preset, out: Path, data_root: str | None = None, download: bool = False, *, executor: str = "local",
    address: str | None = None, gpus_per_run: float = 0, jobs: int = 1, runs: Sequence[Run] | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished run of ``preset`` (or of ``runs``, in dependency order: another grid over the
    preset's settings, as the Nasty Teacher search's) into ``out``; returns all results rows. ``executor``
    ``local`` runs them in this process one after another (``jobs`` 1), or in ``jobs`` worker processes at
    once; ``ray`` submits them as Ray tasks (``address``: the cluster, ``gpus_per_run``: GPUs each task
    reserves). This process alone appends to ``results.jsonl``, one row per finished run as it finishes.
    With several workers or Ray, a failed run does not stop the others: :class:`BenchmarkError` names the
    failed runs after every other run has finished and been recorded (one after another, the first failure stops)."""
    prepare_folder(preset, out)
    results_path = out / RESULTS_FILE
    done = {row["key"] for row in read_json_lines(results_path)}
    runs = plan(preset) if runs is None else runs
    todo = [run for run in runs if run.key not in done]
    print(f"{preset.name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to go -> {out}", flush=True)
    began = time.perf_counter()
    finished = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        append_json_line(results_path, row)
        accuracy_text = "diverged" if row["diverged"] else f"{row['test_accuracy']:.2f}%"
        print(f"[{finished}/{len(todo)}] {row['key']}: {accuracy_text} in {row['seconds']:.0f}s "
              f"(elapsed {time.perf_counter() - began:.0f}s)", flush=True)

    failures: dict[str, str] = {}
    if executor == "ray" and todo:
        failures = run_on_ray(preset, out, todo, data_root, download, address=address, gpus_per_run=gpus_per_run, on_row=record)
    elif jobs > 1 and todo:
        load_splits(preset, data_root, download)  # a missing dataset fails (or downloads) once here, not in N workers at once
        failures = run_in_pool(preset, out, todo, data_root, download, jobs=jobs, on_row=record)
    elif todo:
        runner = BenchmarkRunner(preset, out, data_root, download)
        for run in todo:
            record(runner.execute(run))
    if failures:
        lines = "; ".join(f"{key}: {error}" for key, error in failures.items())
        raise BenchmarkError(f"{len(failures)} of {len(todo)} runs failed (the {finished} others are recorded): {lines}")
    return read_json_lines(results_path)
