"""The one place the library talks to the user: a progress bar and log lines.

Called only at reporting points (once per chunk), with host values already
fetched, so it never forces an extra device sync. Subclass it (e.g. to redraw
a live chart in a notebook) by overriding ``chunk``.
"""

from __future__ import annotations

import sys

import numpy as np
import tqdm


class Reporter:
    """Progress bar per chunk plus the original's line every ``log_every`` steps.

    ``quiet`` silences everything but errors, which callers print themselves.
    """

    def __init__(self, *, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._bar = None

    def start(self, config, *, start_step: int = 0, examples_per_epoch: int = 60_000) -> None:
        """Called once before the first chunk (also when a run resumes at ``start_step``)."""
        self.log_every = config.log_every
        self.batch_size = config.batch_size
        self.examples_per_epoch = examples_per_epoch
        self.members = config.members if config.is_ensemble else None
        self._last_step = start_step
        if not self.quiet:
            self._bar = tqdm.tqdm(total=config.steps, initial=start_step, unit="step",
                                  file=self.stream, dynamic_ncols=True, leave=False,
                                  disable=None)  # disabled when the stream is not a terminal

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def chunk(self, step: int, test_accuracy: np.ndarray, test_loss: np.ndarray,
              alive: np.ndarray, **extra) -> None:
        """Advance to ``step``; print a test line every ``log_every`` steps.

        Arrays are (K,) over members, K = 1 for a single model; ``alive`` marks
        members still training (diverged ones have +inf losses, NaN accuracies).
        ``extra``: the chunk's mean train loss and accuracy and the parameter
        percentiles, for reporters that draw them (``jaxmlp.live``).
        """
        if self.quiet:
            return
        s0, self._last_step = self._last_step, step
        text = self.describe(test_accuracy, test_loss, alive)
        if self._bar is not None:  # tqdm shows steps/s itself
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(step - s0)
        if step % self.log_every == 0:
            epoch = step * self.batch_size // self.examples_per_epoch + 1
            self.message(f"{step}: ********* epoch {epoch} ********* {text}")

    def describe(self, test_accuracy, test_loss, alive) -> str:
        """One model: the original's words (its loss was per 100 images; ours is per image).
        An ensemble: the best member, the spread, and how many diverged."""
        if self.members is None:
            return f"test accuracy:{test_accuracy[0]:.4f} test loss: {test_loss[0]:.4f}"
        acc = np.where(alive, test_accuracy, np.nan)
        if not np.any(alive):
            return f"all {len(alive)} members diverged"
        best = int(np.nanargmax(acc))
        seed, lr = self.members[best]
        lost = f", {int((~alive).sum())} diverged" if not alive.all() else ""
        return (f"best member (seed {seed}, lr {lr:g}): test accuracy {acc[best]:.4f}; "
                f"members {np.nanmin(acc):.4f}-{np.nanmax(acc):.4f}{lost}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
