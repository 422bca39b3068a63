"""The parent's side of ``reliability_app.py``: start it, read its JSON-line events, send it
commands, stop it."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

APP = Path(__file__).with_name("reliability_app.py")


class AppDied(RuntimeError):
    """The app process exited or stopped answering before the scenario was over."""


class AppProcess:
    """One run of the instrumented app; its stderr goes to ``log_path``."""

    def __init__(
        self, config: dict[str, Any], environ: dict[str, str], log_path: Path, *, cwd: Path
    ) -> None:
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(
            [sys.executable, str(APP), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=environ,
            cwd=cwd,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.last_stats: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, name="app-events", daemon=True)
        self._reader.start()

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._proc.poll() is None:
            self._proc.kill()  # only after a failure: a normal run ends with finish()
            self._proc.wait(10)
        self._log.close()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self._log.write(f"[stdout] {line}")
                continue
            if isinstance(event, dict):
                self._events.put(event)
        self._events.put({"event": "exit"})

    def _next(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            event = self._events.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if event.get("event") == "stats":
            self.last_stats = event["stats"]
        if event.get("event") in ("exit", "fatal"):
            raise AppDied(f"the app stopped ({event}); see {self.log_path}:\n{self._tail()}")
        return event

    def wait_for(self, name: str, timeout_s: float) -> dict[str, Any]:
        """The next event called ``name``; AppDied if the app exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            event = self._next(deadline - time.monotonic())
            if event is not None and event.get("event") == name:
                return event
            if time.monotonic() > deadline:
                raise AppDied(f"no {name!r} event within {timeout_s:g} s; see {self.log_path}")

    def collect(self, seconds: float) -> None:
        """Read events for ``seconds``, keeping the latest counters in ``last_stats``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._next(deadline - time.monotonic())

    def send(self, command: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()

    def finish(self, timeout_s: float) -> int:
        """Close stdin and wait for a clean exit; the exit code."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        return self._proc.wait(timeout_s)

    def _tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])
