"""Ctrl-C and SIGTERM during training: finish the current step, checkpoint, stop cleanly."""

from __future__ import annotations

import contextlib
import logging
import signal

logger = logging.getLogger("dpokit")


@contextlib.contextmanager
def stop_on_signals(trainer):
    """While active, SIGINT/SIGTERM set ``trainer.stop_requested`` (the loop checkpoints and returns
    after the step in progress); a second Ctrl-C stops at once. Previous handlers are restored."""
    previous = {}

    def request_stop(signum, frame):
        if trainer.stop_requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        logger.warning("received signal %d: finishing this step, then checkpointing and stopping", signum)
        trainer.stop_requested = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
