"""The erase-speed benchmark's arithmetic: the order variants run in, medians, stages and paired ratios."""

from __future__ import annotations

import statistics

import pytest
from bench_module import load_bench

from spare_core import SettingsError


def _run(variant: str, concept: str, seconds: float, round_index: int = 0) -> dict:
    stages = {"data": seconds / 4, "profile": 1.0, "saliency": 0.5, "train": seconds / 2}
    return {"variant": variant, "concept": concept, "round": round_index, "seconds": seconds, "stages": stages}


def test_each_variant_runs_first_as_often_as_the_others():
    bench = load_bench("erase_speed")
    variants = ["default", "a=1", "b=2"]
    orders = [bench.run_order(variants, i) for i in range(6)]
    assert all(sorted(order) == sorted(variants) for order in orders)
    firsts = [order[0] for order in orders]
    assert {v: firsts.count(v) for v in variants} == dict.fromkeys(variants, 2)


def test_ratios_pair_the_same_concept_and_round_and_the_target_is_judged_on_the_median():
    bench = load_bench("erase_speed")
    concepts = ["red", "cross", "dots", "ring", "star", "blue"]
    default_seconds = [28.0, 35.0, 31.0, 26.0, 40.0, 29.0]
    runs = [_run("default", c, s) for c, s in zip(concepts, default_seconds, strict=True)]
    # The variant takes 90 % of the default's time on every concept, though the concepts' times differ widely.
    runs += [_run("fast=1", c, 0.9 * s) for c, s in zip(concepts, default_seconds, strict=True)]
    runs.append(_run("fast=1", "red", 99.0, round_index=1))  # no default run in round 1: not paired

    summary = bench.summarise(runs, ["default", "fast=1"])

    default = summary["default"]
    assert default["seconds_median"] == statistics.median(default_seconds) == 30.0
    assert default["meets_target"] is True
    low, high = default["seconds_interval"]
    assert min(default_seconds) <= low <= 30.0 <= high <= max(default_seconds)
    assert default["stage_median"]["train"] == 15.0 and default["stage_median"]["profile"] == 1.0
    assert "ratio_to_default" not in default

    fast = summary["fast=1"]
    assert fast["erasures"] == 7
    assert fast["ratio_to_default"]["pairs"] == 6
    assert fast["ratio_to_default"]["median"] == 0.9
    assert fast["ratio_to_default"]["interval"] == [0.9, 0.9]

    slow = bench.summarise([_run("default", "red", 31.0)], ["default"])["default"]
    assert slow["meets_target"] is False


def test_the_table_shows_each_variants_median_stages_and_ratio():
    bench = load_bench("erase_speed")
    runs = [_run("default", "red", 30.0), _run("fast=1", "red", 24.0)]
    text = bench.table({"summary": bench.summarise(runs, ["default", "fast=1"])})
    rows = text.splitlines()
    assert len(rows) == 4
    assert rows[2].startswith("| default | 1 | 30.0 [30.0, 30.0] | 7.5 | 1.0 | 0.5 | 15.0 | - |")
    assert rows[3].endswith("| 0.800 [0.800, 0.800] |")


class _Result:
    seconds = {"data": 1.0, "profile": 0.1, "saliency": 0.1, "train": 2.0}


def test_main_records_each_variants_full_settings_and_checks_every_variant_before_erasing(tmp_path, monkeypatch):
    bench = load_bench("erase_speed")
    erased: list[tuple[str, str]] = []

    def fake_erase(backend, config):
        erased.append((config.concepts[0].concept, config.retain_timesteps))
        return _Result()

    clock = iter(range(0, 1000, 30))  # every erasure takes 30 s on this clock
    monkeypatch.setattr(bench, "open_model", lambda: object())
    monkeypatch.setattr(bench, "erase", fake_erase)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    out = tmp_path / "speed.json"
    results = bench.main(["--concepts", "red", "cross", "--variants", "default", "retain_timesteps=uniform",
                          "--out", str(out)])  # fmt: skip

    # Each concept erased once per variant, the second concept with the variants' order rotated.
    default_mode = bench.ErasureConfig(concepts=[bench.ConceptPair("red", "blue")]).retain_timesteps
    assert erased == [("red", default_mode), ("red", "uniform"), ("cross", "uniform"), ("cross", default_mode)]
    # "default" is kept with what it meant on the day: every setting, not only the overrides.
    assert results["settings"]["default"]["retain_timesteps"] == default_mode
    assert results["settings"]["retain_timesteps=uniform"]["retain_timesteps"] == "uniform"
    assert results["summary"]["retain_timesteps=uniform"]["ratio_to_default"]["pairs"] == 2
    assert out.exists()

    erased.clear()
    with pytest.raises(SettingsError, match="top_k"):
        bench.main(["--concepts", "red", "--variants", "default", "top_k=-3", "--out", str(tmp_path / "x.json")])
    assert erased == []
