"""`spare batch`: job files, the claim queue, failures, re-runs, and several processes under accelerate launch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spare_core.batch import (
    JOB_HASH_KEY,
    BatchError,
    Claims,
    ProcessInfo,
    gather_batch,
    load_jobs,
    output_hash,
    parse_jobs,
    run_batch,
)

ROOT = Path(__file__).resolve().parents[1]
#: Settings that make a toy erasure take a few seconds.
TINY = {
    "steps": 2,
    "images_per_prompt": 1,
    "surrogate_images_per_prompt": 0,
    "retain_images": 4,
    "sample_steps": 2,
    "saliency_batches": 1,
    "profile_points": 2,
    "batch_size": 2,
    "top_k": 2,
}


def _job(concept="red", output="red.safetensors", **extra):
    return {"concept": concept, "surrogate": "plain", "settings": dict(TINY), "output": output, **extra}


# --------------------------------------------------------------------------- job files


def test_json_and_toml_job_files_give_the_same_jobs(tmp_path):
    (tmp_path / "jobs.json").write_text(json.dumps([_job(), _job(["circle", "star"], "shapes.safetensors")]))
    toml = "\n".join(
        [
            "[[jobs]]", 'concept = "red"', 'surrogate = "plain"', 'output = "red.safetensors"',
            "[jobs.settings]", *(f"{k} = {v}" for k, v in TINY.items()),
            "[[jobs]]", 'concept = ["circle", "star"]', 'surrogate = "plain"', 'output = "shapes.safetensors"',
            "[jobs.settings]", *(f"{k} = {v}" for k, v in TINY.items()),
        ]
    )  # fmt: skip
    (tmp_path / "jobs.toml").write_text(toml)
    from_json, from_toml = load_jobs(tmp_path / "jobs.json"), load_jobs(tmp_path / "jobs.toml")
    assert [j.describe() for j in from_json] == [j.describe() for j in from_toml]
    assert from_json[1].concepts == ["circle", "star"] and from_json[1].surrogates == ["plain"]
    assert from_json[0].output == tmp_path / "red.safetensors"  # relative to the job file
    assert from_json[0].settings_hash("toy") != from_json[1].settings_hash("toy")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_job(colour="red")], "unknown key 'colour'"),
        ([{"concept": "red", "output": "a.safetensors"}], "missing 'surrogate'"),
        ([_job(settings={"top_k": -1})], "job 1: top_k must be"),
        ([_job(settings={"topk": 3})], "unknown settings"),
        ([_job(), _job(concept="blue")], "job 2 writes"),
        ([_job(output="red.lora")], "must be a .safetensors"),
        ([_job(method="magic")], "unknown method 'magic'"),
        ([], "non-empty list"),
    ],
)
def test_a_bad_job_file_is_refused_before_any_work_with_what_to_change(entries, message, tmp_path):
    with pytest.raises(BatchError, match=message):
        parse_jobs(entries, tmp_path)


def test_the_settings_hash_changes_with_any_setting():
    (a,) = parse_jobs([_job()])
    (b,) = parse_jobs([_job(settings={**TINY, "seed": 1})])
    assert a.settings_hash("toy") != b.settings_hash("toy")
    assert a.settings_hash("toy") == parse_jobs([_job()])[0].settings_hash("toy")


# --------------------------------------------------------------------------- one process, a fake worker


def _fake_worker(calls):
    def work(job, job_hash, process):
        calls.append(job.concepts[0])
        if job.concepts[0] == "purple":
            raise ValueError("'purple' is not a toy object or style")
        save_file({"w": torch.zeros(1)}, str(job.output), metadata={JOB_HASH_KEY: job_hash})
        return {"file_bytes": job.output.stat().st_size}

    return work


def test_a_failing_job_is_reported_the_others_run_and_a_rerun_skips_what_is_done(tmp_path):
    jobs = parse_jobs([_job(), _job("purple", "purple.safetensors"), _job("blue", "blue.safetensors")], tmp_path)
    calls: list[str] = []
    report = run_batch(jobs, _fake_worker(calls), tmp_path / "results")
    assert calls == ["red", "purple", "blue"]
    assert [j["status"] for j in report.jobs] == ["done", "failed", "done"]
    assert "purple" in report.jobs[1]["error"]
    gathered = json.loads((tmp_path / "results" / "batch.json").read_text())
    assert gathered["counts"] == {"done": 2, "failed": 1}
    assert not list((tmp_path / "results" / "claims").iterdir())  # every claim released

    calls.clear()
    report = run_batch(jobs, _fake_worker(calls), tmp_path / "results")
    assert calls == ["purple"]  # the failed job is retried, the done ones are skipped
    assert [j["status"] for j in report.jobs] == ["done", "failed", "done"]

    # A changed setting changes the hash: that job runs again.
    changed = parse_jobs([_job(settings={**TINY, "seed": 5})], tmp_path)
    calls.clear()
    run_batch(changed, _fake_worker(calls), tmp_path / "results")
    assert calls == ["red"]
    assert output_hash(tmp_path / "red.safetensors") == changed[0].settings_hash("toy")


def test_gathering_runs_nothing_and_reads_each_jobs_state(tmp_path):
    jobs = parse_jobs([_job(), _job("purple", "purple.safetensors"), _job("blue", "blue.safetensors")], tmp_path)
    assert [j["status"] for j in gather_batch(jobs, tmp_path / "results").jobs] == ["not run"] * 3
    run_batch(jobs[:2], _fake_worker([]), tmp_path / "results")  # blue never ran
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # blue is now under way in another live process
        claims = Claims(tmp_path / "results" / "claims")
        claims.path(jobs[2]).write_text(json.dumps({"host": claims.host, "pid": sleeper.pid, "rank": 1}))
        report = gather_batch(jobs, tmp_path / "results")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [j["status"] for j in report.jobs] == ["done", "failed", "running"]
    assert report.jobs[0]["concept"] == ["red"] and "purple" in report.jobs[1]["error"]


def test_a_claim_of_a_live_process_is_respected_and_a_dead_ones_is_taken_over(tmp_path):
    (job,) = parse_jobs([_job()], tmp_path)
    claims = Claims(tmp_path / "claims")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims.path(job).write_text(json.dumps({"host": claims.host, "pid": sleeper.pid, "rank": 1}))
        assert claims.take(job, rank=0) is False
        assert claims.holder(job)["stale"] is False
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claims.holder(job)["stale"] is True
    assert claims.take(job, rank=0) is True
    assert claims.holder(job)["pid"] == os.getpid()


def test_the_main_process_takes_over_a_job_whose_process_died(tmp_path):
    jobs = parse_jobs([_job(), _job("blue", "blue.safetensors")], tmp_path)
    claims = Claims(tmp_path / "results" / "claims")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claims.path(jobs[1]).write_text(json.dumps({"host": claims.host, "pid": dead.pid, "rank": 1}))
    calls: list[str] = []
    report = run_batch(jobs, _fake_worker(calls), tmp_path / "results")
    assert calls == ["red", "blue"]
    assert [j["status"] for j in report.jobs] == ["done", "done"]


def test_waiting_for_other_processes_ends_when_they_die(tmp_path):
    from spare_core.batch import _gather

    jobs = parse_jobs([_job(), _job("blue", "blue.safetensors")], tmp_path)
    results = tmp_path / "results"
    claims = Claims(results / "claims")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    for job in jobs:  # both held by another process, which dies without finishing them
        claims.path(job).write_text(json.dumps({"host": claims.host, "pid": worker.pid, "rank": 1}))
    hashes = {job.index: job.settings_hash("toy") for job in jobs}
    began = time.time()
    report = _gather(jobs, hashes, results, claims, poll_seconds=0.1, wait=True)
    worker.wait()
    assert 2 < time.time() - began < 30
    assert [j["status"] for j in report.jobs] == ["lost", "lost"]
    assert "rank 1" in report.jobs[0]["error"] and "run the batch again" in report.jobs[0]["error"]


def test_process_info_reads_the_launchers_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = ProcessInfo.from_environment()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)
    assert info.device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert info.device("auto") == "cpu"


# --------------------------------------------------------------------------- two processes, accelerate launch


def _accelerate(launch_options: list[str], batch_args: list[str]):
    """``accelerate launch OPTIONS -m spare_core.cli batch ARGS`` in the background, output captured."""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [str(accelerate), "launch", *launch_options, "-m", "spare_core.cli", "batch", *batch_args], env=env,
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_share_the_jobs_survive_a_failing_job_and_a_killed_worker(tmp_path):
    good = ("red", "circle", "blue", "star", "stripes")  # enough that rank 1 surely runs one of them
    entries = [_job(good[0], "red.safetensors"), _job("purple", "purple.safetensors")]
    entries += [_job(name, f"{name}.safetensors") for name in good[1:]]
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(entries))
    results = tmp_path / "results"
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]  # fmt: skip

    # Run 1: kill rank 1 as soon as it holds a job. The launcher then stops rank 0 with SIGTERM,
    # which writes what is finished; nothing hangs.
    proc = _accelerate(launch, [str(jobs_file), "--results", str(results), "--device", "cpu"])
    killed, main_started = None, False
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and proc.poll() is None:
        for claim in (results / "claims").glob("*.claim") if (results / "claims").is_dir() else []:
            try:
                info = json.loads(claim.read_text())
            except (json.JSONDecodeError, FileNotFoundError):
                continue
            main_started = main_started or info.get("rank") == 0  # rank 0 is in the batch (not still importing)
            young = time.time() - info.get("since", 0) < 0.5  # just claimed: the job is under way
            if info.get("rank") == 1 and young and main_started and not claim.stem.endswith("purple"):
                os.kill(info["pid"], signal.SIGKILL)
                killed = claim.stem
                break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=240)
    assert killed is not None, output
    assert proc.returncode != 0
    first = json.loads((results / "batch.json").read_text())
    by_name = {Path(j["output"]).name.split(".")[0]: j for j in first["jobs"]}
    statuses = {name: j["status"] for name, j in by_name.items()}
    assert set(statuses.values()) <= {"done", "failed", "interrupted", "lost", "not run"}
    # The killed worker's job is reported unfinished, unless rank 0 took it over before the launcher stopped it.
    victim = by_name[killed.split("-", 1)[1]]
    assert victim["status"] in ("interrupted", "lost") or (victim["status"] == "done" and victim["rank"] == 0)

    # Run 2: the same command finishes every job but the failing one, and skips what run 1 finished.
    done_before = {name for name, status in statuses.items() if status == "done"}
    mtimes = {name: (tmp_path / f"{name}.safetensors").stat().st_mtime for name in done_before}
    proc = _accelerate(launch, [str(jobs_file), "--results", str(results), "--device", "cpu"])
    output, _ = proc.communicate(timeout=400)
    second = json.loads((results / "batch.json").read_text())
    statuses = {Path(j["output"]).name.split(".")[0]: j for j in second["jobs"]}
    assert proc.returncode != 0, output  # one job fails
    assert statuses["purple"]["status"] == "failed" and "purple" in statuses["purple"]["error"]
    assert all(statuses[name]["status"] == "done" for name in good), output
    for name, mtime in mtimes.items():
        assert (tmp_path / f"{name}.safetensors").stat().st_mtime == mtime  # skipped, not redone
    from spare_core import read_lora

    assert read_lora(tmp_path / "red.safetensors").config().concepts[0].concept == "red"


@pytest.mark.slow
def test_accelerate_launch_cpu_runs_every_job_in_its_one_process(tmp_path):
    # On a machine without GPUs, `accelerate launch --cpu` starts one process (several CPU processes
    # need MPI); that process finds no other rank and runs the whole list.
    (tmp_path / "jobs.json").write_text(json.dumps([_job("red", "red.safetensors")]))
    options = ["--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no"]  # fmt: skip
    proc = _accelerate(options, [str(tmp_path / "jobs.json")])
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    report = json.loads((tmp_path / "jobs_results" / "batch.json").read_text())
    assert report["counts"] == {"done": 1}
    assert report["jobs"][0]["trainable_parameters"] > 0 and report["jobs"][0]["file_bytes"] > 0


def test_sigterm_stops_the_batch_and_is_not_taken_for_a_failing_job(tmp_path):
    jobs = parse_jobs([_job(), _job("blue", "blue.safetensors"), _job("star", "star.safetensors")], tmp_path)
    calls: list[str] = []
    fake = _fake_worker(calls)

    def stopped_at_blue(job, job_hash, process):
        if job.concepts[0] == "blue":
            os.kill(os.getpid(), signal.SIGTERM)  # what a launcher sends when another process died
            time.sleep(5)
        return fake(job, job_hash, process)

    handler_before = signal.getsignal(signal.SIGTERM)
    report = run_batch(jobs, stopped_at_blue, tmp_path / "results")
    assert signal.getsignal(signal.SIGTERM) == handler_before  # restored
    assert [j["status"] for j in report.jobs] == ["done", "interrupted", "not run"]
    assert calls == ["red"]
    assert not list((tmp_path / "results" / "claims").iterdir())  # the interrupted job is free for the next run
    assert json.loads((tmp_path / "results" / "batch.json").read_text())["counts"] == {
        "done": 1, "interrupted": 1, "not run": 1,
    }  # fmt: skip
