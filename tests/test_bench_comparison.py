"""The comparison benchmark's arithmetic: pooled counts, the paired comparison with SPARE, the table and the plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_module import load_bench

from spare_core import ConceptPair
from spare_core.batch import output_hash
from spare_core.toy.harness import EvalReport, TemplateResult


def _record(label: str, concept: str, ua_hits: list[int], ira_hits: list[int], seconds: float, reached: bool):
    """A job record as the benchmark's worker returns it, with chosen outcomes."""
    outcomes = {
        "ua": torch.tensor(ua_hits, dtype=torch.bool),
        "ira": torch.tensor(ira_hits, dtype=torch.bool),
        "cra": torch.ones(10, dtype=torch.bool),
        "surrogate_rate": torch.tensor(ua_hits, dtype=torch.bool),
        "other_attribute": torch.ones(len(ua_hits), dtype=torch.bool),
    }
    base = {**outcomes, "ua": torch.zeros(len(ua_hits), dtype=torch.bool), "ira": torch.ones(len(ira_hits)).bool()}
    fidelity = {"pixel_distance": {"value": 0.01}, "feature_distance": {"value": 0.02}}
    matrix = {"circle": {"red": (1, 1)}}
    report = EvalReport([ConceptPair(concept, "plain")], [0])
    report.templates["evaluation"] = TemplateResult([outcomes], [base], fidelity, matrix, matrix)
    return {
        "label": label,
        "concept": [concept],
        "settings": {},
        "seconds": seconds,
        "seconds_to_ua99": {"seconds": seconds / 2 if reached else seconds, "lower_bound": not reached},
        "trainable_parameters": 100,
        "file_bytes": 2048,
        "report": report.as_dict(outcomes=True),
    }


def test_methods_are_pooled_over_concepts_and_compared_with_spare_generation_by_generation():
    bench = load_bench("comparison")
    records = [
        _record("spare", "red", [1] * 10, [1] * 9 + [0], 20.0, True),
        _record("spare", "blue", [1] * 10, [1] * 10, 24.0, True),
        _record("esd_x", "red", [1] * 5 + [0] * 5, [1] * 5 + [0] * 5, 300.0, False),
        _record("esd_x", "blue", [1] * 10, [1] * 8 + [0] * 2, 320.0, True),
    ]
    results = {"methods": bench.summarise(records, ["spare", "esd_x"])}
    spare, esd = results["methods"]["spare"], results["methods"]["esd_x"]
    ev = spare["templates"]["evaluation"]
    assert (ev["ua"]["k"], ev["ua"]["n"]) == (20, 20)
    assert (ev["ira"]["k"], ev["ira"]["n"]) == (19, 20)
    assert ev["base"]["ua"]["value"] == 0.0
    assert ev["min_ira_cra"] == ev["ira"]  # CRA is 1.0 everywhere
    assert spare["seconds_median"] == 22.0 and esd["ua99_never_reached"] == 1
    assert esd["seconds_to_ua99_median"] == (300.0 + 160.0) / 2
    versus = esd["templates"]["evaluation"]["versus_spare"]
    assert versus["ua"]["difference"] == -0.25  # esd_x 15/20 against SPARE's 20/20, on the same units
    assert versus["ua"]["n"] == 20 and versus["ua"]["significant"]
    assert "versus_spare" not in ev

    table = bench.markdown_table(results)
    assert table.count("\n") == 4  # header, rule, two methods
    assert "| esd_x | 0.750" in table and "(1 never: lower bound)" in table
    points = bench.tradeoff_points(results)
    assert sorted(points["esd_x"]) == [(0.5, 0.5), (0.8, 1.0)]

    # Seconds scaled to the table's reference speed: a method's median x (the table's median reference time /
    # the median of its own jobs' reference times).
    timed = [{**r, "reference_seconds": ref} for r, ref in zip(records, (1.0, 1.0, 1.5, 2.5), strict=True)]
    scaled = bench.summarise(timed, ["spare", "esd_x"])
    assert bench.table_reference(timed) == 1.25
    assert scaled["spare"]["seconds_median_at_reference"] == 22.0 * 1.25
    assert scaled["esd_x"]["seconds_median_at_reference"] == 310.0 * 1.25 / 2.0  # not job by job (205.0)
    assert scaled["esd_x"]["seconds_to_ua99_median_at_reference"] == (300.0 + 160.0) / 2 * 1.25 / 2.0
    assert "| 22.0 (27.5) |" in bench.markdown_table({"methods": scaled})
    assert results["methods"]["spare"]["seconds_median_at_reference"] is None  # no reference timed: no scaling
    older = bench.summarise([{**timed[0], "reference_seconds": None}, *timed[1:]], ["spare", "esd_x"])
    assert older["spare"]["seconds_median_at_reference"] is None  # one job without it: the method is not scaled
    assert older["esd_x"]["seconds_median_at_reference"] == 310.0 * 1.5 / 2.0  # the others' median is 1.5

    # A partial run's row on fewer concepts than the table's says so.
    partial = {"protocol": {"concepts": ["red", "blue"]}, "methods": bench.summarise(records[:3], ["spare", "esd_x"])}
    table = bench.markdown_table(partial)
    assert "| spare | " in table and "| esd_x (1 of 2 concepts) | 0.500" in table


def test_every_method_of_the_benchmark_runs_as_a_batch_job(tmp_path):
    bench = load_bench("comparison")
    rows = [(label, ConceptPair("red", "plain"), 1e-3) for label in ["spare", *bench.BASELINE_ORDER, *bench.ABLATIONS]]
    jobs, labels = bench.build_jobs(rows, tmp_path)
    assert len(jobs) == len(rows) and set(labels.values()) == {r[0] for r in rows}
    by_label = {labels[j.index]: j for j in jobs}
    assert by_label["esd_x"].method == "esd_x" and by_label["esd_x"].output.name.endswith(".delta.safetensors")
    assert by_label["leco"].output.name.endswith(".safetensors") and ".delta" not in by_label["leco"].output.name
    assert by_label["spare_eta0"].method == "spare" and by_label["spare_eta0"].settings["eta"] == 0.0
    assert all(j.settings["lr"] == 1e-3 for j in jobs)
    assert len({j.settings_hash("toy") for j in jobs}) == len(jobs)

    # A subset keeps each job's place in the whole table, so that runs of parts share one work folder.
    part, _ = bench.build_jobs(rows, tmp_path, {"uce", "leco"})
    assert {labels[j.index] for j in part} == {"uce", "leco"}
    assert {j.job_id for j in part} <= {j.job_id for j in jobs}


def test_the_sweep_prefers_erasure_then_retention_and_never_a_failed_rate():
    bench = load_bench("comparison")
    tried = [
        {"lr": 1e-5, "ua": 0.2, "ira": 1.0, "cra": 1.0},
        {"lr": 1e-4, "ua": 1.0, "ira": 0.90, "cra": 1.0},
        {"lr": 1e-3, "ua": 0.995, "ira": 0.97, "cra": 0.99},
        {"lr": 1e-2, "failed": True},
    ]
    assert bench.choose_lr(tried)["lr"] == 1e-3  # erases, and keeps the most
    assert bench.choose_lr([tried[0], tried[3]])["lr"] == 1e-5  # nothing erases: the highest UA
    assert bench.choose_lr([tried[3]]) is None
    none_erase = [  # as LECO on the tuning concept: UA 0 at every rate
        {"lr": 1e-3, "ua": 0.0, "ira": 1.0, "cra": 0.8},
        {"lr": 1e-2, "ua": 0.0, "ira": 1.0, "cra": 0.58},
        {"lr": 1e-4, "ua": 0.0, "ira": 1.0, "cra": 1.0},
    ]
    for order in (none_erase, none_erase[::-1]):  # whatever order the records come in
        assert bench.choose_lr(order)["lr"] == 1e-4  # the tie on UA goes to retention
    level = [{"lr": lr, "ua": 0.0, "ira": 1.0, "cra": 1.0} for lr in (1e-3, 1e-4)]
    assert bench.choose_lr(level)["lr"] == bench.choose_lr(level[::-1])["lr"] == 1e-4


def _attacked(label, concept, reph, inv, inv_base, neighbours, budget="present"):
    """A robustness result file's content with chosen counts ``(k, n)``; its inversion was found with
    ``budget`` (a fingerprint; "present": today's; None: none recorded, as before restarts)."""
    from spare_core import proportion
    from spare_core.toy.attacks import INVERSION_BUDGET

    nb = {"after": proportion(*neighbours), "base": proportion(neighbours[1], neighbours[1])}
    inversion = {"success": proportion(*inv), "base": proportion(*inv_base)}
    if budget is not None:
        inversion["budget"] = INVERSION_BUDGET.fingerprint() if budget == "present" else budget
    return {
        "hash": f"h-{label}-{concept}", "label": label, "concept": concept, "seconds": 1.0,
        "rephrasing": {"ua": proportion(*reph)},
        "neighbours": {"evaluation": nb, "held_out": nb},
        "inversion": inversion,
    }  # fmt: skip


def test_robustness_pools_counts_and_counts_inversion_only_where_the_base_model_falls_for_it():
    bench = load_bench("comparison")
    entries = [
        _attacked("spare", "red", (10, 20), (2, 20), (19, 20), (50, 60)),
        _attacked("spare", "circle", (18, 20), (9, 20), (10, 20), (60, 60)),  # ceiling 0.5: not counted
    ]
    summary = bench.summarise_robustness(entries)["spare"]
    assert (summary["rephrasing_ua"]["k"], summary["rephrasing_ua"]["n"]) == (28, 40)
    assert summary["rephrasing_ua_worst"] == ("red", 0.5)
    assert (summary["inversion_success"]["k"], summary["inversion_success"]["n"]) == (2, 20)
    assert summary["inversion_concepts"] == ["red"]
    assert (
        summary["neighbours"]["evaluation"]["after"]["k"] == 110
        and summary["neighbours"]["evaluation"]["base"]["n"] == 120
    )
    table = bench.robustness_table({"spare": summary})
    assert "| spare | 0.700 [" in table and "(red 0.500)" in table and "(0.950)" in table
    assert summary["neighbours_held_out_worst"] == ("red", pytest.approx(50 / 60, abs=1e-4))
    assert table.rstrip().endswith("(red 0.833) |")  # the held-out column names its worst concept


def test_the_robustness_pass_reuses_a_jobs_file_only_while_its_output_is_unchanged(tmp_path):
    import json

    bench = load_bench("comparison")
    folder = tmp_path / "robustness"
    folder.mkdir()
    kept = _attacked("spare", "red", (1, 2), (0, 2), (2, 2), (2, 2))
    (folder / "spare_red.json").write_text(json.dumps(kept))
    (folder / "uce_red.json").write_text(json.dumps({**kept, "hash": "an older output"}))
    records = [
        {"label": "spare", "output": str(tmp_path / "spare_red.safetensors"), "hash": kept["hash"], "concept": ["red"]},
        {"label": "uce", "output": str(tmp_path / "uce_red.delta.safetensors"), "hash": "new", "concept": ["red"]},
        {
            "label": "spare_eta0",
            "output": str(tmp_path / "spare_eta0_red.safetensors"),
            "hash": "x",
            "concept": ["red"],
        },
    ]
    assert bench.robustness_pass(records, tmp_path, gather=True) == [kept]  # uce is stale, ablations are not attacked


def test_an_inversion_of_another_budget_is_brought_up_to_date_reusing_the_restarts_it_shares(tmp_path, monkeypatch):
    import dataclasses
    import json

    from spare_core import proportion
    from spare_core.toy.attacks import INVERSION_BUDGET

    bench = load_bench("comparison")
    folder = tmp_path / "robustness"
    folder.mkdir()
    legacy = _attacked("spare", "red", (1, 2), (5, 36), (36, 36), (2, 2), budget=None)  # one restart, seed 0
    other = _attacked("uce", "red", (2, 2), (7, 36), (36, 36), (2, 2), budget=dataclasses.replace(
        INVERSION_BUDGET, steps=10).fingerprint())  # fmt: skip
    records = []
    for entry in (legacy, other):
        (folder / f"{entry['label']}_red.json").write_text(json.dumps(entry))
        output = tmp_path / f"{entry['label']}_red.safetensors"
        output.write_bytes(b"")
        records.append({"label": entry["label"], "output": str(output), "hash": entry["hash"], "concept": ["red"]})
    assert bench.robustness_pass(records, tmp_path, gather=True) == []  # neither is of the present budget

    calls = []

    def restart(backend, classifiers, concept, edit, budget=INVERSION_BUDGET, images=None, restart=0):
        calls.append((Path(edit).name, restart))
        return proportion(10 + restart, 36)

    monkeypatch.setattr(bench, "inversion_restart", restart)
    monkeypatch.setattr(bench, "load_edit", lambda path, backend: (path, 0))
    monkeypatch.setattr(bench, "open_model", lambda name: "toy backend")
    monkeypatch.setattr(bench, "load_toy_classifiers", lambda: None)
    monkeypatch.setattr(bench, "concept_images", lambda backend, concept: "images")
    monkeypatch.setattr(bench, "concept_inversion", lambda *a, **k: {**proportion(35, 36), "restarts": [35, 34, 35]})
    spare, uce = bench.robustness_pass(records, tmp_path)
    # The legacy result is restart 0 of the same attack: only restarts 1 and 2 run; the other budget's all run.
    assert calls == [("spare_red.safetensors", 1), ("spare_red.safetensors", 2)] + [
        ("uce_red.safetensors", k) for k in range(3)
    ]
    assert spare["inversion"]["success"]["restarts"] == [5, 11, 12] and spare["inversion"]["success"]["k"] == 12
    assert uce["inversion"]["success"]["restarts"] == [10, 11, 12]
    assert spare["inversion"]["base"]["k"] == 35 and "update_seconds" in spare
    assert spare["rephrasing"] == legacy["rephrasing"] and spare["neighbours"] == legacy["neighbours"]
    ceilings = json.loads((tmp_path / bench.CEILINGS_FILE).read_text())
    assert ceilings["red"]["budget"] == INVERSION_BUDGET.fingerprint()
    calls.clear()
    assert bench.robustness_pass(records, tmp_path, gather=True) == [spare, uce]  # written, and now current
    assert bench.robustness_pass(records, tmp_path) == [spare, uce] and calls == []


def test_a_job_kept_with_its_settings_hash_is_not_run_again_and_finished_jobs_are_kept(tmp_path):
    import json

    bench = load_bench("comparison")
    rows = [(label, ConceptPair("red", "plain"), lr) for label, lr in (("uce", None), ("esd_x", 1e-3), ("esd_x", 1e-4))]
    jobs, _ = bench.build_jobs(rows, tmp_path / "work")
    kept = tmp_path / "kept"
    kept.mkdir()
    uce, esd, _ = jobs
    recorded = {"index": 7, "status": "done", "hash": uce.settings_hash("toy"), "output": "elsewhere/uce_red.safetensors",
                "report": {"from": "another machine"}}  # fmt: skip
    (kept / "uce_red.json").write_text(json.dumps(recorded))
    (kept / "esd_x_red_lr0.001.json").write_text(json.dumps({**recorded, "hash": "settings of an earlier run"}))
    ran = []

    def worker(job, job_hash, process):
        from safetensors.torch import save_file

        ran.append(job.method)
        save_file({"w": torch.zeros(1)}, str(job.output), metadata={bench.JOB_HASH_KEY: job_hash})
        return {"report": {"from": "here"}}

    records = bench.run_rows(rows, tmp_path / "work", (0,), ("evaluation",), {"uce", "esd_x"}, kept=kept, worker=worker)
    assert ran == ["esd_x", "esd_x"]  # uce's kept record carries its hash; esd_x's is of other settings
    by_label = {r["label"]: r for r in records}
    assert by_label["uce"]["report"] == {"from": "another machine"}
    assert by_label["uce"]["index"] == uce.index and by_label["uce"]["output"] == str(uce.output)
    assert json.loads((kept / "esd_x_red_lr0.001.json").read_text())["report"] == {"from": "here"}
    assert json.loads((kept / "esd_x_red_lr0.001.json").read_text())["hash"] == esd.settings_hash("toy")
    assert (kept / "esd_x_red_lr0.0001.json").exists()  # one record per job, whatever its rate

    # Gathering on a fresh machine (no work folder) reads every kept job back.
    gathered = bench.run_rows(rows, tmp_path / "fresh", (0,), ("evaluation",), {"uce", "esd_x"}, gather=True, kept=kept)
    assert sorted(r["label"] for r in gathered) == ["esd_x", "esd_x", "uce"]


def test_a_sigterm_stops_the_whole_run_and_never_counts_as_a_failed_rate(tmp_path):
    import os
    import signal
    import time

    bench = load_bench("comparison")
    rows = [("esd_x", ConceptPair("yellow", "plain"), lr) for lr in (1e-5, 1e-4, 1e-3)]
    ran = []

    def worker(job, job_hash, process):  # the first trial is stopped part-way, as by a launcher
        ran.append(job.settings["lr"])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts the sleep
        raise AssertionError("SIGTERM did not stop the job")

    with pytest.raises(SystemExit, match="SIGTERM"):
        bench.run_rows(rows, tmp_path / "work", (0,), ("evaluation",), {"esd_x"}, True, worker=worker)
    assert ran == [1e-5]  # the later trials did not run, so no rate is chosen from the others


def test_a_job_stopped_before_its_evaluation_finished_leaves_no_output_and_runs_again(tmp_path, monkeypatch):
    """The output (whose hash makes a re-run skip the job) is written only after the evaluation."""
    bench = load_bench("comparison")
    rows = [("uce", ConceptPair("red", "plain"), None)]
    (job,), _ = bench.build_jobs(rows, tmp_path / "work")
    evaluate = bench.evaluate_edit

    def stopped(*args, **kwargs):
        raise RuntimeError("evaluation stopped part-way")

    monkeypatch.setattr(bench, "evaluate_edit", stopped)
    with pytest.raises(SystemExit, match="did not finish"):
        bench.run_rows(rows, tmp_path / "work", (0,), ("evaluation",), {"uce"})
    assert not job.output.exists()

    monkeypatch.setattr(bench, "evaluate_edit", evaluate)
    (record,) = bench.run_rows(rows, tmp_path / "work", (0,), ("evaluation",), {"uce"})
    assert record["status"] == "done" and "evaluation" in record["report"]["templates"]
    assert output_hash(job.output) == job.settings_hash("toy")
