"""Benchmark: SPARE against ESD-x, ESD-u, LECO and UCE, and SPARE's ablations, on every toy concept.

Every method runs through ``spare batch``'s engine (``run_batch``), one job per
method and concept, so an interrupted run resumes where it stopped (each
finished job's output carries its settings hash; its figures are in its own
result file). Each finished job's record and its attacks' results are also
kept in ``bench/results/comparison_records/``, in the repository: the whole
run takes longer than one machine's session, and a job recorded there with its
present settings is not run again on any machine. Run it alone: two torch
processes on 2 cores slow each other about tenfold.

Protocol (the same for every method):

* Concepts: every toy style (surrogate ``plain``) and object (surrogate: the
  next object), except the tuning concept ``yellow``.
* Learning rate: each trained method's published (or default) rate times
  1, 10 and 100, tried on the tuning concept; the rate with UA >= 0.99 and
  the highest min(IRA, CRA) (else the highest UA) is used everywhere.
* Evaluation: ``spare eval``'s harness, 5 seeds of every object x style prompt
  on both templates (per concept 30 or 25 erased generations per template,
  pooled over 11 concepts about 300), with 95 % Wilson intervals; retain
  fidelity on the same seeds.
* UA along training: every 10 steps on a fixed sample (the concept's 6
  prompts x 2 probe seeds), off the clock, until it first reads >= 0.99.
  "Seconds to UA 0.99" is the whole erase's time (image sets, profile, saliency and training, as each method
  needs them: the ESD variants on noised images draw only the concept's images, the one set they train on)
  at the first probe that reads UA >= 0.99; a method that never
  gets there within its published steps reports its whole time as a lower bound.
* Better/worse: a paired bootstrap of the difference to SPARE, generation by
  generation on the same prompts and seeds; "better" only where its 95 %
  interval excludes zero.

    .venv/bin/python bench/comparison.py --quick       # 2 concepts, SPARE and the four baselines, no sweep
    .venv/bin/python bench/comparison.py               # everything (several hours on 2 cores)
    .venv/bin/python bench/comparison.py --table bench/results/comparison.json
    .venv/bin/python bench/comparison.py --labels spare --concepts dots checker cross   # a trial on some concepts
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from spare_core import (
    BASELINES,
    JOB_HASH_KEY,
    BaseGrids,
    BatchJob,
    ConceptPair,
    ErasureConfig,
    ProcessInfo,
    erase,
    evaluate_edit,
    gather_batch,
    load_edit,
    lora_from_adapter,
    open_model,
    paired_bootstrap,
    parse_jobs,
    proportion,
    run_baseline,
    run_batch,
    write_json,
    write_text,
)
from spare_core.toy.attacks import (
    INVERSION_BUDGET,
    InversionBudget,
    concept_images,
    concept_inversion,
    inversion_restart,
    strongest,
)
from spare_core.toy.erasure_eval import METRICS, concept_readings, concept_triples
from spare_core.toy.evaluate import generate_triples
from spare_core.toy.harness import TEMPLATES, metric_table, plot_tradeoff
from spare_core.toy.pipeline import load_toy_classifiers
from spare_core.toy.robustness import neighbour_attack, rephrasing_attack
from spare_core.toy.world import BENCHMARK_CONCEPTS, EVAL_TEMPLATE, PLAIN_STYLE, benchmark_surrogate

ROOT = Path(__file__).resolve().parents[1]
TUNING = ConceptPair("yellow", PLAIN_STYLE)
#: The sweep's factors on each trained method's published (or default) rate. They reach two decades up
#: because ESD's published 1e-5 does not move the toy model at all in its 1000 steps (UA 0.00 on `red` and
#: `circle`); a rate at which training diverges counts as a failed trial.
LR_FACTORS = (1.0, 10.0, 100.0)
EVAL_SEEDS = tuple(range(5))
SWEEP_SEEDS = (0, 1)
PROBE_SEEDS = (900, 901)
PROBE_EVERY = 10
UA_TARGET = 0.99
#: SPARE's ablations: SPARE with some settings changed.
ABLATIONS: dict[str, dict] = {
    "spare_no_saliency_kv": {"module_scope": "text", "top_k": 0, "module_fraction": 1.0},
    "spare_no_saliency_attention": {"module_scope": "attention", "top_k": 0, "module_fraction": 1.0},
    "spare_per_channel": {"channel_fraction": 0.25},
    "spare_uniform_timesteps": {"timestep_mode": "uniform"},
    "spare_eta0": {"eta": 0.0},
    # Not an ablation: SPARE's robust mode, attacked like the defaults (added last, so no job moves).
    "spare_robust": {"robust": 0.3},
}
BASELINE_ORDER = ("esd_x", "esd_u", "esd_x_anchor", "esd_u_anchor", "esd_x_noised", "esd_u_noised", "leco", "uce")
QUICK_LABELS = ("spare", "esd_x", "esd_u", "leco", "uce")
#: The methods attacked (SPARE's defaults and every baseline), and the base-model inversion success from which
#: a concept's attack counts (an attack that fails on the base model says nothing about an erasure).
ROBUST_LABELS = ("spare", *BASELINE_ORDER, "spare_robust")
INVERSION_CEILING = 0.9
#: The base model's inversion success per concept (the ceiling), beside the attacks' folder.
CEILINGS_FILE = "inversion_ceilings.json"
#: The inversion budget of attack results that carry none: those kept before the attack had restarts.
UNRECORDED_INVERSION_BUDGET = InversionBudget(
    images=12, steps=150, lr=0.05, batch_size=8, seed=0, image_seeds=(700, 701), attack_seeds=tuple(range(800, 806)),
    restarts=1,
)  # fmt: skip
#: The speed reference timed before every job: forward and backward passes of the toy denoiser on a fixed
#: batch. Jobs run on different machines and days (this 2-core machine's speed has varied by more than 3x between
#: sessions), so the table also gives each method's seconds scaled to one reference speed.
REFERENCE_PASSES = 10
REFERENCE_BATCH = 16
#: Every finished job's record (its figures and every generation's outcome) and its attacks' results, kept
#: in the repository: the whole benchmark takes longer than a machine lives, so a job recorded here with
#: its present settings hash is not run again, on any machine.
RECORDS = ROOT / "bench" / "results" / "comparison_records"
#: Every row label, in the table's order (also the order of the jobs in the work folder).
ALL_LABELS = ("spare", *BASELINE_ORDER, *ABLATIONS)


def all_concepts() -> list[ConceptPair]:
    return [ConceptPair(c, benchmark_surrogate(c)) for c in BENCHMARK_CONCEPTS if c != TUNING.concept]


def method_of(label: str) -> tuple[str, dict]:
    """The batch job's method and extra settings of a table row."""
    if label == "spare":
        return "spare", {}
    if label in ABLATIONS:
        return "spare", dict(ABLATIONS[label])
    return label, {}


def default_lr(label: str) -> float:
    method, _ = method_of(label)
    return ErasureConfig([TUNING]).lr if method == "spare" else BASELINES[method].lr


def is_trained(label: str) -> bool:
    method, _ = method_of(label)
    return method == "spare" or BASELINES[method].trained


# --------------------------------------------------------------------------- the worker


def speed_reference(backend) -> float:
    """Seconds of :data:`REFERENCE_PASSES` forward and backward passes of the denoiser (the median of 3)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(REFERENCE_BATCH, *backend.latent_shape, generator=gen).to(backend.device, backend.dtype)
    t = torch.randint(0, backend.num_train_timesteps, (REFERENCE_BATCH,), generator=gen).to(backend.device)
    cond = backend.encode_prompts(["a reference prompt"] * REFERENCE_BATCH)
    times = []
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(REFERENCE_PASSES):
            x_t = x.detach().requires_grad_(True)
            backend.predict_noise(x_t, t, cond).float().square().mean().backward()
        times.append(time.perf_counter() - began)
    return round(statistics.median(times), 4)


class ComparisonWorker:
    """Erase, probe UA along training, evaluate; one per process (keeps the model and the base grids)."""

    def __init__(self, labels: dict[int, str], seeds, templates, attacks_folder: Path | None = None):
        self.labels, self.seeds, self.templates = labels, tuple(seeds), tuple(templates)
        self.attacks_folder = attacks_folder
        self.backend = None

    def _setup(self) -> None:
        if self.backend is None:
            self.backend = open_model("toy")
            self.classifiers = load_toy_classifiers()
            self.base = BaseGrids()
            self.attacks = Attacks(self.attacks_folder, self.backend, self.classifiers) if self.attacks_folder else None

    def probe_ua(self, pair: ConceptPair) -> callable:
        """UA on the concept's grid prompts x the probe seeds, with the adapter applied."""
        triples = concept_triples(pair.concept, PROBE_SEEDS)

        def ua(adapter) -> float:
            with adapter.applied():
                grid = generate_triples(self.backend, *self.classifiers, triples, EVAL_TEMPLATE)
            labels, pred = concept_readings(grid, pair.concept)
            return float((pred != labels).float().mean())

        return ua

    def __call__(self, job: BatchJob, job_hash: str, process: ProcessInfo) -> dict:
        self._setup()
        reference = speed_reference(self.backend)
        label = self.labels[job.index]
        (pair,) = job.config("toy").concepts
        config = job.config("toy")
        measure = self.probe_ua(pair)
        curve: list[tuple[int, float, float]] = []  # (step, seconds on the clock, UA)
        probe_seconds = [0.0]
        began = time.perf_counter()

        def probe(step: int, adapter) -> None:
            if curve and curve[-1][2] >= UA_TARGET:  # only the first crossing is reported
                return
            t0 = time.perf_counter()
            curve.append((step, round(t0 - began - probe_seconds[0], 2), measure(adapter)))
            probe_seconds[0] += time.perf_counter() - t0

        meta = {JOB_HASH_KEY: job_hash}
        if job.method == "spare":
            result = erase(self.backend, config, probe=probe, probe_every=PROBE_EVERY)
            edit, trainable = result.adapter, result.adapter.num_trainable()

            def write_output() -> None:
                lora_from_adapter(result.adapter, self.backend, config, meta).write(job.output)
        else:
            overrides = {"lr": job.settings["lr"]} if "lr" in job.settings else {}
            result = run_baseline(self.backend, job.method, config, probe=probe, probe_every=PROBE_EVERY, **overrides)
            edit, trainable = result.edit, result.num_trainable()

            def write_output() -> None:
                result.save(job.output, self.backend, metadata=meta)

            if not result.method.trained:
                t0 = time.perf_counter()
                curve.append((0, round(t0 - began - probe_seconds[0], 2), measure(edit)))
                probe_seconds[0] += time.perf_counter() - t0
        seconds = time.perf_counter() - began - probe_seconds[0]
        first = next(((step, sec) for step, sec, ua in curve if ua >= UA_TARGET), None)
        to_target = (
            {"seconds": first[1], "step": first[0], "lower_bound": False}
            if first
            else {"seconds": round(seconds, 2), "step": None, "lower_bound": True}
        )
        report = evaluate_edit(
            self.backend, [pair], edit, classifiers=self.classifiers, seeds=self.seeds, templates=self.templates,
            base=self.base,
        ).as_dict(outcomes=True)  # fmt: skip
        # Attacked at once (each job whole on its own), so that an interrupted run never leaves an erasure
        # kept without its attacks once its output file is gone.
        attacked = {"hash": job_hash, "label": label, "concept": [pair.concept], "output": str(job.output)}
        if self.attacks is not None and label in ROBUST_LABELS:
            saved = self.attacks.saved(attacked)
            if saved is None:
                self.attacks.attack(attacked, edit, within_job=True)
            elif not is_current(saved):
                self.attacks.update(attacked, saved, edit)
        # Written last: an output that carries the job's hash is what makes a re-run skip the job, so it
        # must not exist before the job's evaluation and attacks have finished.
        write_output()
        return {
            "label": label,
            "seconds": round(seconds, 2),
            "seconds_to_ua99": to_target,
            "reference_seconds": reference,
            "ua_curve": curve,
            "trainable_parameters": trainable,
            "file_bytes": job.output.stat().st_size,
            "peak_memory_bytes": None,  # CPU: the process's peak is not one erasure's; bench/gpu.py measures GPUs
            "report": report,
        }


# --------------------------------------------------------------------------- running


def build_jobs(
    rows: list[tuple[str, ConceptPair, float | None]], folder: Path, selected: set[str] | None = None
) -> tuple[list[BatchJob], dict]:
    """The batch jobs of ``rows`` whose label is in ``selected`` (default: all).

    A job's index is its row's place in ``rows``, so that runs of different
    subsets of the same table share one work folder and resume each other.
    """
    entries, labels = [], {}
    for i, (label, pair, lr) in enumerate(rows):
        method, settings = method_of(label)
        if lr is not None:
            settings["lr"] = lr
        lr_tag = f"_lr{lr:g}" if lr is not None else ""
        suffix = ".safetensors" if method == "spare" or BASELINES[method].parametrisation == "lora" else (
            ".delta.safetensors")  # fmt: skip
        entries.append({
            "concept": pair.concept, "surrogate": pair.surrogate, "settings": settings, "method": method,
            "output": f"{label}_{pair.concept}{lr_tag}{suffix}",
        })  # fmt: skip
        labels[i] = label
    jobs = parse_jobs(entries, folder, known_methods=("spare", *BASELINES))
    keep = [job for job in jobs if selected is None or labels[job.index] in selected]
    return keep, labels


def run_rows(
    rows,
    folder: Path,
    seeds,
    templates,
    selected: set[str],
    allow_failed: bool = False,
    gather: bool = False,
    kept: Path | None = None,
    worker=None,
    attacks: Path | None = None,
) -> list[dict]:
    """The selected rows as batch jobs; each record gets its row's label. Unless ``allow_failed``, a job
    that did not finish stops the benchmark (a re-run resumes). With ``gather``, nothing runs: the
    finished jobs' records are read back (a partial table).

    ``kept`` is a folder of finished jobs' records that outlives the work folder (the repository's
    :data:`RECORDS`): a job whose record there carries its settings hash is not run again, and every job
    that finishes here is added to it. With ``attacks`` (a folder), each job of :data:`ROBUST_LABELS`
    attacks its erasure as it finishes and writes the results there. ``worker`` replaces the benchmark's
    own (tests).
    """
    jobs, labels = build_jobs(rows, folder, selected)
    archived = kept_records(jobs, kept)
    jobs = [job for job in jobs if job.index not in archived]
    if not gather:
        worker = worker or ComparisonWorker(labels, seeds, templates, attacks)
        fresh = []
        for job in jobs:  # one at a time, so that each finished job is kept at once
            fresh += run_batch([job], worker, folder / "results").jobs
            if fresh[-1]["status"] == "interrupted":  # SIGTERM: stop here, not only this job (a re-run resumes)
                raise SystemExit(f"stopped by SIGTERM during {job.output.name}; the finished jobs are kept")
            keep_records(fresh[-1:], kept)
        failed = [j for j in fresh if j["status"] != "done" or "report" not in j]
        if failed and not allow_failed:
            why = failed[0].get("error") or (
                "its output carries the job's settings hash but the job left no record (an output written "
                "by an earlier version of this benchmark before its evaluation); delete the output and run again"
            )
            raise SystemExit(f"{len(failed)} jobs did not finish, e.g. {failed[0].get('output')}: {why}")
    else:
        fresh = [r for r in gather_batch(jobs, folder / "results").jobs if r["status"] == "done" and "report" in r]
        keep_records(fresh, kept)
    return [{**record, "label": labels[record["index"]]} for record in [*archived.values(), *fresh]]


def _kept_path(kept: Path, record_or_job) -> Path:
    output = record_or_job["output"] if isinstance(record_or_job, dict) else str(record_or_job.output)
    return kept / f"{Path(output).name.removesuffix('.safetensors').removesuffix('.delta')}.json"


def kept_records(jobs: list[BatchJob], kept: Path | None) -> dict[int, dict]:
    """The records in ``kept`` of those ``jobs`` that finished with their present settings hash, by job index."""
    found: dict[int, dict] = {}
    for job in jobs if kept is not None else []:
        path = _kept_path(kept, job)
        record = json.loads(path.read_text()) if path.exists() else None
        if (
            record
            and record.get("status") == "done"
            and "report" in record
            and record.get("hash") == job.settings_hash("toy")
        ):
            found[job.index] = {**record, "index": job.index, "output": str(job.output)}
        elif record:
            print(f"{path.name}: its kept record is of other settings; the job runs again", flush=True)
    return found


def keep_records(records: list[dict], kept: Path | None) -> None:
    """Add the finished ``records`` to ``kept`` (compact JSON: a record holds every generation's outcome)."""
    for record in records if kept is not None else []:
        if record.get("status") == "done" and "report" in record:
            write_text(_kept_path(kept, record), json.dumps(record, separators=(",", ":")) + "\n")


def choose_lr(tried: list[dict]) -> dict | None:
    """The trial with UA >= 0.99 and the highest min(IRA, CRA), else the highest UA; failed trials never win.

    Ties (e.g. no rate erases at all) go to the higher min(IRA, CRA), then to the lower rate, so that the
    choice never depends on the order in which the trials were recorded.
    """
    finished = [t for t in tried if not t.get("failed")]
    if not finished:
        return None

    def key(t: dict) -> tuple:
        erased = t["ua"] >= UA_TARGET
        return (erased, 0.0 if erased else t["ua"], min(t["ira"], t["cra"]), -t["lr"])

    return max(finished, key=key)


def sweep(
    labels: list[str], work: Path, gather: bool = False, kept: Path | None = None
) -> tuple[dict[str, dict], list[dict]]:
    """Each trained method's learning rate, chosen on the tuning concept, and the sweep's job records."""
    rows = [(label, TUNING, default_lr(label) * f) for label in ALL_LABELS if is_trained(label) for f in LR_FACTORS]
    records = run_rows(
        rows, work / "sweep", SWEEP_SEEDS, ("evaluation",), set(labels), True, gather, kept and kept / "sweep"
    )
    chosen: dict[str, dict] = {}
    for label in labels:
        tried = []
        for record in (r for r in records if r["label"] == label):
            if "report" not in record:  # e.g. a rate at which training diverged
                tried.append({"lr": record["settings"]["lr"], "failed": True, "error": record.get("error")})
                continue
            pooled = record["report"]["templates"]["evaluation"]["pooled"]
            ua, ira, cra = (pooled[m]["value"] for m in ("ua", "ira", "cra"))
            tried.append({"lr": record["settings"]["lr"], "ua": ua, "ira": ira, "cra": cra})
        best = choose_lr(tried)
        if best is None:
            continue
        chosen[label] = {"lr": best["lr"], "tried": tried}
        print(f"sweep {label:>28}: lr {best['lr']:g} of {[t['lr'] for t in tried]}", flush=True)
    return chosen, [r for r in records if "report" in r]


def summarise(records: list[dict], labels: list[str]) -> dict:
    methods: dict[str, dict] = {}
    by_label = {label: [r for r in records if r["label"] == label] for label in labels}
    reference = table_reference([r for rows in by_label.values() for r in rows])
    spare = sorted(by_label.get("spare", []), key=lambda r: r["concept"])
    for label, rows in by_label.items():
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["concept"])
        entry: dict = {"concepts": [r["concept"][0] for r in rows], "templates": {}}
        for template in rows[0]["report"]["templates"]:
            counts = [_counts(r, template, "after") for r in rows]
            base = [_counts(r, template, "base") for r in rows]
            entry["templates"][template] = {
                **metric_table(counts),
                "base": metric_table(base),
                "min_ira_cra": _min_of(metric_table(counts)),
                "retain_pixel_change": _mean(
                    [r["report"]["templates"][template]["retain_fidelity"]["pixel_distance"]["value"] for r in rows]
                ),  # fmt: skip
                "retain_feature_change": _mean(
                    [r["report"]["templates"][template]["retain_fidelity"]["feature_distance"]["value"] for r in rows]
                ),  # fmt: skip
                "per_concept": {
                    r["concept"][0]: {
                        m: r["report"]["templates"][template]["per_concept"][r["concept"][0]][m] for m in METRICS
                    }  # fmt: skip
                    for r in rows
                },
            }
            if label != "spare" and len(spare) == len(rows):
                entry["templates"][template]["versus_spare"] = {
                    m: paired_bootstrap(_outcomes(rows, template, m), _outcomes(spare, template, m))
                    for m in ("ua", "ira", "cra")
                }
        secs = [r["seconds"] for r in rows]
        to99 = [r["seconds_to_ua99"] for r in rows]
        entry.update(
            seconds_median=round(statistics.median(secs), 2),
            seconds_range=[min(secs), max(secs)],
            seconds_to_ua99_median=round(statistics.median(t["seconds"] for t in to99), 2),
            reference_seconds_median=_median_or_none([r.get("reference_seconds") for r in rows]),
            seconds_median_at_reference=_at_reference([(r["seconds"], r) for r in rows], reference),
            seconds_to_ua99_median_at_reference=_at_reference(
                [(t["seconds"], r) for t, r in zip(to99, rows, strict=True)], reference
            ),
            ua99_never_reached=sum(t["lower_bound"] for t in to99),
            trainable_parameters=int(statistics.median(r["trainable_parameters"] for r in rows)),
            file_bytes=int(statistics.median(r["file_bytes"] for r in rows)),
            peak_memory_bytes=None,
            lr=rows[0]["settings"].get("lr"),
        )
        methods[label] = entry
    return methods


def table_reference(records: list[dict]) -> float | None:
    """The median speed-reference time over the table's jobs that timed it: the speed every job's seconds
    are scaled to (a method with a job that did not time it is not scaled)."""
    return _median_or_none([r["reference_seconds"] for r in records if r.get("reference_seconds") is not None])


def _median_or_none(values: list) -> float | None:
    """The median, or None where a value is missing (a job recorded before the reference was timed)."""
    return None if not values or None in values else round(statistics.median(values), 4)


def _at_reference(pairs: list[tuple[float, dict]], reference: float | None) -> float | None:
    """The median seconds scaled by ``reference`` over the median of the jobs' own reference times (a
    method's jobs run on one machine in one go; one job's reference time is noisier than their median)."""
    own = _median_or_none([r.get("reference_seconds") for _, r in pairs])
    if reference is None or own is None:
        return None
    return round(statistics.median(sec for sec, _ in pairs) * reference / own, 2)


def _counts(record: dict, template: str, which: str) -> dict:
    concept = record["concept"][0]
    entry = record["report"]["templates"][template]["per_concept"][concept]
    source = entry["base"] if which == "base" else entry
    return {m: (source[m]["k"], source[m]["n"]) for m in METRICS if source.get(m)}


def _outcomes(rows: list[dict], template: str, metric: str) -> list[int]:
    out: list[int] = []
    for r in rows:
        out += r["report"]["templates"][template]["outcomes"][r["concept"][0]][metric]
    return out


def _min_of(table: dict) -> dict:
    return min((table["ira"], table["cra"]), key=lambda e: e["value"])


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


# --------------------------------------------------------------------------- robustness


class Attacks:
    """The attacks on one erasure, with the base model's readings cached (one per process), each job's
    results written to ``folder`` under the job's output name with its settings hash.

    Rephrasing UA, accuracy on the two nearest neighbours (both templates, the
    evaluation seeds) and the concept-inversion attack with its pinned budget
    (its base-model ceiling once per concept, kept in :data:`CEILINGS_FILE`
    beside ``folder``). Results carry the inversion budget they were found
    with; those of another budget are brought up to date (:meth:`update`).
    """

    def __init__(self, folder: Path, backend=None, classifiers=None):
        self.folder, self.backend, self.classifiers = folder, backend, classifiers
        self.cache: dict = {}
        self.images: dict[str, torch.Tensor] = {}
        self.ceilings_file = folder.parent / CEILINGS_FILE

    def saved(self, record: dict) -> dict | None:
        """The job's results, if they are of its present output (the same settings hash)."""
        path = _kept_path(self.folder, record)
        saved = json.loads(path.read_text()) if path.exists() else None
        return saved if saved is not None and saved.get("hash") == record["hash"] else None

    def _model(self) -> tuple:
        if self.backend is None:
            self.backend, self.classifiers = open_model("toy"), load_toy_classifiers()
        return self.backend, self.classifiers

    def _images(self, concept: str) -> torch.Tensor:
        if concept not in self.images:
            self.images[concept] = concept_images(self._model()[0], concept)
        return self.images[concept]

    def ceiling(self, concept: str) -> dict:
        """The attack's success on the base model, with the present budget (kept across runs and machines)."""
        kept = json.loads(self.ceilings_file.read_text()) if self.ceilings_file.exists() else {}
        entry = kept.get(concept)
        if entry is None or entry.get("budget") != INVERSION_BUDGET.fingerprint():
            backend, classifiers = self._model()
            result = concept_inversion(backend, classifiers, concept, None, images=self._images(concept))
            entry = {"success": result, "budget": INVERSION_BUDGET.fingerprint()}
            write_json(self.ceilings_file, {**kept, concept: entry})
        return entry["success"]

    def _inversion(self, concept: str, edit, earlier: list[dict]) -> dict:
        """The inversion entry: ``earlier`` restarts (of the same budget) reused, the others run."""
        backend, classifiers = self._model()
        restarts = list(earlier) + [
            inversion_restart(backend, classifiers, concept, edit, images=self._images(concept), restart=k)
            for k in range(len(earlier), INVERSION_BUDGET.restarts)
        ]
        return {"success": strongest(restarts), "base": self.ceiling(concept), "budget": INVERSION_BUDGET.fingerprint()}

    def attack(self, record: dict, edit=None, within_job: bool = False) -> dict:
        """Attack the job's erasure (``edit``, else its output file) and write its results."""
        backend, classifiers = self._model()
        concept = record["concept"][0]
        if edit is None:
            edit, _ = load_edit(record["output"], backend)
        began = time.perf_counter()
        entry = {
            "hash": record["hash"], "label": record["label"], "concept": concept,
            "rephrasing": rephrasing_attack(backend, classifiers, concept, edit, base_cache=self.cache),
            "neighbours": {
                name: neighbour_attack(backend, classifiers, concept, edit, EVAL_SEEDS, template, base_cache=self.cache)
                for name, template in TEMPLATES.items()
            },
            "inversion": self._inversion(concept, edit, []),
        }  # fmt: skip
        # Attacks run within a job are on its clock (its job_seconds): "hours" counts them once.
        entry.update(seconds=round(time.perf_counter() - began, 1), within_job=within_job)
        return self._write(record, entry)

    def update(self, record: dict, saved: dict, edit=None) -> dict:
        """``saved`` with its inversion attack brought to the present budget (the other attacks are kept);
        ``edit`` is the job's erasure, else its output file is read.

        Restarts found with a budget that differs only in their number are
        reused (the restart ``k`` is the same attack under both); results that
        carry no budget were found with :data:`UNRECORDED_INVERSION_BUDGET`.
        Its seconds are added to the entry's ``update_seconds``.
        """
        old = saved["inversion"]
        old_budget = old.get("budget", UNRECORDED_INVERSION_BUDGET.fingerprint())
        same_attack = {**old_budget, "restarts": None} == {**INVERSION_BUDGET.fingerprint(), "restarts": None}
        success = old["success"]
        earlier = [proportion(k, success["n"]) for k in success.get("restarts", [success["k"]])] if same_attack else []
        began = time.perf_counter()
        if edit is None:
            edit, _ = load_edit(record["output"], self._model()[0])
        entry = {**saved, "inversion": self._inversion(saved["concept"], edit, earlier[: INVERSION_BUDGET.restarts])}
        entry["update_seconds"] = round(saved.get("update_seconds", 0.0) + time.perf_counter() - began, 1)
        return self._write(record, entry)

    def _write(self, record: dict, entry: dict) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(_kept_path(self.folder, record), entry)
        ua, inversion = entry["rephrasing"]["ua"], entry["inversion"]
        print(
            f"robustness {record['label']:>14} {entry['concept']:>9}: rephrasing UA "
            f"{ua['value'] if ua else float('nan'):.3f}, inversion {inversion['success']['value']:.3f} "
            f"(restarts {inversion['success']['restarts']}, base {inversion['base']['value']:.3f})",
            flush=True,
        )
        return entry


def is_current(entry: dict) -> bool:
    """Whether an attack entry's inversion was found with the present budget."""
    return entry["inversion"].get("budget") == INVERSION_BUDGET.fingerprint()


def robustness_pass(records: list[dict], work: Path, gather: bool = False) -> list[dict]:
    """The attacks' results of every finished main job of :data:`ROBUST_LABELS`, one result file per job
    in ``work/robustness``. The jobs attack their own erasure as they finish; this pass attacks those that
    did not (a job whose file carries its output's hash is not attacked again, and one whose inversion
    attack is of another budget has that attack brought up to date; with ``gather``, only the files of
    the present budget are read)."""
    attacks = Attacks(work / "robustness")
    out = []
    for record in records:
        if record["label"] not in ROBUST_LABELS:
            continue
        saved = attacks.saved(record)
        if saved is not None and is_current(saved):
            out.append(saved)
        elif gather:
            continue
        elif not Path(record["output"]).exists():  # kept from another machine, whose files are gone
            print(f"robustness: {record['output']} is gone and was never attacked with the present inversion "
                  "budget; delete the job's kept record to run it again", flush=True)  # fmt: skip
        elif saved is not None:
            out.append(attacks.update(record, saved))
        else:
            out.append(attacks.attack(record))
    return out


def summarise_robustness(entries: list[dict]) -> dict:
    """Per method: rephrasing UA pooled and its worst concept, inversion success pooled over the concepts
    whose base-model ceiling is at least :data:`INVERSION_CEILING`, neighbour accuracy pooled per template."""
    methods: dict[str, dict] = {}
    for label in dict.fromkeys(e["label"] for e in entries):
        rows = sorted((e for e in entries if e["label"] == label), key=lambda e: e["concept"])
        reph = [(e["concept"], e["rephrasing"]["ua"]) for e in rows if e["rephrasing"]["ua"]]
        strong = [e for e in rows if e["inversion"]["base"]["value"] >= INVERSION_CEILING]
        entry = {
            "concepts": [e["concept"] for e in rows],
            "rephrasing_ua": _pool([u for _, u in reph]),
            "rephrasing_ua_worst": min(((c, u["value"]) for c, u in reph), key=lambda t: t[1], default=None),
            "inversion_success": _pool([e["inversion"]["success"] for e in strong]),
            "inversion_base": _pool([e["inversion"]["base"] for e in strong]),
            "inversion_concepts": [e["concept"] for e in strong],
            "neighbours": {
                name: {"after": _pool([e["neighbours"][name]["after"] for e in rows]),
                       "base": _pool([e["neighbours"][name]["base"] for e in rows])}
                for name in TEMPLATES
            },
            "neighbours_held_out_worst": min(
                ((e["concept"], e["neighbours"]["held_out"]["after"]["value"]) for e in rows), key=lambda t: t[1]
            ),
            "per_concept": {e["concept"]: {k: e[k] for k in ("rephrasing", "neighbours", "inversion")} for e in rows},
        }  # fmt: skip
        methods[label] = entry
    return methods


def _pool(entries: list[dict]) -> dict | None:
    """Proportions pooled by adding their counts."""
    if not entries:
        return None
    return proportion(sum(e["k"] for e in entries), sum(e["n"] for e in entries))


def robustness_table(robustness: dict) -> str:
    lines = [
        "| method | UA on rephrasings (worst concept) | inversion success (base) | neighbour accuracy (base) "
        "| held-out neighbour accuracy (worst concept) |",
        "|---|---|---|---|---|",
    ]
    for label, m in robustness.items():
        reph = m["rephrasing_ua"]
        worst = (
            f" ({m['rephrasing_ua_worst'][0]} {m['rephrasing_ua_worst'][1]:.3f})" if m["rephrasing_ua_worst"] else ""
        )
        inv, inv_base = m["inversion_success"], m["inversion_base"]
        inv_text = f"{_ci(inv)} ({inv_base['value']:.3f})" if inv else "– (no concept's ceiling reaches 0.9)"
        nb, held = m["neighbours"]["evaluation"], m["neighbours"]["held_out"]
        held_worst = m["neighbours_held_out_worst"]
        held_text = f"{_ci(held['after'])} ({held_worst[0]} {held_worst[1]:.3f})"
        lines.append(
            f"| {label} | {_ci(reph)}{worst} | {inv_text} | {_ci(nb['after'])} ({nb['base']['value']:.3f}) "
            f"| {held_text} |"
        )
    return "\n".join(lines) + "\n"


def _ci(e: dict | None) -> str:
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" if e else "–"


def markdown_table(results: dict) -> str:
    lines = [
        "| method | UA | IRA (base) | CRA (base) | surrogate | held-out UA / IRA | retained pixel change "
        "| median s (at reference speed) | s to UA 0.99 (at reference speed) | trainable | file |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    widest = max((len(m["concepts"]) for m in results["methods"].values()), default=0)
    every = len(results.get("protocol", {}).get("concepts", [])) or widest
    for label, m in results["methods"].items():
        ev = m["templates"]["evaluation"]
        held = m["templates"].get("held_out")
        # A partial run may hold a row on some concepts only: its pooled figures are not the others' equals.
        shown = label if len(m["concepts"]) >= every else f"{label} ({len(m['concepts'])} of {every} concepts)"

        def cell(e):
            return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"

        held_text = f"{held['ua']['value']:.3f} / {held['ira']['value']:.3f}" if held else "–"
        never = f" ({m['ua99_never_reached']} never: lower bound)" if m["ua99_never_reached"] else ""
        lines.append(
            f"| {shown} | {cell(ev['ua'])} | {cell(ev['ira'])} ({ev['base']['ira']['value']:.3f}) | "
            f"{cell(ev['cra'])} ({ev['base']['cra']['value']:.3f}) | {ev['surrogate_rate']['value']:.3f} | "
            f"{held_text} | {ev['retain_pixel_change']:.4f} | "
            f"{_seconds(m['seconds_median'], m.get('seconds_median_at_reference'))} | "
            f"{_seconds(m['seconds_to_ua99_median'], m.get('seconds_to_ua99_median_at_reference'))}{never} | "
            f"{m['trainable_parameters']:,} | "
            f"{m['file_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(lines) + "\n"


def _seconds(measured: float, at_reference: float | None) -> str:
    return f"{measured:.1f}" + (f" ({at_reference:.1f})" if at_reference is not None else "")


def tradeoff_points(results: dict) -> dict[str, list[tuple[float, float]]]:
    """(min(IRA, CRA), UA) per method and concept, evaluation template."""
    points = {}
    for label, m in results["methods"].items():
        per = m["templates"]["evaluation"]["per_concept"]
        points[label] = [(min(v["ira"]["value"], v["cra"]["value"]), v["ua"]["value"]) for v in per.values()]
    return points


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 concepts, SPARE and the four published baselines, no sweep")
    p.add_argument("--labels", nargs="+", help="methods to run (default: every method and ablation)")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "comparison", help="folder for the jobs' files")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "comparison.json")
    p.add_argument(
        "--records", type=Path, default=RECORDS,
        help="folder of finished jobs' records, kept between machines (a job recorded there with its present "
        "settings does not run again); --quick uses WORK/records",
    )  # fmt: skip
    p.add_argument(
        "--concepts", nargs="+",
        help="run only these concepts (default: all but the tuning one; the sweep still runs on the tuning one)",
    )  # fmt: skip
    p.add_argument("--table", type=Path, help="print the table of a results file and exit")
    p.add_argument("--no-robustness", action="store_true", help="skip the attacks on the finished erasures")
    p.add_argument(
        "--gather", action="store_true",
        help="run nothing: write the results of the jobs finished so far (a partial table)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        print(markdown_table(results))
        return results
    torch.set_num_threads(2)
    labels = args.labels or list(QUICK_LABELS if args.quick else ALL_LABELS)
    unknown = sorted(set(labels) - set(ALL_LABELS))
    if unknown:
        p.error(f"unknown method label(s) {', '.join(unknown)}; use some of {', '.join(ALL_LABELS)}")
    concepts = all_concepts()
    if args.quick:
        concepts = [c for c in concepts if c.concept in ("red", "circle")]
    if args.concepts:
        unknown = sorted(set(args.concepts) - {c.concept for c in concepts})
        if unknown:
            p.error(f"unknown concept(s) {', '.join(unknown)}; use some of {', '.join(c.concept for c in concepts)}")
        concepts = [c for c in concepts if c.concept in args.concepts]
    began = time.perf_counter()
    kept = args.work / "records" if args.quick and args.records == RECORDS else args.records
    chosen, sweep_records = ({}, []) if args.quick else sweep(labels, args.work, args.gather, kept)
    rows = [(label, pair, chosen.get(label, {}).get("lr")) for label in ALL_LABELS for pair in concepts]
    selected = {label for label in labels if args.quick or not is_trained(label) or label in chosen}
    records = run_rows(
        rows, args.work / "main", EVAL_SEEDS, tuple(TEMPLATES), selected, gather=args.gather, kept=kept / "main",
        attacks=None if args.no_robustness else kept / "robustness",
    )  # fmt: skip
    labels = [label for label in labels if any(r["label"] == label for r in records)]
    robust = [] if args.no_robustness else robustness_pass(records, kept, args.gather)
    results = {
        "protocol": {
            "concepts": [c.concept for c in concepts],
            "tuning_concept": TUNING.concept,
            "eval_seeds": list(EVAL_SEEDS),
            "probe_every": PROBE_EVERY,
            "probe_seeds": list(PROBE_SEEDS),
            "lr_factors": list(LR_FACTORS) if chosen else None,
            "quick": args.quick,
            "partial": args.gather,
            "reference_seconds": table_reference(records),
        },  # fmt: skip
        "learning_rates": chosen,
        "methods": summarise(records, labels),
        "robustness": summarise_robustness(robust),
        # Every job's own wall time (erase, probes and evaluation), so that a resumed run reports the whole cost.
        "hours": round(
            (
                sum(r.get("job_seconds", 0.0) for r in records + sweep_records)
                + sum(e["seconds"] for e in robust if not e.get("within_job"))
                + sum(e.get("update_seconds", 0.0) for e in robust)
            )
            / 3600,
            2,
        ),  # fmt: skip
        "this_invocation_hours": round((time.perf_counter() - began) / 3600, 2),
    }
    write_json(args.out, results)
    write_text(args.out.with_suffix(".md"), markdown_table(results) + "\n" + robustness_table(results["robustness"]))
    plot_tradeoff(tradeoff_points(results), args.out.with_suffix(".png"))
    print(markdown_table(results))
    print(robustness_table(results["robustness"]))
    print(f"wrote {args.out} ({results['hours']} h)")
    return results


if __name__ == "__main__":
    main()
