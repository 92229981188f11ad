"""Writing output files and report folders without touching the user's files.

Every output goes to a temporary sibling first and is renamed into place only
when complete, after a last look at the interrupt flag (a run stopped by a
signal writes nothing).  Before that, the target is checked against every
file the run reads: a folder input counts with every file in it (Hugging Face
shards), each by its resolved path (the HF cache's ``snapshots/x/model.safetensors
-> ../../blobs/abc``) and by identity (a hard link is the same file).

A report folder is replaced only when it is empty or holds the marker an
earlier report left (:data:`MARKER`, listing every file that report wrote)
and nothing else; never when an input lies in it, nor when it is the current
folder or one above it.  (A folder was once taken for a report when it held
an ``index.html``: a docs folder, and a model inside it, were deleted.)

Temporary files and staging folders are named ``.<target>.<pid>.<random>``
plus :data:`TEMP_SUFFIX`; one left behind by a killed run (its pid no longer
alive) is removed by the next run that writes to the same target.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, interrupts
from .errors import SpectralyzerError

#: The file in a report folder that makes it one this tool may replace.
MARKER = ".spectralyzer-report.json"
#: Ends the names of temporary files and staging folders.
TEMP_SUFFIX = ".spectralyzer-tmp"
#: Entries of a folder input looked at before the walk stops (a stray ``analyze /``).
MAX_WALK = 200_000


@dataclass(frozen=True)
class Inputs:
    """What a run reads, in the forms an output could collide with it."""

    paths: frozenset[str]  # absolute (unresolved) paths: given inputs and the entries of folders
    files: frozenset[str]  # resolved paths of every input file
    folders: frozenset[str]  # resolved input folders
    ids: frozenset[tuple[int, int]]  # (device, inode) of every input file


def resolve_inputs(sources: Iterable[str | os.PathLike[str]]) -> Inputs:
    """Every input file: the given ones and, for a folder, every file below it."""
    paths, files, folders, ids = set(), set(), set(), set()

    def add(path: str) -> None:
        paths.add(os.path.abspath(path))
        try:
            info = os.stat(path)
        except OSError:
            return
        if stat.S_ISDIR(info.st_mode):
            folders.add(os.path.realpath(path))
        else:
            files.add(os.path.realpath(path))
            ids.add((info.st_dev, info.st_ino))

    for source in sources:
        source = os.fspath(source)
        add(source)
        if not os.path.isdir(source):
            continue
        seen = 0
        for root, dirs, names in os.walk(source):
            for name in dirs + names:
                add(os.path.join(root, name))
            seen += len(dirs) + len(names)
            if seen > MAX_WALK:
                break
    return Inputs(frozenset(paths), frozenset(files), frozenset(folders), frozenset(ids))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_file_target(output: str | os.PathLike[str], inputs: Inputs) -> None:
    """Refuse an output that is, or lies in, an input (by path, link target or inode)."""
    absolute, real = os.path.abspath(output), os.path.realpath(output)
    refuse = f"{os.fspath(output)}: refusing to write over or into an input"
    if absolute in inputs.paths or real in inputs.files:
        raise SpectralyzerError(f"{refuse} (it is one of the files read)")
    try:
        info = os.stat(output)
    except OSError:
        info = None
    if info is not None and (info.st_dev, info.st_ino) in inputs.ids:
        raise SpectralyzerError(f"{refuse} (it is the same file as an input)")
    for folder in inputs.folders:
        if _within(real, folder):
            raise SpectralyzerError(f"{refuse} (it lies in the input folder {folder})")


def write_file(payload: bytes, output: str | os.PathLike[str], inputs: Inputs) -> None:
    """Write ``payload`` to ``output`` atomically (temporary sibling, then rename).

    A target that exists and is not a regular file (``/dev/null``, a FIFO) is
    written in place: renaming over it would replace the device or pipe.
    """
    check_file_target(output, inputs)
    target = Path(output)
    if target.is_dir():
        raise SpectralyzerError(f"{output}: is a directory")
    if target.exists() and not target.is_file():
        interrupts.check()
        target.write_bytes(payload)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    fd, tmp = tempfile.mkstemp(**_temp_name(target), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; give it the usual mode
        interrupts.check()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_report_target(folder: str | os.PathLike[str], inputs: Inputs) -> None:
    """Refuse a report folder that may not be replaced (see the module docstring)."""
    name = os.fspath(folder)
    absolute, real = os.path.abspath(folder), os.path.realpath(folder)
    if os.path.islink(folder):
        raise SpectralyzerError(f"{name}: is a symbolic link; give the folder it points to")
    if _within(os.path.realpath(os.getcwd()), real):
        raise SpectralyzerError(
            f"{name}: is the current folder or one above it; choose another --report folder"
        )
    for path in sorted(inputs.paths | inputs.files | inputs.folders):
        if _within(path, absolute) or _within(path, real):
            raise SpectralyzerError(
                f"{name}: holds an input ({path}); choose another --report folder"
            )
    for input_folder in inputs.folders:
        if _within(real, input_folder):
            raise SpectralyzerError(
                f"{name}: refusing to write into the input folder {input_folder}"
            )
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise SpectralyzerError(f"{name}: exists and is not a folder")
    stranger = _not_written_by_a_report(Path(folder))
    if stranger is not None:
        raise SpectralyzerError(
            f"{name}: exists and is not an earlier report ({stranger}); choose another --report folder"
        )


def _not_written_by_a_report(folder: Path) -> str | None:
    """Why ``folder`` is not an earlier report, or None when it is one (or is empty)."""
    entries = list(folder.iterdir())
    if not entries:
        return None
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return f"no {MARKER} from an earlier spectralyzer report"
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        return f"{MARKER} is not a spectralyzer report marker"
    written = set(listed) | {MARKER}
    parents = {str(parent) for p in written for parent in Path(p).parents} - {"."}
    for root, dirs, files in os.walk(folder):
        for entry in sorted(dirs + files):
            path = Path(root, entry)
            relative = path.relative_to(folder).as_posix()
            expected = parents if entry in dirs and not path.is_symlink() else written
            if path.is_symlink() or relative not in expected:
                return f"it holds {relative}, which the earlier report did not write"
    return None


def write_report_folder(
    writer: Callable[[Path], Any],
    folder: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
) -> None:
    """Let ``writer`` fill a staging folder beside ``folder``, mark it, then move it into place.

    The target is checked before writing and again just before the move (the
    writer may run for minutes). An earlier report is moved aside, the new one
    moved in, and only then is the old one removed.
    """
    resolved = resolve_inputs(inputs)
    check_report_target(folder, resolved)
    target = Path(os.path.abspath(folder))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staging = Path(tempfile.mkdtemp(**_temp_name(target), dir=target.parent))
    try:
        writer(staging)
        write_marker(staging)
        os.chmod(staging, 0o777 & ~umask())
        check_report_target(folder, resolved)
        interrupts.check()
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_marker(folder: Path) -> None:
    """The marker listing every file below ``folder`` (what a later run may replace)."""
    files = sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
    )
    record = {"written_by": f"spectralyzer {__version__}", "files": files}
    (folder / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing (checked) target is set aside first."""
    if not target.exists() or not any(target.iterdir()):
        os.replace(staging, target)  # a missing or empty folder is replaced by the rename
        return
    aside = Path(tempfile.mkdtemp(**_temp_name(target), dir=target.parent))
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _temp_name(target: Path) -> dict[str, str]:
    """mkstemp/mkdtemp name parts: ``.<target>.<pid>.<random>`` + TEMP_SUFFIX."""
    return {"prefix": f".{target.name}.{os.getpid()}.", "suffix": TEMP_SUFFIX}


def remove_stale(target: Path) -> list[Path]:
    """Remove temporary siblings of ``target`` left by runs that died (pid not alive)."""
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\.(\d+)\.[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}"
    )
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # best effort: another run may be removing it too
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one we may not signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_text(path: str | os.PathLike[str], text: str, inputs: Inputs) -> None:
    """Append ``text`` to a log-like file another program owns (a CI step summary).

    Not atomic (the file is appended to, as its owner expects), but like every
    output it is checked against the inputs first.
    """
    check_file_target(path, inputs)
    interrupts.check()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
