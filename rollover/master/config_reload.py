"""The HUP's steps on gunicorn's application object in the master: loading the new config
(gunicorn's own error lines turned into one cause) and re-importing a preloaded app. Each
returns None or the one-line cause; the arbiter puts its snapshot back on a cause."""

from __future__ import annotations

import io
import re
import sys
from typing import Any

from rollover.probe import describe_exception

# a traceback's frame line, as gunicorn prints one when the config file fails to load
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def load_config(app: Any) -> str | None:
    """`app.reload()`, gunicorn's re-read of the config (it reports a bad one on stderr,
    then `sys.exit(1)`): None, or `config reload failed: <cause>`."""
    captured = io.StringIO()
    real_stderr = sys.stderr
    try:
        sys.stderr = captured
        try:
            app.reload()
        finally:
            sys.stderr = real_stderr
    except (Exception, SystemExit) as exc:
        text = captured.getvalue()
        real_stderr.write(text)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        invalid = [ln for ln in lines if ln.startswith("Invalid value for")]
        if isinstance(exc, SystemExit):
            cause = lines[-1] if lines else f"config reload exited with {exc.code}"
            where = [m for m in map(_FRAME.match, lines) if m]
            if where and not invalid:  # a traceback (a bad config file): where it failed
                cause = f"{where[-1]['file']}:{where[-1]['line']}: {cause}"
            if invalid and invalid[0] != cause:
                # gunicorn names the setting on the line before its error
                cause = f"{invalid[0]} ({cause.removeprefix('Error: ')})"
        else:
            cause = describe_exception(exc)
        return f"config reload failed: {cause}"
    real_stderr.write(captured.getvalue())
    return None


def preload(app: Any, log: Any) -> str | None:
    """preload_app: import the app anew in the master, so new workers fork with it."""
    uri = getattr(app, "app_uri", None) or ""
    top = uri.split(":", 1)[0].split(".", 1)[0]
    if top:
        # the app module itself may be unchanged while what it imports changed
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
    app.callable = None
    try:
        app.wsgi()
    except BaseException as exc:
        if not isinstance(exc, Exception | SystemExit):
            raise
        log.exception("rollover: preloading the new app failed")
        return f"preloading the app failed: {describe_exception(exc)}"
    return None
