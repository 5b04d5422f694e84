"""Progress for long work: a tqdm bar on a terminal, one plain line per 10% when written to a file.

A tqdm bar redraws itself with carriage returns and control codes, which fill a log file; when
stderr is not a TTY, `progress` prints ``desc: 30% (120/400) 41 s elapsed, ETA 96 s`` lines instead.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class PlainProgress:
    """The part of tqdm's interface the trainer uses, printing a line at every ``every`` fraction."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: float = 0.1, stream=None):
        self.total, self.desc, self.n, self.every = max(total, 1), desc, initial, every
        self.stream = stream or sys.stderr
        self.started, self.start_n = time.time(), initial
        self.next_mark = (int(initial / self.total / every) + 1) * every
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n / self.total + 1e-12 >= self.next_mark or self.n == self.total:
            while self.next_mark <= self.n / self.total + 1e-12:
                self.next_mark += self.every
            elapsed = time.time() - self.started
            done = self.n - self.start_n
            eta = elapsed / done * (self.total - self.n) if done else float("nan")
            print(f"{self.desc}: {self.n / self.total:.0%} ({self.n}/{self.total}) {elapsed:.0f} s elapsed, "
                  f"ETA {eta:.0f} s{self.postfix}", file=self.stream, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = "  " + " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0, plain_when_piped: bool = True):
    """A progress reporter: tqdm on a TTY, `PlainProgress` lines otherwise (or nothing when
    ``plain_when_piped`` is False, for short inner loops such as evaluation)."""
    tty = sys.stderr.isatty()
    if not enabled or (not tty and not plain_when_piped):
        return tqdm(total=total, initial=initial, disable=True)
    if tty:
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
    return PlainProgress(total, desc, initial=initial)


def write_line(text: str, enabled: bool = True) -> None:
    """A line on stderr that does not break a tqdm bar drawn there (e.g. validation metrics while training)."""
    if enabled:
        tqdm.write(text, file=sys.stderr)


__all__ = ["progress", "PlainProgress", "write_line"]
