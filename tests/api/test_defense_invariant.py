"""The invariant that makes the server a defense: for every route and every policy, a response carries at
most N released values per image, exactly the in-process policy output, never a value of a masked class
and never anything else derived from the raw logits. ``gaussian_noise`` draws fresh noise on every call, so
its answers are checked for what it promises instead: noise of its configured scale (a statistical test), the
teacher's top-1 where the noise cannot overturn it, and no raw logit or unperturbed distribution released.
On the CPU, and on CUDA where a GPU is present (the server and the in-process reference on the same device).
And the teacher's accuracy through the API is its accuracy in-process, exactly, on the real Fashion-MNIST
test set."""

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
from defense.perturbation import GaussianNoise
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
NOISE_CASE = POLICY_CASES.index(("gaussian_noise", {"sigma": 0.05}))
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


def test_every_registered_policy_is_covered() -> None:
    assert {name for name, _ in POLICY_CASES} == set(POLICIES)


@pytest.fixture(scope="module", params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def device_reference(tiny_teacher: Path, device: str) -> Reference:
    return Reference(tiny_teacher, device)


@pytest.fixture(scope="module")
def policy_apps(tiny_teacher: Path, device: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, AppClient]]:
    """One running app per policy case, on ``device``."""
    folder = tmp_path_factory.mktemp("policies")
    apps: dict[int, AppClient] = {}
    contexts = []
    try:
        for case, (name, params) in enumerate(POLICY_CASES):
            top_n = {key: value for key, value in params.items() if key in ("sparse_ratio", "k")}
            others = {key: value for key, value in params.items() if key not in top_n}
            disclosing = not make_policy(name, **params).disclosure(10).withholds
            context = running_app(make_settings(tiny_teacher, folder, device=device, policy=name, policy_params=others,
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


def _check_invariant(document: dict, images: torch.Tensor, policy: LogitPolicy, reference: Reference) -> None:
    num_classes = reference.card.num_classes
    count = policy.released_count(num_classes)
    raw = reference.logits(images)
    indices, values = _released_from_response(document, count, num_classes)
    assert all(len(row) <= count for row in values), "more than N released values for an image"
    if policy.disclosure(num_classes).withholds:  # served without --allow-disclosing-policy: the README's promise
        assert count < num_classes and policy.masks
    if isinstance(policy, GaussianNoise):
        _check_noisy_release(document, indices, values, raw, policy.sigma)
        return
    released = reference.released(images, policy)
    if policy.masks:
        kept = torch.zeros_like(raw, dtype=torch.bool).scatter_(1, released.indices, True)
        masked_raw = {float(v) for v in raw[~kept].tolist()}
        assert not masked_raw & set(_numbers(document)), "a masked class's logit left the server"
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


def _top1_is_safe(clean: torch.Tensor, sigma: float) -> torch.Tensor:
    """Rows whose top-1 the noise cannot overturn: the probability margin over every other class exceeds 6
    standard deviations of the difference of two noise draws (``6 sqrt(2) sigma``; a flip has odds below 1e-8)."""
    top2 = clean.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]) > 6.0 * math.sqrt(2.0) * sigma


def _check_noisy_release(document: dict, indices: list[list[int]] | None, values: list[list[float]], raw: torch.Tensor,
                         sigma: float) -> None:
    """What ``gaussian_noise`` promises in every answer: released values are ``log p'`` of a distribution
    (descending, summing to 1), no raw logit among them, no row released as the clean ``log p``, and the
    teacher's top-1 first where the noise cannot overturn it."""
    clean = tempered_softmax(raw)
    clean_log = {(row, v) for row, line in enumerate(clean.log().tolist()) for v in line}
    raw_values = {(row, v) for row, line in enumerate(raw.tolist()) for v in line}
    safe = _top1_is_safe(clean, sigma)
    for row, line in enumerate(values):
        probs = [math.exp(v) if v != FLOAT32_LOWEST else 0.0 for v in line]
        assert line == sorted(line, reverse=True), "released pairs must be in descending order"
        assert sum(probs) == pytest.approx(1.0, abs=1e-5), f"row {row}: the released values are not log-probabilities"
        assert not {(row, v) for v in line} & raw_values, f"row {row}: a raw logit left the server"
        assert len({(row, v) for v in line} & clean_log) < len(line), f"row {row}: no released value was perturbed"
        if indices is not None and bool(safe[row]):
            assert indices[row][0] == int(raw[row].argmax()), f"row {row}: the noise overturned a top-1 it cannot overturn"
    if "predictions" in document:
        assert [p["label"] for p in document["predictions"]] == [row[0] for row in indices or []]


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.integers(0, len(POLICY_CASES) - 1), route=st.sampled_from(ROUTES), seed=st.integers(0, 2**16), count=st.integers(1, 4))
def test_only_the_policy_output_leaves_the_server(policy_apps: dict[int, AppClient], device_reference: Reference, case: int, route: str,
                                                 seed: int, count: int) -> None:
    name, params = POLICY_CASES[case]
    policy = make_policy(name, **params)
    images = random_images(count, seed)
    document, sent = _send(policy_apps[case], route, images)
    assert "error" not in document, document
    _check_invariant(document, sent, policy, device_reference)


@pytest.mark.parametrize("case", range(len(POLICY_CASES)), ids=[f"{n}{p or ''}" for n, p in POLICY_CASES])
def test_every_policy_and_route_once(policy_apps: dict[int, AppClient], device_reference: Reference, case: int) -> None:
    name, params = POLICY_CASES[case]
    policy = make_policy(name, **params)
    info = policy_apps[case].get("/v1/model").json()
    assert info["policy"] == policy.public_config() and info["released_per_image"] == policy.released_count(10)
    assert "seed" not in info["policy"], "the noise seed would let a client replay the noise"
    assert info["discloses"] == policy.disclosure(10).summary
    for route in ROUTES:
        document, sent = _send(policy_apps[case], route, random_images(3, seed=case))
        assert "error" not in document, (route, document)
        _check_invariant(document, sent, policy, device_reference)


def _noise_distance(clean: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Per image, the squared distance ``sum_k (p'(k) - p(k))^2`` between released and clean probabilities."""
    return ((noisy - clean) ** 2).sum(axis=-1)


def _modelled_distance(clean: np.ndarray, sigma: float, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per image of :func:`_noise_distance` under the documented model, simulated here:
    ``p' = normalise(max(p + e, 0))``, ``e ~ N(0, sigma^2)``, the clean ``p`` where the noise wipes a row out."""
    rng = np.random.default_rng(seed)
    noisy = np.maximum(clean + sigma * rng.standard_normal((draws, *clean.shape)), 0.0)
    total = noisy.sum(axis=-1, keepdims=True)
    noisy = np.where(total > 0, noisy / np.where(total > 0, total, 1.0), clean)
    distance = _noise_distance(clean, noisy)
    return distance.mean(axis=0), distance.var(axis=0)


def test_gaussian_noise_has_its_configured_scale(policy_apps: dict[int, AppClient], device_reference: Reference) -> None:
    """256 test images of the teacher's task in one request. Where the noise cannot overturn the top-1, it is
    the teacher's. The mean squared distance between released and clean probabilities matches the documented
    noise model at the configured sigma within 5 standard errors (the images are independent; the error of the
    simulated expectation is added); the expectations at 0.8 and 1.25 sigma lie at least 2 standard errors
    beyond that band, so a server whose noise is a fifth off its configuration fails."""
    sigma = float(POLICY_CASES[NOISE_CASE][1]["sigma"])
    images = next(load_dataset("synthetic", "test").batches(256)).images  # the teacher is confident on some of them
    document, sent = _send(policy_apps[NOISE_CASE], "v2 uint8", images)
    outputs = {output["name"]: output for output in document["outputs"]}
    indices = torch.tensor(outputs["topk_indices"]["data"]).reshape(outputs["topk_indices"]["shape"])
    values = torch.tensor(outputs["topk_logits"]["data"], dtype=torch.float64).reshape(indices.shape)
    noisy = torch.zeros(indices.shape, dtype=torch.float64).scatter_(1, indices, values.exp()).numpy()  # FLOAT32_LOWEST -> 0
    raw = device_reference.logits(sent)
    clean = tempered_softmax(raw.double()).numpy()

    safe = _top1_is_safe(torch.from_numpy(clean), sigma)
    assert int(safe.sum()) >= 10, "too few images with a safe top-1 to check it"
    assert torch.equal(indices[safe, 0], raw.argmax(dim=-1)[safe]), "the noise overturned a top-1 it cannot overturn"

    observed = float(_noise_distance(clean, noisy).mean())
    draws, n = 400, len(images)
    expected, variance = _modelled_distance(clean, sigma, draws, seed=7)
    error = math.sqrt(variance.sum() / n**2 + variance.sum() / (draws * n**2))
    assert abs(observed - expected.mean()) <= 5.0 * error, (observed, float(expected.mean()), error)
    for scale in (0.8, 1.25):
        other, _ = _modelled_distance(clean, scale * sigma, draws, seed=8)
        assert abs(other.mean() - expected.mean()) > 7.0 * error, f"the test cannot tell sigma from {scale} sigma"


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
    # The teacher's accuracy as its training run measured it on the same test set, saved in its card.
    assert card.test_accuracy is not None and card.test_accuracy > 50.0  # a trained teacher, not noise
    assert api_accuracy == pytest.approx(card.test_accuracy, abs=1e-9) == accuracy(logits, test.labels, policy)
