"""Where a study lives, and how a killed worker's trial is noticed.

* Default: Optuna's journal file (``<work dir>/study.journal``), which any number of
  processes on one machine may share (appends under a file lock; SQLite is not safe for
  parallel writers). Optuna 5's journal storage has no heartbeat, so this module adds
  Optuna's own heartbeat protocol to it (BaseHeartbeat): each running trial records a
  timestamp every few seconds, and a trial whose worker died (kill -9) is failed by the
  next worker that looks, and retried (RetryHeartbeatStaleTrialCallback).
* ``postgresql://...`` (or any SQLAlchemy URL): Optuna's RDBStorage with its heartbeat,
  so workers on any number of machines can join one study. Setting up the schema is
  retried: two workers that start at once against an empty database race on it.
"""
from __future__ import annotations

import random
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the protocol RDBStorage implements (optuna>=5,<6)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

MAX_RETRY = 3
GRACE_BEATS = 4  # a running trial silent for this many heartbeats is stale
HEARTBEAT_ATTR = "fastmlp:heartbeat"


class StorageError(ValueError):
    pass


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal file storage whose running trials beat (a system attribute with the
    time), so a trial of a killed worker can be told from a slow one."""

    def __init__(self, path: str, heartbeat_interval: int = 5):
        super().__init__(JournalFileBackend(path))
        self._interval, self._grace = heartbeat_interval, GRACE_BEATS * heartbeat_interval
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._on_stale = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished between two beats

    def _get_stale_trial_ids(self, study_id: int) -> list:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # a retried trial starts with the failed one's system attributes, its last beat
            # included: a trial is as fresh as its start or its last beat, whichever is later
            started = t.datetime_start.timestamp() if t.datetime_start else now
            last = max(t.system_attrs.get(HEARTBEAT_ATTR, started), started)
            if now - last > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._on_stale


def driver_url(url: str) -> str:
    """postgresql://... with psycopg 3 (the sweep extra's driver) unless a driver is named."""
    if re.match(r"^postgres(ql)?://", url):
        try:
            import psycopg  # noqa: F401

            return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
        except ImportError:
            pass
    return url


def masked(url: str) -> str:
    """The URL without its password, for messages and the --json output."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(url, work_dir: Path, heartbeat: int = 5, attempts: int = 8):
    """The storage a sweep's workers share: a journal file in work_dir, or a database URL.
    Raises StorageError with one line if it cannot be opened."""
    if url is None or url.startswith("journal:"):
        path = Path(url[len("journal:"):]) if url else work_dir / "study.journal"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return HeartbeatJournalStorage(str(path), heartbeat)
        except OSError as e:
            raise StorageError(f"cannot open the journal {str(path)!r}: {e.strerror or e}") from None
    import sqlalchemy.exc

    last = None
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # Optuna calls its heartbeat "experimental" (since 2.9)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(driver_url(url), heartbeat_interval=heartbeat, grace_period=GRACE_BEATS * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                                  engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            last = e  # another worker is creating the same tables: wait for it, then use them
            time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
                ValueError, ImportError) as e:
            detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise StorageError(f"cannot open the storage {masked(url)}: {detail}") from None
    raise StorageError(f"cannot set up the storage {masked(url)}: {str(last).splitlines()[0]}")


def open_study(storage, name: str, seed: int, prune: bool = True):
    """The study (created if new, joined if it exists), with a TPE sampler that lets
    parallel workers avoid each other's points and a median pruner on the dev loss
    (prune=False: none; benchmarks/bench_sweep.py times whole trials)."""
    sampler = optuna.samplers.TPESampler(constant_liar=True, seed=seed, n_startup_trials=8)
    # reports come at the fraction of each run done, in per mille (worker.py): no verdict
    # before 30% of a run
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=300) if prune else \
        optuna.pruners.NopPruner()
    import sqlalchemy.exc

    for attempt in range(8):
        try:
            return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                       direction="minimize", load_if_exists=True)
        except (sqlalchemy.exc.IntegrityError, optuna.exceptions.DuplicatedStudyError):
            time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))  # created by another worker meanwhile
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
