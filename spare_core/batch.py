"""Many erasures in one command, over every device and process (``spare batch``).

A batch is a list of jobs (JSON, or TOML with a ``[[jobs]]`` array), each with
``concept`` (a string or a list), ``surrogate`` (likewise), ``settings``
(setting names to values, as in the schema), ``output`` (the file to write)
and optionally ``method`` (``spare``, the default, or a baseline's name).

How the work is shared. Every process (started by ``accelerate launch``, which
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, or run alone) walks the same
job list and *claims* the next free job by creating its claim file atomically
(``O_EXCL``) in the results folder: a queue, so a fast process takes more
jobs and a dead one holds up only the job it was running. Nothing is ever
exchanged between processes but files, so no collective can hang when a
process crashes. Each process runs on ``cuda:LOCAL_RANK`` when there are GPUs.

What is written. Each job writes its own result file (``jobs/<id>.json``:
done or failed, with its error, seconds, file size and trainable
parameters) and its output, whose metadata carries the job's settings hash.
The main process (rank 0) then waits for the jobs other processes hold,
reporting a job whose process stopped (its claim's heartbeat went stale, or
its process is gone) as ``lost``, and gathers every job into one JSON file.
A failing job is reported and the others go on. A re-run skips every job
whose output carries the same settings hash, and retries the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SETTINGS_BEFORE_THEY_EXISTED, ErasureConfig, SettingsError, pair_concepts
from .errors import describe_error
from .fileio import write_json

logger = logging.getLogger(__name__)

#: The keys a job may have; ``method`` is optional.
JOB_KEYS = ("concept", "surrogate", "settings", "output", "method")
#: A claim's heartbeat is refreshed this often (seconds) ...
HEARTBEAT_SECONDS = 5.0
#: ... and a claim not refreshed for this long belongs to a process that stopped.
STALE_AFTER_SECONDS = 60.0
#: Metadata key of an output file that holds its job's settings hash.
JOB_HASH_KEY = "spare_job_hash"
#: Settings added after job hashes were first written: left out of a hash while at the value that
#: reproduces the runs made before they existed (``SETTINGS_BEFORE_THEY_EXISTED``), so those keep their hash.
LATER_SETTINGS = ("robust", "retain_focus", "preserve_weight", "retain_focus_surrogate", "retain_timesteps")
#: The settings a baseline never reads (SPARE's saliency, timesteps and training), with the values its hash
#: was first written with: a baseline's hash holds these, so that a change of SPARE's defaults does not
#: make finished baseline jobs run again. ``lr`` and ``steps`` given in a baseline job's settings are its
#: overrides and are hashed as given.
BASELINE_HASHED_AS: dict[str, Any] = {
    "saliency_mode": "denoise", "module_scope": "text", "top_k": 12, "module_fraction": 0.0,
    "channel_fraction": 1.0, "saliency_batches": 4, "timestep_mode": "profile", "profile_points": 20,
    "profile_gamma": 1.0, "profile_floor": 0.2, "profile_contrast": True, "rank": 4, "alpha": 4.0,
    "steps": 120, "batch_size": 8, "lr": 0.006, "weight_decay": 0.0, "grad_clip": 1.0,
    "gradient_checkpointing": False, "eta": 1.0, "forget_weight": 1.0, "retain_weight": 1.0,
}  # fmt: skip
BASELINE_OVERRIDES = ("lr", "steps")


class BatchError(ValueError):
    """A job list that cannot run; the message names the job and what to change."""


@dataclass
class BatchJob:
    """One erasure of a batch."""

    index: int
    concepts: list[str]
    surrogates: list[str]
    settings: dict[str, Any]
    output: Path
    method: str = "spare"

    def config(self, model: str) -> ErasureConfig:
        """The job's validated settings for ``model``."""
        config = ErasureConfig(pair_concepts(self.concepts, self.surrogates), base_model=model)
        return config.with_settings(**self.settings).validate()

    def settings_hash(self, model: str) -> str:
        """What decides the job's output: method, model, concepts and every setting.

        A setting added after hashes were first written (:data:`LATER_SETTINGS`) is left out while it has
        the value of the runs made before it existed, so that their outputs keep their hash. A baseline's
        hash holds the settings it never reads at fixed values (:data:`BASELINE_HASHED_AS`).
        """
        config = json.loads(self.config(model).to_json())
        if self.method != "spare":
            for name, value in BASELINE_HASHED_AS.items():
                if not (name in BASELINE_OVERRIDES and name in self.settings):
                    config[name] = value
        for name in LATER_SETTINGS:
            if self.method != "spare" or config.get(name) == SETTINGS_BEFORE_THEY_EXISTED[name]:
                config.pop(name, None)
        text = json.dumps({"method": self.method, "config": config}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def job_id(self) -> str:
        return f"{self.index:04d}-{self.output.name.split('.')[0]}"

    def describe(self) -> dict:
        return {
            "index": self.index,
            "concept": self.concepts,
            "surrogate": self.surrogates,
            "method": self.method,
            "settings": self.settings,
            "output": str(self.output),
        }


def _as_list(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise BatchError(f"{where}: {key!r} must be a text or a non-empty list of texts, got {value!r}")
    return list(value)


def parse_jobs(entries: Any, base_dir: Path | None = None, known_methods: Sequence[str] = ("spare",)) -> list[BatchJob]:
    """Jobs from a decoded JSON list or TOML ``{"jobs": [...]}``; outputs relative to ``base_dir``."""
    if isinstance(entries, dict):
        if set(entries) != {"jobs"}:
            raise BatchError("a TOML job file holds one [[jobs]] array (jobs = [...]) and nothing else")
        entries = entries["jobs"]
    if not isinstance(entries, list) or not entries:
        raise BatchError("the job file must hold a non-empty list of jobs")
    jobs, outputs = [], {}
    for i, entry in enumerate(entries):
        where = f"job {i + 1}"
        if not isinstance(entry, dict):
            raise BatchError(f"{where} must be a table of concept, surrogate, settings and output")
        unknown = sorted(set(entry) - set(JOB_KEYS))
        if unknown:
            raise BatchError(f"{where}: unknown key {unknown[0]!r}; a job has {', '.join(JOB_KEYS)}")
        missing = [k for k in ("concept", "surrogate", "output") if k not in entry]
        if missing:
            raise BatchError(f"{where}: missing {missing[0]!r}")
        settings = entry.get("settings", {})
        if not isinstance(settings, dict):
            raise BatchError(f"{where}: 'settings' must map setting names to values, got {settings!r}")
        method = entry.get("method", "spare")
        if method not in known_methods:
            raise BatchError(f"{where}: unknown method {method!r}; use one of {', '.join(known_methods)}")
        output = Path(entry["output"])
        if base_dir is not None and not output.is_absolute():
            output = base_dir / output
        if not output.name.endswith(".safetensors"):
            raise BatchError(f"{where}: output {output} must be a .safetensors file")
        if output.resolve() in outputs:
            raise BatchError(f"{where} writes {output}, as job {outputs[output.resolve()]} does: give each its own")
        outputs[output.resolve()] = i + 1
        job = BatchJob(
            i, _as_list(entry["concept"], "concept", where), _as_list(entry["surrogate"], "surrogate", where),
            dict(settings), output, method,
        )  # fmt: skip
        try:
            job.config("toy")  # names and values of every setting, before any work starts
        except (SettingsError, ValueError, TypeError) as exc:
            raise BatchError(f"{where}: {describe_error(exc)}") from None
        jobs.append(job)
    return jobs


def load_jobs(path: str | Path, known_methods: Sequence[str] = ("spare",)) -> list[BatchJob]:
    """Read a job file (``.json`` or ``.toml``); outputs are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"job file {path} not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            entries = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            entries = json.loads(text)
        else:
            raise BatchError(f"job file {path} must be .json or .toml")
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, BatchError):
            raise
        raise BatchError(f"job file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    return parse_jobs(entries, path.parent, known_methods)


# --------------------------------------------------------------------------- processes and claims


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the launch (``accelerate launch`` sets the variables; alone: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> ProcessInfo:
        def number(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                return default

        return cls(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str = "auto") -> str:
        """``requested``, or with ``auto`` this process's GPU (``cuda:LOCAL_RANK``) if there are GPUs, else the CPU."""
        if requested != "auto":
            return requested
        import torch

        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state letter follows the command name in parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Claims:
    """Claim files in ``folder``: one per job being run, refreshed by a heartbeat while it runs."""

    def __init__(self, folder: Path, stale_after: float = STALE_AFTER_SECONDS):
        self.folder, self.stale_after = folder, stale_after
        folder.mkdir(parents=True, exist_ok=True)
        self.host, self.pid = socket.gethostname(), os.getpid()

    def path(self, job: BatchJob) -> Path:
        return self.folder / f"{job.job_id}.claim"

    def holder(self, job: BatchJob) -> dict | None:
        """Who holds ``job``'s claim (``None`` if nobody), with ``stale`` when that process stopped."""
        path = self.path(job)
        try:
            info = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        gone = info.get("host") == self.host and not _process_alive(int(info.get("pid", -1)))
        info["stale"] = gone or age > self.stale_after
        return info

    def take(self, job: BatchJob, rank: int) -> bool:
        """Claim ``job`` atomically; a stale claim is taken over. False if another live process holds it."""
        path = self.path(job)
        holder = self.holder(job)
        if holder is not None:
            if not holder["stale"]:
                return False
            try:  # only one process wins the rename of a stale claim
                os.rename(path, path.with_suffix(f".stale-{self.pid}"))
            except FileNotFoundError:
                return False
            path.with_suffix(f".stale-{self.pid}").unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": self.host, "pid": self.pid, "rank": rank, "since": time.time()}, f)
        return True

    def release(self, job: BatchJob) -> None:
        self.path(job).unlink(missing_ok=True)


class _Heartbeat:
    """Touches a claim file every few seconds while its job runs."""

    def __init__(self, path: Path, every: float = HEARTBEAT_SECONDS):
        self.path, self.every = path, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- running


def output_hash(path: Path) -> str | None:
    """The job hash an output file carries in its metadata, or None (no file, or not one of ours)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(JOB_HASH_KEY)
    except Exception:  # an unreadable file is not a finished job's output
        return None


#: Runs one job: ``(job, settings hash, process) -> figures to report``. It writes ``job.output``, with the
#: hash in its metadata, as its last act: a re-run skips a job whose output carries its hash, so a worker
#: that does more after writing it (an evaluation) would leave a stopped job looking finished.
JobWorker = Callable[[BatchJob, str, ProcessInfo], dict]


@dataclass
class BatchReport:
    """Every job's state after a batch, as the main process gathered it."""

    jobs: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs:
            out[job["status"]] = out.get(job["status"], 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"counts": self.counts(), "jobs": self.jobs}


class _Terminated(BaseException):
    """SIGTERM arrived (a launcher stops every process when one of them died).

    A BaseException, so that the per-job ``except Exception`` does not take it for a job's failure.
    """


def run_batch(
    jobs: Sequence[BatchJob],
    worker: JobWorker,
    results_dir: str | Path,
    model: str = "toy",
    process: ProcessInfo | None = None,
    poll_seconds: float = 1.0,
    stale_after: float = STALE_AFTER_SECONDS,
) -> BatchReport | None:
    """Run this process's share of ``jobs``; the main process returns the gathered report (others None).

    The report is also written to ``results_dir/batch.json`` (atomically), even when the
    main process is stopped by SIGTERM part-way (unfinished jobs then read ``interrupted``).
    """
    process = process or ProcessInfo.from_environment()
    results = Path(results_dir)
    (results / "jobs").mkdir(parents=True, exist_ok=True)
    claims = Claims(results / "claims", stale_after)
    hashes = {job.index: job.settings_hash(model) for job in jobs}
    failed: list[BatchJob] = []
    previous = None
    if process.is_main and threading.current_thread() is threading.main_thread():

        def on_term(signum, frame):
            raise _Terminated()

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            for job in jobs:
                if not _run_one(job, hashes[job.index], worker, results, claims, process):
                    failed.append(job)
        finally:
            # A failed job's claim is held until this process has walked the whole list, so that
            # no other process of this launch retries it; the next launch does.
            for job in failed:
                claims.release(job)
        if not process.is_main:
            return None
        return _gather(jobs, hashes, results, claims, poll_seconds, wait=True)
    except _Terminated:
        logger.warning("stopped by SIGTERM: writing what is finished to %s", results / "batch.json")
        report = _gather(jobs, hashes, results, claims, poll_seconds, wait=False)
        for job in jobs:  # the job under way is left to the next run, at once
            holder = claims.holder(job)
            if holder is not None and holder.get("pid") == claims.pid and holder.get("host") == claims.host:
                claims.release(job)
        return report
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def gather_batch(jobs: Sequence[BatchJob], results_dir: str | Path, model: str = "toy") -> BatchReport:
    """Each job's state as its results folder records it, running nothing (a job under way reads ``running``).

    For a partial report while a batch is still going, or after it stopped.
    """
    results = Path(results_dir)
    claims = Claims(results / "claims")
    return BatchReport([_job_state(job, job.settings_hash(model), results, claims) for job in jobs])


def _record_path(results: Path, job: BatchJob) -> Path:
    return results / "jobs" / f"{job.job_id}.json"


def _read_record(results: Path, job: BatchJob) -> dict | None:
    try:
        return json.loads(_record_path(results, job).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _run_one(
    job: BatchJob, job_hash: str, worker: JobWorker, results: Path, claims: Claims, process: ProcessInfo
) -> bool:
    """Run ``job`` unless it is done or another live process holds it; False if it failed here."""
    if output_hash(job.output) == job_hash or not claims.take(job, process.rank):
        return True
    began = time.time()
    base = {**job.describe(), "hash": job_hash, "rank": process.rank, "host": claims.host, "started": began}
    try:
        with _Heartbeat(claims.path(job)):
            figures = worker(job, job_hash, process)
        outcome = {"status": "done", **figures}
    except Exception as exc:  # a failing job is reported; the others go on
        logger.warning("job %d (%s) failed: %s", job.index + 1, job.output.name, describe_error(exc))
        outcome = {"status": "failed", "error": describe_error(exc)}
    write_json(_record_path(results, job), {**base, **outcome, "job_seconds": round(time.time() - began, 2)})
    if outcome["status"] == "done":
        claims.release(job)
        return True
    return False


def _gather(
    jobs: Sequence[BatchJob], hashes: dict[int, str], results: Path, claims: Claims, poll_seconds: float, wait: bool
) -> BatchReport:
    """Each job's final state; with ``wait``, until no live process holds a job of this batch."""
    while True:
        report, pending = BatchReport(), False
        for job in jobs:
            state = _job_state(job, hashes[job.index], results, claims)
            if state["status"] == "running":
                if wait:
                    pending = True
                else:
                    state["status"] = "interrupted"
            report.jobs.append(state)
        if not pending:
            write_json(results / "batch.json", report.as_dict())
            return report
        time.sleep(poll_seconds)


def _job_state(job: BatchJob, job_hash: str, results: Path, claims: Claims) -> dict:
    record = _read_record(results, job)
    mine = record is not None and record.get("hash") == job_hash
    about = {**job.describe(), "hash": job_hash}
    if output_hash(job.output) == job_hash:
        return record if mine and record["status"] == "done" else {**about, "status": "done", "note": "output found"}
    holder = claims.holder(job)
    if holder is not None and not holder["stale"]:
        return {**about, "status": "running", "rank": holder.get("rank")}
    if holder is not None:
        return {
            **about, "status": "lost",
            "error": f"the process running it (rank {holder.get('rank')}, pid {holder.get('pid')} on "
            f"{holder.get('host')}) stopped; run the batch again to retry it",
        }  # fmt: skip
    if mine and record["status"] == "failed":
        return record
    return {**about, "status": "not run", "error": "no process ran it; run the batch again"}


def erasure_worker(
    model: str = "toy", device: str = "auto", dtype: str = "fp32", cache_dir: str | Path | None = None
) -> JobWorker:
    """The worker of ``spare batch``: erase with SPARE or a baseline, write the job's output with its hash.

    Each process opens the model once, on its own device, and keeps it for its next jobs.
    """
    backends: dict[str, Any] = {}

    def work(job: BatchJob, job_hash: str, process: ProcessInfo) -> dict:
        import torch

        from .baselines.methods import run_baseline
        from .erasure import erase
        from .lora import lora_from_adapter
        from .models import open_model

        dev = process.device(device)
        if dev not in backends:
            backends[dev] = open_model(model, dev, dtype)
        backend = backends[dev]
        config = job.config(model)
        on_gpu = dev.startswith("cuda")
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(dev)
        began = time.perf_counter()
        meta = {JOB_HASH_KEY: job_hash}
        if job.method == "spare":
            result = erase(backend, config, cache_dir=cache_dir)
            lora_from_adapter(result.adapter, backend, config, meta).write(job.output)
            trainable = result.adapter.num_trainable()
        else:
            overrides = {k: job.settings[k] for k in ("lr", "steps") if k in job.settings}
            baseline = run_baseline(backend, job.method, config, cache_dir=cache_dir, **overrides)
            baseline.save(job.output, backend, metadata=meta)
            trainable = baseline.num_trainable()
        return {
            "device": dev,
            "erase_seconds": round(time.perf_counter() - began, 2),
            "trainable_parameters": trainable,
            "file_bytes": job.output.stat().st_size,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if on_gpu else None,
        }

    return work
