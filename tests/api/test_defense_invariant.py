"""The invariant that makes the server a defense: for every route and every policy, a response carries at
most N released values per image, exactly the in-process policy output, never a value of a masked class
and never anything else derived from the raw logits. And the teacher's accuracy through the API is its
accuracy in-process, exactly, on the real Fashion-MNIST test set."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.codecs import FLOAT32_LOWEST
from defense import POLICIES, LogitPolicy, make_policy, tempered_softmax
from tests.api.conftest import AppClient, Reference, make_settings, random_images, running_app
from tests.conftest import needs_fashion_mnist
from training.checkpoint import load_checkpoint
from training.data import load_dataset
from training.engine import accuracy, predict_logits

POLICY_CASES: list[tuple[str, dict[str, Any]]] = [
    ("normal", {}), ("stingy", {"sparse_ratio": 0.2}), ("stingy", {"k": 1}), ("stingy_smooth", {"sparse_ratio": 0.3}),
    ("reverse", {}), ("least", {"k": 3}), ("label_only", {}), ("rounding", {"decimals": 2}),
    ("gaussian_noise", {"sigma": 0.05}), ("reverse_sigmoid", {"beta": 0.5}),
]
ROUTES = ["v1 pixels", "v1 base64", "v1 multipart", "v2 uint8", "v2 fp32", "v2 binary", "v2 one output"]


def test_every_registered_policy_is_covered() -> None:
    assert {name for name, _ in POLICY_CASES} == set(POLICIES)


@pytest.fixture(scope="module")
def policy_apps(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, AppClient]]:
    """One running app per policy case."""
    folder = tmp_path_factory.mktemp("policies")
    apps: dict[int, AppClient] = {}
    contexts = []
    try:
        for case, (name, params) in enumerate(POLICY_CASES):
            top_n = {key: value for key, value in params.items() if key in ("sparse_ratio", "k")}
            others = {key: value for key, value in params.items() if key not in top_n}
            disclosing = not make_policy(name, **params).disclosure(10).withholds
            context = running_app(make_settings(tiny_teacher, folder, policy=name, policy_params=others,
                                                allow_disclosing_policy=disclosing, **top_n))
            contexts.append(context)
            apps[case] = context.__enter__()
        yield apps
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy(), "L").save(buffer, "PNG")
    return buffer.getvalue()


def _send(client: AppClient, route: str, images: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Post ``images`` by ``route``; the JSON answer and the images as the server saw them (uint8 or float)."""
    floats = images.float() / 255.0
    if route == "v1 pixels":
        return client.post("/v1/predict", json={"pixels": images.tolist()}).json(), images
    if route == "v1 base64":
        return client.post("/v1/predict", json={"images": [base64.b64encode(_png(i)).decode() for i in images]}).json(), images
    if route == "v1 multipart":
        return client.post("/v1/predict", files=[("files", (f"{n}.png", _png(i), "image/png")) for n, i in enumerate(images)]).json(), images
    if route == "v2 binary":
        header = json.dumps({"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "FP32",
                                         "parameters": {"binary_data_size": images.numel() * 4}}]}).encode()
        response = client.post("/v2/models/teacher/infer", content=header + floats.numpy().astype("<f4").tobytes(),
                               headers={"Inference-Header-Content-Length": str(len(header))})
        return response.json(), floats
    sent = floats if route == "v2 fp32" else images
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "FP32" if route == "v2 fp32" else "UINT8",
              "data": sent.reshape(-1).tolist()}
    request: dict[str, Any] = {"inputs": [tensor]}
    if route == "v2 one output":
        request["outputs"] = [{"name": "topk_logits"}]
    return client.post("/v2/models/teacher/infer", json=request).json(), sent


def _numbers(node: object) -> Iterator[float]:
    """Every number anywhere in a JSON document."""
    if isinstance(node, bool):
        return
    if isinstance(node, (int, float)):
        yield float(node)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _numbers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _numbers(item)


def _released_from_response(document: dict, count: int, num_classes: int) -> tuple[list[list[int]], list[list[float]]]:
    if "predictions" in document:
        rows = [p["top"] for p in document["predictions"]]
        return [[e["class"] for e in row] for row in rows], [[e["logit"] for e in row] for row in rows]
    outputs = {o["name"]: o for o in document["outputs"]}
    values = outputs["topk_logits"]
    assert values["shape"][1] == count and values["datatype"] == "FP32"
    data = np.array(values["data"]).reshape(values["shape"])
    indices = outputs["topk_indices"]["data"] if "topk_indices" in outputs else None
    index_rows = np.array(indices).reshape(values["shape"]).tolist() if indices is not None else None
    if "probabilities" in outputs:
        assert outputs["probabilities"]["shape"][1] == num_classes
    return index_rows, data.tolist()  # type: ignore[return-value]


def _check_invariant(document: dict, images: torch.Tensor, policy: LogitPolicy, reference: Reference, exact: bool) -> None:
    num_classes = reference.card.num_classes
    count = policy.released_count(num_classes)
    raw = reference.logits(images)
    released = policy.sparse(raw)
    indices, values = _released_from_response(document, count, num_classes)
    assert all(len(row) <= count for row in values), "more than N released values for an image"
    if policy.disclosure(num_classes).withholds:  # served without --allow-disclosing-policy: the README's promise
        assert count < num_classes and policy.masks
    if policy.masks:
        kept = torch.zeros_like(raw, dtype=torch.bool).scatter_(1, released.indices, True)
        masked_raw = {float(v) for v in raw[~kept].tolist()}
        assert not masked_raw & set(_numbers(document)), "a masked class's logit left the server"
    if not exact:
        return
    finite = [[v for v in row if math.isfinite(v)] for row in released.values.tolist()]
    if "predictions" in document:
        assert values == finite and indices == [row[: len(f)] for row, f in zip(released.indices.tolist(), finite)]
        assert [p["label"] for p in document["predictions"]] == released.indices[:, 0].tolist()
    else:
        assert values == [[v if math.isfinite(v) else FLOAT32_LOWEST for v in row] for row in released.values.tolist()]
        assert indices is None or indices == released.indices.tolist()
    # Nothing else: every number in the response is a released index or value, a probability derived from
    # them, a shape or a label.
    probabilities = tempered_softmax(released.to_dense(num_classes)).reshape(-1).tolist()
    parameters = [float(v) for v in policy.public_config().values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    allowed = {*map(float, released.indices.reshape(-1).tolist()), *(float(v) for row in finite for v in row), *probabilities,
               float(images.shape[0]), float(count), float(num_classes), FLOAT32_LOWEST, *parameters}
    assert set(_numbers(document)) <= allowed


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.integers(0, len(POLICY_CASES) - 1), route=st.sampled_from(ROUTES), seed=st.integers(0, 2**16), count=st.integers(1, 4))
def test_only_the_policy_output_leaves_the_server(policy_apps: dict[int, AppClient], reference: Reference, case: int, route: str,
                                                 seed: int, count: int) -> None:
    name, params = POLICY_CASES[case]
    policy = make_policy(name, **params)
    images = random_images(count, seed)
    document, sent = _send(policy_apps[case], route, images)
    assert "error" not in document, document
    # gaussian_noise draws fresh noise on every call: its values cannot match an in-process call.
    _check_invariant(document, sent, policy, reference, exact=name != "gaussian_noise")


@pytest.mark.parametrize("case", range(len(POLICY_CASES)), ids=[f"{n}{p or ''}" for n, p in POLICY_CASES])
def test_every_policy_and_route_once(policy_apps: dict[int, AppClient], reference: Reference, case: int) -> None:
    name, params = POLICY_CASES[case]
    policy = make_policy(name, **params)
    info = policy_apps[case].get("/v1/model").json()
    assert info["policy"] == policy.public_config() and info["released_per_image"] == policy.released_count(10)
    assert "seed" not in info["policy"], "the noise seed would let a client replay the noise"
    assert info["discloses"] == policy.disclosure(10).summary
    for route in ROUTES:
        document, sent = _send(policy_apps[case], route, random_images(3, seed=case))
        assert "error" not in document, (route, document)
        _check_invariant(document, sent, policy, reference, exact=name != "gaussian_noise")


@pytest.mark.parametrize(("name", "params"), [(n, p) for n, p in POLICY_CASES if not make_policy(n, **p).disclosure(10).withholds]
                         + [("stingy", {"sparse_ratio": 0.95}), ("stingy", {"k": 10}), ("least", {"k": 10})])
def test_a_policy_that_releases_every_class_needs_the_explicit_flag(tiny_teacher: Path, tmp_path: Path, name: str,
                                                                     params: dict[str, Any]) -> None:
    top_n = {key: value for key, value in params.items() if key in ("sparse_ratio", "k")}
    others = {key: value for key, value in params.items() if key not in top_n}
    settings_ = make_settings(tiny_teacher, tmp_path, policy=name, policy_params=others, **top_n)
    with pytest.raises(ValueError, match="--allow-disclosing-policy"), running_app(settings_):
        pass
    assert settings_.model_copy(update={"allow_disclosing_policy": True}).check_disclosure(10) == make_policy(name, **params).disclosure(10)


@pytest.mark.slow
@pytest.mark.real_data
@needs_fashion_mnist
def test_accuracy_through_the_api_equals_in_process_accuracy(fmnist_teacher: Path, tmp_path: Path) -> None:
    """The whole Fashion-MNIST test set through v2 in batches of 500: every top-1 equals the in-process
    teacher's, so accuracy is identical, for the stingy policy as for the raw teacher."""
    batch = 500
    test = load_dataset("fashion-mnist", "test")
    model, card = load_checkpoint(fmnist_teacher, "cpu")
    logits = predict_logits(model, test, card.mean, card.std, batch_size=batch, amp=False)
    policy = make_policy("stingy", sparse_ratio=0.1)
    settings_ = make_settings(fmnist_teacher, tmp_path, sparse_ratio=0.1, max_batch_size=batch, max_images_per_request=batch,
                              max_body_bytes=32 * 1024 * 1024)
    labels = []
    with running_app(settings_) as client:
        for images in (b.images for b in test.batches(batch)):
            request = {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.reshape(-1).tolist()}],
                       "outputs": [{"name": "topk_indices"}]}
            response = client.post("/v2/models/teacher/infer", json=request)
            assert response.status_code == 200, response.text
            output = response.json()["outputs"][0]
            assert output["shape"] == [len(images), 1]
            labels += output["data"]
    api_top1 = torch.tensor(labels)
    assert torch.equal(api_top1, logits.argmax(dim=-1))
    api_accuracy = 100.0 * int((api_top1 == test.labels).sum()) / len(test)
    assert api_accuracy == accuracy(logits, test.labels) == accuracy(logits, test.labels, policy)
    assert api_accuracy > 50.0  # a trained teacher, not noise
