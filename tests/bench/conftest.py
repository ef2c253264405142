"""`dpokit bench` silences dpokit's and transformers' logging for the rest of its process (bench.workers.quiet);
run in-process here, it must not leave later tests' log capture (caplog) without dpokit's warnings."""

import logging

import pytest


@pytest.fixture(autouse=True)
def restore_logging():
    dpokit_logger = logging.getLogger("dpokit")
    level = dpokit_logger.level
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    yield
    dpokit_logger.setLevel(level)
    hf_logging.set_verbosity(verbosity)
