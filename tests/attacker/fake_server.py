"""A stand-in server that keeps the wire contract of docs/design.md around a real checkpoint, with knobs for the
failures the attacker must survive. It is a test double for the attacker only (the real server is
``app``): in-process through ``httpx.ASGITransport``, or as a real uvicorn process::

    python -m tests.attacker.fake_server --checkpoint CKPT --port 8123 [--delay 0.05] [--policy stingy --k 2]

``GET /_fake/counts`` tells how often each image (by SHA-1 of its bytes) was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from torch import Tensor

from defense import make_policy
from training.checkpoint import load_checkpoint
from training.data import normalize

FLOAT32_LOWEST = -3.4028234663852886e38
MODEL_NAME = "tiny"


def image_key(image: Tensor) -> str:
    """The identity of one uint8 image ``[C, H, W]``: SHA-1 of its bytes."""
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


@dataclass
class Knobs:
    """Failure injection. ``fail_first``: the first predictions answer ``fail_status``; ``rate_limit_first``:
    the next ones answer 429 with ``Retry-After: retry_after``; ``budget``: images per server lifetime."""

    policy: str = "stingy"
    k: int | None = 2
    budget: int | None = None
    fail_first: int = 0
    fail_status: int = 503
    rate_limit_first: int = 0
    retry_after: str = "1"
    delay: float = 0.0
    max_batch: int | None = None
    api_key: str | None = None
    v1: bool = True
    v2: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    requests: int = 0


def create_app(checkpoint: str | Path, knobs: Knobs | None = None) -> FastAPI:
    knobs = knobs or Knobs()
    model, card = load_checkpoint(checkpoint)
    policy = make_policy(knobs.policy, k=knobs.k) if knobs.policy != "normal" else make_policy("normal")
    released = policy.released_count(card.num_classes)
    shape = [card.in_channels, card.image_size, card.image_size]
    app = FastAPI()
    app.state.knobs = knobs

    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)

    async def gate(request: Request, batch: int) -> JSONResponse | None:
        """Auth, injected failures, batch limit, budget; ``None`` when the request may be answered."""
        if knobs.api_key is not None:
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if given != knobs.api_key:
                return error(401, "unauthorized", "missing or wrong API key")
        knobs.requests += 1
        if knobs.delay:
            await asyncio.sleep(knobs.delay)
        if knobs.fail_first > 0:
            knobs.fail_first -= 1
            return error(knobs.fail_status, "internal", "injected failure")
        if knobs.rate_limit_first > 0:
            knobs.rate_limit_first -= 1
            return error(429, "rate_limited", "slow down", {"Retry-After": knobs.retry_after})
        if knobs.max_batch is not None and batch > knobs.max_batch:
            return error(413, "payload_too_large", f"at most {knobs.max_batch} images per request")
        if knobs.budget is not None and batch > knobs.budget:
            return error(403, "budget_exhausted", f"{knobs.budget} images left, {batch} asked")
        return None

    def answer(images: Tensor) -> tuple[Tensor, Tensor, dict[str, str]]:
        with torch.inference_mode():
            logits = model(normalize(images, card.mean, card.std)).float()
        sparse = policy.sparse(logits)
        for image in images:
            knobs.counts[image_key(image)] += 1
        headers = {}
        if knobs.budget is not None:
            knobs.budget -= len(images)
            headers["X-Budget-Remaining"] = str(knobs.budget)
        values = torch.where(torch.isfinite(sparse.values), sparse.values, torch.full_like(sparse.values, FLOAT32_LOWEST))
        return sparse.indices, values, headers

    @app.get("/v1/model")
    async def v1_model() -> Any:
        if not knobs.v1:
            return error(404, "not_found", "no v1 here")
        return {"name": MODEL_NAME, "version": "1", "dataset": card.dataset, "arch": card.arch, "num_classes": card.num_classes,
                "class_names": list(card.class_names), "input_shape": shape, "policy": policy.config(), "released_per_image": released}

    @app.post("/v1/predict")
    async def v1_predict(request: Request) -> Any:
        if not knobs.v1:
            return error(404, "not_found", "no v1 here")
        images = torch.tensor((await request.json())["pixels"], dtype=torch.uint8)
        refused = await gate(request, len(images))
        if refused is not None:
            return refused
        indices, values, headers = answer(images)
        predictions = [
            {"label": int(row[0]), "class_name": card.class_names[int(row[0])],
             "top": [{"class": int(c), "class_name": card.class_names[int(c)], "logit": float(v)}
                     for c, v in zip(row, vals) if v > FLOAT32_LOWEST]}
            for row, vals in zip(indices, values)
        ]
        return JSONResponse({"predictions": predictions}, headers=headers)

    @app.get("/v2/models/{name}")
    async def v2_model(name: str) -> Any:
        if not knobs.v2 or name != MODEL_NAME:
            return error(404, "not_found", f"no model {name}")
        return {"name": MODEL_NAME, "versions": ["1"], "platform": "pytorch",
                "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *shape]}],
                "outputs": [{"name": "topk_indices", "datatype": "INT64", "shape": [-1, released]},
                            {"name": "topk_logits", "datatype": "FP32", "shape": [-1, released]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, card.num_classes]}]}

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Any:
        if not knobs.v2 or name != MODEL_NAME:
            return error(404, "not_found", f"no model {name}")
        tensor = (await request.json())["inputs"][0]
        if tensor["datatype"] != "UINT8":
            return error(400, "invalid_input", "this fake takes UINT8 only")
        images = torch.tensor(tensor["data"], dtype=torch.uint8).reshape(tensor["shape"])
        refused = await gate(request, len(images))
        if refused is not None:
            return refused
        indices, values, headers = answer(images)
        batch = [len(images), released]
        return JSONResponse({"model_name": MODEL_NAME, "model_version": "1", "outputs": [
            {"name": "topk_indices", "datatype": "INT64", "shape": batch, "data": indices.flatten().tolist()},
            {"name": "topk_logits", "datatype": "FP32", "shape": batch, "data": values.flatten().tolist()},
        ]}, headers=headers)

    @app.get("/_fake/counts")
    async def counts() -> Any:
        return {"counts": dict(knobs.counts), "requests": knobs.requests}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--policy", default="stingy")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    knobs = Knobs(policy=args.policy, k=args.k, delay=args.delay)
    uvicorn.run(create_app(args.checkpoint, knobs), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
