"""Issue 25's matrix for gunicorn 25.3.0 (the cases: tests/rolled_out.py)."""

from __future__ import annotations

import pytest
from rolled_out import RolledOutCases

pytestmark = pytest.mark.process


class TestRolledOut25(RolledOutCases):
    VERSION = "25.3.0"
