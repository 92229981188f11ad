"""The command line's own process: heavy imports with the garbage collector paused, frozen
only there (spectralyzer.cli.lazy), and an exit that skips the interpreter's teardown but
keeps the exit code, the exit handlers and the buffered output (spectralyzer.cli.entry)."""

import gc
import subprocess
import sys

from spectralyzer.cli import lazy


def test_the_collector_pauses_during_the_imports_and_nothing_is_frozen_in_a_callers_process():
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    with lazy.heavy_imports():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # a test run's own garbage stays collectable


def test_a_collector_the_caller_disabled_stays_disabled():
    gc.disable()
    try:
        with lazy.heavy_imports():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_command_lines_own_process_freezes_what_the_imports_loaded():
    code = (
        "import gc; from spectralyzer.cli import lazy; lazy.own_process(); before = gc.get_freeze_count()\n"
        "with lazy.heavy_imports():\n    import decimal\n"
        "print(before, gc.get_freeze_count(), gc.isenabled())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, enabled = out.stdout.split()
    assert int(before) == 0 and int(after) > 1000 and enabled == "True"


def test_the_script_and_python_m_enter_through_the_owned_entry():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "spectralyzer"]
    assert script.value == "spectralyzer.cli:entry"
    code = (
        "import atexit, runpy, sys; from spectralyzer.cli import lazy\n"
        "sys.argv = ['spectralyzer', '--version']\n"
        "atexit.register(lambda: print(lazy._owned))\n"
        "runpy.run_module('spectralyzer.cli', run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "True" and "spectralyzer" in out.stdout


def _entry(code: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``code`` then ``spectralyzer.cli.entry()`` with ``argv`` in a fresh interpreter."""
    script = f"import sys; sys.argv = ['spectralyzer', *{list(argv)!r}]\n{code}\n"
    script += "from spectralyzer.cli import entry\nentry()\nprint('not reached')"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_the_exit_keeps_the_output_and_runs_the_exit_handlers():
    handler = "import atexit; atexit.register(lambda: print('handler ran'))"
    out = _entry(handler + "\nprint('buffered', end='')", "--version")
    assert out.returncode == 0 and "not reached" not in out.stdout
    assert out.stdout.startswith("buffered") and "version" in out.stdout
    assert out.stdout.rstrip().endswith("handler ran")


def test_the_exit_keeps_the_commands_exit_code():
    out = _entry("", "analyze")  # neither MODEL nor --demo: a usage error
    assert out.returncode == 2 and "give either MODEL or --demo" in out.stderr


def test_an_exit_with_a_message_prints_it_and_exits_1_as_the_interpreter_does():
    out = _entry("import spectralyzer.cli as cli; cli.main = lambda: sys.exit('boom')")
    assert out.returncode == 1 and out.stderr.strip() == "boom"
