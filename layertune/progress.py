"""In-epoch progress for ``layertune train``: steps done / total, examples per second, ETA.

Silent for epochs shorter than ``after`` seconds (the per-epoch line says enough); past that, a
tqdm bar on a terminal, else one line every ``every`` seconds (logs stay readable). Only the
``train`` command makes one: trials in Ray workers report per epoch and print nothing here.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class EpochProgress:
    """``start(epoch, steps)``, ``update(examples)`` after each step, ``close()``."""

    def __init__(self, stream: TextIO | None = None, *, after: float = 5.0,
                 every: float = 30.0, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.after, self.every = after, every
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar: tqdm | None = None

    def start(self, epoch: int, steps: int) -> None:
        self.epoch, self.total = epoch, steps
        self.done = self.examples = 0
        self._start = self._next = time.perf_counter()
        self._next += self.after

    def update(self, examples: int) -> None:
        self.done += 1
        self.examples += examples
        now = time.perf_counter()
        if now < self._next:  # the per-step cost: one clock read and a comparison
            return
        if self.tty:
            self._show_bar()
            self._next = now + 0.1  # tqdm redraws at most ten times a second
        else:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
            self._next = now + self.every

    def line(self, now: float | None = None) -> str:
        """``epoch 3: 1200/5000 steps (24 %), 850 examples/s, ETA 4m28s``."""
        elapsed = (now or time.perf_counter()) - self._start
        rate = self.examples / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) * elapsed / self.done if self.done else 0.0
        return (f"epoch {self.epoch}: {self.done}/{self.total} steps "
                f"({100 * self.done // max(self.total, 1)} %), {rate:.0f} examples/s, "
                f"ETA {_duration(eta)}")

    def _show_bar(self) -> None:
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=0, desc=f"epoch {self.epoch}",
                             unit="step", file=self.stream, leave=False, dynamic_ncols=True)
            self._bar.start_t = self._start  # the rate and ETA count from the epoch's start
        self._bar.n = self.done
        elapsed = time.perf_counter() - self._start
        self._bar.set_postfix_str(f"{self.examples / max(elapsed, 1e-9):.0f} examples/s",
                                  refresh=False)
        self._bar.refresh()  # update() calls this at most ten times a second

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
