"""Composing rollover's hooks with a user's own config file."""

from __future__ import annotations

import pytest
from gunicorn.config import validate_callable

from rollover import hooks


def test_rollover_hooks_pass_gunicorns_arity_check() -> None:
    for hook in hooks.HOOKS.values():
        assert validate_callable(1)(hook) is hook


def test_extend_keeps_the_user_hooks_arity_and_runs_ours_first() -> None:
    calls: list[str] = []
    original = hooks.HOOKS["on_starting"]
    hooks.HOOKS["on_starting"] = lambda server: calls.append("rollover")
    try:
        @hooks.extend
        def on_starting(server: object) -> None:
            calls.append("user")

        assert validate_callable(1)(on_starting) is on_starting
        on_starting(object())
    finally:
        hooks.HOOKS["on_starting"] = original
    assert calls == ["rollover", "user"]


def test_extend_refuses_a_hook_rollover_does_not_define() -> None:
    with pytest.raises(ValueError, match="rollover defines no hook named 'post_fork'"):
        @hooks.extend
        def post_fork(server: object, worker: object) -> None: ...
