"""The one place the library talks to the user: a progress bar and log lines.

Called only at reporting points (once per chunk), with host scalars already
fetched, so it never forces an extra device sync.
"""

from __future__ import annotations

import sys

import tqdm


class Reporter:
    """Progress bar per chunk plus the original's line every ``log_every`` steps.

    ``quiet`` silences everything but errors, which callers print themselves.
    """

    def __init__(self, total_steps: int, *, start_step: int = 0, log_every: int = 1000,
                 examples_per_epoch: int = 60_000, batch_size: int = 100, quiet: bool = False,
                 stream=None):
        self.quiet = quiet
        self.log_every = log_every
        self.examples_per_epoch = examples_per_epoch
        self.batch_size = batch_size
        self.stream = stream or sys.stderr
        self._last_step = start_step
        self._bar = None
        if not quiet:
            self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                                  file=self.stream, dynamic_ncols=True, leave=False,
                                  disable=None)  # disabled when the stream is not a terminal

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def chunk(self, step: int, test_accuracy, test_loss) -> None:
        """Advance to ``step``; print the original's test line at every ``log_every`` steps.

        For an ensemble, accuracy and loss are the members' means.
        """
        if self.quiet:
            return
        s0 = self._last_step
        self._last_step = step
        if self._bar is not None:  # tqdm shows steps/s itself
            self._bar.set_postfix_str(f"test acc {test_accuracy:.4f}", refresh=False)
            self._bar.update(step - s0)
        if step % self.log_every == 0:
            # The 2017 program's format (its loss was per 100 images; ours is per image).
            epoch = step * self.batch_size // self.examples_per_epoch + 1
            self.message(f"{step}: ********* epoch {epoch} ********* "
                         f"test accuracy:{test_accuracy:.4f} test loss: {test_loss:.4f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
