"""The live chart: one figure redrawn in place in Jupyter as a run reports.

``LiveReporter`` is a ``report.Reporter``: the host loop calls ``chunk`` with values it
has already fetched, so drawing never syncs the device. A frame is the run's dashboard
(``plot.dashboard_figure``) drawn from the chunks so far: test values at each reporting
point, train values as each chunk's mean, parameter percentiles when the model has layers.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from jaxmlp import history as hist
from jaxmlp import plot, report


class LiveReporter(report.Reporter):
    """Redraws one figure at most every ``every`` seconds, and the last chunk at ``close``.

    ``display(png_bytes)`` shows a frame; by default one IPython output, updated in place.
    """

    SIZE, DPI = (12, 7.5), 72  # small frames: drawing one still costs ~0.5 s of CPU

    def __init__(self, *, every: float = 5.0, display: Callable[[bytes], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, quiet: bool = False, stream=None):
        super().__init__(quiet=quiet, stream=stream)
        self.every, self._display, self._clock = every, display or self._show, clock
        self.frames, self._pending = 0, False

    def start(self, config, *, start_step: int = 0, examples_per_epoch: int = 60_000,
              member_names: list[str] | None = None) -> None:
        super().start(config, start_step=start_step, examples_per_epoch=examples_per_epoch,
                      member_names=member_names)
        self._steps, self._reports, self._pending = [], [], False
        self._drawn_at, self._handle = -math.inf, None  # a new run: a new output

    def chunk(self, step: int, report: dict) -> None:
        super().chunk(step, report)
        self._steps.append(step)
        k = 1 if self.member_names is None else len(self.member_names)
        self._reports.append({key: _by_member(key, v, k) for key, v in report.items() if key != "alive"})
        self._pending = True
        if self._clock() - self._drawn_at >= self.every:
            self.draw()

    def close(self) -> None:
        if self._pending:  # the final frame is always drawn
            self.draw()
        super().close()

    def history(self) -> dict:
        """The chunks so far as a history (``jaxmlp.history``'s layout; train values are chunk means)."""
        steps = np.asarray(self._steps, np.int32)
        h = {"train_step": steps, "test_step": steps, "percentiles": np.asarray(hist.PERCENTILES, np.float32)}
        for key in self._reports[0]:
            v = np.stack([r[key] for r in self._reports], axis=1)  # (K, N, *axes)
            h[key] = v if self.member_names is not None else v[0]
        return h

    def figure(self) -> Figure:
        """The current frame."""
        return plot.dashboard_figure(self.history(), members=self.member_names, size=self.SIZE,
                                     title=f"step {self._steps[-1]:,} of {self.config.steps:,}")

    def draw(self) -> None:
        self._display(plot.png_bytes(self.figure(), dpi=self.DPI))
        self.frames += 1
        self._pending = False
        self._drawn_at = self._clock()  # after drawing: a slow frame delays the next one

    def _show(self, png: bytes) -> None:
        from IPython.display import DisplayHandle, Image

        if self._handle is None:
            self._handle = DisplayHandle()
            self._handle.display(Image(data=png, format="png"))
        else:
            self._handle.update(Image(data=png, format="png"))


def _by_member(key: str, value, k: int) -> np.ndarray:
    """One step's ``value`` of ``key`` as (K, *axes), whether or not a single model's has the K axis."""
    value = np.asarray(value)
    return value.reshape(k, *value.shape[value.ndim - (hist.ndim(key) - 1):])  # minus the time axis
