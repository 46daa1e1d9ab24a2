"""Rollover's settings: defaults from the gunicorn config, `rollover_*` names, `ROLLOVER_*` env."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rollover.settings import _SPECS, NAMES, RANGES, SettingsError, resolve, start_lines


def gunicorn_cfg(**overrides: object) -> SimpleNamespace:
    values: dict[str, object] = {"timeout": 30, "graceful_timeout": 30, "pidfile": None,
                                 "config": None}
    values.update(overrides)
    return SimpleNamespace(**values)


def test_defaults_follow_gunicorn() -> None:
    s = resolve(gunicorn_cfg(timeout=12, graceful_timeout=7, pidfile="/run/app/g.pid"), {}, {})
    assert s.ready_timeout == 12.0
    assert s.max_surge == 1
    assert s.graceful_timeout == 7.0
    assert s.status_path == "/run/app/g.rollover.json"
    assert s.refresh is True


def test_no_pidfile_means_no_default_status_path() -> None:
    assert resolve(gunicorn_cfg(), {}, {}).status_path is None


def test_timeout_zero_falls_back_to_thirty_seconds() -> None:
    assert resolve(gunicorn_cfg(timeout=0), {}, {}).ready_timeout == 30.0


def test_config_namespace_sets_values() -> None:
    s = resolve(gunicorn_cfg(), {"rollover_max_surge": 2, "rollover_ready_timeout": 5,
                                 "rollover_status_path": "/tmp/s.json"}, {})
    assert (s.max_surge, s.ready_timeout, s.status_path) == (2, 5.0, "/tmp/s.json")


def test_environment_wins_over_config() -> None:
    s = resolve(gunicorn_cfg(), {"rollover_max_surge": 2}, {"ROLLOVER_MAX_SURGE": "3",
                                                             "ROLLOVER_REFRESH": "off"})
    assert s.max_surge == 3
    assert s.refresh is False


@pytest.mark.parametrize(
    ("namespace", "environ", "message"),
    [
        ({"rollover_max_surge": 0}, {}, "rollover_max_surge must be 1 to 1000"),
        ({"rollover_max_surge": 1.5}, {}, "rollover_max_surge must be a whole number"),
        ({}, {"ROLLOVER_READY_TIMEOUT": "soon"}, "ROLLOVER_READY_TIMEOUT must be a number"),
        ({"rollover_ready_timeout": True}, {}, "rollover_ready_timeout must be a number"),
        ({"rollover_refresh": "maybe"}, {}, "rollover_refresh must be true or false"),
        ({"rollover_status_path": 3}, {}, "rollover_status_path must be a file path"),
        ({"rollover_max_surg": 2}, {}, "unknown rollover setting rollover_max_surg"),
        ({}, {"ROLLOVER_READY_TIMOUT": "3"}, "unknown rollover setting ROLLOVER_READY_TIMOUT"),
    ],
)
def test_bad_values_are_one_line_errors(namespace: dict[str, object],
                                        environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(gunicorn_cfg(), namespace, environ)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_modules_and_functions_named_rollover_are_not_settings() -> None:
    import rollover.hooks as rollover_hooks

    resolve(gunicorn_cfg(), {"rollover_hooks": rollover_hooks,
                             "rollover_on_starting": rollover_hooks.on_starting}, {})


def test_every_setting_has_a_documented_name() -> None:
    assert set(NAMES) == {
        "rollover_ready_timeout", "rollover_max_surge", "rollover_status_path",
        "rollover_graceful_timeout", "rollover_max_draining", "rollover_backoff_max",
        "rollover_refresh", "rollover_refresh_dependents", "rollover_refresh_timeout",
        "rollover_probe_path",
        "rollover_reexec_python", "rollover_drain", "rollover_recycle",
        "rollover_max_worker_rss", "rollover_max_worker_age", "rollover_max_worker_age_jitter",
        "rollover_canary", "rollover_canary_requests", "rollover_canary_seconds",
        "rollover_canary_threshold", "rollover_canary_min_failures",
        "rollover_canary_confidence", "rollover_canary_max_seconds", "rollover_canary_strict",
    }


def test_canary_settings_are_bounded() -> None:
    s = resolve(gunicorn_cfg(), {}, {})
    assert (s.canary_confidence, s.canary_max_seconds, s.canary_strict,
            s.canary_min_failures) == (0.995, 60.0, False, 3)
    assert resolve(gunicorn_cfg(), {}, {"ROLLOVER_CANARY_STRICT": "1"}).canary_strict
    for env, message in [
        ({"ROLLOVER_CANARY_CONFIDENCE": "1"}, "must be 0.5 to 0.99999"),
        ({"ROLLOVER_CANARY_CONFIDENCE": "0.3"}, "must be 0.5 to 0.99999"),
        ({"ROLLOVER_CANARY_MAX_SECONDS": "7200"}, "must be 1 to 3600 s"),
        ({"ROLLOVER_CANARY_MAX_SECONDS": "5"},
         "rollover_canary_max_seconds must be >= rollover_canary_seconds"),
        ({"ROLLOVER_CANARY_MIN_FAILURES": "0"}, "must be 1 to 1000"),
    ]:
        with pytest.raises(SettingsError, match=message):
            resolve(gunicorn_cfg(), {}, env)


def test_drain_is_on_by_default_and_can_be_turned_off() -> None:
    assert resolve(gunicorn_cfg(), {}, {}).drain is True
    assert resolve(gunicorn_cfg(), {"rollover_drain": False}, {}).drain is False
    assert resolve(gunicorn_cfg(), {}, {"ROLLOVER_DRAIN": "0"}).drain is False
    with pytest.raises(SettingsError, match="ROLLOVER_DRAIN must be true or false"):
        resolve(gunicorn_cfg(), {}, {"ROLLOVER_DRAIN": "maybe"})


def test_the_cli_pidfile_variable_is_not_a_master_setting() -> None:
    # `export ROLLOVER_PIDFILE=...` for `rollover reload`, then gunicorn from the same shell
    assert resolve(gunicorn_cfg(), {}, {"ROLLOVER_PIDFILE": "/run/app/gunicorn.pid"})


@pytest.mark.parametrize("name", sorted(RANGES))
def test_every_number_has_a_range(name: str) -> None:
    """Below, above, infinite, not a number and 400 digits: each one line, naming the range."""
    limits = RANGES[name]
    key = f"ROLLOVER_{name.upper()}"
    below = limits.minimum - (1 if limits.integer else 0.01)
    above = limits.maximum + 1
    for raw in (str(below), str(above), "1e400", "-1e400", "nan", "9" * 400,
                "99999999999"):
        if raw == "99999999999" and limits.maximum >= 99999999999:
            continue
        with pytest.raises(SettingsError) as info:
            resolve(gunicorn_cfg(), {}, {key: raw})
        text = str(info.value)
        assert text.startswith(f"{key} must be "), text
        assert "\n" not in text and len(text) < 200, text
    # both ends are accepted (the canary's window within its widest cap)
    widest = {"rollover_canary_seconds": RANGES["canary_seconds"].minimum,
              "rollover_canary_max_seconds": RANGES["canary_max_seconds"].maximum}
    for raw in (limits.minimum, limits.maximum):
        value = int(raw) if limits.integer else raw
        resolve(gunicorn_cfg(), {**widest, f"rollover_{name}": value}, {})


def test_every_numeric_setting_is_ranged() -> None:
    numeric = {name for name, (parse, _) in _SPECS.items()
               if _rejects(parse, f"rollover_{name}", "1e400")
               and not _rejects(parse, f"rollover_{name}", "1")
               and _rejects(parse, f"rollover_{name}", "true")}  # not a switch
    assert numeric <= set(RANGES)
    assert set(RANGES) <= set(_SPECS)


def _rejects(parse: object, name: str, raw: str) -> bool:
    try:
        parse(name, raw)  # type: ignore[operator]
    except SettingsError:
        return True
    return False


def test_start_line_names_only_the_settings_that_differ_from_their_defaults() -> None:
    cfg = gunicorn_cfg(timeout=12, pidfile="/run/app/g.pid")
    changed, every = start_lines(resolve(cfg, {"rollover_max_surge": 2},
                                         {"ROLLOVER_CANARY": "0"}), cfg)
    assert changed == "max_surge=2, canary=False", changed
    # every setting, for DEBUG (a default that follows gunicorn's config is not a change)
    assert every.startswith("ready_timeout=12.0, max_surge=2, "), every
    assert len(every.split(", ")) == len(NAMES), every
    assert start_lines(resolve(cfg, {}, {}), cfg)[0] == "defaults"
