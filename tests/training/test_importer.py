"""``stingy-train import``: a state_dict trained elsewhere becomes a checkpoint, or one clear error."""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision import models as tv

from tests.fixtures.photos import PHOTO_SIZES, photo, standardise_head, torchvision_logits, torchvision_transforms
from training.checkpoint import load_checkpoint, read_card
from training.cli import main
from training.data import load_dataset
from training.models import create_model
from training.importer import (
    ImportFailure, ImportOptions, build_card, import_model, infer_num_classes, input_defaults, measure_accuracy,
)
from training.preprocess import InputPreparation


PHOTOS = [photo(w, h, seed) for seed in range(3) for w, h in PHOTO_SIZES]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@functools.cache
def _resnet18(classes: int, seed: int = 0) -> torch.nn.Module:
    """A random ResNet-18 whose predictions differ from photo to photo (see :func:`standardise_head`); shared, do not modify."""
    torch.manual_seed(seed)
    return standardise_head(tv.resnet18(num_classes=classes).eval(), PHOTOS, torchvision_transforms(2, 73, 64, *IMAGENET))


@pytest.fixture(scope="module")
def resnet_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(_resnet18(4).state_dict(), path)
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stingy-train: error:") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_state_dict_becomes_a_checkpoint_that_rebuilds_the_same_model(resnet_pth: Path, tmp_path: Path) -> None:
    model, card = import_model(ImportOptions(arch="torchvision:resnet18", weights=resnet_pth, image_size=64))
    assert card.num_classes == 4  # read from the weights' head (fc.bias)
    assert card.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert card.preparation == InputPreparation(crop_size=64, resize_size=73, interpolation="bilinear")  # 256/224 scaled
    assert len(card.extra["weights_sha256"]) == 64
    out = tmp_path / "model.safetensors"
    assert main(["import", "--arch", "torchvision:resnet18", "--weights", str(resnet_pth), "--image-size", "64", "--out", str(out)]) == 0
    served, saved_card = load_checkpoint(out)  # the registry rebuilds torchvision:resnet18 for 4 classes
    assert saved_card.preparation == card.preparation and saved_card.arch == "torchvision:resnet18"
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(served(x), _resnet18(4)(x))
        torch.testing.assert_close(model(x), _resnet18(4)(x))


def test_wrapped_prefixed_and_safetensors_weights_are_accepted(tmp_path: Path) -> None:
    state = _resnet18(3).state_dict()
    wrapped = tmp_path / "wrapped.pt"  # DataParallel's prefix, no BatchNorm counters (as before PyTorch 0.4.1)
    torch.save({"epoch": 7, "state_dict": {f"module.{key}": value for key, value in state.items()
                                           if not key.endswith("num_batches_tracked")}}, wrapped)
    plain = tmp_path / "weights.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(plain))
    x = torch.randn(1, 3, 32, 32)
    for path in (wrapped, plain):
        model, card = import_model(ImportOptions(arch="torchvision:resnet18", weights=path, image_size=32, stretch=True))
        assert card.num_classes == 3 and card.preparation.resize_size is None
        with torch.inference_mode():
            torch.testing.assert_close(model(x), _resnet18(3)(x))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker, weights = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _Payload(marker)}, weights)
    err = _error(capsys, ["import", "--arch", "torchvision:resnet18", "--weights", str(weights), "--out", str(tmp_path / "o.safetensors")])
    assert "weights_only=True" in err and "state_dict()" in err
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the file really runs code when unpickled freely
    assert marker.exists()


def test_weights_that_do_not_fit_are_one_error_naming_the_first_keys(resnet_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "o.safetensors")]
    err = _error(capsys, ["import", "--arch", "torchvision:resnet34", "--weights", str(resnet_pth), *out])
    assert "does not fit torchvision:resnet34" in err and "keys missing (layer1.2.conv1.weight" in err and " more)" in err
    err = _error(capsys, ["import", "--arch", "torchvision:resnet18", "--weights", str(resnet_pth), "--num-classes", "10", *out])
    assert "2 keys of another shape (fc.weight [4, 512] in the file, [10, 512] in the model" in err
    err = _error(capsys, ["import", "--arch", "torchvision:resnet18", "--weights", str(resnet_pth), "--num-classes", "3", *out])
    assert "fc.bias [4] in the file, [3] in the model" in err


def test_other_mistakes_are_one_clear_error(resnet_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.safetensors"
    base = ["import", "--weights", str(resnet_pth), "--out", str(out)]
    assert "no classification architecture 'resnet99'" in _error(capsys, [*base, "--arch", "torchvision:resnet99"])
    assert "unknown architecture 'nope'" in _error(capsys, [*base, "--arch", "nope"])
    assert "--image-size is required" in _error(capsys, [*base, "--arch", "resnet18"])
    assert "does not exist" in _error(capsys, ["import", "--arch", "torchvision:resnet18", "--weights", str(tmp_path / "x.pth"), "--out", str(out)])
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert "2 class names for a model with 4 classes" in _error(capsys, [*base, "--arch", "torchvision:resnet18", "--class-names", str(names), "--num-classes", "4"])
    assert "crop size <= resize size" in _error(capsys, [*base, "--arch", "torchvision:resnet18", "--image-size", "64", "--resize-size", "32"])
    out.write_bytes(b"")
    assert "pass --force" in _error(capsys, [*base, "--arch", "torchvision:resnet18"])


def test_torchvision_defaults_come_from_its_weights_tables() -> None:
    resnet50 = input_defaults("torchvision:resnet50")
    assert resnet50 is not None and (resnet50.image_size, resnet50.resize_size, resnet50.interpolation) == (224, 232, "bilinear")
    efficientnet = input_defaults("torchvision:efficientnet_b0")
    assert efficientnet is not None and (efficientnet.image_size, efficientnet.resize_size, efficientnet.interpolation) == (224, 256, "bicubic")
    card = build_card(ImportOptions(arch="torchvision:resnet50", weights=Path("unused")), num_classes=1000)
    assert card.class_names[0] == "tench" and card.mean == (0.485, 0.456, 0.406) and card.preparation.resize_size == 232
    assert input_defaults("lenet5") is None


def test_registry_architecture_with_its_own_input_facts(tmp_path: Path) -> None:
    torch.manual_seed(1)
    lenet = create_model("lenet5", 10, 1, 28).eval()
    torch.save(lenet.state_dict(), tmp_path / "lenet.pth")
    model, card = import_model(ImportOptions(arch="lenet5", weights=tmp_path / "lenet.pth", image_size=28, in_channels=1,
                                             mean=(0.286,), std=(0.353,)))
    assert card.num_classes == 10 and card.preparation == InputPreparation(crop_size=28)  # stretch: no resize size known
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), lenet(x))


def test_accuracy_is_measured_on_photos_prepared_like_torchvision(resnet_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each photo is filed under the class torchvision's own pipeline predicts, except every third one (shifted by
    one class): the measured accuracy must then be exactly the share of the others."""
    reference = _resnet18(4)
    card = build_card(ImportOptions(arch="torchvision:resnet18", weights=resnet_pth, image_size=64), num_classes=4)
    transform = torchvision_transforms(2, 73, 64, card.mean, card.std)
    predicted = torchvision_logits(reference, PHOTOS, transform).argmax(1).tolist()
    assert len(set(predicted)) == 4
    for split in ("train", "val"):
        for index, (image, label) in enumerate(zip(PHOTOS, predicted)):
            folder = tmp_path / "data" / split / f"class_{(label + (index % 3 == 0)) % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")
    for name in ("class_0", "class_1", "class_2", "class_3"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True, exist_ok=True)
    expected = 100.0 * sum(index % 3 != 0 for index in range(len(PHOTOS))) / len(PHOTOS)
    test = load_dataset("imagefolder", "test", tmp_path / "data", image_size=64)
    assert measure_accuracy(reference, card, test) == pytest.approx(expected)
    stretched = replace(card, preprocess=InputPreparation(crop_size=64))
    assert measure_accuracy(reference, stretched, test) != pytest.approx(expected)  # the check sees the preparation
    out = tmp_path / "model.safetensors"
    assert main(["import", "--arch", "torchvision:resnet18", "--weights", str(resnet_pth), "--image-size", "64",
                 "--test-data", "imagefolder", "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    assert read_card(out).test_accuracy == pytest.approx(expected) and read_card(out).dataset == "imagefolder"
    assert f"test accuracy {expected:.2f}%" in capsys.readouterr().out
    with pytest.raises(ImportFailure, match="the test data has 10 classes"):
        measure_accuracy(reference, card, load_dataset("synthetic", "test", size=8, in_channels=3, image_size=64))


@pytest.mark.parametrize("name, size", [("vit_b_16", 64), ("maxvit_t", 224), ("efficientnet_b0", 224), ("convnext_tiny", 96),
                                        ("swin_t", 96), ("inception_v3", 299), ("squeezenet1_0", 96), ("regnet_y_400mf", 96)])
def test_torchvision_classifiers_build_for_any_class_count_and_their_head_is_found(name: str, size: int, tmp_path: Path) -> None:
    """Built on the meta device (shapes only) where the architecture allows it: no memory, no initialisation."""
    arch = f"torchvision:{name}"
    try:
        with torch.device("meta"):
            model = create_model(arch, 7, 3, size).eval()
    except RuntimeError:  # RegNet initialises from real tensors
        model = create_model(arch, 7, 3, size).eval()
    with torch.device("meta"), torch.inference_mode():
        assert model.to("meta")(torch.zeros(2, 3, size, size)).shape == (2, 7)
    assert infer_num_classes(arch, 3, size, model.state_dict(), tmp_path / "weights.pth") == 7
