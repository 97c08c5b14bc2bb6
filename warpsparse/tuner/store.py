"""The persistent tuning cache: loaded lazily, written in the background, merged across processes.

One JSON file (see :mod:`warpsparse.cache_schema`) in ``platformdirs.user_cache_dir("warpsparse")`` or in
``$WARPCONVNET_BENCHMARK_CACHE_DIR``. Writes take a file lock, re-read the file, merge per candidate (a run
never drops results it did not measure) and replace the file atomically. An unreadable file is moved aside
as ``*.corrupt``; a file that cannot be written leaves the results in memory. Both warn once.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import platformdirs
from filelock import FileLock, Timeout
from pydantic import ValidationError

from warpsparse.cache_schema import SCHEMA_VERSION, CacheDocument, CandidateResult, Entry, EntryKey

log = logging.getLogger("warpsparse.tuner")

CACHE_DIR_ENV = "WARPCONVNET_BENCHMARK_CACHE_DIR"
FILE_NAME = "tuning_cache.json"
LOCK_TIMEOUT_S = 10.0
FLUSH_DELAY_S = 1.0  # the background writer batches what is recorded within this delay

Results = dict[str, CandidateResult]  # by candidate ident

_warned: set[str] = set()


def _warn_once(tag: str, message: str) -> None:
    if tag not in _warned:
        _warned.add(tag)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def cache_dir() -> Path:
    """``$WARPCONVNET_BENCHMARK_CACHE_DIR`` (verbatim) or the platform's user cache dir for warpsparse."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("warpsparse"))


def cache_file() -> Path:
    """The cache file in :func:`cache_dir`."""
    return cache_dir() / FILE_NAME


class CacheUnreadable(Exception):
    """The cache file is corrupt, truncated, or of a newer schema version."""


class CacheFromNewerVersion(CacheUnreadable):
    """The cache file was written by a newer warpsparse (a newer schema version): left as it is."""


def read_document(path: Path) -> CacheDocument:
    """The validated document at ``path`` (empty if absent); :class:`CacheUnreadable` if it cannot be used."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return CacheDocument()
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise CacheUnreadable(f"not valid JSON ({exc})") from None
    version = obj.get("schema_version") if isinstance(obj, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise CacheFromNewerVersion(f"schema version {version} is newer than this warpsparse's {SCHEMA_VERSION}")
    try:
        return CacheDocument.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CacheUnreadable(f"invalid ({exc.error_count()} errors; first at {where or 'top'}: "
                              f"{first['msg']})") from None


def file_lock(path: Path, timeout: float | None = None) -> FileLock:
    """The inter-process lock guarding ``path`` (acquiring it times out after ``timeout`` seconds, by default
    ``LOCK_TIMEOUT_S``)."""
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S if timeout is None else timeout)


def _aside(path: Path) -> Path:
    """A free name for moving ``path`` aside: ``<name>.corrupt``, else ``<name>.<n>.corrupt``."""
    aside, n = path.with_name(path.name + ".corrupt"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.{n}.corrupt"), n + 1
    return aside


def _read_or_quarantine(path: Path) -> CacheDocument:
    """Under the file lock: read ``path``; an unreadable file is moved to a free ``*.corrupt`` name (warn once).
    A newer version's file is left in place (:class:`CacheFromNewerVersion` raised)."""
    try:
        return read_document(path)
    except CacheFromNewerVersion:
        raise
    except CacheUnreadable as exc:
        aside = _aside(path)
        os.replace(path, aside)
        _warn_once(f"corrupt:{path}", f"warpsparse tuning cache {path} is unusable: {exc}; moved it to {aside} "
                                      "and starting with an empty cache")
        return CacheDocument()


def load_document(path: Path) -> CacheDocument:
    """The document at ``path`` for reading; never raises (unreadable files are moved aside, a newer version's
    file is left as it is; errors warn once)."""
    try:
        return read_document(path)
    except CacheFromNewerVersion as exc:
        _warn_newer(path, exc)
        return CacheDocument()
    except CacheUnreadable:
        pass
    except OSError as exc:
        _warn_once(f"read:{path}", f"cannot read warpsparse tuning cache {path} ({exc}); starting empty")
        return CacheDocument()
    try:
        with file_lock(path):
            return _read_or_quarantine(path)
    except CacheFromNewerVersion as exc:  # replaced by a newer version's file meanwhile
        _warn_newer(path, exc)
        return CacheDocument()
    except (OSError, Timeout) as exc:
        _warn_once(f"corrupt:{path}", f"warpsparse tuning cache {path} is unusable and could not be moved "
                                      f"aside ({exc}); starting with an empty cache")
        return CacheDocument()


def _warn_newer(path: Path, exc: CacheFromNewerVersion) -> None:
    _warn_once(f"newer:{path}", f"warpsparse tuning cache {path} was written by a newer warpsparse ({exc}); "
                                "leaving it unchanged: tuning results stay in memory for this process")


def write_document(path: Path, doc: CacheDocument) -> None:
    """Replace ``path`` by ``doc`` atomically (temporary file in the same directory, then rename), keeping the
    permissions of the file it replaces (a new file is private to its owner)."""
    text = doc.model_dump_json(indent=1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            pass
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def update_document(path: Path, change: Callable[[CacheDocument], CacheDocument],
                    timeout: float | None = None) -> CacheDocument:
    """Read, change and rewrite ``path`` under its file lock; the document written.

    Raises ``OSError`` when the directory cannot be written, :class:`filelock.Timeout` when another process
    holds the lock for longer than ``timeout`` seconds (default ``LOCK_TIMEOUT_S``), and
    :class:`CacheFromNewerVersion` (leaving the file unchanged) when a newer warpsparse wrote it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, timeout):
        doc = change(_read_or_quarantine(path))
        write_document(path, doc)
    return doc


def merge(doc: CacheDocument, updates: Iterable[tuple[EntryKey, Iterable[CandidateResult], datetime]]
          ) -> CacheDocument:
    """``doc`` with every update's candidate results put in (replacing the same candidates, keeping others)."""
    entries: dict[EntryKey, Entry] = {}
    pending = [(e.key, e.candidates, e.tuned_at) for e in doc.entries]
    for key, results, when in [*pending, *updates]:
        old = entries.get(key)
        candidates = {c.ident: c for c in old.candidates} if old else {}
        candidates.update((c.ident, c) for c in results)
        entries[key] = Entry.build(key, list(candidates.values()), max(when, old.tuned_at) if old else when)
    return CacheDocument(entries=list(entries.values()))


def _index(doc: CacheDocument) -> dict[EntryKey, Results]:
    return {e.key: {c.ident: c for c in e.candidates} for e in doc.entries}


class TuningStore:
    """Tuning results of one cache file, in memory, with the results not yet written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._flushing = threading.Lock()
        self._results: dict[EntryKey, Results] | None = None  # None until the file is read
        self._pending: dict[EntryKey, Results] = {}

    def reinit_locks(self) -> None:
        """Fresh locks (in a forked child, whose parent may have held them)."""
        self._mutex = threading.Lock()
        self._flushing = threading.Lock()

    def _install(self, loaded: dict[EntryKey, Results]) -> None:
        for key, results in self._pending.items():
            loaded.setdefault(key, {}).update(results)
        self._results = loaded

    def _load(self) -> None:
        if self._results is None:
            loaded = _index(load_document(self.path))
            with self._mutex:
                if self._results is None:
                    self._install(loaded)

    def results(self, key: EntryKey) -> Results:
        """Every result known for ``key`` (reads the file on first use)."""
        self._load()
        with self._mutex:
            return dict(self._results.get(key, {}))  # type: ignore[union-attr]

    def winners_like(self, key: EntryKey) -> set[str]:
        """Idents of the fastest correct candidates of the other entries with ``key``'s op, dtype, device and
        versions: points that won elsewhere in this network (or an earlier one) are promising here too."""
        self._load()
        same = ("op", "dtype", "tf32")
        mine = tuple(getattr(key.signature, f) for f in same)
        with self._mutex:
            best = [min((r for r in results.values() if r.status == "ok"), key=lambda r: r.score_ms, default=None)
                    for other, results in self._results.items()  # type: ignore[union-attr]
                    if other != key and other.device == key.device and other.versions == key.versions
                    and tuple(getattr(other.signature, f) for f in same) == mine]
        return {r.ident for r in best if r is not None}

    def record(self, key: EntryKey, results: list[CandidateResult]) -> None:
        """Remember newly measured ``results`` for ``key``; the background writer saves them soon."""
        by_ident = {r.ident: r for r in results}
        with self._mutex:
            self._pending.setdefault(key, {}).update(by_ident)
            if self._results is not None:
                self._results.setdefault(key, {}).update(by_ident)
        _writer.wake()

    def flush(self) -> bool:
        """Merge the pending results into the file within ``LOCK_TIMEOUT_S`` in all (a flush already under way in
        another thread included); ``False`` (after one warning) if that failed."""
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        if not self._flushing.acquire(timeout=LOCK_TIMEOUT_S):
            return self._lock_timed_out()
        try:
            with self._mutex:
                snapshot = {key: dict(results) for key, results in self._pending.items()}
            if not snapshot:
                return True
            now = datetime.now(timezone.utc)
            try:
                doc = update_document(self.path, lambda d: merge(
                    d, ((key, results.values(), now) for key, results in snapshot.items())),
                    max(0.0, deadline - time.monotonic()))
            except CacheFromNewerVersion as exc:
                _warn_newer(self.path, exc)
                return False
            except Timeout:
                return self._lock_timed_out()
            except OSError as exc:
                _warn_once(f"write:{self.path}", f"cannot write warpsparse tuning cache {self.path} ({exc}); "
                                                 "tuning results stay in memory for this process")
                return False
            with self._mutex:
                for key, written in snapshot.items():
                    left = {i: r for i, r in self._pending.get(key, {}).items() if written.get(i) is not r}
                    if left:
                        self._pending[key] = left
                    else:
                        self._pending.pop(key, None)
                self._install(_index(doc))
            log.debug("saved %d tuned signatures to %s", len(snapshot), self.path)
            return True
        finally:
            self._flushing.release()

    def _lock_timed_out(self) -> bool:
        _warn_once(f"lock:{self.path}", f"could not lock warpsparse tuning cache {self.path} within "
                                        f"{LOCK_TIMEOUT_S:g} s; keeping results in memory for the next save "
                                        "(at exit they are dropped)")
        return False


_stores: dict[Path, TuningStore] = {}
_stores_mutex = threading.Lock()


def store_for(path: Path | None = None) -> TuningStore:
    """The process-wide store of ``path`` (default: the current :func:`cache_file`)."""
    path = cache_file() if path is None else path
    with _stores_mutex:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = TuningStore(path)
        return store


def save_all() -> bool:
    """Write every store's pending results now; ``True`` if everything was written."""
    with _stores_mutex:
        stores = list(_stores.values())
    return all([s.flush() for s in stores])


def forget_all() -> None:
    """Drop every in-memory store (results not yet written are lost)."""
    with _stores_mutex:
        _stores.clear()


class _Writer:
    """A daemon thread that saves pending results shortly after they are recorded (batched)."""

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_mutex = threading.Lock()

    def wake(self) -> None:
        self._wanted.set()
        if self._thread is None or not self._thread.is_alive():
            with self._start_mutex:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="warpsparse-cache-writer", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(FLUSH_DELAY_S)
            self._wanted.clear()
            try:
                save_all()
            except Exception:  # noqa: BLE001 - a background save must never kill the thread
                log.exception("saving the warpsparse tuning cache failed")


_writer = _Writer()


def _after_fork_in_child() -> None:
    global _writer, _stores_mutex
    _writer = _Writer()
    _stores_mutex = threading.Lock()
    for store in _stores.values():
        store.reinit_locks()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(save_all)
