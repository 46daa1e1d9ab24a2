"""Issue 25's matrix for gunicorn 24.1.1 (the cases: tests/rolled_out.py)."""

from __future__ import annotations

import pytest
from rolled_out import RolledOutCases

pytestmark = pytest.mark.process


class TestRolledOut24(RolledOutCases):
    VERSION = "24.1.1"
