"""What a bad client can send, and what it gets back: a 4xx JSON error naming the field, never a 500
and never a stack trace. The table below is the one in docs/serving.md."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.api.conftest import AppClient, make_settings, random_images, running_app

MAX_IMAGES = 4
MAX_BODY = 64 * 1024
MAX_PIXELS = 100 * 100


def _encoded(format_: str, size: tuple[int, int] = (28, 28)) -> str:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format_)
    return base64.b64encode(buffer.getvalue()).decode()


def _gray(value: object = 0) -> list:
    return [[[[value] * 28] * 28]]


def _v2(**tensor: Any) -> dict:
    return {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784, **tensor}]}


PNG = _encoded("PNG")
BINARY_HEADER = json.dumps(_v2(data=None, parameters={"binary_data_size": 784})).encode()
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (case, method, path, httpx arguments, status, fragment of the error message)
    ("body is not JSON", "POST", "/v1/predict", {"content": b"{pixels:", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("NaN constant", "POST", "/v1/predict", {"content": b'{"pixels": [NaN]}'}, 400, "NaN is not valid JSON"),
    ("Infinity constant", "POST", "/v2/models/teacher/infer", {"content": b'{"inputs": [Infinity]}'}, 400, "Infinity is not valid JSON"),
    ("nesting bomb", "POST", "/v1/predict", {"content": b"[" * 50_000}, 400, "nested too deeply"),
    ("JSON array body", "POST", "/v1/predict", {"json": []}, 400, "valid dictionary"),
    ("neither images nor pixels", "POST", "/v1/predict", {"json": {}}, 400, "exactly one of 'images' and 'pixels'"),
    ("both images and pixels", "POST", "/v1/predict", {"json": {"images": [PNG], "pixels": _gray()}}, 400, "exactly one"),
    ("misspelt field", "POST", "/v1/predict", {"json": {"image": [PNG]}}, 400, "image: Extra inputs are not permitted"),
    ("images not strings", "POST", "/v1/predict", {"json": {"images": [1]}}, 400, "images[0]: Input should be a valid string"),
    ("no images", "POST", "/v1/predict", {"json": {"images": []}}, 400, "images must hold at least one image"),
    ("no pixels", "POST", "/v1/predict", {"json": {"pixels": []}}, 400, "pixels must hold at least one image"),
    ("bad base64", "POST", "/v1/predict", {"json": {"images": [PNG, "not base64!"]}}, 400, "images[1] is not valid base64"),
    ("data URL not base64", "POST", "/v1/predict", {"json": {"images": ["data:image/png," + PNG]}}, 400, "images[0] is a data URL without ';base64'"),
    ("base64 of text", "POST", "/v1/predict", {"json": {"images": [base64.b64encode(b"hello").decode()]}}, 400, "images[0] is not a readable PNG or JPEG"),
    ("truncated PNG", "POST", "/v1/predict", {"json": {"images": [base64.b64encode(base64.b64decode(PNG)[:40]).decode()]}}, 400, "not a readable PNG or JPEG"),
    ("GIF image", "POST", "/v1/predict", {"json": {"images": [_encoded("GIF")]}}, 400, "images[0] is a GIF image; send PNG or JPEG"),
    ("image too many pixels", "POST", "/v1/predict", {"json": {"images": [_encoded("PNG", (101, 100))]}}, 413, "images[0] is 101x100 pixels"),
    ("too many images", "POST", "/v1/predict", {"json": {"images": [PNG] * (MAX_IMAGES + 1)}}, 413, "images holds 5 images; the limit is 4"),
    ("too many pixel images", "POST", "/v1/predict", {"json": {"pixels": _gray() * (MAX_IMAGES + 1)}}, 413, "pixels holds 5 images"),
    ("ragged pixels", "POST", "/v1/predict", {"json": {"pixels": [[[0, 1], [2]]]}}, 400, "regular nested list"),
    ("wrong pixel shape", "POST", "/v1/predict", {"json": {"pixels": [[[[0] * 27] * 28]]}}, 400, "pixels must have shape [B, 1, 28, 28] or [B, 28, 28], got [1, 1, 28, 27]"),
    ("pixel above 255", "POST", "/v1/predict", {"json": {"pixels": _gray(300)}}, 400, "pixels[0][0][0][0] = 300 is outside 0-255"),
    ("negative pixel", "POST", "/v1/predict", {"json": {"pixels": _gray(-1)}}, 400, "= -1 is outside 0-255"),
    ("float pixel above 1", "POST", "/v1/predict", {"json": {"pixels": _gray(1.5)}}, 400, "= 1.5 is not a number in [0, 1]"),
    ("float overflow to inf", "POST", "/v1/predict", {"content": json.dumps({"pixels": _gray(0.5)}).replace("0.5", "1e400", 1).encode()}, 400, "= inf is not a number in [0, 1]"),
    ("string pixels", "POST", "/v1/predict", {"json": {"pixels": _gray("7")}}, 400, "pixels must hold only numbers"),
    ("boolean pixels", "POST", "/v1/predict", {"json": {"pixels": _gray(True)}}, 400, "found booleans"),
    ("null pixels", "POST", "/v1/predict", {"json": {"pixels": _gray(None)}}, 400, "pixels must hold only numbers"),
    ("pixels not a list", "POST", "/v1/predict", {"json": {"pixels": "abc"}}, 400, "pixels: Input should be a valid list"),
    ("unsupported content type", "POST", "/v1/predict", {"content": b"x=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 400, "content-type 'application/x-www-form-urlencoded' is not supported"),
    ("multipart without files", "POST", "/v1/predict", {"data": {"note": "hi"}, "files": {"other": ("a.png", b"x")}}, 400, "unexpected form field"),
    ("multipart too many files", "POST", "/v1/predict", {"files": [("files", (f"{i}.png", b"x")) for i in range(MAX_IMAGES + 1)]}, 413, "Too many files"),
    ("multipart no boundary", "POST", "/v1/predict", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, "multipart body"),
    ("multipart file not an image", "POST", "/v1/predict", {"files": [("files", ("a.png", b"not an image"))]}, 400, "files[0] is not a readable PNG or JPEG"),
    ("unknown model", "POST", "/v2/models/other/infer", {"json": _v2()}, 404, "model 'other' not found"),
    ("unknown version", "POST", "/v2/models/teacher/versions/3/infer", {"json": _v2()}, 404, "has no version '3'"),
    ("v2 without inputs", "POST", "/v2/models/teacher/infer", {"json": {"outputs": []}}, 400, "inputs: Field required"),
    ("v2 empty inputs", "POST", "/v2/models/teacher/infer", {"json": {"inputs": []}}, 400, "inputs: List should have at least 1 item"),
    ("v2 input name", "POST", "/v2/models/teacher/infer", {"json": _v2(name="x")}, 400, "exactly one tensor named 'images', got ['x']"),
    ("v2 two inputs", "POST", "/v2/models/teacher/infer", {"json": {"inputs": _v2()["inputs"] * 2}}, 400, "exactly one tensor named 'images'"),
    ("v2 datatype", "POST", "/v2/models/teacher/infer", {"json": _v2(datatype="FP16")}, 400, "inputs[0].datatype must be one of ['FP32', 'UINT8'], got 'FP16'"),
    ("v2 shape rank", "POST", "/v2/models/teacher/infer", {"json": _v2(shape=[1, 784])}, 400, "inputs[0].shape must be [B, 1, 28, 28], got [1, 784]"),
    ("v2 shape size", "POST", "/v2/models/teacher/infer", {"json": _v2(shape=[1, 3, 28, 28])}, 400, "got [1, 3, 28, 28]"),
    ("v2 negative dim", "POST", "/v2/models/teacher/infer", {"json": _v2(shape=[-1, 1, 28, 28])}, 400, "inputs[0].shape[0]: Input should be greater than or equal to 0"),
    ("v2 zero batch", "POST", "/v2/models/teacher/infer", {"json": _v2(shape=[0, 1, 28, 28], data=[])}, 400, "inputs[0].shape[0] must hold at least one image"),
    ("v2 batch too large", "POST", "/v2/models/teacher/infer", {"json": _v2(shape=[MAX_IMAGES + 1, 1, 28, 28])}, 413, "inputs[0].shape[0] holds 5 images"),
    ("v2 data count", "POST", "/v2/models/teacher/infer", {"json": _v2(data=[0] * 783)}, 400, "inputs[0].data holds 783 values"),
    ("v2 nested data shape", "POST", "/v2/models/teacher/infer", {"json": _v2(data=[[0] * 28] * 28)}, 400, "in shape [28, 28]; shape [1, 1, 28, 28] needs 784"),
    ("v2 missing data", "POST", "/v2/models/teacher/infer", {"json": _v2(data=None)}, 400, "inputs[0].data is required"),
    ("v2 UINT8 floats", "POST", "/v2/models/teacher/infer", {"json": _v2(data=[0.5] * 784)}, 400, "must hold integers 0-255 for datatype UINT8"),
    ("v2 FP32 above 1", "POST", "/v2/models/teacher/infer", {"json": _v2(datatype="FP32", data=[0.0] * 783 + [2.0])}, 400, "inputs[0].data[783] = 2.0 is not a number in [0, 1]"),
    ("v2 unknown output", "POST", "/v2/models/teacher/infer", {"json": {**_v2(), "outputs": [{"name": "logits"}]}}, 400, "outputs[0].name: unknown output 'logits'"),
    ("v2 empty outputs", "POST", "/v2/models/teacher/infer", {"json": {**_v2(), "outputs": []}}, 400, "outputs: List should have at least 1 item"),
    ("v2 bad binary header", "POST", "/v2/models/teacher/infer", {"json": _v2(), "headers": {"Inference-Header-Content-Length": "zz"}}, 400, "Inference-Header-Content-Length must be an integer"),
    ("v2 binary size mismatch", "POST", "/v2/models/teacher/infer",
     {"content": BINARY_HEADER + bytes(700), "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}},
     400, "binary_data_size must be 784 for shape [1, 1, 28, 28] and match the binary data (declared 784, 700 bytes"),
    ("v2 binary without size", "POST", "/v2/models/teacher/infer",
     {"content": json.dumps(_v2()).encode() + bytes(784), "headers": {"Inference-Header-Content-Length": str(len(json.dumps(_v2())))}},
     400, "no parameters.binary_data_size but binary data follows"),
    ("unknown route", "GET", "/v3/models", {}, 404, "Not Found"),
    ("wrong method", "GET", "/v1/predict", {}, 405, "Method Not Allowed"),
]


@pytest.fixture(scope="module")
def strict_app(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppClient]:
    settings_ = make_settings(tiny_teacher, tmp_path_factory.mktemp("strict"), max_images_per_request=MAX_IMAGES,
                              max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS)
    with running_app(settings_, raise_app_exceptions=False) as client:
        yield client


def _check_error(response, status: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    document = response.json()
    assert set(document) == {"error", "code"}, document
    assert fragment in document["error"], document["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.mark.parametrize(("case", "method", "path", "arguments", "status", "fragment"), BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_bad_request_gets_a_precise_4xx(strict_app: AppClient, case: str, method: str, path: str, arguments: dict[str, Any],
                                        status: int, fragment: str) -> None:
    response = strict_app.request(method, path, **arguments)
    _check_error(response, status, fragment)
    expected_code = {400: "invalid_input", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}[status]
    assert response.json()["code"] == expected_code


def test_body_over_the_limit_is_413_before_and_while_reading(strict_app: AppClient) -> None:
    declared = strict_app.post("/v1/predict", content=b"0" * (MAX_BODY + 1), headers={"content-type": "application/json"})
    _check_error(declared, 413, f"exceeds the limit of {MAX_BODY} bytes")

    async def chunks() -> Any:  # no Content-Length: the limit must hold on the streamed body
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    streamed = strict_app.post("/v2/models/teacher/infer", content=chunks())
    _check_error(streamed, 413, "the streamed body exceeds the limit")


def test_errors_are_counted_and_the_service_keeps_serving(strict_app: AppClient) -> None:
    strict_app.post("/v1/predict", json={"pixels": _gray(300)})
    text = strict_app.get("/metrics").text
    assert 'stingy_requests_total{method="POST",route="/v1/predict",status="400"}' in text
    assert 'route="unmatched",status="404"' in text
    ok = strict_app.post("/v1/predict", json={"pixels": random_images(1, 0).tolist()})
    assert ok.status_code == 200


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(
        ["images", "pixels", "inputs", "outputs", "name", "shape", "datatype", "data", "parameters", "id", "x"]), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=JSON_VALUES, path=st.sampled_from(["/v1/predict", "/v2/models/teacher/infer"]))
def test_any_json_document_gets_4xx_or_an_answer_never_500(strict_app: AppClient, document: Any, path: str) -> None:
    response = strict_app.post(path, json=document)
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert set(response.json()) == {"error", "code"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "", "image/png"]))
def test_any_bytes_get_4xx_never_500(strict_app: AppClient, body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/predict", "/v2/models/teacher/infer"):
        response = strict_app.post(path, content=body, headers=headers)
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error", "code"}
