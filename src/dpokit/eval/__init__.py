"""Evaluation: implicit-reward metrics on pairs, generation-based metrics, diagnostics, reports.

* :mod:`.preference`: implicit-reward accuracy and margins on held-out pairs;
* :mod:`.suite`: the full evaluation of a checkpoint against its reference (``dpokit eval``);
* :mod:`.metrics`: metric functions on tensors and strings; :mod:`.diagnostics`: model-side
  statistics (next-token indicators, KL, sampling, layer trace); :mod:`.judges`: judge loading;
* :mod:`.monitor`: training-time indicators and warnings (``train.monitor``);
* :mod:`.report`, :mod:`.compare`, :mod:`.runs`: HTML report and run comparison from run directories;
* :mod:`.cli`: the ``eval``, ``report`` and ``compare`` subcommands.

Definitions of every metric: docs/evaluation.md.
"""
