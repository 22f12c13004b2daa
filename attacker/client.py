"""An async client for any model server that follows the wire contract (docs/design.md, Wire contract).

It speaks v2 (the Open Inference Protocol, KServe/Triton REST) and v1 behind one interface:
:meth:`TeacherClient.connect` discovers the model, :meth:`TeacherClient.predict` sends a ``uint8`` batch
``[B, C, H, W]`` and returns, per image, the released ``(class, logit)`` pairs (:class:`TopN`). The HTTP side
(concurrency, retries, rate limits, refusals) is :mod:`attacker.transport`; the v1/v2 bodies and the checks
of every answer are :mod:`attacker.wire`. The client never imports ``app``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

import httpx
import torch
from torch import Tensor

from attacker.errors import AttackError, ProtocolError
from attacker.transport import ClientStats, RetryPolicy, Transport, json_of
from attacker.wire import Adapter, ServerInfo, TopN, V1Adapter, V2Adapter, expect_field, server_info

PROTOCOLS = ("auto", "v1", "v2")


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
        self.info: ServerInfo | None = None
        self._adapter: Adapter | None = None
        self._transport = Transport(self.url, api_key=api_key, timeout=timeout, concurrency=concurrency,
                                    retry=retry or RetryPolicy(), transport=transport, sleep=sleep, rng=rng)

    @property
    def stats(self) -> ClientStats:
        return self._transport.stats

    @property
    def budget_remaining(self) -> int | None:
        return self._transport.budget_remaining

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._transport.close()

    async def connect(self) -> ServerInfo:
        """Discover the model (``GET /v1/model`` and/or ``GET /v2/models/{name}``) and pick the protocol."""
        get = self._transport.get_optional
        v1 = await get("/v1/model") if self.protocol != "v2" or self.model is None else None
        if self.protocol == "v1" and v1 is None:
            raise AttackError(f"{self.url} has no /v1/model route; try --protocol v2 --model NAME")
        name = self.model or (expect_field(v1, "name", str) if v1 is not None else None)
        if name is None:
            raise AttackError(f"{self.url} has no /v1/model route to name the model; pass --model NAME for v2")
        v2 = await get(f"/v2/models/{quote(name, safe='')}") if self.protocol != "v1" else None
        if self.protocol == "v2" and v2 is None:
            raise AttackError(f"{self.url} has no model {name!r} at /v2/models/{name}")
        self._adapter = V2Adapter(name) if v2 is not None else V1Adapter()
        self.info = server_info(self.url, self._adapter.protocol, name, v1, v2)
        return self.info

    async def predict(self, images: Tensor) -> list[TopN]:
        """The released pairs for each image of a ``uint8 [B, C, H, W]`` batch, in batch order."""
        if self._adapter is None or self.info is None:
            raise RuntimeError("call connect() before predict()")
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        response = await self._transport.request("POST", self._adapter.path, self._adapter.body(images))
        rows = self._adapter.parse(json_of(response), int(images.shape[0]))
        classes = self.info.num_classes
        if classes is not None and any(c >= classes for row in rows for c in row.classes):
            raise ProtocolError(f"a released class index is outside 0..{classes - 1}")
        return rows
