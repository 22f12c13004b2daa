"""An async HTTP client for any model server that follows DESIGN.md (HTTP API).

It speaks v2 (the Open Inference Protocol, KServe/Triton REST) and v1 behind one interface:
:meth:`TeacherClient.connect` discovers the model, :meth:`TeacherClient.predict` sends a ``uint8`` batch
``[B, C, H, W]`` and returns, per image, the released ``(class, logit)`` pairs (:class:`TopN`).

Failure handling, per request:

- discovery (:meth:`TeacherClient.connect`) fails at once when nothing accepts the connection (a wrong URL or
  a server that is not running), with :class:`ServerUnavailable`;
- connection errors, timeouts and 5xx answers are retried with exponential backoff and full jitter
  (``uniform(0, min(max_delay, base_delay * 2**(n - 1)))`` before the ``n``-th retry), at most
  ``RetryPolicy.attempts`` tries in all, then :class:`ServerUnavailable`;
- 429 waits the ``Retry-After`` seconds (plus up to ``base_delay`` of jitter) and tries again, at most
  ``RetryPolicy.rate_limit_attempts`` times; a ``Retry-After`` above ``max_retry_after`` stops at once
  with :class:`RateLimited`;
- 403 ``budget_exhausted`` raises :class:`BudgetExhausted`, 413 :class:`PayloadTooLarge`, 401
  :class:`Unauthorized`; any other 4xx :class:`ServerRefused`. None of these is retried.

At most ``concurrency`` requests are on the wire at once. The client never imports ``app``.
"""

from __future__ import annotations

import asyncio
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
import torch
from torch import Tensor

PROTOCOLS = ("auto", "v1", "v2")
MASKED_AT_OR_BELOW = -3e38  # the float32 lowest value a server sends for a masked (-inf) class


class AttackError(Exception):
    """Anything the client reports to its user as one line."""


class ServerRefused(AttackError):
    """The server answered 4xx: a retry cannot fix it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the server refused the request: HTTP {status} {code}: {message}")
        self.status, self.code, self.detail = status, code, message


class Unauthorized(ServerRefused):
    """401: the API key is missing or wrong."""


class BudgetExhausted(ServerRefused):
    """403 ``budget_exhausted``: the key's query budget cannot pay for this request (nothing was counted)."""


class PayloadTooLarge(ServerRefused):
    """413: the request is above the server's size or batch limit."""


class ServerUnavailable(AttackError):
    """The server could not be reached, or kept failing, after every allowed retry."""


class RateLimited(ServerUnavailable):
    """The server keeps rate limiting, or asks to wait longer than the client is willing to."""


class ProtocolError(AttackError):
    """The server answered 2xx with something that does not follow DESIGN.md."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``attempts`` counts every try (1 = no retry) for connection errors and 5xx."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    rate_limit_attempts: int = 100
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.rate_limit_attempts < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry attempts must be >= 1 and delays >= 0")

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Full-jitter delay before the retry that follows the ``failures``-th failure."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))


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


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0


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
        predictions = _field(document, "predictions", list)
        if len(predictions) != batch_size:
            raise ProtocolError(f"/v1/predict answered {len(predictions)} predictions for {batch_size} images")
        rows = []
        for prediction in predictions:
            top = _field(prediction, "top", list)
            pairs = [(_field(entry, "class", int), entry.get("logit") if isinstance(entry, dict) else None) for entry in top]
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
        outputs = {output.get("name"): output for output in _field(document, "outputs", list) if isinstance(output, dict)}
        classes, count = _matrix(outputs, "topk_indices", batch_size)
        logits, logit_count = _matrix(outputs, "topk_logits", batch_size)
        if count != logit_count:
            raise ProtocolError(f"topk_indices has {count} columns but topk_logits has {logit_count}")
        return [
            released_row(classes[row * count:(row + 1) * count], logits[row * count:(row + 1) * count])
            for row in range(batch_size)
        ]


def check_client_options(url: str, protocol: str, concurrency: int, timeout: float) -> None:
    """``ValueError`` naming the first unusable option of a :class:`TeacherClient`."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the server URL must start with http:// or https://, got {url!r}")
    route = next((route for route in ("/v1", "/v2") if urlsplit(url).path.rstrip("/").endswith(route)), None)
    if route is not None:
        raise ValueError(f"the server URL {url!r} ends in {route}: drop {route} (give the base URL, e.g. "
                         f"{url.rstrip('/').removesuffix(route)}; the client adds the /v1 and /v2 routes itself)")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if concurrency < 1 or timeout <= 0:
        raise ValueError(f"concurrency must be >= 1 and timeout > 0, got {concurrency} and {timeout}")


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


class TeacherClient:
    """One server, one model: ``async with TeacherClient(url) as client: info = await client.connect()``.

    ``protocol`` is ``auto`` (v2 when the server has the model there, else v1), ``v1`` or ``v2``.
    ``model`` names the v2 model; without it the name comes from ``GET /v1/model``. ``transport``,
    ``sleep`` and ``rng`` exist for tests. ``budget_remaining`` is the last ``X-Budget-Remaining`` seen.
    """

    def __init__(
        self, url: str, *, api_key: str | None = None, protocol: str = "auto", model: str | None = None,
        timeout: float = 60.0, concurrency: int = 4, retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: random.Random | None = None,
    ) -> None:
        check_client_options(url, protocol, concurrency, timeout)
        self.url = url.rstrip("/")
        self.protocol, self.model = protocol, model
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self.budget_remaining: int | None = None
        self.info: ServerInfo | None = None
        self._adapter: Adapter | None = None
        self._sleep, self._rng = sleep, rng or random.Random()
        self._slots = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def connect(self) -> ServerInfo:
        """Discover the model (``GET /v1/model`` and/or ``GET /v2/models/{name}``) and pick the protocol."""
        v1 = await self._get_optional("/v1/model") if self.protocol != "v2" or self.model is None else None
        if self.protocol == "v1" and v1 is None:
            raise AttackError(f"{self.url} has no /v1/model route; try --protocol v2 --model NAME")
        name = self.model or (_field(v1, "name", str) if v1 is not None else None)
        if name is None:
            raise AttackError(f"{self.url} has no /v1/model route to name the model; pass --model NAME for v2")
        v2 = await self._get_optional(f"/v2/models/{quote(name, safe='')}") if self.protocol != "v1" else None
        if self.protocol == "v2" and v2 is None:
            raise AttackError(f"{self.url} has no model {name!r} at /v2/models/{name}")
        self._adapter = V2Adapter(name) if v2 is not None else V1Adapter()
        self.info = _server_info(self.url, self._adapter.protocol, name, v1, v2)
        return self.info

    async def predict(self, images: Tensor) -> list[TopN]:
        """The released pairs for each image of a ``uint8 [B, C, H, W]`` batch, in batch order."""
        if self._adapter is None or self.info is None:
            raise RuntimeError("call connect() before predict()")
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        response = await self._request("POST", self._adapter.path, self._adapter.body(images))
        rows = self._adapter.parse(_json(response), int(images.shape[0]))
        classes = self.info.num_classes
        if classes is not None and any(c >= classes for row in rows for c in row.classes):
            raise ProtocolError(f"a released class index is outside 0..{classes - 1}")
        return rows

    async def _get_optional(self, path: str) -> Any | None:
        """The JSON of ``GET path``, or ``None`` when the server answers 404 there."""
        try:
            return _json(await self._request("GET", path))
        except ServerRefused as refused:
            if refused.status == 404:
                return None
            raise

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        failures = rate_limited = 0
        while True:
            try:
                async with self._slots:
                    self.stats.requests += 1
                    response = await self._http.request(method, path, json=body)
            except httpx.TransportError as error:
                failures += 1
                reason = f"{type(error).__name__}: {error}".rstrip(": ")
                if self.info is None and isinstance(error, httpx.ConnectError):  # discovery: no server there, no retry
                    raise ServerUnavailable(f"cannot connect to {self.url} ({reason}): is the server running, and is "
                                            "the URL right?") from None
                await self._retry_or_raise(failures, f"{method} {self.url}{path} failed ({reason})")
                continue
            status = response.status_code
            if status == 429:
                rate_limited += 1
                await self._wait_rate_limit(response, rate_limited, f"{method} {self.url}{path}")
                continue
            if status >= 500:
                failures += 1
                code, message = _error_of(response)
                await self._retry_or_raise(failures, f"{method} {self.url}{path} answered HTTP {status} {code}: {message}")
                continue
            if status >= 400:
                raise _refusal(response)
            self._note_budget(response)
            return response

    async def _retry_or_raise(self, failures: int, what: str) -> None:
        if failures >= self.retry.attempts:
            raise ServerUnavailable(f"{what}; gave up after {failures} attempts")
        self.stats.retries += 1
        await self._sleep(self.retry.backoff(failures, self._rng))

    async def _wait_rate_limit(self, response: httpx.Response, count: int, what: str) -> None:
        self.stats.rate_limited += 1
        wait = _retry_after(response)
        if wait is None:
            wait = self.retry.backoff(count, self._rng)
        if wait > self.retry.max_retry_after:
            raise RateLimited(f"{what}: rate limited with Retry-After {wait:g}s (more than {self.retry.max_retry_after:g}s)")
        if count > self.retry.rate_limit_attempts:
            raise RateLimited(f"{what}: still rate limited after {count - 1} waits")
        await self._sleep(wait + self._rng.uniform(0.0, self.retry.base_delay))

    def _note_budget(self, response: httpx.Response) -> None:
        value = response.headers.get("X-Budget-Remaining")
        if value is not None and value.strip().isdigit():
            self.budget_remaining = int(value)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as error:
        raise ProtocolError(f"{response.request.method} {response.request.url} did not answer JSON ({error})") from error


def _field(document: Any, name: str, kind: type) -> Any:
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"expected {kind.__name__} field {name!r} in the server's answer, got {value!r}"[:300])
    return value


def _matrix(outputs: dict[Any, Any], name: str, rows: int) -> tuple[list[Any], int]:
    """The flat data of a v2 output of shape ``[rows, N]`` and its ``N``."""
    if name not in outputs:
        raise ProtocolError(f"the v2 answer has no output {name!r} (got {sorted(map(str, outputs))})")
    shape = _field(outputs[name], "shape", list)
    data = _field(outputs[name], "data", list)
    if len(shape) != 2 or shape[0] != rows or not isinstance(shape[1], int) or len(data) != rows * shape[1]:
        raise ProtocolError(f"v2 output {name!r} has shape {shape} and {len(data)} values for {rows} images")
    return data, int(shape[1])


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an error answer: DESIGN.md's ``{"error", "code"}``, else the body text."""
    try:
        document = response.json()
    except ValueError:
        return "error", response.text.strip()[:200] or response.reason_phrase
    if isinstance(document, dict):
        message = document.get("error", document.get("detail", document))
        return str(document.get("code", "error")), str(message)[:300]
    return "error", str(document)[:300]


def _refusal(response: httpx.Response) -> ServerRefused:
    code, message = _error_of(response)
    status = response.status_code
    if status == 401:
        return Unauthorized(status, code, message)
    if status == 403 and code == "budget_exhausted":
        return BudgetExhausted(status, code, message)
    if status == 413:
        return PayloadTooLarge(status, code, message)
    return ServerRefused(status, code, message)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _server_info(url: str, protocol: str, name: str, v1: Any | None, v2: Any | None) -> ServerInfo:
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
