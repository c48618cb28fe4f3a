"""Stop and save requests between a worker's signal handlers and what it trains, without torch: the
built-in proxy checks them at every step boundary, a user's command gets them as a signal."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Control", "StopRequested"]


class StopRequested(Exception):
    """Training stopped at a step boundary after saving state (preemption, time limit)."""


@dataclass
class Control:
    """Requests checked at every step boundary (set by signal handlers, read by the training loop)."""

    save_now: bool = False
    stop_after_save: bool = False
    checkpoint_seconds: float = 0.0
    save: Callable[[], None] | None = None
    last_save: float = field(default_factory=time.monotonic)

    def at_step_boundary(self) -> None:
        """Save when asked or when due; then stop if asked."""
        due = self.checkpoint_seconds > 0 and time.monotonic() - self.last_save >= self.checkpoint_seconds
        if self.save is not None and (self.save_now or due or self.stop_after_save):
            self.save()
            self.save_now, self.last_save = False, time.monotonic()
        if self.stop_after_save:
            raise StopRequested("stopped at a step boundary after saving a checkpoint")
