"""Fine-tuning in the background: `FinetuneJob` runs `finetune` in a thread that a UI polls.

The outcome (saved, or stopped with a checkpoint) comes from the `FinetuneResult` that `finetune` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..classifier import ImageClassifier
from ..data import ImageDataset
from ..errors import CadisError

log = logging.getLogger(__name__)


class FinetuneJob:
    """Runs `cadis_core.finetune.finetune` in a daemon thread and collects its events for a UI to poll.

    The UI thread only reads `steps`, `evals`, `status`, `error`, `path`; the worker only appends,
    so no lock is needed (list.append is atomic). `stop()` sets the event the loop checks each step."""

    def __init__(self, config, denoiser: torch.nn.Module, classifier: ImageClassifier, train_set: ImageDataset,
                 test_set: ImageDataset | None = None):
        config.validate()  # bad settings fail here, in the UI thread, with a CadisError
        self.config = config
        self._args = (denoiser, classifier, train_set, test_set)
        self.steps: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.status = "created"
        self.error: str | None = None
        self.path: Path | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cadis-finetune", daemon=True)

    def start(self) -> FinetuneJob:
        self.status = "running"
        self.started = time.time()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def progress(self) -> float:
        last = self.steps[-1]["step"] if self.steps else 0
        return min(1.0, last / max(self.config.steps, 1))

    def _event(self, event: dict[str, Any]) -> None:
        if event["kind"] == "step":
            self.steps.append(event)
        elif event["kind"] == "eval":
            self.evals.append(event)

    def _run(self) -> None:
        from ..finetune import finetune

        try:
            result = finetune(self.config, *self._args[:3], self._args[3], callback=self._event,
                              stop_event=self.stop_event)
            self.path, self.status = result.path, "stopped" if result.stopped else "done"
        except CadisError as e:
            self.status, self.error = "failed", str(e)
        except Exception as e:  # the UI shows one line; the traceback goes to the server log
            log.exception("fine-tuning failed")
            self.status, self.error = "failed", f"Fine-tuning failed unexpectedly: {type(e).__name__}: {e}"
        finally:
            self.finished = time.time()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.steps))
