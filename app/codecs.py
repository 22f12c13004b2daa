"""Inputs in, released outputs out: the one place that turns request bytes into image tensors and
released pairs into response values, for v1 and v2 alike.

Decoding yields ``uint8 [B, C, H, W]`` (0-255) or ``float32 [B, C, H, W]`` (in [0, 1]) at the model's
shape, or raises :class:`InvalidInput` (400) naming the field, or :class:`PayloadTooLarge` (413) for too
many or too large images. Encoded images (PNG/JPEG) are converted to the model's channels (gray ``L`` or
``RGB``, alpha dropped, 16-bit gray scaled to 8 bits) and brought to its height x width by the checkpoint's input
preparation (:class:`training.preprocess.InputPreparation`: shorter side resized and centre-cropped, as torchvision's
weights' transforms do, or, for checkpoints that record none, stretched with bilinear antialiased resizing when their
size differs); pixel arrays and v2 tensors must already have the model's shape and go through unchanged.

Encoding sends only the released pairs. A released ``-inf`` (a class whose probability a policy such as
``rounding`` rounds to 0) is never written as a non-standard JSON ``-Infinity``: v1 leaves the pair out,
v2 writes float32's lowest value (``-3.4028234663852886e38``). A NaN or ``+inf`` is a server fault.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from PIL import Image
from pydantic import ValidationError
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from app.errors import InvalidInput, PayloadTooLarge, invalid_input_from
from app.schemas import InferenceRequest, PredictRequest, TensorInput
from defense import SparseLogits, tempered_softmax
from training.preprocess import InputPreparation

ENCODED_FORMATS = ("PNG", "JPEG")
SIXTEEN_BIT_GRAY = ("I", "I;16", "I;16B", "I;16L")
V2_INPUT = "images"
V2_OUTPUTS = ("topk_indices", "topk_logits", "probabilities")
V2_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
FLOAT32_LOWEST = float(torch.finfo(torch.float32).min)
BINARY_HEADER = "inference-header-content-length"


@dataclass(frozen=True)
class InputSpec:
    """The image shape the model takes: ``channels x height x width``, and how encoded images of other sizes
    are brought to it (``None``: stretched to ``height x width``)."""

    channels: int
    height: int
    width: int
    preparation: InputPreparation | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class InputLimits:
    """Per-request limits: images per request, and decoded pixels per PNG/JPEG."""

    max_images: int
    max_image_pixels: int


@dataclass(frozen=True)
class V2Request:
    """A decoded v2 inference request."""

    images: Tensor
    outputs: tuple[str, ...]
    id: str | None


# ---- shared helpers ----------------------------------------------------------------------------------

def parse_json(body: bytes) -> Any:
    """JSON without the non-standard ``NaN``/``Infinity`` constants; any failure is a 400.

    orjson parses valid bodies (several times faster than the standard library); a body it refuses is parsed
    again by the standard library, which names the problem (``NaN is not valid JSON``) or accepts what orjson
    alone refuses (integers beyond 64 bits, nesting deeper than 1024, both then checked as pixels)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass

    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        return json.loads(body, parse_constant=reject)
    except RecursionError:
        raise InvalidInput("request body is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, the constants above
        raise InvalidInput(f"request body is not valid JSON: {error}") from None


def check_image_count(count: int, field: str, limits: InputLimits) -> None:
    """At least one image, at most ``limits.max_images`` (else 413)."""
    if count < 1:
        raise InvalidInput(f"{field} must hold at least one image")
    if count > limits.max_images:
        raise PayloadTooLarge(f"{field} holds {count} images; the limit is {limits.max_images} per request")


def numbers_to_array(value: Any, field: str) -> np.ndarray:
    """A regular (nested) JSON list of numbers as an array: integer dtype when every element is a JSON
    integer, float64 when any is a JSON float."""
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a list")
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"{field} must be a regular nested list of numbers (every row the same length)") from None
    if array.dtype.kind not in "iuf":
        found = "booleans" if array.dtype.kind == "b" else "strings, nulls, objects or integers beyond 64 bits"
        raise InvalidInput(f"{field} must hold only numbers (found {found})")
    return array


def pixel_tensor(array: np.ndarray, field: str, *, unit_range: bool) -> Tensor:
    """Checked pixel values: float32 in [0, 1] when ``unit_range``, else uint8 from integers 0-255.
    The message names the first offending element, e.g. ``pixels[0][0][3][4] = 300``."""
    if unit_range:
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array) | (array < 0.0) | (array > 1.0)
        else:
            bad = (array < 0) | (array > 1)
        _reject_first(bad, array, field, "is not a number in [0, 1]")
        return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    if array.dtype.kind not in "iu":
        raise InvalidInput(f"{field} must hold integers 0-255 (or, as floats, values in [0, 1])")
    _reject_first((array < 0) | (array > 255), array, field, "is outside 0-255")
    return torch.from_numpy(np.array(array, dtype=np.uint8, order="C"))


def _reject_first(bad: np.ndarray, array: np.ndarray, field: str, problem: str) -> None:
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInput(f"{field}{''.join(f'[{i}]' for i in position)} = {array[position].item()!r} {problem}")


def _expected(spec: InputSpec) -> str:
    return f"[B, {spec.channels}, {spec.height}, {spec.width}]"


# ---- encoded images (base64 in JSON, multipart files) ------------------------------------------------

def decode_image(data: bytes, field: str, spec: InputSpec, limits: InputLimits) -> Tensor:
    """One PNG or JPEG file -> ``uint8 [C, H, W]`` at the model's channels and size."""
    if spec.channels not in (1, 3):
        raise InvalidInput(f"{field}: this model takes {spec.channels}-channel inputs; send pixel arrays instead")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ENCODED_FORMATS:
                raise InvalidInput(f"{field} is a {image.format} image; send PNG or JPEG")
            if image.width * image.height > limits.max_image_pixels:
                raise PayloadTooLarge(f"{field} is {image.width}x{image.height} pixels; the limit is {limits.max_image_pixels}")
            decoded: Image.Image = image
            if image.mode in SIXTEEN_BIT_GRAY:  # PIL would clip these to 255 on conversion: scale to 8 bits instead
                decoded = Image.fromarray((np.asarray(image, dtype=np.int64).clip(0, 65535) // 257).astype(np.uint8), "L")
            pixels = TF.pil_to_tensor(decoded.convert("L" if spec.channels == 1 else "RGB"))
    except (InvalidInput, PayloadTooLarge):
        raise
    except Exception:  # any decoder failure on untrusted bytes is the client's file, not a server fault
        raise InvalidInput(f"{field} is not a readable PNG or JPEG image") from None
    if spec.preparation is not None:
        return spec.preparation.apply(pixels)
    if tuple(pixels.shape[1:]) != (spec.height, spec.width):
        pixels = TF.resize(pixels, [spec.height, spec.width], antialias=True)
    return pixels


def decode_images(files: Sequence[bytes], field: str, spec: InputSpec, limits: InputLimits) -> Tensor:
    """Several encoded images (``field[i]`` in messages; the caller has checked their count) -> ``uint8 [B, C, H, W]``."""
    return torch.stack([decode_image(data, f"{field}[{i}]", spec, limits) for i, data in enumerate(files)])


def decode_base64(text: str, field: str) -> bytes:
    """Standard base64 (whitespace and a ``data:...;base64,`` prefix allowed) -> bytes."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInput(f"{field} is a data URL without ';base64'")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64") from None


# ---- v1 ----------------------------------------------------------------------------------------------

def decode_pixels(value: list[Any], spec: InputSpec, limits: InputLimits) -> Tensor:
    """v1 ``pixels``: ``[B][C][H][W]`` (or ``[B][H][W]`` for one channel); integers 0-255, or numbers in
    [0, 1] when any element is written as a float."""
    check_image_count(len(value), "pixels", limits)
    array = numbers_to_array(value, "pixels")
    shape = tuple(array.shape)
    if spec.channels == 1 and shape[1:] == (spec.height, spec.width):
        array = array[:, None]
    elif shape[1:] != spec.shape:
        gray = f" or [B, {spec.height}, {spec.width}]" if spec.channels == 1 else ""
        raise InvalidInput(f"pixels must have shape {_expected(spec)}{gray}, got {list(shape)}")
    return pixel_tensor(array, "pixels", unit_range=array.dtype.kind == "f")


def decode_v1_json(body: bytes, spec: InputSpec, limits: InputLimits) -> Tensor:
    """A JSON ``/v1/predict`` body -> images."""
    try:
        request = PredictRequest.model_validate(parse_json(body))
    except ValidationError as error:
        raise invalid_input_from(error) from None
    if request.pixels is not None:
        return decode_pixels(request.pixels, spec, limits)
    assert request.images is not None
    check_image_count(len(request.images), "images", limits)
    return decode_images([decode_base64(text, f"images[{i}]") for i, text in enumerate(request.images)], "images", spec, limits)


def released_arrays(released: SparseLogits) -> tuple[np.ndarray, np.ndarray]:
    """The pairs as numpy ``int64`` indices and ``float64`` values (each float32 value exactly, so JSON
    writes the same digits as for a Python float), after checking that every value is finite or ``-inf``."""
    values = released.values
    if bool(torch.isnan(values).any() | torch.isposinf(values).any()):
        raise RuntimeError("the release policy produced NaN or +inf; refusing to encode it")
    return np.ascontiguousarray(released.indices.numpy()), np.ascontiguousarray(values.double().numpy())


def released_rows(released: SparseLogits) -> tuple[list[list[int]], list[list[float]]]:
    """The pairs as Python lists (checked as in :func:`released_arrays`)."""
    indices, values = released_arrays(released)
    return indices.tolist(), values.tolist()


def v1_predictions(released: SparseLogits, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per image: the top-1 ``label`` and the released ``(class, logit)`` pairs, descending, ``-inf`` left out."""
    predictions = []
    for indices, values in zip(*released_rows(released)):
        top = [{"class": c, "class_name": class_names[c], "logit": v} for c, v in zip(indices, values) if math.isfinite(v)]
        predictions.append({"label": indices[0], "class_name": class_names[indices[0]], "top": top})
    return predictions


# ---- v2 (Open Inference Protocol) --------------------------------------------------------------------

def decode_v2_request(body: bytes, header_length: str | None, spec: InputSpec, limits: InputLimits) -> V2Request:
    """A ``/v2/models/{name}/infer`` body: JSON, or with ``Inference-Header-Content-Length`` a JSON header
    followed by the binary tensor data (the binary-data extension that Triton clients use by default)."""
    binary: bytes | None = None
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length must be an integer in 1..{len(body)}, got {header_length!r}")
        body, binary = body[:length], body[length:]
    try:
        request = InferenceRequest.model_validate(parse_json(body))
    except ValidationError as error:
        raise invalid_input_from(error) from None
    if len(request.inputs) != 1 or request.inputs[0].name != V2_INPUT:
        names = [tensor.name for tensor in request.inputs]
        raise InvalidInput(f"inputs must be exactly one tensor named {V2_INPUT!r}, got {names}")
    outputs: tuple[str, ...] = V2_OUTPUTS
    if request.outputs is not None:
        for i, output in enumerate(request.outputs):
            if output.name not in V2_OUTPUTS:
                raise InvalidInput(f"outputs[{i}].name: unknown output {output.name!r}; this model has {list(V2_OUTPUTS)}")
        outputs = tuple(dict.fromkeys(output.name for output in request.outputs))
    images = decode_v2_tensor(request.inputs[0], "inputs[0]", binary, spec, limits)
    return V2Request(images=images, outputs=outputs, id=request.id)


def decode_v2_tensor(tensor: TensorInput, field: str, binary: bytes | None, spec: InputSpec, limits: InputLimits) -> Tensor:
    """One v2 input tensor ``[B, C, H, W]``: ``FP32`` pixels in [0, 1] or ``UINT8`` 0-255, as JSON ``data``
    (flat or nested, row-major) or as binary data (``parameters.binary_data_size`` bytes, little-endian)."""
    dtype = V2_DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"{field}.datatype must be one of {sorted(V2_DATATYPES)}, got {tensor.datatype!r}")
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[1:] != spec.shape:
        raise InvalidInput(f"{field}.shape must be {_expected(spec)}, got {list(shape)}")
    check_image_count(shape[0], f"{field}.shape[0]", limits)
    expected_count = math.prod(shape)
    binary_size = tensor.parameters.get("binary_data_size")
    if binary_size is not None:
        nbytes = expected_count * dtype.itemsize
        if binary is None or binary_size != nbytes or len(binary) != nbytes:
            got = "none" if binary is None else f"{len(binary)} bytes after the JSON header"
            raise InvalidInput(f"{field}.parameters.binary_data_size must be {nbytes} for shape {list(shape)} "
                               f"and match the binary data (declared {binary_size!r}, {got})")
        array = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        if binary:
            raise InvalidInput(f"{field} has no parameters.binary_data_size but binary data follows the JSON header")
        if tensor.data is None:
            raise InvalidInput(f"{field}.data is required")
        array = numbers_to_array(tensor.data, f"{field}.data")
        if array.size != expected_count or (array.ndim > 1 and tuple(array.shape) != shape):
            raise InvalidInput(f"{field}.data holds {array.size} values in shape {list(array.shape)}; "
                               f"shape {list(shape)} needs {expected_count}")
        if tensor.datatype == "UINT8" and array.dtype.kind == "f":
            raise InvalidInput(f"{field}.data must hold integers 0-255 for datatype UINT8")
    return pixel_tensor(array, f"{field}.data", unit_range=tensor.datatype == "FP32").reshape(shape)


def v2_output_specs(batch: int, released_count: int, num_classes: int) -> dict[str, tuple[str, list[int]]]:
    """Each v2 output's datatype and shape, for model metadata (``batch`` -1) and responses alike."""
    return {"topk_indices": ("INT64", [batch, released_count]), "topk_logits": ("FP32", [batch, released_count]),
            "probabilities": ("FP32", [batch, num_classes])}


def v2_outputs(released: SparseLogits, num_classes: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """The requested output tensors, flat row-major numpy arrays (for :class:`app.responses.FastJSONResponse`):
    ``topk_indices`` INT64 ``[B, N]``, ``topk_logits`` FP32 ``[B, N]`` (``-inf`` as float32 lowest) and
    ``probabilities`` FP32 ``[B, K]`` (softmax of the released logits at tau = 1, zero outside the released set)."""
    indices, values = released_arrays(released)
    batch, count = indices.shape
    data = {
        "topk_indices": lambda: indices.reshape(-1),
        "topk_logits": lambda: np.where(values == -math.inf, FLOAT32_LOWEST, values).reshape(-1),
        "probabilities": lambda: np.ascontiguousarray(tempered_softmax(released.to_dense(num_classes)).double().reshape(-1).numpy()),
    }
    specs = v2_output_specs(batch, count, num_classes)
    return [{"name": name, "datatype": specs[name][0], "shape": specs[name][1], "data": data[name]()} for name in names]
