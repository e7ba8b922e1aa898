"""The seed-stability benchmark's arithmetic: variants, stage seeds and the spread over seeds."""

from __future__ import annotations

import pytest
from bench_module import load_bench

from spare_core import ConceptPair, ErasureConfig


def _run(bench, concept: str, seed: int, ira: tuple[int, int]) -> dict:
    figure = {"k": ira[0], "n": ira[1], "value": round(ira[0] / ira[1], 4)}
    scores = {metric: figure for metric in bench.METRICS}
    return {
        "concept": concept,
        "variant": "default",
        "seeds": dict.fromkeys(bench.STAGES, seed),
        "scores": {"evaluation": scores | {"base": scores}},
    }


def test_variants_parse_to_settings_a_config_accepts():
    bench = load_bench("seed_stability")
    assert bench.parse_variant("default") == {}
    overrides = bench.parse_variant("retain_weight=3,saliency_batches=16,timestep_mode=uniform")
    assert overrides == {"retain_weight": 3, "saliency_batches": 16, "timestep_mode": "uniform"}
    config = ErasureConfig([ConceptPair("cross", "ring")]).with_settings(**overrides)
    config.validate()
    assert config.retain_weight == 3.0
    with pytest.raises(SystemExit, match="name=value"):
        bench.parse_variant("retain_weight")


def test_swap_runs_every_mix_of_two_seeds_over_the_three_stages():
    bench = load_bench("seed_stability")
    assert bench.stage_seeds([0, 4], None) == [dict.fromkeys(bench.STAGES, 0), dict.fromkeys(bench.STAGES, 4)]
    mixes = bench.stage_seeds([], [0, 1])
    assert len(mixes) == 8 and len({tuple(m.values()) for m in mixes}) == 8
    assert {"data": 1, "saliency": 0, "train": 1} in mixes


def test_spread_is_over_seeds_and_pooled_concepts_pool_each_seed_first():
    bench = load_bench("seed_stability")
    runs = [
        _run(bench, "cross", 0, (29, 30)),
        _run(bench, "cross", 1, (24, 30)),
        _run(bench, "ring", 0, (15, 30)),
        _run(bench, "ring", 1, (27, 30)),
    ]
    summary = bench.summarise(runs)["default"]
    assert list(summary) == ["cross", "ring", "pooled"]
    assert list(bench.summarise(runs[:2])["default"]) == ["cross"]  # one concept: nothing to pool
    cross = summary["cross"]["evaluation"]["ira"]
    assert (cross["runs"], cross["min"], cross["max"]) == (2, 0.8, 0.9667)
    assert cross["mean"] == pytest.approx((29 / 30 + 24 / 30) / 2, abs=1e-4)
    assert (cross["pooled"]["k"], cross["pooled"]["n"]) == (53, 60)
    assert cross["pooled"]["ci_low"] < 53 / 60 < cross["pooled"]["ci_high"]
    pooled = summary["pooled"]["evaluation"]["ira"]
    # Seed 0 pools 44 of 60, seed 1 51 of 60: the spread is between those, not between single concepts.
    assert (pooled["min"], pooled["max"]) == (round(44 / 60, 4), 0.85)
    assert (pooled["pooled"]["k"], pooled["pooled"]["n"]) == (95, 120)


def test_a_run_made_with_other_settings_is_run_again_and_replaced(tmp_path, monkeypatch):
    """A ``default`` run kept from before a default changed is not taken for a run of the present defaults."""
    import json

    bench = load_bench("seed_stability")
    erased = []

    class FakeRunner:
        def __init__(self, cache_dir):
            pass

        def erase_and_score(self, pair, overrides, seeds):
            erased.append((pair.concept, seeds["train"]))
            figure = {"k": 29, "n": 30, "value": 0.9667}
            scores = {m: figure for m in bench.METRICS} | {"base": {m: figure for m in bench.METRICS}}
            return {"seconds": 1.0, "modules": [], "scores": {"evaluation": scores, "held_out": scores}}

    monkeypatch.setattr(bench, "Runner", FakeRunner)
    out = tmp_path / "seeds.json"
    args = ["--concepts", "cross", "--seeds", "0", "1", "--out", str(out)]
    bench.main(args)
    assert erased == [("cross", 0), ("cross", 1)]
    bench.main(args)
    assert len(erased) == 2  # the same settings: nothing runs again

    saved = json.loads(out.read_text())
    saved["runs"][0]["settings_hash"] = "the defaults of an earlier version"
    out.write_text(json.dumps(saved))
    results = bench.main(args)
    assert erased[2:] == [("cross", 0)]
    assert len(results["runs"]) == 2
    assert {r["settings_hash"] for r in results["runs"]} == {bench.settings_hash(ConceptPair("cross", "ring"), {})}
