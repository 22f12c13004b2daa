"""The v1 and v2 wire adapters of the attack client: the request body for a ``uint8`` batch, the parse and
check of each answer into released ``(class, logit)`` pairs (:class:`TopN`), and the served model's facts
from the discovery routes. The contract is docs/design.md's (Wire contract); the HTTP side is
:mod:`attacker.transport`.

A masked class is never released as a value: a server leaves it out, or sends ``null``, ``-inf`` or a value at
or below :data:`MASKED_AT_OR_BELOW` (float32's lowest, what JSON can carry for ``-inf``); every such pair is
dropped here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from torch import Tensor

from attacker.errors import ProtocolError

MASKED_AT_OR_BELOW = -3e38  # the float32 lowest value a server sends for a masked (-inf) class


@dataclass(frozen=True)
class TopN:
    """What the server released for one image: classes and logits, descending, masked classes left out."""

    classes: tuple[int, ...]
    logits: tuple[float, ...]


@dataclass(frozen=True)
class ServerInfo:
    """What discovery learnt about the served model; ``None`` where the server did not say."""

    url: str
    protocol: str
    model: str
    version: str | None
    num_classes: int | None
    input_shape: tuple[int, int, int] | None
    released_per_image: int | None
    policy: dict[str, Any] | None
    dataset: str | None


class Adapter(ABC):
    """One protocol's prediction route: the request for a batch and the parse of its answer."""

    protocol: ClassVar[str]

    @property
    @abstractmethod
    def path(self) -> str: ...

    @abstractmethod
    def body(self, images: Tensor) -> dict[str, Any]: ...

    @abstractmethod
    def parse(self, document: Any, batch_size: int) -> list[TopN]: ...


class V1Adapter(Adapter):
    """``POST /v1/predict`` with nested pixel arrays; answers ``predictions[i].top = [{class, logit}]``."""

    protocol = "v1"

    @property
    def path(self) -> str:
        return "/v1/predict"

    def body(self, images: Tensor) -> dict[str, Any]:
        return {"pixels": images.tolist()}

    def parse(self, document: Any, batch_size: int) -> list[TopN]:
        predictions = expect_field(document, "predictions", list)
        if len(predictions) != batch_size:
            raise ProtocolError(f"/v1/predict answered {len(predictions)} predictions for {batch_size} images")
        rows = []
        for prediction in predictions:
            top = expect_field(prediction, "top", list)
            pairs = [(expect_field(entry, "class", int), entry.get("logit") if isinstance(entry, dict) else None) for entry in top]
            rows.append(released_row([c for c, _ in pairs], [v for _, v in pairs]))
        return rows


class V2Adapter(Adapter):
    """``POST /v2/models/{name}/infer`` with one ``UINT8`` tensor; answers ``topk_indices``/``topk_logits``."""

    protocol = "v2"

    def __init__(self, model: str) -> None:
        self.model = model

    @property
    def path(self) -> str:
        return f"/v2/models/{quote(self.model, safe='')}/infer"

    def body(self, images: Tensor) -> dict[str, Any]:
        return {
            "inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.flatten().tolist()}],
            "outputs": [{"name": "topk_indices"}, {"name": "topk_logits"}],
        }

    def parse(self, document: Any, batch_size: int) -> list[TopN]:
        outputs = {output.get("name"): output for output in expect_field(document, "outputs", list) if isinstance(output, dict)}
        classes, count = _matrix(outputs, "topk_indices", batch_size)
        logits, logit_count = _matrix(outputs, "topk_logits", batch_size)
        if count != logit_count:
            raise ProtocolError(f"topk_indices has {count} columns but topk_logits has {logit_count}")
        return [
            released_row(classes[row * count:(row + 1) * count], logits[row * count:(row + 1) * count])
            for row in range(batch_size)
        ]


def released_row(classes: list[Any], logits: list[Any]) -> TopN:
    """Validate one image's released pairs; masked values (``None``, ``-inf``, ``<= -3e38``) are dropped.

    Raises :class:`ProtocolError` for a non-integer or repeated class, a NaN or ``+inf`` logit, or a row
    without any released value. The pairs come back sorted by logit, descending (ties by lower class).
    """
    kept: list[tuple[int, float]] = []
    for cls, value in zip(classes, logits, strict=True):
        if isinstance(cls, bool) or not isinstance(cls, int) or cls < 0:
            raise ProtocolError(f"class index {cls!r} is not a non-negative integer")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"logit {value!r} is not a number")
        number = float(value)
        if math.isnan(number) or number == math.inf:
            raise ProtocolError(f"logit {number} for class {cls} is not a released value")
        if number > MASKED_AT_OR_BELOW:
            kept.append((cls, float(f"{number:.9g}")))  # float32 values round-trip in 9 digits
    if not kept:
        raise ProtocolError("an image came back without any released logit")
    if len({cls for cls, _ in kept}) != len(kept):
        raise ProtocolError(f"an image came back with a repeated class: {[cls for cls, _ in kept]}")
    kept.sort(key=lambda pair: (-pair[1], pair[0]))
    return TopN(tuple(cls for cls, _ in kept), tuple(value for _, value in kept))


def expect_field(document: Any, name: str, kind: type) -> Any:
    """``document[name]`` when it is a ``kind`` (booleans are not ints), else :class:`ProtocolError`."""
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"expected {kind.__name__} field {name!r} in the server's answer, got {value!r}"[:300])
    return value


def _matrix(outputs: dict[Any, Any], name: str, rows: int) -> tuple[list[Any], int]:
    """The flat data of a v2 output of shape ``[rows, N]`` and its ``N``."""
    if name not in outputs:
        raise ProtocolError(f"the v2 answer has no output {name!r} (got {sorted(map(str, outputs))})")
    shape = expect_field(outputs[name], "shape", list)
    data = expect_field(outputs[name], "data", list)
    if len(shape) != 2 or shape[0] != rows or not isinstance(shape[1], int) or len(data) != rows * shape[1]:
        raise ProtocolError(f"v2 output {name!r} has shape {shape} and {len(data)} values for {rows} images")
    return data, int(shape[1])


def server_info(url: str, protocol: str, name: str, v1: Any | None, v2: Any | None) -> ServerInfo:
    """Merge what ``/v1/model`` and ``/v2/models/{name}`` said (v1 first: it also names the policy)."""
    v1 = v1 if isinstance(v1, dict) else {}
    v2 = v2 if isinstance(v2, dict) else {}
    outputs = {o.get("name"): o for o in v2.get("outputs", []) if isinstance(o, dict)}
    inputs = [i for i in v2.get("inputs", []) if isinstance(i, dict)]

    def last_dim(output: str) -> int | None:
        shape = outputs.get(output, {}).get("shape")
        return shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) and shape[-1] > 0 else None

    shape = v1.get("input_shape") or (inputs[0].get("shape", [])[1:] if inputs else None)
    versions = v2.get("versions")
    version = v1.get("version") or (versions[-1] if isinstance(versions, list) and versions else None)
    policy = v1.get("policy")
    return ServerInfo(
        url=url, protocol=protocol, model=name,
        version=None if version is None else str(version),
        num_classes=_positive(v1.get("num_classes")) or last_dim("probabilities"),
        input_shape=tuple(int(d) for d in shape) if isinstance(shape, list) and len(shape) == 3 else None,  # type: ignore[arg-type]
        released_per_image=_positive(v1.get("released_per_image")) or last_dim("topk_logits"),
        policy=policy if isinstance(policy, dict) else None,
        dataset=str(v1["dataset"]) if v1.get("dataset") else None,
    )


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
