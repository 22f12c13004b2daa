"""The path a model owner takes: a torchvision model saved by a plain script (torch and torchvision only, no
project code), imported with ``stingy-train import``, served by a real ``stingy-serve`` process behind the
stingy policy, answers photo uploads of any size and aspect ratio with the same top-N as the same model run
in-process with torchvision's own transforms (v1 and v2); v2 tensors of the input shape go through unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch
from torchvision import models as tv
from torchvision.transforms import v2 as T2

from app.launch import running_server
from tests.fixtures.photos import PHOTO_SIZES, decoded, encoded, photo, torchvision_logits, torchvision_transforms
from training.checkpoint import read_card
from training.cli import main

CLASSES = ["apple", "banana", "cherry", "date", "elderberry", "fig"]
RELEASED = 3
IMAGE_SIZE, RESIZE_SIZE = 64, 73  # torchvision's 224/256 for resnet18, scaled to a 64-px input
USER_SCRIPT = """
    # A model owner's own training script: torch and torchvision only.
    import sys
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Linear(model.fc.in_features, 6)  # a new head for 6 classes
    # Fine-tune the head on tinted images: the class is the dominant colour and whether the image is bright.
    colours = torch.rand(96, 3)
    images = 0.8 * colours[:, :, None, None] + 0.2 * torch.rand(96, 3, 64, 64)
    labels = colours.argmax(1) * 2 + (colours.mean(1) > 0.5).long()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    backbone = torch.nn.Sequential(*list(model.children())[:-1]).eval()
    with torch.no_grad():
        features = backbone((images - mean[:, None, None]) / std[:, None, None]).flatten(1)
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.5)
    for step in range(300):
        loss = torch.nn.functional.cross_entropy(model.fc(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), sys.argv[1])
    with open(sys.argv[2], "w") as names:
        names.write("\\n".join(["apple", "banana", "cherry", "date", "elderberry", "fig"]) + "\\n")
"""


def _top(logits: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    values, indices = logits.topk(RELEASED, dim=1)
    return indices.tolist(), values


@pytest.mark.slow
def test_a_model_saved_by_a_plain_script_is_served_like_torchvision_runs_it(tmp_path: Path) -> None:
    script, weights, names = tmp_path / "train.py", tmp_path / "model.pth", tmp_path / "classes.txt"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, str(script), str(weights), str(names)], cwd=tmp_path, env=env, check=True, timeout=300)

    checkpoint = tmp_path / "fruit.safetensors"
    assert main(["import", "--arch", "torchvision:resnet18", "--weights", str(weights), "--class-names", str(names),
                 "--image-size", str(IMAGE_SIZE), "--out", str(checkpoint)]) == 0
    card = read_card(checkpoint)
    assert (card.num_classes, card.preparation.resize_size, card.class_names) == (6, RESIZE_SIZE, tuple(CLASSES))

    model = tv.resnet18(num_classes=6)
    model.load_state_dict(torch.load(weights, weights_only=True))
    uploads = [encoded(photo(w, h, seed), "JPEG" if seed % 2 else "PNG") for seed, (w, h) in enumerate(PHOTO_SIZES)]
    images = [decoded(data) for data in uploads]  # what the server decodes, for the in-process run
    expected_v2 = torchvision_logits(model, images, torchvision_transforms(2, RESIZE_SIZE, IMAGE_SIZE, card.mean, card.std))
    expected_v1 = torchvision_logits(model, images, torchvision_transforms(1, RESIZE_SIZE, IMAGE_SIZE, card.mean, card.std))
    stretch = T2.Compose([T2.PILToTensor(), T2.Resize((IMAGE_SIZE, IMAGE_SIZE)), T2.ToDtype(torch.float32, scale=True),
                          T2.Normalize(card.mean, card.std)])
    stretched = torchvision_logits(model, images, stretch)

    args = ["--checkpoint", str(checkpoint), "--device", "cpu", "--policy", "stingy", "--k", str(RELEASED),
            "--budget-db", str(tmp_path / "budget.sqlite3"), "--access-log", ""]
    with running_server(args, log_dir=tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        files = [("files", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(uploads)]
        answer = client.post("/v1/predict", files=files)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        served_indices = [[entry["class"] for entry in p["top"]] for p in predictions]
        served_values = torch.tensor([[entry["logit"] for entry in p["top"]] for p in predictions])
        assert [entry["class_name"] for entry in predictions[0]["top"]] == [CLASSES[c] for c in served_indices[0]]

        prepared = torch.stack([T2.CenterCrop(IMAGE_SIZE)(T2.Resize(RESIZE_SIZE)(T2.PILToTensor()(image))) for image in images])
        tensor = {"name": "images", "shape": list(prepared.shape), "datatype": "UINT8", "data": prepared.reshape(-1).tolist()}
        v2 = client.post("/v2/models/fruit/infer", json={"inputs": [tensor], "outputs": [{"name": "topk_indices"}, {"name": "topk_logits"}]})
        assert v2.status_code == 200, v2.text
        v2_indices, v2_values = (output["data"] for output in v2.json()["outputs"])

    for expected, tolerance in ((expected_v2, 1e-4), (expected_v1, 2e-2)):  # v1 resizes the PIL image: pixels differ by a level
        indices, values = _top(expected)
        assert served_indices == indices
        torch.testing.assert_close(served_values, values, atol=tolerance, rtol=0)
    assert torch.tensor(v2_indices).reshape(-1, RELEASED).tolist() == served_indices  # the prepared tensor, unchanged
    torch.testing.assert_close(torch.tensor(v2_values).reshape(-1, RELEASED), served_values, atol=1e-5, rtol=0)
    # The comparison sees the preparation: stretching the photos instead gives other values.
    assert (_top(stretched)[1] - served_values).abs().max() > 10 * 2e-2
    assert len({row[0] for row in served_indices}) > 1  # and the model tells the photos apart
