"""A shard's progress line on stderr, in the stage's words: items done of its total, what is in
flight, the recent rate and the time left. The chunked stages (generate, rank, the eval's answers)
draw it from what their work tells them (src/core/chunks.py: `Progress`)."""

from __future__ import annotations

import sys
import time
from collections import deque

RATE_WINDOW_S = 60.0  # the progress line's rate is over this much of the recent past


class ProgressLine:
    """A shard's progress line: items done of its total, what is in flight, the rate of the last
    minute and the time left, in the stage's words (`items`, `in_flight_items`, `unit`), e.g.

        [generate] shard000-of-001: 1,234/20,000 prompts (6%), 320 samples in flight,
        2,345 tokens/s, 1:23:45 left

    On a terminal one line rewritten in place at most every `tty_every_s`; in a log (a SLURM
    task's) a line at most every `every_s` seconds, and at the end."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "rows",
        items: str = "prompts",
        in_flight_items: str = "samples",
        every_s: float = 30.0,
        tty_every_s: float = 1.0,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.items, self.in_flight_items = items, in_flight_items
        self.tty = sys.stderr.isatty()
        self.every_s = tty_every_s if self.tty else every_s
        self.started = self.shown_at = time.monotonic()
        self.kept = 0  # items an earlier run made
        self.done = 0  # items this run finished
        self.work = 0.0  # units (tokens, comparisons) this run made
        self.in_flight: int | None = None
        self.history: deque[tuple[float, float]] = deque([(self.started, 0.0)])

    def reused(self, items: int) -> None:
        self.kept += items

    def update(self, done: int, work: float, in_flight: int | None = None) -> None:
        """What this run has finished (`done` items, `work` units) and has `in_flight`; the
        figures only grow (the chunk runner says what it wrote, a stream what it finished)."""
        self.done, self.work = max(self.done, done), max(self.work, work)
        if in_flight is not None:
            self.in_flight = in_flight
        now = time.monotonic()
        if now - self.history[-1][0] >= 1.0:
            self.history.append((now, self.work))
            while len(self.history) > 2 and now - self.history[1][0] >= RATE_WINDOW_S:
                self.history.popleft()
        if now - self.shown_at >= self.every_s:
            self.show(now, final=False)

    def end(self) -> None:
        if self.done:
            self.in_flight = None
            self.show(time.monotonic(), final=True)

    def line(self, now: float, final: bool = False) -> str:
        done = self.kept + self.done
        parts = [f"{done:,}/{self.total:,} {self.items} ({done / max(self.total, 1):.0%})"]
        if self.in_flight is not None:
            parts.append(f"{self.in_flight:,} {self.in_flight_items} in flight")
        then, work_then = self.history[0]
        if now - then > 0 and self.work > 0:
            parts.append(f"{(self.work - work_then) / (now - then):,.0f} {self.unit}/s")
        elapsed = now - self.started
        if final:
            parts.append(f"done in {clock(elapsed)}")
        elif self.done:
            parts.append(f"{clock((self.total - done) * elapsed / self.done)} left")
        else:
            parts.append(f"{clock(elapsed)} in")
        return f"{self.label}: " + ", ".join(parts)

    def show(self, now: float, final: bool) -> None:
        self.shown_at, text = now, self.line(now, final)
        if self.tty:
            print(f"\r{text}\x1b[K", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """h:mm:ss"""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
