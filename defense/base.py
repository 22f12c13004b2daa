"""The logit-policy contract: teacher logits ``[B, K]`` in, released logits ``[B, K]`` out.

Masked classes are ``-inf``. Policies that act on probabilities release ``log p``, so that
``softmax(released / tau)`` is always the distribution a student distils from. Every policy also has a
sparse form, the ``N`` released ``(class, logit)`` pairs per row in descending order, which is what a
server transports; ``N`` is :meth:`LogitPolicy.released_count` (``K`` for dense policies).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from defense.ranking import count_from_ratio, descending_order


@dataclass(frozen=True)
class Disclosure:
    """What a policy releases per image for ``K`` classes, in words (``summary``), and whether that stays
    within the defense's promise (``withholds``): at most ``N < K`` released pairs per image, each a value
    the teacher computed for that class or a constant, and nothing that depends on a masked class's logit."""

    summary: str
    withholds: bool


@dataclass(frozen=True)
class SparseLogits:
    """The released pairs of a batch: ``indices`` (int64) and ``values``, both ``[B, N]``, descending."""

    indices: Tensor
    values: Tensor

    def to_dense(self, num_classes: int) -> Tensor:
        """Rebuild the dense released logits ``[B, K]``: the pairs in place, ``-inf`` elsewhere."""
        dense = torch.full(
            (self.indices.shape[0], num_classes), float("-inf"), dtype=self.values.dtype, device=self.values.device
        )
        return dense.scatter_(1, self.indices, self.values)


class LogitPolicy(ABC):
    """A transform of teacher logits into the logits a server releases.

    Subclasses are frozen dataclasses whose fields are the policy's parameters; ``name`` is the key
    in the registry and ``preserves_argmax`` says whether the released argmax always equals the
    teacher's (ties broken by lower class index).
    """

    name: ClassVar[str]
    preserves_argmax: ClassVar[bool] = True
    secret_parameters: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def release(self, logits: Tensor) -> Tensor:
        """Released logits ``[B, K]`` for teacher logits ``[B, K]``; same dtype and device."""

    def released_count(self, num_classes: int) -> int:
        """``N``: how many classes per row the sparse form carries (``K`` unless the policy masks)."""
        return num_classes

    @property
    def masks(self) -> bool:
        """True when every class outside the released ``N`` is ``-inf`` in the dense form."""
        return False

    @property
    def replayable(self) -> bool:
        """True when the policy's randomness comes from a fixed seed (anyone who learns it can replay it)."""
        return False

    def disclosure(self, num_classes: int) -> Disclosure:
        """What this policy releases per image for ``K = num_classes`` (dense policies: something of every class)."""
        return Disclosure(f"{self.describe_release()} for all {num_classes} classes", withholds=False)

    def describe_release(self) -> str:
        """The released values in words, for :meth:`disclosure`."""
        return "the raw logits"

    def __call__(self, logits: Tensor) -> Tensor:
        check_logits(logits)
        return self.release(logits)

    def sparse(self, logits: Tensor) -> SparseLogits:
        """The top ``N`` released ``(class, logit)`` pairs per row, descending, ties by lower index."""
        released = self(logits)
        order = descending_order(released)[:, : self.released_count(logits.shape[-1])]
        return SparseLogits(indices=order, values=released.gather(1, order))

    def config(self) -> dict[str, Any]:
        """The policy as ``{"name": ..., **parameters}``; ``make_policy(**config)`` rebuilds it."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]
        return {"name": self.name, **{key: value for key, value in params.items() if value is not None}}

    def public_config(self) -> dict[str, Any]:
        """:meth:`config` without the parameters a client must not learn (``secret_parameters``, e.g. a
        noise seed, which would let it replay and subtract the noise): what a server may disclose."""
        return {key: value for key, value in self.config().items() if key not in self.secret_parameters}


def check_logits(logits: Tensor) -> None:
    """Raise ``TypeError`` or ``ValueError`` unless ``logits`` is a floating-point tensor ``[B, K]``, ``K >= 1``."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [B, K], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")


@dataclass(frozen=True)
class TopNPolicy(LogitPolicy):
    """A policy parameterised by how many classes it keeps: ``k`` directly, or the sparse ratio
    ``r`` with ``N = max(1, round(r * K))``. With neither, the paper's ``r = 0.1``."""

    k: int | None = None
    sparse_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.k is not None and self.sparse_ratio is not None:
            raise ValueError("give either k or sparse_ratio, not both")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.sparse_ratio is not None:
            count_from_ratio(self.sparse_ratio, 1)  # validates the range (0, 1]

    def keep_count(self, num_classes: int) -> int:
        """``N`` for ``K = num_classes``."""
        if self.k is not None:
            if self.k > num_classes:
                raise ValueError(f"k={self.k} exceeds the number of classes K={num_classes}")
            return self.k
        return count_from_ratio(0.1 if self.sparse_ratio is None else self.sparse_ratio, num_classes)

    def disclosure(self, num_classes: int) -> Disclosure:
        """``N = K``: every raw logit (nothing is masked); ``N < K``: :meth:`partial_disclosure`."""
        n = self.keep_count(num_classes)
        if n >= num_classes:
            return Disclosure(f"the raw logits of all {num_classes} classes (N = K: nothing is masked)", withholds=False)
        return self.partial_disclosure(n, num_classes)

    @abstractmethod
    def partial_disclosure(self, n: int, num_classes: int) -> Disclosure:
        """What the policy releases per image when it keeps ``n < num_classes`` classes."""


class MaskingTopNPolicy(TopNPolicy):
    """A :class:`TopNPolicy` that releases exactly ``N`` finite logits per row and ``-inf`` for the rest."""

    kept_classes: ClassVar[str]  # which N classes, in words

    @property
    def masks(self) -> bool:
        return True

    def released_count(self, num_classes: int) -> int:
        return self.keep_count(num_classes)

    def partial_disclosure(self, n: int, num_classes: int) -> Disclosure:
        """The raw logits of the kept classes and nothing of the others."""
        return Disclosure(f"the raw logits of {n} of {num_classes} classes ({self.kept_classes}); "
                          f"nothing of the other {num_classes - n}", withholds=True)
