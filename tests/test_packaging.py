"""The package metadata builds without setuptools warnings (pip shows each one as a banner at install time).

pip builds the project with the ``setuptools>=77`` that ``[build-system]`` asks for; this test reads the
metadata with the environment's setuptools, so it skips where that one is older."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("setuptools", minversion="77")
from setuptools.config.pyprojecttoml import apply_configuration  # noqa: E402
from setuptools.dist import Distribution  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_gives_setuptools_nothing_to_warn_about() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distribution = apply_configuration(Distribution(), PYPROJECT)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert distribution.metadata.license_expression == "MIT"  # the SPDX form (a TOML table is deprecated)
