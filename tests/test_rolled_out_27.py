"""Issue 25's matrix for gunicorn 27.0.1 (the cases: tests/rolled_out.py)."""

from __future__ import annotations

import pytest
from rolled_out import RolledOutCases

pytestmark = pytest.mark.process


class TestRolledOut27(RolledOutCases):
    VERSION = "27.0.1"
