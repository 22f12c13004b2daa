"""Routes through the ASGI app: operations, v1 (three input forms) and v2 (Open Inference Protocol)."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from app.codecs import FLOAT32_LOWEST
from app.runner import ModelRunner
from app.schemas import InferenceResponse, ModelInfo, ModelMetadata, PredictResponse, ServerMetadata
from defense import make_policy, tempered_softmax
from tests.api.conftest import AppClient, Reference, make_settings, random_images, running_app

STINGY = make_policy("stingy", sparse_ratio=0.2)


def png_bytes(image: torch.Tensor, mode: str = "L") -> bytes:
    """``uint8 [C, H, W]`` -> PNG file bytes."""
    array = image[0].numpy() if mode == "L" else image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def v1_pairs(response: dict) -> list[list[tuple[int, float]]]:
    return [[(entry["class"], entry["logit"]) for entry in prediction["top"]] for prediction in response["predictions"]]


def expected_pairs(released) -> list[list[tuple[int, float]]]:  # type: ignore[no-untyped-def]
    return [list(zip(i, v)) for i, v in zip(released.indices.tolist(), released.values.tolist())]


# ---- operations ----------------------------------------------------------------------------------------

def test_health_readiness_metrics_and_docs(stingy_app: AppClient) -> None:
    assert stingy_app.get("/healthz").json() == {"status": "ok"}
    assert stingy_app.get("/readyz").json() == {"status": "ready", "model": "teacher"}
    metrics = stingy_app.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "stingy_requests_total" in metrics.text
    assert stingy_app.get("/docs").status_code == 200


def test_openapi_documents_both_apis_with_resolvable_references(stingy_app: AppClient) -> None:
    document = stingy_app.get("/openapi.json").json()
    for path in ("/v1/model", "/v1/predict", "/v2", "/v2/models/{name}", "/v2/models/{name}/infer", "/healthz", "/readyz", "/metrics"):
        assert path in document["paths"], path
    schemas = document["components"]["schemas"]
    references = {ref for ref in _references(document)}
    assert "#/components/schemas/PredictRequest" in references and "#/components/schemas/InferenceRequest" in references
    for ref in references:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


def _references(node: object):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


@pytest.mark.parametrize("workers", [1, 2])
def test_not_ready_until_warm_up_finishes(tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Whatever ``workers`` says (``auto`` by default): only a worker process of ``--workers N`` waits for its
    warm-up before it takes connections; an app run in process, like a single server, answers ``not_ready``."""
    release = threading.Event()
    original = ModelRunner.warm_up

    def held_warm_up(self: ModelRunner) -> float:
        assert release.wait(30), "the test never released the warm-up"
        return original(self)

    monkeypatch.setattr(ModelRunner, "warm_up", held_warm_up)
    with running_app(make_settings(tiny_teacher, tmp_path, workers=workers), wait_ready=False) as client:
        try:
            assert client.get("/healthz").status_code == 200
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 400
            assert client.get("/v2/models/teacher/ready").status_code == 400
            predict = client.post("/v1/predict", json={"pixels": random_images(1, 0).tolist()})
            assert predict.status_code == 503 and predict.json()["code"] == "not_ready"
        finally:
            release.set()
        assert client.portal.call(client.service.wait_ready)
        assert client.get("/readyz").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


# ---- v1 ------------------------------------------------------------------------------------------------

def test_v1_model_describes_model_and_policy(stingy_app: AppClient, reference: Reference) -> None:
    info = stingy_app.get("/v1/model").json()
    ModelInfo.model_validate(info)
    card = reference.card
    assert info == {
        "name": "teacher", "version": "1", "num_classes": card.num_classes,
        "class_names": list(card.class_names), "input_shape": [1, 28, 28], "policy": {"name": "stingy", "sparse_ratio": 0.2},
        "released_per_image": 2, "discloses": "the raw logits of 2 of 10 classes (the top N); nothing of the other 8",
    }


def test_v1_model_shows_the_architecture_only_when_the_owner_asks(tiny_teacher: Path, tmp_path: Path, reference: Reference) -> None:
    with running_app(make_settings(tiny_teacher, tmp_path, show_model_details=True)) as client:
        info = client.get("/v1/model").json()
    assert (info["arch"], info["dataset"]) == (reference.card.arch, reference.card.dataset)


def test_v1_input_forms_release_the_reference_pairs(stingy_app: AppClient, reference: Reference) -> None:
    images = random_images(3, seed=1)
    expected = expected_pairs(reference.released(images, STINGY))
    files = [png_bytes(image) for image in images]
    answers = {
        "pixels 0-255, [B][C][H][W]": stingy_app.post("/v1/predict", json={"pixels": images.tolist()}),
        "pixels 0-255, [B][H][W]": stingy_app.post("/v1/predict", json={"pixels": images[:, 0].tolist()}),
        "base64 PNG": stingy_app.post("/v1/predict", json={"images": [base64.b64encode(f).decode() for f in files]}),
        "data URL": stingy_app.post("/v1/predict", json={"images": ["data:image/png;base64," + base64.b64encode(f).decode() for f in files]}),
        "multipart": stingy_app.post("/v1/predict", files=[("files", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)]),
    }
    for form, response in answers.items():
        assert response.status_code == 200, (form, response.text)
        document = response.json()
        PredictResponse.model_validate(document)
        assert v1_pairs(document) == expected, form
        assert [p["label"] for p in document["predictions"]] == [row[0][0] for row in expected]
        assert all(p["class_name"] == reference.card.class_names[p["label"]] for p in document["predictions"])
        assert document["model"] == "teacher" and document["policy"] == STINGY.config()
    floats = images.float() / 255.0
    float_answer = stingy_app.post("/v1/predict", json={"pixels": floats.tolist()}).json()
    assert v1_pairs(float_answer) == expected_pairs(reference.released(floats, STINGY))


def test_v1_converts_and_resizes_encoded_images(stingy_app: AppClient, reference: Reference) -> None:
    colour = random_images(2, seed=2, shape=(3, 40, 36))
    pngs = [png_bytes(image, "RGB") for image in colour]
    jpeg = io.BytesIO()
    Image.fromarray(colour[0].permute(1, 2, 0).numpy(), "RGB").save(jpeg, "JPEG", quality=90)
    files = [*pngs, jpeg.getvalue()]
    expected_images = torch.stack([
        TF.resize(TF.pil_to_tensor(Image.open(io.BytesIO(f)).convert("L")), [28, 28], antialias=True) for f in files
    ])
    response = stingy_app.post("/v1/predict", json={"images": [base64.b64encode(f).decode() for f in files]})
    assert response.status_code == 200, response.text
    assert v1_pairs(response.json()) == expected_pairs(reference.released(expected_images, STINGY))


def test_v1_scales_16_bit_gray_png_to_8_bits(stingy_app: AppClient, reference: Reference) -> None:
    deep = (random_images(1, seed=7).numpy()[0, 0].astype(np.uint16) * 257 + 100)
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, "PNG")
    response = stingy_app.post("/v1/predict", files=[("files", ("deep.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 200, response.text
    expected = torch.from_numpy((deep.astype(np.int64) // 257).astype(np.uint8)).reshape(1, 1, 28, 28)
    assert v1_pairs(response.json()) == expected_pairs(reference.released(expected, STINGY))


# ---- v2 ------------------------------------------------------------------------------------------------

def test_v2_server_and_model_metadata(stingy_app: AppClient) -> None:
    server = stingy_app.get("/v2").json()
    ServerMetadata.model_validate(server)
    assert server["name"] == "stingy-teacher" and server["extensions"] == [] and server["version"]
    live, ready = stingy_app.get("/v2/health/live"), stingy_app.get("/v2/health/ready")
    assert (live.status_code, live.content, ready.status_code, ready.content) == (200, b"", 200, b"")
    metadata = stingy_app.get("/v2/models/teacher").json()
    ModelMetadata.model_validate(metadata)
    assert metadata == {
        "name": "teacher", "versions": ["1"], "platform": "pytorch",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "topk_indices", "datatype": "INT64", "shape": [-1, 2]},
                    {"name": "topk_logits", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert stingy_app.get("/v2/models/teacher/versions/1").json() == metadata
    assert stingy_app.get("/v2/models/teacher/versions/1/ready").status_code == 200
    for path in ("/v2/models/other", "/v2/models/teacher/versions/2", "/v2/models/other/ready"):
        missing = stingy_app.get(path)
        assert missing.status_code == 404 and missing.json()["code"] == "not_found", path


def _v2_input(images: torch.Tensor, datatype: str, nested: bool = False) -> dict:
    data = images if datatype == "UINT8" else images.float() / 255.0
    return {"name": "images", "shape": list(images.shape), "datatype": datatype,
            "data": data.tolist() if nested else data.reshape(-1).tolist()}


@pytest.mark.parametrize(("datatype", "nested", "path"), [
    ("UINT8", False, "/v2/models/teacher/infer"),
    ("FP32", False, "/v2/models/teacher/infer"),
    ("FP32", True, "/v2/models/teacher/versions/1/infer"),
])
def test_v2_infer_outputs_match_reference(stingy_app: AppClient, reference: Reference, datatype: str, nested: bool, path: str) -> None:
    images = random_images(4, seed=3)
    response = stingy_app.post(path, json={"id": "req-7", "inputs": [_v2_input(images, datatype, nested)]})
    assert response.status_code == 200, response.text
    document = response.json()
    InferenceResponse.model_validate(document)
    assert (document["model_name"], document["model_version"], document["id"]) == ("teacher", "1", "req-7")
    outputs = {output["name"]: output for output in document["outputs"]}
    assert [output["name"] for output in document["outputs"]] == ["topk_indices", "topk_logits", "probabilities"]
    released = reference.released(images if datatype == "UINT8" else images.float() / 255.0, STINGY)
    assert outputs["topk_indices"] == {"name": "topk_indices", "datatype": "INT64", "shape": [4, 2],
                                       "data": released.indices.reshape(-1).tolist()}
    assert outputs["topk_logits"] == {"name": "topk_logits", "datatype": "FP32", "shape": [4, 2],
                                      "data": released.values.reshape(-1).tolist()}
    probabilities = tempered_softmax(released.to_dense(10))
    assert outputs["probabilities"]["shape"] == [4, 10]
    assert outputs["probabilities"]["data"] == probabilities.reshape(-1).tolist()


def test_v2_honours_requested_outputs_and_omits_absent_id(stingy_app: AppClient) -> None:
    images = random_images(2, seed=4)
    request = {"inputs": [_v2_input(images, "UINT8")], "outputs": [{"name": "probabilities"}, {"name": "topk_indices"}]}
    document = stingy_app.post("/v2/models/teacher/infer", json=request).json()
    assert [output["name"] for output in document["outputs"]] == ["probabilities", "topk_indices"]
    assert "id" not in document


def test_v2_binary_tensor_data_extension(stingy_app: AppClient, reference: Reference) -> None:
    """The request form Triton clients send by default: a JSON header, then the raw little-endian tensor."""
    images = random_images(2, seed=5)
    for datatype, raw in (("UINT8", images.numpy().tobytes()), ("FP32", (images.float() / 255.0).numpy().astype("<f4").tobytes())):
        header = json.dumps({"inputs": [{"name": "images", "shape": [2, 1, 28, 28], "datatype": datatype,
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "outputs": [{"name": "topk_logits", "parameters": {"binary_data": True}}]}).encode()
        response = stingy_app.post("/v2/models/teacher/infer", content=header + raw,
                                   headers={"Inference-Header-Content-Length": str(len(header))})
        assert response.status_code == 200, response.text
        released = reference.released(images if datatype == "UINT8" else images.float() / 255.0, STINGY)
        assert response.json()["outputs"][0]["data"] == released.values.reshape(-1).tolist()


def test_released_minus_infinity_is_encoded_finitely(tiny_teacher: Path, tmp_path: Path, reference: Reference) -> None:
    """``rounding`` releases log 0 = -inf for classes rounded away: v1 leaves them out, v2 sends float32 lowest."""
    policy = make_policy("rounding", decimals=1)
    images = random_images(8, seed=6)
    released = reference.released(images, policy)
    masked = torch.isneginf(released.values)
    assert masked.any(), "the test needs some classes rounded to zero"
    with running_app(make_settings(tiny_teacher, tmp_path, policy="rounding", policy_params={"decimals": 1},
                                   allow_disclosing_policy=True)) as client:
        v1 = client.post("/v1/predict", json={"pixels": images.tolist()})
        v2 = client.post("/v2/models/teacher/infer", json={"inputs": [_v2_input(images, "UINT8")]})
    for response in (v1, v2):
        assert response.status_code == 200 and "Infinity" not in response.text and "NaN" not in response.text
    for prediction, row_values, row_masked in zip(v1.json()["predictions"], released.values, masked):
        assert len(prediction["top"]) == int((~row_masked).sum())
        assert [entry["logit"] for entry in prediction["top"]] == row_values[~row_masked].tolist()
    logits = next(output for output in v2.json()["outputs"] if output["name"] == "topk_logits")["data"]
    expected = np.where(masked.reshape(-1).numpy(), FLOAT32_LOWEST, released.values.reshape(-1).numpy())
    assert logits == expected.tolist()
