"""Progress for long loads: a tqdm bar on a terminal, a plain line every 10% otherwise.

Logs (DVC, CI, ``> file``) get a handful of readable lines instead of carriage-return noise.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "file", stream: TextIO | None = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._next_tenth = 1
        is_tty = getattr(self._stream, "isatty", lambda: False)()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream) if is_tty else None

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total <= 0:
            return
        tenth = self.done * 10 // self.total
        if tenth >= self._next_tenth:
            self._next_tenth = tenth + 1
            percent = 100 * self.done // self.total
            print(
                f"{self.desc}: {self.done}/{self.total} {self.unit}s ({percent}%)",
                file=self._stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
