"""A preset expanded into the runs it needs, in dependency order, each with a stable key.

Keys identify runs across reruns (``results.jsonl`` is keyed by them) and name their folders. A run that
several experiments share (e.g. the stingy table run and the matching sweep point) appears once. With seeds
(``Preset.seeds``, ``stingy-bench run --seeds``) every student run is repeated once per seed and its key ends in
``/seed=N``; teachers are trained once, on the preset's seed (the attacker cannot retrain the victim). Without
seeds keys carry no suffix, so folders run before seeds existed resume as they were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from defense import make_policy
from training.reproduction.presets import NastySettings, Preset
from training.data.registry import known_num_classes
from training.engine import TrainConfig
from training.reproduction.results import releases_as_stingy, student_arch

@dataclass(frozen=True)
class TeacherRun:
    """A teacher trained on labels, or (``nasty`` given) a Nasty Teacher trained against the normal teacher
    of the same architecture. ``variant`` tells apart several Nasty Teachers of one folder (a search's grid
    points): ``cnn_small-nasty(omega=0.1,tau=4)``."""

    arch: str
    config: TrainConfig
    nasty: NastySettings | None = None
    variant: str | None = None

    @property
    def name(self) -> str:
        if not self.nasty:
            return self.arch
        return f"{self.arch}-nasty" + (f"({self.variant})" if self.variant else "")

    @property
    def key(self) -> str:
        return f"teacher/{self.name}"


@dataclass(frozen=True)
class DistillFrom:
    """Eq. 1 from teacher run ``teacher``'s logits passed through ``policy`` (config items)."""

    teacher: str
    policy: tuple[tuple[str, Any], ...]
    tau: float
    alpha: float

    @property
    def policy_config(self) -> dict[str, Any]:
        return dict(self.policy)


@dataclass(frozen=True)
class StudentRun:
    """A student trained from scratch (``source`` None) or distilled, optionally with gradient clipping, on
    ``seed`` (initialisation and data order; None: ``config.seed``, and no seed in the key)."""

    arch: str
    config: TrainConfig
    source: DistillFrom | None = None
    grad_clip: float | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        suffix = "" if self.seed is None else f"/seed={self.seed}"
        if self.source is None:
            return f"scratch/{self.arch}{suffix}"
        params = ",".join(f"{k}={v}" for k, v in self.source.policy if k != "name")
        policy = self.source.policy_config["name"] + (f"({params})" if params else "")
        clip = f"{self.grad_clip:g}" if self.grad_clip else "none"
        return f"kd/{self.source.teacher}/{self.arch}/{policy}/tau={self.source.tau:g}/alpha={self.source.alpha:g}/clip={clip}{suffix}"

    @property
    def train_config(self) -> TrainConfig:
        """The config this run trains with: its clipping and (when given) its seed."""
        return replace(self.config, grad_clip=self.grad_clip, seed=self.config.seed if self.seed is None else self.seed)


Run = TeacherRun | StudentRun


def needs(run: Run) -> str | None:
    """The key of the run of the same plan that ``run`` loads a teacher from (None for a normal teacher and a
    scratch student): a Nasty Teacher needs its normal teacher, a distilled student its teacher."""
    if isinstance(run, TeacherRun):
        return f"teacher/{run.arch}" if run.nasty else None
    return f"teacher/{run.source.teacher}" if run.source else None


def select(runs: Sequence[Run], patterns: Sequence[str]) -> list[Run]:
    """The runs whose key matches one of the shell-style ``patterns`` (:func:`fnmatch.fnmatchcase`, ``*`` also
    crossing ``/``), and every run they need, transitively (a distilled student's teacher, a Nasty Teacher's
    normal teacher), in the order of ``runs``. A pattern that matches no run is an error: a typo would
    otherwise select nothing and say nothing."""
    by_key = {run.key: run for run in runs}
    unmatched = [pattern for pattern in patterns if not any(fnmatchcase(key, pattern) for key in by_key)]
    if unmatched:
        raise ValueError(f"no run of this plan matches {', '.join(repr(p) for p in unmatched)} "
                         f"(keys look like {next(iter(by_key), 'teacher/ARCH')!r}; `stingy-bench run --list` prints them)")
    chosen = {key for key in by_key if any(fnmatchcase(key, pattern) for pattern in patterns)}
    waiting = list(chosen)
    while waiting:
        needed = needs(by_key[waiting.pop()])
        if needed is not None and needed not in chosen:
            chosen.add(needed)
            waiting.append(needed)
    return [run for run in runs if run.key in chosen]


def slug(key: str) -> str:
    """A folder name for a run key."""
    return re.sub(r"[^A-Za-z0-9.=,_-]+", "_", key.replace("/", "__"))


def policy_items(name: str, **params: Any) -> tuple[tuple[str, Any], ...]:
    """A policy config as hashable items, validated by building the policy once."""
    return tuple(make_policy(name, **params).config().items())


def nasty_teacher(preset: Preset, arch: str, settings: NastySettings, variant: str | None = None) -> TeacherRun:
    """A Nasty Teacher of ``arch`` trained with ``settings``, on their own schedule if they have one, else the
    preset's teacher schedule."""
    return TeacherRun(arch, settings.config or preset.teacher_config, settings, variant)


def distil(preset: Preset, teacher: str, arch: str, policy: tuple[tuple[str, Any], ...], tau: float,
           clip: float | None = None) -> StudentRun:
    """An ``arch`` student distilled from teacher run ``teacher`` with the preset's student schedule and alpha."""
    return StudentRun(arch, preset.student_config, DistillFrom(teacher, policy, tau, preset.alpha), clip)


def plan(preset: Preset) -> list[Run]:
    """Every run of ``preset``: teachers, nasty teachers, scratch baselines, then distillation runs (each student
    run once per seed of ``preset.seeds``)."""
    runs: dict[str, Run] = {}

    def add(run: Run) -> None:
        if isinstance(run, StudentRun) and preset.seeds:
            for seed in preset.seeds:
                runs.setdefault(replace(run, seed=seed).key, replace(run, seed=seed))
        else:
            runs.setdefault(run.key, run)

    def kd(teacher: str, arch: str, policy: tuple[tuple[str, Any], ...], tau: float) -> None:
        """The paper's attacker, and (with ``clip_norm``) its twin that keeps training stable by clipping."""
        for clip in (None, preset.clip_norm) if preset.clip_norm else (None,):
            add(distil(preset, teacher, arch, policy, tau, clip))

    classes = known_num_classes(preset.dataset, preset.data_options) if "stingy" in preset.ratio_policies else None

    def same_as_stingy(name: str, ratio: float) -> bool:
        """A swept policy that releases what the stingy run at its ratio releases is that run (one point)."""
        return classes is not None and releases_as_stingy(name, {"sparse_ratio": ratio}, classes)

    stingy = policy_items("stingy", sparse_ratio=preset.sparse_ratio)
    normal = policy_items("normal")
    for arch in preset.teachers:
        add(TeacherRun(arch, preset.teacher_config))
    if preset.nasty:
        for arch in preset.teachers:
            add(nasty_teacher(preset, arch, preset.nasty))
    for arch in preset.teachers:
        for student in preset.students:
            add(StudentRun(student_arch(student, arch), preset.student_config))
    for arch in preset.teachers:  # the comparison table
        for student in preset.students:
            target = student_arch(student, arch)
            kd(arch, target, normal, preset.tau)
            if preset.nasty:
                kd(f"{arch}-nasty", target, normal, preset.tau)
            kd(arch, target, stingy, preset.tau)
    if preset.ratio_sweep:
        for arch, student in preset.ratio_sweep.pairs:
            target = student_arch(student, arch)
            add(StudentRun(target, preset.student_config))
            kd(arch, target, normal, preset.tau)
            for ratio in preset.ratio_sweep.values:
                for name in preset.ratio_policies:
                    if not same_as_stingy(name, ratio):
                        kd(arch, target, policy_items(name, sparse_ratio=ratio), preset.tau)
            if preset.reverse:
                kd(arch, target, policy_items("reverse"), preset.tau)
    if preset.temperature_sweep:
        for arch, student in preset.temperature_sweep.pairs:
            target = student_arch(student, arch)
            add(StudentRun(target, preset.student_config))
            for tau in preset.temperature_sweep.values:
                kd(arch, target, stingy, tau)
    def stage(run: Run) -> int:  # normal teachers, then nasty ones (they need them), then students
        return (1 if run.nasty else 0) if isinstance(run, TeacherRun) else 2

    return sorted(runs.values(), key=stage)
