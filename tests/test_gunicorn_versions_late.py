"""The version matrix of tests/test_gunicorn_versions.py, for gunicorn 26.2 and 27.0 (a file
of its own, so that `--dist loadfile` runs it beside the first one)."""

from __future__ import annotations

import pytest
from test_gunicorn_versions import VersionCases

pytestmark = pytest.mark.process


class TestGunicorn26(VersionCases):
    VERSION = "26.2.0"


class TestGunicorn27(VersionCases):
    VERSION = "27.0.1"
