"""Start-up stays light (issue 14): help, version and usage errors import nothing heavy.

``spectralyzer --help`` took 2.85 s because every command module imported the
library (torch, pandas, scipy) at load time.  Each invocation below runs in a
fresh interpreter, which then lists the heavy modules it holds; none may be
there.  The check counts modules, not seconds, so a busy machine cannot fail it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spectralyzer

SRC = Path(spectralyzer.__file__).resolve().parents[1]  # the tree under test, in the subprocess too
HEAVY = ("torch", "pandas", "numpy", "scipy", "matplotlib")

# run the CLI as the console script does, then report which heavy modules were imported
SCRIPT = f"""
import json, sys
from spectralyzer.cli import main
try:
    main(sys.argv[1:], prog_name="spectralyzer")
except SystemExit as end:
    code = end.code
else:
    code = 0
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def run_cli(*args: str) -> tuple[int, list[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,  # a hang, not a speed check
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["heavy"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--help",), 0),
        (("--version",), 0),
        (("analyze", "--help"), 0),
        (("analyze", "--bogus"), 2),
        (("compare", "--help"), 0),
        (("gate", "--help"), 0),
        (("diff", "--help"), 0),
        (("probe", "--help"), 0),
        (("plot", "--help"), 0),
        (("watch", "--help"), 0),
        (("watch", "--fail-on", "bogus", "."), 2),
    ],
)
def test_help_version_and_usage_errors_import_nothing_heavy(args, code):
    exit_code, heavy = run_cli(*args)
    assert exit_code == code
    assert heavy == [], f"spectralyzer {' '.join(args)} imported {heavy}"


def test_a_command_that_runs_does_import_the_library(tmp_path):
    """The check can see an import: a real run (a bad file, exit 2) loads the library."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    exit_code, heavy = run_cli("analyze", str(bad), "-q")
    assert exit_code == 2
    assert "torch" in heavy


def test_option_choices_match_the_library():
    """One source: the library's records accept exactly the choices the CLI offers."""
    from spectralyzer import choices
    from spectralyzer.probe_records import LOSSES, PRECISIONS

    assert tuple(LOSSES) == choices.LOSS_NAMES
    assert tuple(PRECISIONS) == choices.PRECISION_NAMES
