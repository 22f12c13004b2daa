"""Every setting of the service, from ``STINGY_*`` environment variables or ``stingy-serve`` flags.

``ServeSettings()`` reads the environment (prefix ``STINGY_``, e.g. ``STINGY_CHECKPOINT``,
``STINGY_SPARSE_RATIO``); keyword arguments override it, which is how the command line wins over the
environment. Values are validated here, so a bad setting stops the server before it loads anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.state import check_state_url
from defense import Disclosure, LogitPolicy, policy_from_fields
from training.devices import resolve_device, usable_cpus

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ServeSettings(BaseSettings):
    """Settings of one server process. See docs/serving.md for the meaning of each one."""

    model_config = SettingsConfigDict(env_prefix="STINGY_", extra="forbid")

    # model and release policy
    checkpoint: Path = Field(description="teacher checkpoint (.safetensors) to serve")
    model_name: str | None = Field(None, description="name in URLs and responses (default: the checkpoint's file stem)")
    policy: str = Field("stingy", description="release policy (see `stingy-train policies`)")
    sparse_ratio: float | None = Field(None, description="r: the policy keeps N = max(1, round(r K)) classes")
    k: int | None = Field(None, description="N directly: the policy keeps exactly k classes")
    policy_params: dict[str, Any] = Field(default_factory=dict, description="other policy parameters, JSON object")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    allow_disclosing_policy: bool = Field(
        False, description="serve a policy that releases something of every class (normal, reverse, N = K, ...)")
    show_model_details: bool = Field(False, description="show the architecture and training dataset on /v1/model")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per process (default: 1 on a GPU; on the CPU "
                                      "each worker's share of the cores, torch's one per core with workers=1)")

    # network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # 'auto' by default: one process is bound by its event loop (docs/serving.md, "Quiet machine: one worker against two")
    workers: int = Field("auto", validate_default=True, ge=1, le=256,
                         description="server processes sharing the port, each with its own model copy; "
                                     "'auto' (the default): one per CPU core this process may use")
    graceful_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long requests in flight may take")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this long")
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send a whole request head within this long")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="largest request head (request line and headers)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request must send its whole body within this long (else 408)")
    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug)$")
    access_log: str = Field("-", description="JSON-lines access log file; '-' for standard output, '' for none")

    # batching
    max_batch_size: int = Field(64, ge=1, le=65536, description="most images in one forward pass")
    max_delay_ms: float = Field(2.0, ge=0, le=10_000, description="longest wait for more requests to join a batch")
    batching: bool = Field(True, description="merge concurrent requests into one forward pass")
    max_queue_wait_s: float = Field(2.0, gt=0, description="most seconds of work waiting for forward passes (at their recent "
                                    "rate); past it, 503 at once")
    max_queue_images: int | None = Field(None, ge=1, description="most images waiting for a forward pass (default: no "
                                         "limit but max_queue_wait_s); past it, 503 at once")

    # limits
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body")
    max_images_per_request: int = Field(256, ge=1, description="most images in one request")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest decoded PNG/JPEG, in pixels")

    # security
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys, comma separated, each 'name:secret' or a bare secret"
    )
    api_keys_file: Path | None = Field(None, description="file with one API key per line ('name:secret' or secret)")
    allow_anonymous: bool = Field(False, description="serve without API keys on an address other machines can reach")
    budget_images: int | None = Field(None, ge=0, description="images each key may query in total (unlimited if unset)")
    budget_db: Path = Field(Path("stingy-budget.sqlite3"), description="SQLite file of budget counts and rate-limit buckets (state 'sqlite')")
    state: str = Field("sqlite", description="where budgets and rate limits live: 'sqlite' (the budget_db file) or redis://host:port/db")
    rate_limit: float | None = Field(None, gt=0, description="requests per second per key (unlimited if unset)")
    rate_burst: int | None = Field(None, ge=1, description="token-bucket size (default: ceil(rate_limit))")
    auth_failure_rate: float = Field(1.0, gt=0, description="failed authentications per second per client address (with keys)")
    auth_failure_burst: int = Field(30, ge=1, description="failed authentications a client address may make at once")
    metrics_key: SecretStr | None = Field(None, description="the key that reads /metrics (API keys cannot)")

    _policy: LogitPolicy | None = PrivateAttr(None)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        """``auto``: one worker per CPU core this process may run on (its affinity mask, as a container's
        ``--cpuset-cpus`` sets it)."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return usable_cpus()
            if not text.isdigit():
                raise ValueError(f"expected a number of processes or 'auto', got {value!r}")
        return value

    @field_validator("state")
    @classmethod
    def _check_state(cls, value: str) -> str:
        return check_state_url(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        resolve_device(value)  # fail at start-up, with what to use instead, not in the model loader
        return value

    @field_validator("model_name")
    @classmethod
    def _check_model_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(MODEL_NAME_PATTERN, value):
            raise ValueError("model_name may hold letters, digits, '_', '.' and '-' (starting with a letter or digit)")
        return value

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        if self.model_name is None:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "-", self.checkpoint.stem).lstrip("-_.") or "model"
            self.model_name = stem[:128]
        if self.rate_burst is not None and self.rate_limit is None:
            raise ValueError("rate_burst needs rate_limit")
        # The one place a server's policy is built; ValueError for an unknown policy or bad parameters.
        self._policy = policy_from_fields(self.policy, self.sparse_ratio, self.k, self.policy_params)
        return self

    def cpu_threads(self, processes: int) -> int | None:
        """torch's CPU threads for one of ``processes`` server processes on this machine: ``torch_threads`` when
        given; else 1 when the model runs on a GPU (the CPU only joins the batch and runs the policy there; at
        torch's default of one thread per core the H200 machine's ceiling process burnt 16 CPU seconds per second
        in spin-waits, see docs/serving.md); else, with several processes, each one's share of the cores; else
        ``None`` (torch's default, one per core)."""
        if self.torch_threads is not None:
            return self.torch_threads
        if resolve_device(self.device).type == "cuda":
            return 1
        if processes > 1:
            return max(1, usable_cpus() // processes)
        return None

    @property
    def served_name(self) -> str:
        """The model name in URLs and responses."""
        assert self.model_name is not None  # filled in by the validator
        return self.model_name

    def check_disclosure(self, num_classes: int) -> Disclosure:
        """What the policy releases per image for ``num_classes`` classes; ``ValueError`` when it releases
        something of every class (see :class:`defense.Disclosure`) and ``allow_disclosing_policy`` is off."""
        disclosure = self.release_policy.disclosure(num_classes)
        if not disclosure.withholds and not self.allow_disclosing_policy:
            raise ValueError(f"policy {self.release_policy.public_config()} releases {disclosure.summary}, not just N < K "
                             "logits per image; serve it only with --allow-disclosing-policy (STINGY_ALLOW_DISCLOSING_POLICY=1)")
        return disclosure

    @property
    def release_policy(self) -> LogitPolicy:
        """The release policy of ``policy``, ``sparse_ratio``, ``k`` and ``policy_params``, built once when the
        settings were validated (copies of these settings share it)."""
        assert self._policy is not None  # built by the validator
        return self._policy
