"""The one place the library talks to the user: a progress bar and log lines.

Called only at reporting points (once per chunk) with host values already fetched,
so it never adds a device sync. Subclass it and override ``chunk`` to draw (the
notebook's live chart, ``jaxmlp.live``).
"""

from __future__ import annotations

import sys

import numpy as np
import tqdm


class Reporter:
    """A progress bar per chunk and the original's line every ``log_every`` steps."""

    def __init__(self, *, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._bar = None

    def start(self, config, *, start_step: int = 0, examples_per_epoch: int = 60_000,
              member_names: list[str] | None = None) -> None:
        """Called once before the first chunk (also when a run resumes at ``start_step``).
        ``member_names``: one per ensemble member, None for a single model."""
        self.config = config
        self.examples_per_epoch = examples_per_epoch
        self.member_names = member_names
        self._last_step = start_step
        if not self.quiet:
            self._bar = tqdm.tqdm(total=config.steps, initial=start_step, unit="step",
                                  file=self.stream, dynamic_ncols=True, leave=False,
                                  disable=None)  # off when the stream is not a terminal

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def chunk(self, step: int, report: dict) -> None:
        """Advance to ``step``; print a line every ``log_every`` steps.

        ``report`` holds host arrays over the K members (K = 1 for one model):
        'alive' (K,) bool, 'test_<metric>' (K,) at this step, 'train_<metric>' (K,)
        means over the chunk, and 'weight_percentiles', 'bias_percentiles' (K, L, P).
        """
        if self.quiet:
            return
        s0, self._last_step = self._last_step, step
        text = self.describe(report)
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(step - s0)
        if step % self.config.log_every == 0:
            epoch = step * self.config.batch_size // self.examples_per_epoch + 1
            self.message(f"{step}: ********* epoch {epoch} ********* {text}")

    def describe(self, report: dict) -> str:
        """One model: the original's words. An ensemble: the best member and the spread."""
        acc, alive = report["test_accuracy"], report["alive"]
        if self.member_names is None:
            return f"test accuracy:{acc[0]:.4f} test loss: {report['test_loss'][0]:.4f}"
        if not np.any(alive):
            return f"all {len(alive)} members diverged"
        acc = np.where(alive, acc, np.nan)
        best = int(np.nanargmax(acc))
        lost = f", {int((~alive).sum())} diverged" if not alive.all() else ""
        return (f"best member ({self.member_names[best]}): test accuracy {acc[best]:.4f}; "
                f"members {np.nanmin(acc):.4f}-{np.nanmax(acc):.4f}{lost}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
