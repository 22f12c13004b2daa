"""Costs of the serving hot path's parts, in process (a benchmark, not a test):

    python -m bench.serving_parts

For a v2 JSON body of 1 and of 256 Fashion-MNIST-size UINT8 images: parsing it with orjson and with the
standard library, validating it with pydantic, turning its ``data`` into an array, and the whole
:func:`app.codecs.decode_v2_request`; then one full garbage collection with the app, torch and a model loaded,
before and after ``gc.freeze()`` (which the server calls once warmed up). Mean milliseconds per call.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import torch

from app.codecs import InputLimits, InputSpec, decode_v2_request, numbers_to_array
from app.main import create_app  # noqa: F401  (the app's modules are loaded in a server)
from app.schemas import InferenceRequest
from bench.ceiling import random_checkpoint
from training.checkpoint import load_checkpoint


def milliseconds(function: Callable[[], object], calls: int) -> float:
    """Mean milliseconds of ``function()`` over ``calls`` calls, after one untimed call."""
    function()
    began = time.perf_counter()
    for _ in range(calls):
        function()
    return 1000 * (time.perf_counter() - began) / calls


def main() -> int:
    spec, limits = InputSpec(1, 28, 28), InputLimits(256, 1 << 24)
    for batch, calls in ((1, 2000), (256, 20)):
        pixels = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        tensor = {"name": "images", "shape": [batch, 1, 28, 28], "datatype": "UINT8", "data": pixels.reshape(-1).tolist()}
        body = json.dumps({"inputs": [tensor]}).encode()
        document = orjson.loads(body)
        data = document["inputs"][0]["data"]
        print(f"v2 JSON body, {batch} image(s), {len(body)} bytes:")
        for name, function in (("orjson.loads", lambda: orjson.loads(body)), ("json.loads", lambda: json.loads(body)),
                               ("pydantic InferenceRequest", lambda: InferenceRequest.model_validate(document)),
                               ("data -> array (numbers_to_array)", lambda: numbers_to_array(data, "data")),
                               ("decode_v2_request (all of it)", lambda: decode_v2_request(body, None, spec, limits))):
            print(f"  {name:34s} {milliseconds(function, calls):8.3f} ms")
    with tempfile.TemporaryDirectory() as folder:
        model, _ = load_checkpoint(random_checkpoint(Path(folder), "cnn", 1, 28, 10), "cpu")
    tracked = len(gc.get_objects())
    full = milliseconds(lambda: gc.collect(2), 3)
    gc.freeze()
    frozen = milliseconds(lambda: gc.collect(2), 3)
    gc.unfreeze()
    print(f"full garbage collection with {tracked} tracked objects (app, torch, a cnn loaded): {full:.1f} ms; "
          f"after gc.freeze(): {frozen:.1f} ms")
    del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
