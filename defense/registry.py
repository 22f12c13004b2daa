"""Policies by name: ``make_policy("stingy", sparse_ratio=0.1)``, ``make_policy("stingy", k=2)``."""

from __future__ import annotations

import dataclasses
from typing import Any

from defense.base import LogitPolicy
from defense.perturbation import GaussianNoise, LabelOnly, ReverseSigmoid, Rounding
from defense.sparse import Least, Normal, Reverse, Stingy, StingySmooth

POLICIES: dict[str, type[LogitPolicy]] = {
    cls.name: cls
    for cls in (Normal, Stingy, StingySmooth, Reverse, Least, LabelOnly, Rounding, GaussianNoise, ReverseSigmoid)
}


def policy_parameters(name: str) -> list[str]:
    """The parameter names ``make_policy(name, ...)`` accepts."""
    return [f.name for f in dataclasses.fields(_policy_class(name)) if f.init]  # type: ignore[arg-type]


def make_policy(name: str, **params: Any) -> LogitPolicy:
    """Build the policy ``name`` with ``params``; ``None`` values count as not given.

    Raises ``ValueError`` naming the known policies or the accepted parameters.
    """
    cls = _policy_class(name)
    given = {key: value for key, value in params.items() if value is not None}
    unknown = sorted(set(given) - set(policy_parameters(name)))
    if unknown:
        accepted = ", ".join(policy_parameters(name)) or "none"
        raise ValueError(f"policy {name!r} takes no parameter {', '.join(unknown)} (accepted: {accepted})")
    return cls(**given)


def policy_from_fields(
    policy: str, sparse_ratio: float | None = None, k: int | None = None, policy_params: dict[str, Any] | None = None
) -> LogitPolicy:
    """The policy of the four fields a command or a server setting gives (``--policy``, ``--sparse-ratio``,
    ``--k``, ``--policy-param``; ``STINGY_POLICY``, ...): ``make_policy(policy, sparse_ratio=, k=, **policy_params)``.

    Raises ``ValueError`` when ``sparse_ratio`` or ``k`` is also in ``policy_params`` with another value.
    """
    params = dict(policy_params or {})
    for name, value in (("sparse_ratio", sparse_ratio), ("k", k)):
        if value is not None:
            if params.get(name, value) != value:
                raise ValueError(f"{name} is given twice with different values ({params[name]!r} and {value!r})")
            params[name] = value
    return make_policy(policy, **params)


def _policy_class(name: str) -> type[LogitPolicy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}") from None
