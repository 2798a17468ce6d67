"""What the bench tells its user while it works, on stderr: a line that keeps changing
on a terminal, one line per phase otherwise (a log, a CI job)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

#: Fewest seconds between two redraws of the terminal line.
REDRAW_EVERY = 0.1


class Progress:
    """Phases numbered out of ``total``; ``tick`` says how the current one is going."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.total = total
        self.done = 0
        self.phase = ""
        self._drawn = 0.0
        self._width = 0

    def start(self, phase: str) -> None:
        """A new phase begins."""
        self.done += 1
        self.phase = f"[{self.done}/{self.total}] {phase}"
        if self.live:
            self._draw(self.phase)
        else:
            print(f"bench: {self.phase}", file=self.stream, flush=True)

    def say(self, line: str) -> None:
        """A line that stays (on a terminal too)."""
        self.close()
        print(f"bench: {line}", file=self.stream, flush=True)
        if self.live and self.phase:
            self._draw(self.phase)

    def tick(self, detail: str) -> None:
        """How the current phase is going (shown on a terminal only)."""
        now = time.monotonic()
        if self.live and now - self._drawn >= REDRAW_EVERY:
            self._draw(f"{self.phase}: {detail}")

    def close(self) -> None:
        """Clear the terminal line, so what is printed next starts clean."""
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _draw(self, text: str) -> None:
        self._drawn = time.monotonic()
        text = text[:shutil.get_terminal_size().columns - 1]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
