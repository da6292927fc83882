"""Progress: a rich bar (loss, tokens/s, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.tty = enabled and sys.stdout.isatty()
        self._t0, self._start, self._last_line = time.perf_counter(), start, 0.0
        self._bar = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(
                "train", total=total, completed=start, loss="-", tps="-"
            )
            self._bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(
                self._task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}"
            )
            return
        now = time.perf_counter()
        if step == self.total or now - self._last_line >= 10 or step == self._start + 1:
            done = step - self._start
            eta = (now - self._t0) / max(done, 1) * (self.total - step)
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  eta {eta:,.0f}s",
                flush=True,
            )
            self._last_line = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
