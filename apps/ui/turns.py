"""Turns on the shared models: a first-come, first-served lock that tells each waiter its place in line.

Every session certifies and denoises with the same models on the same cores. Taking turns keeps each job at full
speed instead of halving everyone's, and a waiter learns how many jobs are ahead of it rather than blocking
silently.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Turns:
    """A FIFO lock: `acquire` queues behind the holder and earlier waiters and calls `on_position(ahead)` whenever
    the number of jobs ahead changes (the holder counts as one). `with turns:` works like a plain lock."""

    def __init__(self, poll_s: float = 0.25):
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._held = False
        self._poll_s = poll_s

    def locked(self) -> bool:
        return self._held

    def waiting(self) -> int:
        """How many jobs wait for their turn."""
        return len(self._line)

    def acquire(self, blocking: bool = True, on_position: Callable[[int], None] | None = None) -> bool:
        ticket = object()
        with self._cond:
            if not self._held and not self._line:
                self._held = True
                return True
            if not blocking:
                return False
            self._line.append(ticket)
        reported = None
        try:
            while True:
                with self._cond:
                    if not self._held and self._line[0] is ticket:
                        self._line.popleft()
                        self._held = True
                        self._cond.notify_all()
                        return True
                    ahead = self._line.index(ticket) + int(self._held)
                    if ahead == reported or on_position is None:
                        self._cond.wait(self._poll_s)
                        continue
                reported = ahead
                on_position(ahead)  # outside the condition: a UI callback may be slow
        except BaseException:  # e.g. the session's script was stopped while it waited: leave the line
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                    self._cond.notify_all()
            raise

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @contextmanager
    def turn(self, on_wait: Callable[[], None] | None = None,
             on_position: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold the lock for one job: `on_wait()` once if others are ahead, `on_position(ahead)` as the line
        moves."""
        if not self.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self.acquire(on_position=on_position)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> Turns:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
