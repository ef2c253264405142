"""Training loops chosen by ``data.kind``: data that the pairwise trainer cannot read.

``data.kind: expert`` (positives only) trains with the Diffusion-DRO loop
(:mod:`dpokit.online.dro_run`). Each entry is a module with ``check(config, loss)`` (run by
:func:`dpokit.preflight.check_run` before any model loads) and ``run(config, resume) -> result``
(what ``dpokit train`` calls instead of the trainer).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import dro_run

DATA_LOOPS: Dict[str, Any] = {"expert": dro_run}


def data_loop(config) -> Optional[Any]:
    """The loop module of ``config.data.kind``, or None (the trainer, or online rounds)."""
    return DATA_LOOPS.get(config.data.kind)
