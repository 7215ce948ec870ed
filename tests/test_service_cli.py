"""``aeot demo`` (main's command, kept in the service CLI): a 2D OT fit with accuracy and time."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from service.cli import app as cli_app


def test_demo_fits_the_gaussian_grid_and_reports_accuracy():
    run = CliRunner().invoke(cli_app, ["demo", "--samples", "100", "--target-l1", "0.1"])
    assert run.exit_code == 0, run.output
    # 2D: the default fit is exact, and says so.
    pattern = r"target: exact L1 ([0-9.e+-]+), .* empty cells 0, \d+ iterations"
    match = re.search(pattern, run.output)
    assert match is not None, run.output
    assert float(match.group(1)) <= 0.1
