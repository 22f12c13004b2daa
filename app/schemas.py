"""Request and response documents of the HTTP API (v1 and the Open Inference Protocol v2).

Request models validate parsed bodies (errors name the field); response models document what the routes
send and let tests check it. Pixel data stay ``list[Any]`` here: :mod:`app.codecs` checks them as arrays.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ShapeDim = Annotated[int, Field(strict=True, ge=0)]


# ---- v1 ----------------------------------------------------------------------------------------------

class PredictRequest(BaseModel):
    """``POST /v1/predict`` as JSON: exactly one of ``images`` and ``pixels``."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] | None = Field(None, description="base64 PNG or JPEG files (a data: URL prefix is allowed)")
    pixels: list[Any] | None = Field(
        None, description="nested list [B][C][H][W] (or [B][H][W] for 1 channel): all integers 0-255, or numbers in [0, 1]"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.images is None) == (self.pixels is None):
            raise ValueError("give exactly one of 'images' and 'pixels'")
        return self


class ReleasedLogit(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: int = Field(alias="class")
    class_name: str
    logit: float


class Prediction(BaseModel):
    label: int = Field(description="top-1 class of the released logits")
    class_name: str
    top: list[ReleasedLogit] = Field(description="at most N released (class, logit) pairs, descending")


class PredictResponse(BaseModel):
    model: str
    policy: dict[str, Any]
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: str
    num_classes: int
    class_names: list[str]
    input_shape: list[int]
    policy: dict[str, Any]
    released_per_image: int
    discloses: str = Field(description="what the policy releases per image, in words")
    dataset: str | None = Field(None, description="training dataset (only with show_model_details)")
    arch: str | None = Field(None, description="architecture (only with show_model_details)")


# ---- v2 (Open Inference Protocol) --------------------------------------------------------------------

class TensorInput(BaseModel):
    """``$request_input``."""

    name: str
    shape: list[ShapeDim]
    datatype: str
    data: list[Any] | None = Field(None, description="row-major values, flat or nested")
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestedOutput(BaseModel):
    """``$request_output``."""

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """``$inference_request``."""

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, min_length=1)


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | int]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ErrorBody(BaseModel):
    error: str
    code: str
