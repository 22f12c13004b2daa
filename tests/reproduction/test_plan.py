"""Presets expand into the paper's experiments with the paper's settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from training.reproduction.plan import StudentRun, TeacherRun, plan, select
from training.reproduction.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_expands_into_unique_ordered_runs(name: str) -> None:
    runs = plan(PRESETS[name])
    keys = [run.key for run in runs]
    assert len(keys) == len(set(keys))
    first_student = next(i for i, run in enumerate(runs) if isinstance(run, StudentRun))
    assert all(isinstance(run, TeacherRun) for run in runs[:first_student]), "teachers come before students"
    nasty = [i for i, run in enumerate(runs) if isinstance(run, TeacherRun) and run.nasty]
    normal = [i for i, run in enumerate(runs) if isinstance(run, TeacherRun) and not run.nasty]
    assert not nasty or max(normal) < min(nasty), "a nasty teacher needs its normal teacher first"


def test_paper_settings() -> None:
    for name in ("paper-cifar10", "paper-cifar100", "paper-tiny-imagenet"):
        preset = PRESETS[name]
        config = preset.student_config
        assert (config.epochs, config.lr, config.momentum, config.weight_decay, config.gamma) == (200, 0.1, 0.9, 5e-4, 0.2)
        assert config.milestone_epochs() == [60, 120, 160]
        assert (preset.tau, preset.alpha) == (20.0, 0.9)
    imagenet = PRESETS["paper-imagenet"].student_config
    assert (imagenet.epochs, imagenet.gamma, imagenet.milestone_epochs()) == (90, 0.1, [30, 60, 80])
    assert PRESETS["paper-cifar10"].sparse_ratio == 0.2 and PRESETS["paper-cifar100"].sparse_ratio == 0.1
    nasty = {name: (PRESETS[name].nasty.tau, PRESETS[name].nasty.omega) for name in ("paper-cifar10", "paper-cifar100", "paper-tiny-imagenet")}
    assert nasty == {"paper-cifar10": (4.0, 0.04), "paper-cifar100": (20.0, 0.005), "paper-tiny-imagenet": (20.0, 0.01)}


def test_paper_cifar100_holds_table2_and_the_figures() -> None:
    keys = {run.key for run in plan(PRESETS["paper-cifar100"])}
    for teacher in ("resnet18", "resnet50", "resnext29"):
        assert f"teacher/{teacher}-nasty" in keys
        for student in ("shufflenetv2", "mobilenetv2", "resnet18", teacher):
            for source, policy in ((teacher, "normal"), (f"{teacher}-nasty", "normal"), (teacher, "stingy(sparse_ratio=0.1)")):
                assert f"kd/{source}/{student}/{policy}/tau=20/alpha=0.9/clip=none" in keys
    assert "kd/resnet18/mobilenetv2/least(sparse_ratio=0.05)/tau=20/alpha=0.9/clip=none" in keys
    assert "kd/resnet18/shufflenetv2/stingy_smooth(sparse_ratio=0.3)/tau=20/alpha=0.9/clip=none" in keys
    assert "kd/resnet18/resnet18/reverse/tau=20/alpha=0.9/clip=none" in keys
    assert "kd/resnet18/mobilenetv2/stingy(sparse_ratio=0.1)/tau=4/alpha=0.9/clip=none" in keys


def test_imagenet_is_table4() -> None:
    keys = [run.key for run in plan(PRESETS["paper-imagenet"])]
    assert keys == [
        "teacher/densenet121", "scratch/resnet18_imagenet",
        "kd/densenet121/resnet18_imagenet/normal/tau=20/alpha=0.9/clip=none",
        "kd/densenet121/resnet18_imagenet/stingy(sparse_ratio=0.1)/tau=20/alpha=0.9/clip=none",
    ]


def test_reduced_preset_holds_every_experiment_type() -> None:
    preset = PRESETS["fmnist-cpu"]
    keys = {run.key for run in plan(preset)}
    assert "teacher/cnn_small-nasty" in keys and "kd/cnn_small/cnn_small/stingy(sparse_ratio=0.2)/tau=20/alpha=0.9/clip=none" in keys
    assert {"stingy", "stingy_smooth", "least"} <= set(preset.ratio_policies) and preset.reverse
    assert preset.temperature_sweep and len(preset.temperature_sweep.values) >= 4
    assert preset.clip_norm
    for key in keys:
        if key.startswith("kd/"):
            assert key.rsplit("/", 1)[0] + "/clip=none" in keys and key.rsplit("/", 1)[0] + "/clip=5" in keys, key


def test_least_keeping_one_class_is_not_trained_twice() -> None:
    """K = 10: least at r = 0.1 keeps N = 1 class, the top-1 logit stingy at r = 0.1 keeps, so the plan holds only
    the stingy run (the report looks the least point up there); least at r = 0.2 (N = 2) is its own run. With K =
    100 least at r = 0.05 keeps N = 5 and is planned."""
    keys = {run.key for run in plan(PRESETS["fmnist-cpu"])}
    for clip in ("none", "5"):
        assert f"kd/cnn_small/mlp/stingy(sparse_ratio=0.1)/tau=20/alpha=0.9/clip={clip}" in keys
        assert f"kd/cnn_small/mlp/least(sparse_ratio=0.1)/tau=20/alpha=0.9/clip={clip}" not in keys
        assert f"kd/cnn_small/mlp/least(sparse_ratio=0.2)/tau=20/alpha=0.9/clip={clip}" in keys
    assert "kd/resnet18/mobilenetv2/least(sparse_ratio=0.05)/tau=20/alpha=0.9/clip=none" in {run.key for run in plan(PRESETS["paper-cifar100"])}


def test_scaled_preset_caps_epochs() -> None:
    scaled = PRESETS["paper-cifar10"].scaled(max_epochs=1, train_subset=10)
    assert scaled.teacher_config.epochs == scaled.student_config.epochs == scaled.nasty.config.epochs == 1
    assert scaled.train_subset == 10


def test_cifar10_cpu_is_table1_on_cifar10_images() -> None:
    preset = PRESETS["cifar10-cpu"]
    keys = {run.key for run in plan(preset)}
    assert preset.dataset == "cifar10-images" and (preset.nasty.tau, preset.nasty.omega) == (4.0, 0.04)
    assert preset.student_config.augment and not preset.teacher_cache and preset.temperature_sweep is None
    for student in ("cnn", "resnetc20"):
        assert f"scratch/{student}" in keys
        for source, policy in (("resnetc20", "normal"), ("resnetc20-nasty", "normal"), ("resnetc20", "stingy(sparse_ratio=0.2)"),
                               ("resnetc20", "stingy_smooth(sparse_ratio=0.2)")):
            for clip in ("none", "5"):
                assert f"kd/{source}/{student}/{policy}/tau=20/alpha=0.9/clip={clip}" in keys
    assert len(keys) == 2 + 2 + 2 * 4 * 2


def test_seeds_repeat_every_student_run_and_train_teachers_once() -> None:
    preset = PRESETS["smoke"]
    plain = plan(preset)
    seeded = plan(replace(preset, seeds=(0, 3)))
    teachers = [run for run in plain if isinstance(run, TeacherRun)]
    students = [run for run in plain if isinstance(run, StudentRun)]
    assert [run for run in seeded if isinstance(run, TeacherRun)] == teachers
    assert [run.key for run in seeded if isinstance(run, StudentRun)] == [
        f"{run.key}/seed={seed}" for run in students for seed in (0, 3)
    ]
    by_key = {run.key: run for run in seeded}
    assert by_key["scratch/mlp/seed=3"].train_config.seed == 3 and by_key["scratch/mlp/seed=0"].train_config.seed == 0
    clipped = next(run for run in seeded if isinstance(run, StudentRun) and run.grad_clip)
    assert clipped.train_config.grad_clip == clipped.grad_clip
    assert all(run.seed is None and run.train_config.seed == preset.student_config.seed for run in students)


@pytest.mark.parametrize("seeds", [(), (1, 1), (-1,)])
def test_seeds_must_be_distinct_and_non_negative(seeds: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="seeds must be distinct non-negative integers"):
        replace(PRESETS["smoke"], seeds=seeds)
def test_only_keeps_the_matching_runs_and_the_teachers_they_need_in_plan_order() -> None:
    runs = plan(PRESETS["fmnist-cpu"])
    chosen = select(runs, ["kd/cnn_small-nasty/mlp/*"])
    keys = [run.key for run in chosen]
    assert keys == [run.key for run in runs if run.key in set(keys)], "plan order kept"
    # the Nasty Teacher's students need it, and it needs the normal teacher: both come along, nothing else
    assert keys == ["teacher/cnn_small", "teacher/cnn_small-nasty",
                    "kd/cnn_small-nasty/mlp/normal/tau=20/alpha=0.9/clip=none",
                    "kd/cnn_small-nasty/mlp/normal/tau=20/alpha=0.9/clip=5"]
    assert [run.key for run in select(runs, ["scratch/mlp"])] == ["scratch/mlp"]


def test_only_refuses_a_pattern_that_matches_nothing() -> None:
    with pytest.raises(ValueError, match="'kd/typo\\*'"):
        select(plan(PRESETS["smoke"]), ["scratch/*", "kd/typo*"])


def test_run_list_prints_the_selected_keys_and_trains_nothing(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.reproduction.cli import main

    out = tmp_path / "bench"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--only", "kd/*/mlp/stingy*", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed and all(key.startswith("teacher/") or "/mlp/stingy" in key for key in listed)
    assert not out.exists()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--only", "nothing-like-this"]) == 2
    assert "no run of this plan matches 'nothing-like-this'" in capsys.readouterr().err
