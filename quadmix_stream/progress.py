"""Progress for long commands: a tqdm bar on a terminal, a plain line every few seconds otherwise.

Only one process of a distributed run should report (pass ``enabled=rank == 0``). Lines look like::

    [pretrain] step 40/100 (40%) | loss 3.2104 | tokens/s 12,345 | elapsed 1m02s | ETA 1m33s

The interval between plain lines defaults to ``$QUADMIX_PROGRESS_S`` seconds (else 5).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def _say(line: str, stream: IO[str] | None) -> None:
    """A plain progress line: to ``stream`` when one is given, else to the library's log."""
    if stream is None:
        log.info(line)
    else:
        print(line, file=stream, flush=True)


def default_every() -> float:
    """Seconds between plain progress lines: ``$QUADMIX_PROGRESS_S`` or 5."""
    try:
        return max(0.0, float(os.environ.get("QUADMIX_PROGRESS_S", "5")))
    except ValueError:
        return 5.0


def fmt_duration(seconds: float) -> str:
    """``75`` → ``1m15s``; ``3700`` → ``1h01m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


class Progress:
    """Counts units of work done and reports rate and ETA.

    Args:
        desc: the label of the lines (``[desc] …``).
        total: units to do in all (``None``: unknown, no ETA).
        initial: units already done (a resumed run); the ETA uses this invocation's rate.
        unit: the unit's name (``step``, ``doc``, ``batch``).
        enabled: report at all (``False`` on ranks other than 0).
        every_s: seconds between plain lines (default :func:`default_every`).
        stream: where to write (default: plain lines to the ``quadmix_stream`` log at INFO, a
            bar to ``sys.stderr``).
        bar: ``True``/``False`` force a tqdm bar or plain lines; ``None``: a bar on a TTY.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        initial: int = 0,
        unit: str = "step",
        enabled: bool = True,
        every_s: float | None = None,
        stream: IO[str] | None = None,
        bar: bool | None = None,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = self.start_n = initial
        self.enabled = enabled
        self.every_s = default_every() if every_s is None else every_s
        self.stream = stream
        self.fields: dict[str, Any] = {}
        self.t0 = self._last = time.monotonic()
        self.lines = 0
        self._printed_n: int | None = None  # the count of the last plain line
        self._bar = None
        use_bar = bar if bar is not None else _isatty(stream or sys.stderr)
        if enabled and use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=stream or sys.stderr,
                leave=True,
            )

    def update(self, n: int = 1, **fields: Any) -> None:
        """Add ``n`` units; ``fields`` (loss, tokens/s, …) are shown with the next report."""
        self.n += n
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print()

    def line(self) -> str:
        """The current plain-text report."""
        elapsed = time.monotonic() - self.t0
        head = f"{self.unit} {self.n:,}"
        if self.total:
            head += f"/{self.total:,} ({100 * self.n / self.total:.0f}%)"
        parts = [head, *(f"{_name(k)} {_fmt(v)}" for k, v in self.fields.items())]
        parts.append(f"elapsed {fmt_duration(elapsed)}")
        done = self.n - self.start_n
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"ETA {fmt_duration(elapsed / done * (self.total - self.n))}")
        elif not self.total and elapsed > 0:
            parts.append(f"{done / elapsed:,.1f} {self.unit}/s")
        return f"[{self.desc}] " + " | ".join(parts)

    def _print(self) -> None:
        _say(self.line(), self.stream)
        self.lines += 1
        self._printed_n = self.n

    def close(self) -> None:
        """Final report (a plain line unless the last one already says it, or the bar)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed_n != self.n:  # not the line just printed again
            self._print()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def counted(items: Iterable[T], progress: Progress) -> Iterator[T]:
    """Yield ``items``, counting each in ``progress``; closes it when the items end."""
    try:
        for x in items:
            progress.update(1)
            yield x
    finally:
        progress.close()


@contextmanager
def heartbeat(
    desc: str, every_s: float | None = None, stream: IO[str] | None = None, enabled: bool = True
) -> Iterator[None]:
    """A line every few seconds (to ``stream``, else the log) while work without a counter runs
    (a child process, one long call), and one when it ends: ``[desc] running, elapsed 15s`` … ``[desc] done in 42s``."""
    every = max(0.2, default_every() if every_s is None else every_s)
    t0 = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            elapsed = fmt_duration(time.monotonic() - t0)
            _say(f"[{desc}] running, elapsed {elapsed}", stream)

    th = threading.Thread(target=beat, name="heartbeat", daemon=True)
    if enabled:
        th.start()
    try:
        yield
    finally:
        if enabled:
            stop.set()
            th.join()
            took = fmt_duration(time.monotonic() - t0)
            _say(f"[{desc}] done in {took}", stream)


def _name(key: str) -> str:
    """``tokens_per_s`` → ``tokens/s``; ``eval_loss`` → ``eval loss``."""
    return key.replace("_per_", "/").replace("_", " ")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
