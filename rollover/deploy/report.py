"""`rollover deploy`'s exit codes, errors and output: each step printed as it goes, and
one JSON summary with --json."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

EXIT_DEPLOYED = 0  # deployed (with --dry-run: the plan was made, nothing changed)
EXIT_ROLLED_BACK = 1  # the live step failed; rolled back, the previous release serves
EXIT_ERROR = 2  # bad usage or a precondition failed; nothing changed
EXIT_BUILD_FAILED = 3  # the release could not be built; nothing changed
EXIT_PREFLIGHT_FAILED = 4  # the release failed its preflight; nothing live was touched
EXIT_ROLLBACK_FAILED = 5  # the live step failed; the server is not known to serve either release
EXIT_INTERRUPTED = 130


class DeployError(Exception):
    """A deploy problem: one line on stderr, and the exit code to end with."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code

class LiveFailure(Exception):
    """The live step failed (after `current` was switched): roll back."""


@dataclass
class Step:
    step: str
    ok: bool
    seconds: float
    detail: str

@dataclass
class Report:
    """What the deploy did: printed step by step, and as one JSON object with --json."""

    json_mode: bool
    root: str = ""
    release: str | None = None
    previous: str | None = None
    method: str | None = None
    reasons: list[str] = field(default_factory=list)
    master_pid: int | None = None
    new_master_pid: int | None = None
    steps: list[Step] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    error: str | None = None
    rollback_error: str | None = None
    serving: str | None = None  # after a failed live step: the release all READY workers run
    start_command: list[str] | None = None
    start_shell: str | None = None  # --init: the start command with the env file exported
    output_tail: list[str] = field(default_factory=list)  # a failed build command's last lines
    dry_run: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def out(self) -> IO[str]:
        return sys.stderr if self.json_mode else sys.stdout

    def say(self, step: str, text: str) -> None:
        print(f"[{step}]{' ' * max(1, 10 - len(step))}{text}", file=self.out, flush=True)

    def done(self, step: str, started: float, detail: str, ok: bool = True) -> None:
        self.steps.append(Step(step, ok, round(time.monotonic() - started, 3), detail))

    def result(self, code: int) -> str:
        if self.dry_run and code == EXIT_DEPLOYED:
            return "planned"
        return {EXIT_DEPLOYED: "deployed", EXIT_ROLLED_BACK: "rolled-back",
                EXIT_BUILD_FAILED: "rejected", EXIT_PREFLIGHT_FAILED: "rejected",
                EXIT_ROLLBACK_FAILED: "rollback-failed",
                EXIT_INTERRUPTED: "interrupted"}.get(code, "error")

    def as_json(self, code: int) -> dict[str, Any]:
        return {
            "result": self.result(code),
            "exit_code": code,
            "root": self.root,
            "release": self.release,
            "previous": self.previous,
            "method": self.method,
            "reasons": self.reasons,
            "master_pid": self.master_pid,
            "new_master_pid": self.new_master_pid,
            "steps": [vars(s) for s in self.steps],
            "pruned": self.pruned,
            "kept": self.kept,
            "error": self.error,
            "rollback_error": self.rollback_error,
            "serving": self.serving,
            "start_command": self.start_command,
            "start_shell": self.start_shell,
            "output_tail": self.output_tail,
            "dry_run": self.dry_run,
            "seconds": round(time.monotonic() - self.started, 3),
        }


def error(message: str) -> None:
    print(f"rollover: {message}", file=sys.stderr, flush=True)
