"""The commands' heavy imports pause the garbage collector and freeze what they load only
in a process the command line owns (spectralyzer.cli.lazy)."""

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
        "import runpy, sys; from spectralyzer.cli import lazy; sys.argv = ['spectralyzer', '--version']\n"
        "try:\n    runpy.run_module('spectralyzer.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(lazy._owned)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "True" and "spectralyzer" in out.stdout
