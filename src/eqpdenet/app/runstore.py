"""One result file per run, and ``results.jsonl`` as their aggregate.

A sweep's folder holds ``runs/<key>.json``, one JSON record per finished run, each written once
by :func:`~eqpdenet.app.files.atomic_write` (a temporary file in ``runs/``, then a rename). The
run files are the truth; ``results.jsonl`` is derived from them (one line per key, sorted by
key, so the same runs always give the same bytes) and regenerated after every run, at the end
of a sweep however it ends, and by a report before it reads it. A run file holds no NaN or
infinity (:func:`with_finite_numbers`).

Why per-run files: a rename of a distinct file per key is atomic on a POSIX file system, NFS
included, so any number of writers (processes, machines on a shared file system) can add runs
without ever corrupting another's or leaving a half-written file; rewriting one shared
``results.jsonl`` per run (as before) was safe for one writer only. Two writers that finish the
same key write the same run (same configuration and seed) and the later rename wins whole. Two
writers regenerating ``results.jsonl`` at once may each miss the other's newest run for a moment;
the next regeneration (every run, and the end of every sweep) includes it, since it reads the run
files.

Folders written before this layout hold ``results.jsonl`` only (``results/paper``): their lines
count as finished runs, a run file with the same key takes precedence, and such a folder is never
rewritten unless a new run is added to it. Two lines of one key without a run file are one run
where they agree (:data:`SAME_RUN_FIELDS`: two writers of one run), and refused where they do not
(:func:`load_records`), before anything is rewritten: the last line won, and regenerating
``results.jsonl`` deleted the other, though neither can be told to be the run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

from ..errors import ConfigError, DataFileError, OutputFolderError
from ..files import temporary_prefix
from .files import TEMPORARY_SUFFIX, _reason, atomic_write, make_folder, read_jsonl_lines

__all__ = ["RUNS_DIR", "SAME_RUN_FIELDS", "SUPERSEDED_DIR", "load_records", "non_finite_fields",
           "mend_advice", "read_result_lines",
           "run_file", "save_run", "set_aside", "with_finite_numbers", "write_aggregate"]

#: The folder of the run files, inside a sweep's folder.
RUNS_DIR = "runs"

#: Where :func:`set_aside` moves the runs that a changed configuration replaces.
SUPERSEDED_DIR = "superseded"

#: What two records of one run key must agree on to be the same run (a report's
#: :func:`~eqpdenet.app.report.deduplicate`; a benchmark's adds its curves, ``robustness``).
SAME_RUN_FIELDS = ("status", "accuracy", "params", "validation_accuracy", "base_fingerprint")

#: What two lines of one key in ``results.jsonl`` must agree on to be one run
#: (:func:`load_records`): :data:`SAME_RUN_FIELDS` and a benchmark's curves.
_SAME_LINE_FIELDS = (*SAME_RUN_FIELDS, "robustness")

#: Keys become file names: letters, digits, ``.``, ``_``, ``-`` (no separators, no hidden files).
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


#: The longest run key: its files (``<key>.json``, ``<key>.pt``) and their temporary copies
#: (``.<key>.json.<random>.eqpdenet.tmp``) must stay within the 255 bytes most file systems allow
#: a name (a 246-character entry trained, then failed saving: "File name too long").
MAX_KEY_LENGTH = 200


def run_file(out_dir: Path, key: str) -> Path:
    """The path of the run file of ``key`` (a :class:`ConfigError` for a key that is not a safe
    file name: other characters than letters, digits, ``.``, ``_``, ``-``, or longer than
    :data:`MAX_KEY_LENGTH`)."""
    if not _KEY.fullmatch(key):
        raise ConfigError(f"run key {key!r} cannot name a file: use letters, digits, '.', '_', '-'")
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigError(f"run key {key[:40]}... ({len(key)} characters) cannot name a file: at "
                          f"most {MAX_KEY_LENGTH} characters (its files' names, with their "
                          f"temporary copies', must fit the 255 bytes of a file name)")
    return Path(out_dir) / RUNS_DIR / f"{key}.json"


def save_run(out_dir: Path, key: str, record: dict) -> Path:
    """Write ``record`` as the run file of ``key``, atomically (never a half file). A record
    holding a non-finite number is a ``ValueError`` naming it: JSON has no NaN or infinity (the
    ``NaN`` token Python would write is not JSON), and nothing non-finite is scored
    (:func:`with_finite_numbers` makes such a record a failed run first)."""
    path = run_file(out_dir, key)
    bad = non_finite_fields(record)
    if bad:
        raise ValueError(f"the record of run {key} holds non-finite numbers ({', '.join(bad)}); "
                         f"JSON cannot hold them")
    atomic_write(path, (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode())
    return path


def non_finite_fields(value, prefix: str = "") -> list[str]:
    """The dotted paths of the NaN or infinite numbers in ``value`` (a record: dicts, lists,
    numbers), with their values (``robustness.logit_change.37 = nan``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{prefix or 'value'} = {value}"]
    if isinstance(value, dict):
        return [bad for name, item in value.items()
                for bad in non_finite_fields(item, f"{prefix}.{name}" if prefix else str(name))]
    if isinstance(value, list | tuple):
        return [bad for index, item in enumerate(value)
                for bad in non_finite_fields(item, f"{prefix}[{index}]")]
    return []


def with_finite_numbers(record: dict) -> dict:
    """``record`` as a run file may hold it: where it has a NaN or infinite number (a
    benchmark's logit change of a model whose logits overflow), the number becomes ``null`` and
    a successful run becomes a failed one (``status`` ``"diverged"``, ``error`` naming the
    numbers): nothing non-finite is scored, and JSON holds no NaN. Others are returned as they
    are."""
    bad = non_finite_fields(record)
    if not bad:
        return record

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {name: finite(item) for name, item in value.items()}
        if isinstance(value, list | tuple):
            return [finite(item) for item in value]
        return value

    record = finite(record)
    if record.get("status") == "ok":
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        record.update(status="diverged", error=f"its results are not all finite ({shown}): "
                                               f"nothing non-finite is scored")
    return record


def _read_run(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON run record ({error})") from None
    if not isinstance(record, dict) or record.get("key") != path.stem:
        raise ValueError(f"{path}: not the run record of key {path.stem!r}")
    return record


def mend_advice(results: Path) -> str:
    """How to mend a line of ``results`` (a ``results.jsonl``) that is not a run record: a
    line whose run has its file in ``runs/`` is regenerated from it; without one, it was the
    run's only record (a folder written before run files existed)."""
    return "delete or repair that line" + (
        " (where its run has a file in runs/, the line is regenerated from it; without one, the "
        "line was the run's only record and the run is done again)"
        if (Path(results).parent / RUNS_DIR).is_dir() else "")


def read_result_lines(results: Path) -> list[tuple[int, str, dict]]:
    """``(line number, line, record)`` of ``results``; a line that is not a run record (a JSON
    object with a string ``key``, or not JSON at all: a line cut short by a full disk or a
    killed editor) is a :class:`~eqpdenet.errors.DataFileError` naming the file and the line,
    and saying how to mend it: a line whose run has its file in ``runs/`` is a copy, and
    ``results.jsonl`` is regenerated from the run files (:func:`load_records`), so deleting it
    loses nothing; a line without one (a folder written before run files existed) is the run's
    only record."""
    mend = mend_advice(results)
    try:
        entries = read_jsonl_lines(results)
    except DataFileError as error:  # not UTF-8 or not JSON (a truncated last line)
        raise DataFileError(error.path, f"{error.problem}; {mend}") from None
    for number, line, record in entries:
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            line = " ".join(line.split())
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise DataFileError(f"{results}:{number}", f"not a run record ({shown}: not a JSON "
                                f"object with a string \"key\"); {mend}")
    return entries


def load_records(out_dir: Path) -> dict[str, dict]:
    """Every finished run of a folder, by key: the lines of a ``results.jsonl`` written before
    run files existed, then the run files, which take precedence (a line is their copy, or the
    copy of a run file since replaced: a run file renamed over by another writer of its key,
    whose regeneration has not come yet). A line or run file that is not a run record is a
    :class:`~eqpdenet.errors.DataFileError` naming the file and the line (a ``ValueError`` for
    a run file).

    Lines of one key without a run file are one run where they agree on
    :data:`SAME_RUN_FIELDS` and the curves (two writers of one run; the last line is kept), and
    a :class:`~eqpdenet.errors.DataFileError` naming the file, the keys, their lines and the
    fields where they do not: neither can be told to be the run (no sweep writes a key twice),
    and taking the last one, as was done, let the next regeneration of ``results.jsonl`` (a
    report's, a sweep's) delete the other without a word.
    """
    out_dir = Path(out_dir)
    results = out_dir / "results.jsonl"
    records: dict[str, dict] = {}
    first: dict[str, tuple[int, dict]] = {}
    conflicts: dict[str, tuple[int, int, list[str]]] = {}
    # In a folder without run files (an old one), results.jsonl is all there is; else lines of
    # keys without a run file are legacy runs (or a run file's copy, replaced below).
    for number, _, record in read_result_lines(results):
        key = record["key"]
        if key not in first:
            first[key] = (number, record)
        elif key not in conflicts:
            differ = [f for f in _SAME_LINE_FIELDS if first[key][1].get(f) != record.get(f)]
            if differ:
                conflicts[key] = (first[key][0], number, differ)
        records[key] = record
    if (out_dir / RUNS_DIR).is_dir():
        for path in sorted((out_dir / RUNS_DIR).glob("*.json")):
            # A run file is a file: a folder of that name (another command's output put there
            # before such paths were refused) is no run, and reading it failed "Is a directory".
            if path.is_file():
                records[path.stem] = _read_run(path)
                conflicts.pop(path.stem, None)  # the run file is the run
    if conflicts:
        shown = "; ".join(f"{key} on lines {a} and {b} (different {', '.join(differ)})"
                          for key, (a, b, differ) in list(conflicts.items())[:4])
        more = f", ... ({len(conflicts)} runs)" if len(conflicts) > 4 else ""
        raise DataFileError(str(results), f"{len(conflicts)} run(s) recorded twice with different "
                                          f"outcomes and no run file to tell which is the run: "
                                          f"{shown}{more}; delete the line that is not the run, "
                                          f"or both to run it again, then rerun the command")
    return records


def write_aggregate(out_dir: Path) -> Path:
    """Regenerate ``results.jsonl`` from the run files (and legacy lines), one line per key in
    key order, atomically (not at all where it holds those bytes already). A folder without run
    files is left as it is. A sweep calls it after every run and however it ends (an
    interrupt included), and a report before it reads ``results.jsonl``, so that a run whose
    file was saved is never missing from what a report reads."""
    out_dir = Path(out_dir)
    results = out_dir / "results.jsonl"
    if not (out_dir / RUNS_DIR).is_dir():
        return results
    records = load_records(out_dir)
    text = "".join(json.dumps(records[key], sort_keys=True) + "\n" for key in sorted(records))
    # Readers regenerate it too (a report): bytes already there are left untouched.
    if not (results.is_file() and results.read_bytes() == text.encode()):
        atomic_write(results, text.encode())
    return results


def set_aside(out_dir: Path, keys, stamp: str) -> Path:
    """Move the finished runs ``keys`` out of the folder's results, into
    ``superseded/<stamp>/``: their run files (``runs/<key>.json``), checkpoints
    (``checkpoints/<key>.pt``) and ``results.jsonl`` lines (``superseded/<stamp>/results.jsonl``,
    written atomically, after what an earlier call of the same stamp put there), so that a sweep
    runs them again. Returns the folder.

    Nothing is deleted, and nothing is left half done: everything that moves is checked first,
    and a file on another file system than ``superseded/`` (``checkpoints/`` a link to a bigger
    disk) is copied there, whole, before anything else changes; only a failure there (no space)
    is an :class:`~eqpdenet.errors.OutputFolderError`, with every copy removed and nothing
    moved. Then ``results.jsonl`` is rewritten atomically without them (before the files move: a
    kill in between leaves run files that the next regeneration puts back, never a line without
    its run), the checkpoints move, and then the run files (a kill in between leaves a run
    without its checkpoint, which a sweep sets aside in turn, never a checkpoint that the rerun
    would overwrite). A name already taken in ``superseded/<stamp>/`` gets a number
    (``<key>.2.json``)."""
    out_dir = Path(out_dir)
    keys = set(keys)
    results = out_dir / "results.jsonl"
    entries = read_result_lines(results)  # a line not a run record: refused before anything moves
    aside = out_dir / SUPERSEDED_DIR / stamp
    make_folder(aside)
    moved = {number for number, _, record in entries if record["key"] in keys}
    sources = [*(out_dir / "checkpoints" / f"{key}.pt" for key in sorted(keys)),
               *(run_file(out_dir, key) for key in sorted(keys))]
    device = os.stat(aside).st_dev
    plan, taken = [], set()  # (file, where it goes, whether on another file system)
    for source in sources:
        if source.exists() or source.is_symlink():
            target = _free_name(aside, source.name, taken)
            taken.add(target.name)
            plan.append((source, target, os.lstat(source).st_dev != device))
    copied: list[Path] = []
    try:
        for source, target, far in plan:
            if far:  # a rename would fail (EXDEV): a copy now
                _copy_whole(source, target)
                copied.append(target)
            elif not os.access(source.parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source.parent))
    except BaseException as error:
        for target in copied:
            with contextlib.suppress(OSError):
                target.unlink()
        if isinstance(error, OSError) and not isinstance(error, OutputFolderError):
            where = " (another file system)" if far else ""
            raise OutputFolderError(f"cannot set aside {source} in {aside}{where}: "
                                    f"{_reason(error)}; nothing was moved") from None
        raise
    if moved:
        record = aside / "results.jsonl"
        old = record.read_bytes() if record.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write(record, old + "".join(line if line.endswith("\n") else line + "\n"
                                            for number, line, _ in entries
                                            if number in moved).encode())
        atomic_write(results, "".join(line if line.endswith("\n") else line + "\n"
                                      for number, line, _ in entries
                                      if number not in moved).encode())
    for source, target, _ in plan:
        try:
            if target in copied:
                source.unlink()
            else:
                source.rename(target)
        except OSError as error:
            raise OutputFolderError(f"cannot set aside {source} in {aside}: {_reason(error)} "
                                    f"(it stays where it was; nothing was deleted)") from None
    return aside


def _free_name(folder: Path, name: str, taken: set[str]) -> Path:
    """``folder / name``, or where that is taken (on disk or in ``taken``), ``<stem>.<n><suffix>``
    with the first free ``n`` from 2: a set-aside file never replaces another."""
    stem, suffix = os.path.splitext(name)
    candidate, number = name, 1
    while candidate in taken or os.path.lexists(folder / candidate):
        number += 1
        candidate = f"{stem}.{number}{suffix}"
    return folder / candidate


def _copy_whole(source: Path, target: Path) -> None:
    """Copy ``source`` (a file, or a link as a link) to ``target`` on another file system: into
    a temporary file beside ``target``, flushed to the disk, then renamed, so that ``target`` is
    never a partial copy. The temporary file is removed on any failure."""
    pid = str(os.getpid())  # a long name shortened, as atomic_write's temporary files are
    tmp = target.with_name(f"{temporary_prefix(target.name, TEMPORARY_SUFFIX, len(pid))}{pid}"
                           f"{TEMPORARY_SUFFIX}")
    try:
        if source.is_symlink():
            os.symlink(os.readlink(source), tmp)
        else:
            shutil.copy2(source, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
