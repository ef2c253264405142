"""The tiny trained run (tests/conftest.py), evaluated by `dpokit eval` and rendered by `dpokit report`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def evaluated_run(trained_run, judge_file):
    """``dpokit eval --model RUN --generate 2 --judge ... --output RUN`` (the reference comes from the run)."""
    from dpokit.cli import main

    run = trained_run["run"]
    code = main(["eval", "--model", run, "--data", trained_run["heldout"], "--generate", "2", "--max-new-tokens", "6",
                 "--judge", f"{judge_file}:judge", "--loss", "dpo", "--output", run, "--layer-positions", "128"])
    assert code == 0
    return trained_run


@pytest.fixture(scope="session")
def report_dir(evaluated_run, tmp_path_factory):
    """``dpokit report RUN --output DIR`` on the evaluated run; returns DIR."""
    from dpokit.cli import main

    out = tmp_path_factory.mktemp("report") / "report"
    assert main(["report", evaluated_run["run"], "--output", str(out)]) == 0
    return out
