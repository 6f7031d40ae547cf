"""SPU for the MPC tests: CI creates the venv (scripts/setup.sh), so there a missing SPU fails the tests;
elsewhere they are skipped with the way to install it."""

from __future__ import annotations

import os

import pytest

from nas.mpc import runner


@pytest.fixture(scope="session")
def spu() -> None:
    """Skip (outside CI) when no SPU interpreter is found."""
    if os.environ.get("CI", "").lower() != "true" and not runner.spu_available():
        pytest.skip("SPU is not installed: bash scripts/setup_mpc.sh")
