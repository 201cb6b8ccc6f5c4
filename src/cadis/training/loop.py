"""The step loop every trainer shares: a progress bar, a checkpoint every few minutes, a stop on request, and a
last checkpoint when the user interrupts (Ctrl-C), so nothing computed is lost.

What one step does (draw its batch and noise from the step's seed, the loss, the update) is the trainer's:
`cadis.training.finetune` (FT-CADIS) and the embedded default's trainers in `experiments.zoo`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm


def run_steps(start: int, end: int, step: Callable[[int], dict[str, Any]], checkpoint: Callable[[int], Any],
              checkpoint_minutes: float, desc: str, total: int | None = None,
              stop: Callable[[int], bool] | None = None, show: bool = True,
              save_on_interrupt: bool = True) -> tuple[int, bool]:
    """Take steps start, ..., end - 1: `step(s)` does one update and returns what the bar shows.

    After step s (s + 1 steps done), `checkpoint(s + 1)` runs every `checkpoint_minutes`, and when `stop(s + 1)`
    holds (called after every step: under torchrun it may be a collective), once more before returning. A
    KeyboardInterrupt checkpoints the steps done (`save_on_interrupt`) and propagates. Returns (steps done,
    stopped early). The caller saves the end of a finished run."""
    bar = tqdm(range(start, end), initial=start, total=end if total is None else total, desc=desc, unit="step",
               disable=not show)
    done, last = start, time.time()
    try:
        for s in bar:
            shown = step(s)
            done = s + 1
            if shown:
                bar.set_postfix(shown)
            if stop is not None and stop(done) and done < end:
                checkpoint(done)
                return done, True
            if time.time() - last > 60 * checkpoint_minutes:
                checkpoint(done)
                last = time.time()
    except KeyboardInterrupt:
        if save_on_interrupt and done > start:
            checkpoint(done)
        raise
    finally:
        bar.close()
    return done, False
