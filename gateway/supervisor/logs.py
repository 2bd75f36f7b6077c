"""A launched backend's output, kept in memory: the last lines, bounded by count and by size.

It holds exactly what the child printed (the supervisor adds nothing, so no argv or environment, hence no
secret the child did not print itself). A progress bar redrawn with carriage returns is one line that is
replaced in place (append(..., transient=True)), so a long download cannot push the useful lines out.
"""

from __future__ import annotations

import time
from collections import deque
from itertools import islice

TRUNCATED = " [... {} more bytes]"


class LogRing:
    def __init__(self, max_lines: int = 2000, max_bytes: int = 1_000_000, max_line: int = 16_384) -> None:
        if max_lines < 1 or max_bytes < 64:
            raise ValueError("a log ring holds at least 1 line and 64 bytes")
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.max_line = min(max_line, max_bytes)     # a longer line is cut to this, never dropped
        self._lines: deque[tuple[str, int]] = deque()   # (line, its UTF-8 size)
        self._size = 0                               # bytes held
        self._last_transient = False
        self.count = 0                               # lines ever appended
        self.last_at = time.monotonic()              # monotonic time of the last output (or creation)

    def append(self, line: str | bytes, transient: bool = False) -> None:
        """One line (its line break stripped). transient: the line ended with a bare carriage return (a
        progress bar's redraw), so the next non-empty line replaces it."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        raw = line.rstrip("\r\n").encode("utf-8", errors="replace")
        if len(raw) > self.max_line:
            cut = TRUNCATED.format(len(raw) - self.max_line).encode()
            raw = raw[: self.max_line - len(cut)] + cut
        text = raw.decode("utf-8", errors="ignore")   # a character split by the cut is dropped
        if self._last_transient and self._lines:
            if not raw:                    # "50%\r" then "\n": the bar's last state stays, as on a terminal
                self._last_transient = transient
                self.last_at = time.monotonic()
                return
            self._size -= self._lines.pop()[1]
        self._lines.append((text, len(raw)))
        self._size += len(raw)
        self._last_transient = transient
        while len(self._lines) > self.max_lines or self._size > self.max_bytes:
            self._size -= self._lines.popleft()[1]
        self.count += 1
        self.last_at = time.monotonic()

    def touch(self) -> None:
        """Output that is not a whole line yet (llama.cpp's loading dots): progress all the same."""
        self.last_at = time.monotonic()

    def tail(self, n: int | None = None) -> list[str]:
        """The last n lines kept (all of them when n is None), oldest first."""
        if n is not None and n <= 0:
            return []
        skip = 0 if n is None else max(0, len(self._lines) - n)
        return [line for line, _ in islice(self._lines, skip, None)]

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def size(self) -> int:
        return self._size
