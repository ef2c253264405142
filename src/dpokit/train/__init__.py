"""Training: the loop, checkpoints and run-directory logging."""

from .trainer import Trainer

__all__ = ["Trainer"]
