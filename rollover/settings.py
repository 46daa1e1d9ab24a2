"""Rollover's own settings: `rollover_*` names in the gunicorn config, `ROLLOVER_*` in the env.

Gunicorn drops config names it does not know, so rollover reads its settings from the
config module's namespace itself, then lets the environment override them. Every value is
validated up front; a bad one is a `SettingsError` with a one-line message.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any


class SettingsError(ValueError):
    """A rollover setting has a bad value (one-line message)."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting takes: `minimum` to `maximum`, both included."""

    minimum: float
    maximum: float
    integer: bool = False
    unit: str = ""  # " s", " MiB", or "" for a count

    def __str__(self) -> str:
        return f"{self.minimum:g} to {self.maximum:g}{self.unit}"


_DAY, _YEAR = 86_400, 365 * 86_400

# Every numeric setting's range, as the README's settings table states it. Out of range
# (or not finite) is a `SettingsError`, like a value of the wrong type.
RANGES: dict[str, Range] = {
    "ready_timeout": Range(0.1, _DAY, unit=" s"),
    "max_surge": Range(1, 1000, integer=True),
    "graceful_timeout": Range(0, _DAY, unit=" s"),
    "max_draining": Range(1, 1000, integer=True),
    "backoff_max": Range(0.1, _DAY, unit=" s"),
    "refresh_timeout": Range(0.5, 3600, unit=" s"),
    "max_worker_rss": Range(1, 1024 * 1024, unit=" MiB"),
    "max_worker_age": Range(1, _YEAR, unit=" s"),
    "max_worker_age_jitter": Range(0, _YEAR, unit=" s"),
    "canary_requests": Range(1, 1_000_000, integer=True),
    "canary_seconds": Range(0.5, 3600, unit=" s"),  # within canary_max_seconds
    "canary_threshold": Range(0, 0.99),
    "canary_min_failures": Range(1, 1000, integer=True),
    "canary_confidence": Range(0.5, 0.99999),
    "canary_max_seconds": Range(1, 3600, unit=" s"),
}


def _number(name: str, value: Any, limits: Range) -> float:
    integer = limits.integer
    if isinstance(value, bool):
        raise SettingsError(f"{name} must be a number, got {value!r}")
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if integer else "a number"
        raise SettingsError(f"{name} must be {kind}, got {_shown(value)}") from None
    if integer and isinstance(value, float) and value != int(value):
        raise SettingsError(f"{name} must be a whole number, got {_shown(value)}")
    if not ((integer or math.isfinite(number)) and limits.minimum <= number <= limits.maximum):
        raise SettingsError(f"{name} must be {limits}, got {_shown(value)}")
    return number


def _ranged(key: str) -> Callable[[str, Any], float]:
    limits = RANGES[key]
    return lambda name, value: _number(name, value, limits)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {_shown(value)}")


def _optional(name: str, value: Any, parse: Callable[[], float]) -> float | None:
    """None (or "", or 0 from the environment: off), else what `parse` makes of it."""
    if value is None or value == 0 or (isinstance(value, str) and value.strip() in ("", "0")):
        return None
    return parse()


def _path(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SettingsError(f"{name} must be a file path, got {_shown(value)}")
    return value


def _probe_path(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise SettingsError(f"{name} must be a path starting with '/', got {_shown(value)}")
    return value


@dataclass(frozen=True)
class Settings:
    """Rollover's settings, resolved against the gunicorn config they belong to."""

    ready_timeout: float
    """Seconds a new worker has to report READY before the roll aborts."""
    max_surge: int
    """Workers booting at once during a roll, above `workers`."""
    status_path: str | None
    """Where the master writes its status; None when there is nowhere to write it."""
    graceful_timeout: float
    """Seconds a retired worker may drain before the master SIGKILLs it (gunicorn's)."""
    max_draining: int
    """Retired workers draining at once; the next waits (a long stream never blocks more)."""
    backoff_max: float
    """Upper bound of the delay between respawns of a worker that keeps failing to boot."""
    refresh: bool
    """Refresh import state (sys.path, importer caches, changed modules) on HUP."""
    refresh_dependents: bool
    """On refresh, also purge what depends on a changed package, and the app's modules."""
    refresh_timeout: float
    """Seconds the HUP-time refresh may block the master (its fresh interpreter)."""
    probe_path: str | None
    """A path a new worker requests from its own app, in-process, before it is READY."""
    reexec_python: str | None
    """The interpreter USR2 execs (default: the one this master runs)."""
    drain: bool
    """Put rollover's drain in front of an ASGI worker class (readiness is added anyway)."""
    recycle: bool
    """A worker reaching gunicorn's max_requests is replaced new-ready-first (off: it exits)."""
    max_worker_rss: float | None
    """MiB of resident memory after which a worker is replaced, new-ready-first."""
    max_worker_age: float | None
    """Seconds of serving after which a worker is replaced, new-ready-first."""
    max_worker_age_jitter: float | None
    """Up to this many seconds are added to each worker's max age (default: a tenth of it)."""
    canary: bool
    """Hold each roll at its first new worker until it is judged against the old ones."""
    canary_requests: int
    """The canary passes once it answered this many requests without failing..."""
    canary_seconds: float
    """...its window: no verdict and no error after this long: not judged."""
    canary_threshold: float
    """A pass must rule out an error rate this far above the old workers' (0.2: 20 points)."""
    canary_min_failures: int
    """It never fails with fewer 5xx (or failed requests) than this."""
    canary_confidence: float
    """The canary's tests decide at p <= 1 - this (0.995)."""
    canary_max_seconds: float
    """A canary with errors but no verdict is watched this long before the roll aborts."""
    canary_strict: bool
    """A canary that could not be judged aborts the roll."""

    @property
    def summary(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))

    def changes(self, defaults: Settings) -> str:
        """The settings that differ from `defaults` (`name=value, ...`), or "defaults"."""
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                   if getattr(self, f.name) != getattr(defaults, f.name)]
        return ", ".join(changed) if changed else "defaults"


# name -> (parser, default computed from the gunicorn config)
_SPECS: dict[str, tuple[Callable[[str, Any], Any], Callable[[Any], Any]]] = {
    "ready_timeout": (
        _ranged("ready_timeout"),
        lambda cfg: float(cfg.timeout) if cfg.timeout else 30.0,
    ),
    "max_surge": (lambda n, v: int(_ranged("max_surge")(n, v)), lambda cfg: 1),
    "status_path": (_path, lambda cfg: _default_status_path(cfg)),
    "graceful_timeout": (_ranged("graceful_timeout"), lambda cfg: float(cfg.graceful_timeout)),
    "max_draining": (lambda n, v: int(_ranged("max_draining")(n, v)), lambda cfg: 1),
    "backoff_max": (_ranged("backoff_max"), lambda cfg: 30.0),
    "refresh": (_bool, lambda cfg: True),
    "refresh_dependents": (_bool, lambda cfg: True),
    "refresh_timeout": (_ranged("refresh_timeout"), lambda cfg: 10.0),
    "probe_path": (_probe_path, lambda cfg: None),
    "reexec_python": (_path, lambda cfg: None),
    "drain": (_bool, lambda cfg: True),
    "recycle": (_bool, lambda cfg: True),
    "max_worker_rss": (
        lambda n, v: _optional(n, v, lambda: _ranged("max_worker_rss")(n, v)),
        lambda cfg: None,
    ),
    "max_worker_age": (
        lambda n, v: _optional(n, v, lambda: _ranged("max_worker_age")(n, v)),
        lambda cfg: None,
    ),
    "canary": (_bool, lambda cfg: True),
    "canary_requests": (lambda n, v: int(_ranged("canary_requests")(n, v)), lambda cfg: 50),
    "canary_seconds": (_ranged("canary_seconds"), lambda cfg: 10.0),
    "canary_threshold": (_ranged("canary_threshold"), lambda cfg: 0.2),
    "canary_min_failures": (
        lambda n, v: int(_ranged("canary_min_failures")(n, v)),
        lambda cfg: 3,
    ),
    "canary_confidence": (_ranged("canary_confidence"), lambda cfg: 0.995),
    "canary_max_seconds": (_ranged("canary_max_seconds"), lambda cfg: 60.0),
    "canary_strict": (_bool, lambda cfg: False),
    "max_worker_age_jitter": (
        lambda n, v: None if v is None or v == "" else _ranged("max_worker_age_jitter")(n, v),
        lambda cfg: None,
    ),
}

NAMES = tuple(f"rollover_{name}" for name in _SPECS)

# The `rollover` command line's own variables: an operator's shell may export them to the
# master too, which leaves them alone.
PIDFILE_ENV = "ROLLOVER_PIDFILE"  # the default of the CLI's --pidfile
CLI_ENVIRON = (PIDFILE_ENV,)


def _default_status_path(cfg: Any) -> str | None:
    from rollover.status import default_status_path

    return default_status_path(cfg.pidfile) if cfg.pidfile else None


def start_lines(current: Settings, cfg: Any) -> tuple[str, str]:
    """The master's start lines: (INFO) the settings that differ from their defaults for
    `cfg`, (DEBUG) every setting."""
    return (current.changes(resolve(cfg, namespace={}, environ={})),
            current.summary)


def announce(log: Any, current: Settings, cfg: Any, version: str) -> None:
    """Log the start lines (`start_lines`) to gunicorn's error log `log`."""
    changed, every = start_lines(current, cfg)
    log.info("rollover %s active: %s", version, changed)
    log.debug("rollover settings: %s", every)


def config_namespace(cfg: Any) -> Mapping[str, Any]:
    """The variables of the config module or file gunicorn loaded for `cfg`."""
    location = getattr(cfg, "config", None) or ""
    if location.startswith("python:"):
        module = sys.modules.get(location[len("python:"):])
    else:
        module = sys.modules.get("__config__")
    return vars(module) if module is not None else {}


def resolve(
    cfg: Any,
    namespace: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve rollover's settings: defaults < config namespace < environment."""
    namespace = config_namespace(cfg) if namespace is None else namespace
    environ = os.environ if environ is None else environ
    unknown = sorted(
        key for key, value in namespace.items()
        # `from rollover import hooks as rollover_hooks` is a module, not a setting
        if key.startswith("rollover_") and key not in NAMES
        and not isinstance(value, ModuleType) and not callable(value)
    ) + sorted(
        key for key in environ
        if key.startswith("ROLLOVER_") and key.lower() not in NAMES
        and key not in CLI_ENVIRON
    )
    if unknown:
        raise SettingsError(f"unknown rollover setting {unknown[0]} (known: {', '.join(NAMES)})")
    values: dict[str, Any] = {}
    for name, (parse, default) in _SPECS.items():
        key = f"rollover_{name}"
        env_key = key.upper()
        if env_key in environ:
            values[name] = parse(env_key, environ[env_key])
        elif key in namespace:
            values[name] = parse(key, namespace[key])
        else:
            values[name] = default(cfg)
    if values["canary_max_seconds"] < values["canary_seconds"]:
        raise SettingsError(
            f"rollover_canary_max_seconds must be >= rollover_canary_seconds "
            f"({values['canary_seconds']:g}), got {values['canary_max_seconds']:g}")
    return Settings(**values)
