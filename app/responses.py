"""The JSON response of the model routes, serialised by orjson (several times faster than the standard
library on long lists of numbers, and able to write numpy arrays without building Python lists first)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class FastJSONResponse(Response):
    """``application/json`` from ``content`` (dicts, lists, numbers, strings and 1-D numpy arrays).

    Non-finite floats are refused by the caller (:func:`app.codecs.released_rows` checks them); orjson would
    write them as ``null``."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
