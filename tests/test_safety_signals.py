"""SIGTERM and Ctrl-C stop a run within seconds and it writes nothing (issue 11, item 8).

The old SIGTERM handler raised from Python code: it waited for native code (an
8192 x 8192 eigendecomposition exited 95 s after SIGTERM) and, raised inside
code that catches ``Exception``, was lost and the run completed with exit 0.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import spectralyzer
from spectralyzer.cli import main

MODEL = Path(__file__).resolve().parents[1] / "data" / "mlp" / "epoch_30.safetensors"

# The tool, with a note (a file) written as the eigendecomposition
# starts; Ctrl-C is given Python's handler because a run started in the background
# inherits SIGINT ignored (and then rightly stays deaf to it).
CHILD = """
import pathlib, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import spectralyzer.engine as engine
inner, note = engine.symmetric_eigenvalues, pathlib.Path(sys.argv[1])
def announced(*args, **kwargs):
    note.touch()
    return inner(*args, **kwargs)
engine.symmetric_eigenvalues = announced
from spectralyzer.cli import main
sys.argv = ["spectralyzer", *sys.argv[2:]]
main()
"""


def test_the_handlers_only_set_a_flag():
    from spectralyzer import interrupts

    with interrupts.flag_signals():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.01)  # the handler has run by now, and raised nothing
        assert interrupts.requested() == signal.SIGTERM
        with pytest.raises(interrupts.Interrupted) as stop:
            interrupts.check()
    assert stop.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_sigterm_while_the_report_is_written_is_not_lost(tmp_path, monkeypatch):
    """Code that catches Exception (plotting, cleanup) cannot swallow the stop."""
    import spectralyzer.report.model_report as model_report

    def writer(analysis, folder):
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(0.05)
        except Exception:
            pass
        (Path(folder) / "index.html").write_text("complete")

    pytest.importorskip("matplotlib")
    monkeypatch.setattr(model_report, "write_model_report", writer)
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(
        main, ["analyze", str(MODEL), "--report", str(out / "report"), "-o", str(out / "a.csv")]
    )
    assert result.exit_code == 143, result.output
    assert "no report was written" in result.stderr
    assert list(out.iterdir()) == []  # no report, no -o file, no staging folder


@pytest.fixture(scope="module")
def large_model(tmp_path_factory):
    """One 6000 x 6000 float32 matrix: its eigendecomposition takes a minute on one core."""
    path = tmp_path_factory.mktemp("large") / "large.safetensors"
    save_file(
        {"big.weight": torch.randn(6000, 6000, generator=torch.Generator().manual_seed(0))}, path
    )
    return path


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_a_large_eigendecomposition_stops_within_seconds(
    large_model, tmp_path, signum, code
):
    out = tmp_path / "out"
    out.mkdir()
    started = tmp_path / "started"
    env = dict(os.environ)
    src = str(Path(spectralyzer.__file__).parents[1])  # the package these tests import
    env["OMP_NUM_THREADS"] = "1"  # a minute of work on any machine, not seconds on many cores
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-c", CHILD, str(started), "analyze", str(large_model), "-q",
        "--format", "csv", "-o", str(out / "layers.csv"), "--report", str(out / "report"),
    ]  # fmt: skip
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # the signal goes to the child alone
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), child.communicate(timeout=60)
        time.sleep(0.5)  # well inside the Gram product / eigendecomposition
        sent = time.monotonic()
        os.kill(child.pid, signum)
        _, stderr = child.communicate(timeout=180)
        waited = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=60)
    assert child.returncode == code, stderr
    assert waited < 10, f"exited {waited:.0f} s after the signal"  # old code: a minute or more
    assert stderr.strip().splitlines() == [
        f"spectralyzer: error: {'terminated' if code == 143 else 'interrupted'}; "
        "no report was written"
    ]
    assert list(out.iterdir()) == []  # no -o file, no report, no staging folder
