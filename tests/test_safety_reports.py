"""Report folders and output files never destroy the user's files (issue 11, items 1 and 3).

A folder was taken for an earlier report when it held an ``index.html``, and
removed: a docs folder, the input model inside it, the current folder. Outputs
were compared with inputs by path only, so ``-o`` onto a Hugging Face cache
blob (reached through the snapshot's symlink) or a hard link overwrote it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spectralyzer.cli import main

MODEL = Path(__file__).resolve().parents[1] / "data" / "mlp" / "epoch_30.safetensors"


def outputs_module():
    """Imported by the tests that use it, so that the others run on any version."""
    from spectralyzer import outputs

    return outputs


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def fingerprint(root):
    """Every entry below ``root`` with the hash of each file (the folder itself included)."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


def refused(result, *words):
    """Exit 2 with one error line that names the reason."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("spectralyzer: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def docs_folder(folder):
    """A folder of the user's that happens to hold an index.html."""
    (folder / "img").mkdir(parents=True)
    (folder / "index.html").write_text("<h1>my project</h1>")
    (folder / "guide.md").write_text("# guide")
    (folder / "img" / "logo.png").write_bytes(b"\x89PNG logo")
    return folder


def test_docs_folder_holding_an_index_html_is_not_wiped(tmp_path):
    docs = docs_folder(tmp_path / "docs")
    before = fingerprint(docs)
    refused(run("analyze", MODEL, "--report", docs), "docs", "not an earlier report")
    assert fingerprint(docs) == before


def test_model_inside_the_report_folder_is_not_deleted(tmp_path):
    project = docs_folder(tmp_path / "proj")
    model = project / "model.safetensors"
    shutil.copy(MODEL, model)
    before = fingerprint(project)
    refused(run("analyze", model, "--report", project), "proj", "input")
    assert fingerprint(project) == before


def test_report_into_the_current_folder_or_its_parent_is_refused(
    earlier_report, tmp_path, monkeypatch
):
    report = tmp_path / "report"
    shutil.copytree(earlier_report, report)
    # the current folder is an earlier report (a marker and nothing else), and its
    # subfolder figures/ was written by that report: only the cwd rule refuses these
    before = fingerprint(tmp_path)
    monkeypatch.chdir(report)
    refused(run("analyze", MODEL, "--report", "."), "current folder")
    monkeypatch.chdir(report / "figures")
    refused(run("analyze", MODEL, "--report", ".."), "current folder")
    assert fingerprint(tmp_path) == before


def test_report_dot_in_a_docs_folder_deletes_nothing(tmp_path, monkeypatch):
    inner = docs_folder(tmp_path / "outer") / "inner"
    docs_folder(inner)
    before = fingerprint(tmp_path)
    monkeypatch.chdir(inner)
    refused(run("analyze", MODEL, "--report", "."))
    refused(run("analyze", MODEL, "--report", ".."))
    assert fingerprint(tmp_path) == before


def test_an_earlier_report_is_replaced_and_marks_every_file_it_wrote(earlier_report, tmp_path):
    outputs = outputs_module()
    report = tmp_path / "report"
    shutil.copytree(earlier_report, report)
    assert (report / "figures" / "esd_0.weight.svg").is_file()
    result = run("analyze", MODEL, "--layers", "^2", "--report", report)
    assert result.exit_code == 0, result.output
    figures = {p.name for p in (report / "figures").iterdir()}
    assert "esd_2.weight.svg" in figures and "esd_0.weight.svg" not in figures
    marker = json.loads((report / outputs.MARKER).read_text())
    written = {p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file()} - {
        outputs.MARKER
    }
    assert set(marker["files"]) == written
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging or old copy left


def write_report(folder, files=("index.html", "figures/a.png")):
    """A report folder written through outputs with a stand-in writer."""
    outputs = outputs_module()

    def writer(staging):
        for name in files:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(name)

    outputs.write_report_folder(writer, folder, [MODEL])


@pytest.fixture(scope="module")
def earlier_report(tmp_path_factory):
    """A report folder written by the tool (copy it before changing it)."""
    pytest.importorskip("matplotlib")
    report = tmp_path_factory.mktemp("earlier") / "report"
    result = run("analyze", MODEL, "--report", report)
    assert result.exit_code == 0, result.output
    return report


@pytest.mark.parametrize("extra", ["notes.txt", "figures/mine.png", "drafts/"])
def test_report_folder_with_a_marker_and_a_file_of_the_users_is_refused(
    earlier_report, tmp_path, extra
):
    report = tmp_path / "report"
    shutil.copytree(earlier_report, report)
    if extra.endswith("/"):
        (report / extra).mkdir()
    else:
        (report / extra).write_text("mine")
    before = fingerprint(report)
    refused(run("analyze", MODEL, "--report", report), extra.rstrip("/"), "did not write")
    assert fingerprint(report) == before


def test_empty_folder_is_written_into_and_a_forged_marker_does_not_help(tmp_path):
    outputs = outputs_module()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_report(empty)
    assert (empty / "index.html").is_file() and (empty / outputs.MARKER).is_file()
    forged = docs_folder(tmp_path / "docs")
    (forged / outputs.MARKER).write_text('{"files": "index.html"}')
    before = fingerprint(forged)
    with pytest.raises(outputs.SpectralyzerError, match="not an earlier report"):
        write_report(forged)
    assert fingerprint(forged) == before


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


def test_stale_staging_folders_of_dead_runs_are_removed_on_the_next_write(tmp_path):
    outputs = outputs_module()
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".report.{dead}.abcd_123{outputs.TEMP_SUFFIX}"
    (stale / "figures").mkdir(parents=True)
    (stale / "figures" / "half.png").write_bytes(b"half")
    running = tmp_path / f".report.{alive}.efgh_456{outputs.TEMP_SUFFIX}"
    running.mkdir()  # another run, still alive, is writing this one
    stale_file = tmp_path / f".out.csv.{dead}.ijkl_789{outputs.TEMP_SUFFIX}"
    stale_file.write_text("half")
    user = tmp_path / f".report.{dead}.notours"  # not our suffix: the user's
    user.mkdir()
    write_report(tmp_path / "report")
    outputs.write_file(b"a,b\n", tmp_path / "out.csv", outputs.resolve_inputs([MODEL]))
    assert not stale.exists() and not stale_file.exists()
    assert running.is_dir() and user.is_dir()
    assert (tmp_path / "report" / "index.html").is_file()


@pytest.fixture
def hf_cache(tmp_path):
    """The Hugging Face cache layout: snapshots/<rev>/model.safetensors -> ../../blobs/<sha>."""
    root = tmp_path / "hub" / "models--x"
    (root / "blobs").mkdir(parents=True)
    blob = root / "blobs" / "0123abcd"
    shutil.copy(MODEL, blob)
    snapshot = root / "snapshots" / "rev1"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", "0123abcd"))
    return snapshot, blob


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("target", ["blob", "link", "hard link"])
def test_output_onto_a_symlinked_or_hard_linked_input_is_refused(hf_cache, tmp_path, target):
    snapshot, blob = hf_cache
    before = _sha(blob)
    if target == "hard link":
        output = tmp_path / "copy.safetensors"
        os.link(blob, output)
    else:
        output = blob if target == "blob" else snapshot / "model.safetensors"
    refused(run("analyze", snapshot, "--format", "csv", "-o", output), "input")
    assert _sha(blob) == before and (snapshot / "model.safetensors").is_symlink()


@pytest.mark.parametrize("option", ["--layers-out", "--junit", "--markdown"])
def test_every_output_option_is_checked_against_every_input(hf_cache, tmp_path, option):
    snapshot, blob = hf_cache
    other = tmp_path / "other.safetensors"
    shutil.copy(MODEL, other)
    before = _sha(blob)
    command = "compare" if option == "--layers-out" else "gate"
    refused(run(command, snapshot, other, option, blob), "input")
    assert _sha(blob) == before


def test_the_step_summary_is_checked_against_the_inputs(hf_cache, tmp_path, monkeypatch):
    """$GITHUB_STEP_SUMMARY naming an input (here the cache's blob) must not append to it."""
    snapshot, blob = hf_cache
    other = tmp_path / "other.safetensors"
    shutil.copy(MODEL, other)
    before = _sha(blob)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(blob))
    refused(run("gate", snapshot, other), "input")
    assert _sha(blob) == before
