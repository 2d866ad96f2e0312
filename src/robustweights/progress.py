"""Progress on long work: a redrawn bar on a terminal, a line per unit of work in a log.

A bar redrawn every few batches reads well on a terminal and badly in a file or a pipe (CI logs,
``nohup``): each redraw is a carriage-return line, about 150 KB for the two-minute demo. So
:func:`bar` gives tqdm's bar only when standard error is a terminal; otherwise an object with the
same methods that draws nothing, and the caller writes one line per epoch or per sweep grid
(:meth:`Lines.line`: what was done, the rate, the time left).

    with bar(total=len(split), desc="epoch 1/3", unit="img", enabled=progress) as b:
        for x, y in split.batches(100):
            ...
            b.update(len(x))
"""

from __future__ import annotations

import sys
import time


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (standard error by default) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or a file-like object without isatty
        return False


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``: a time a reader takes in at a glance."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Lines:
    """The log's stand-in for a bar: counts work, draws nothing, and says a line when asked.

    It has the methods of tqdm's bar that the package uses (``update``, ``set_postfix``,
    ``close``, iteration, use as a context manager), so code drives either the same way.
    """

    def __init__(self, iterable=None, total=None, desc="", unit="it", stream=None):
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.start = time.perf_counter()
        self.stream = stream

    def __iter__(self):
        for item in self.iterable:
            self.n += 1  # counted as it starts: a line written while it runs counts it done
            yield item

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args, **kwargs) -> None:
        """Nothing to redraw: the caller's next line carries what matters."""

    def close(self) -> None:
        """Nothing drawn, nothing to clear."""

    def rate(self) -> float:
        """Units done per second so far."""
        return self.n / max(time.perf_counter() - self.start, 1e-9)

    def line(self, text: str) -> None:
        """Writes ``text`` with the count so far, the rate and the time left, as one line."""
        elapsed = time.perf_counter() - self.start
        parts = [text]
        if self.total:
            parts.append(f"{self.n}/{self.total} {self.unit}")
        parts.append(f"{self.rate():.3g} {self.unit}/s")
        if self.total and self.n:
            parts.append(f"about {duration(elapsed / self.n * (self.total - self.n))} left")
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)


def _length(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None


def bar(iterable=None, *, total=None, desc="", unit="it", enabled=True, stream=None, **tqdm_kw):
    """tqdm's bar on a terminal; on a file or pipe (or with ``enabled=False``) a :class:`Lines`.

    ``stream`` is where a bar draws (standard error by default). With ``enabled=False`` nothing
    is ever written, not even by :meth:`Lines.line`'s callers' choice: they check ``enabled``.
    """
    if enabled and is_terminal(stream):
        from tqdm.auto import tqdm

        kw = {"dynamic_ncols": True, **tqdm_kw}
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, **kw)
    return Lines(iterable, total=total, desc=desc, unit=unit, stream=stream)
