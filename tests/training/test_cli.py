"""``stingy-train`` as a user meets it: clear one-line errors, listings, and a KD run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.checkpoint import load_checkpoint
from training.cli import main


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stingy-train: error:") and "Traceback" not in err
    return err


def test_missing_dataset_is_one_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(capsys, ["teacher", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "none"), "--arch", "mlp", "--out", str(tmp_path / "o")])
    assert "not found" in err and "apt-get install dataset-fashion-mnist" in err


def test_download_without_a_network_is_one_line_naming_what_to_do(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, simulated by a closed port on 127.0.0.1 as the download server (no traffic leaves the machine)."""
    from app.launch import free_port
    from training.data import download

    url = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setattr(download, "_FASHION_MNIST_URL", url)
    argv = ["teacher", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "data"), "--download", "--arch", "mlp",
            "--out", str(tmp_path / "run")]
    err = _error(capsys, argv)
    assert err.count("\n") == 1, err
    assert f"cannot download {url}train-images-idx3-ubyte.gz (" in err and "check the network connection" in err
    assert f"or put the files in {tmp_path / 'data'} yourself and run without --download" in err


def test_missing_teacher_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(capsys, ["kd", "--teacher", str(tmp_path / "none.safetensors"), "--student", "mlp", "--out", str(tmp_path / "o")])
    assert "does not exist" in err


def test_bad_policy_parameters(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(capsys, ["kd", "--teacher", "x", "--student", "mlp", "--policy", "stingy", "--k", "2", "--sparse-ratio", "0.1", "--out", str(tmp_path)])
    assert "either k or sparse_ratio" in err
    err = _error(capsys, ["kd", "--teacher", "x", "--student", "mlp", "--policy", "rounding", "--policy-param", "digits=2", "--out", str(tmp_path)])
    assert "takes no parameter digits" in err


def test_unknown_architecture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "unknown architecture" in _error(capsys, ["teacher", "--dataset", "synthetic", "--arch", "vgg99", "--out", str(tmp_path)])


def test_a_device_this_machine_lacks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(capsys, ["teacher", "--dataset", "synthetic", "--arch", "mlp", "--device", "tpu", "--out", str(tmp_path)])
    assert "unsupported device 'tpu'; use auto, cpu, cuda or cuda:N" in err


def test_listings(capsys: pytest.CaptureFixture[str]) -> None:
    for command, expected in (("models", "resnetc20"), ("datasets", "tiny-imagenet"), ("policies", "sparse_ratio")):
        assert main([command]) == 0
        assert expected in capsys.readouterr().out


def test_teacher_then_kd_through_a_stingy_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    common = ["--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--lr", "0.05"]
    assert main(["teacher", "--arch", "lenet5", *common, "--out", str(tmp_path / "t")]) == 0
    assert main([
        "kd", "--teacher", str(tmp_path / "t" / "teacher.safetensors"), "--student", "self", "--policy", "stingy", "--k", "2",
        "--grad-clip", "5", "--no-augment", "--teacher-cache", *common, "--out", str(tmp_path / "s"),
    ]) == 0
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    assert result["objective"] == {"objective": "kd", "tau": 20.0, "alpha": 0.9, "teacher": "cached", "policy": {"name": "stingy", "k": 2}}
    assert result["config"]["grad_clip"] == 5.0 and result["arch"] == "lenet5"
    _, card = load_checkpoint(tmp_path / "s" / "student.safetensors")
    assert card.extra["teacher_arch"] == "lenet5"
    assert "done: test accuracy" in capsys.readouterr().out
