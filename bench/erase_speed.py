"""Benchmark: how long a whole erasure takes, settings variants timed side by side, stage by stage.

The speed target of SPARE's defaults is a whole erase (drawing the image sets,
the timestep profile, saliency and training) of at most 30 s median on a
2-core CPU. The comparison benchmark's seconds come from jobs run on different
days, scaled by a speed reference; this one times erasures only, nothing
else, in one process, so variants can be compared on the same machine state:
each concept is erased once per variant per round, the variants' order
rotated from one concept to the next, every erasure from scratch (no image
cache). It reports, per variant, the median seconds with a distribution-free
95 % interval, the median of each stage, and the median of the per-concept
ratio to the first variant, with its interval. Nothing is evaluated: a
variant's quality is the comparison's business.

Results are written after every erasure to ``bench/results/erase_speed.json``
(a re-run with the same arguments starts afresh). Run it alone: two torch
processes on 2 cores slow each other about tenfold.

    .venv/bin/python bench/erase_speed.py                                     # the defaults, 11 concepts
    .venv/bin/python bench/erase_speed.py --variants default generation_batch_size=48 --concepts red cross
    .venv/bin/python bench/erase_speed.py --table bench/results/erase_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from seed_stability import parse_variant, surrogate_of

from spare_core import ConceptPair, ErasureConfig, erase, open_model, write_json
from spare_core.stats import median_interval
from spare_core.toy.world import BENCHMARK_CONCEPTS

ROOT = Path(__file__).resolve().parents[1]
#: The comparison's concepts: every toy concept but its tuning one.
CONCEPTS = tuple(c for c in BENCHMARK_CONCEPTS if c != "yellow")
TARGET_SECONDS = 30.0
STAGES = ("data", "profile", "saliency", "train")


def run_order(variants: list[str], concept_index: int) -> list[str]:
    """The variants in the order one concept erases them: rotated by the concept's place, so that no variant
    always runs first (a machine that slows down or speeds up during the run then favours none)."""
    shift = concept_index % len(variants)
    return variants[shift:] + variants[:shift]


def summarise(runs: list[dict], variants: list[str]) -> dict:
    """Per variant: median seconds with its interval, each stage's median, and the per-concept ratio to the
    first variant (pairs of the same concept and round), with the interval of its median."""
    summary: dict = {}
    first = variants[0]
    timed = {(r["variant"], r["concept"], r["round"]): r["seconds"] for r in runs}
    for variant in variants:
        own = [r for r in runs if r["variant"] == variant]
        if not own:
            continue
        seconds = [r["seconds"] for r in own]
        low, high = median_interval(seconds)
        entry = {
            "erasures": len(own),
            "seconds_median": round(statistics.median(seconds), 2),
            "seconds_interval": [low, high],
            "stage_median": {
                stage: round(statistics.median(r["stages"].get(stage, 0.0) for r in own), 2) for stage in STAGES
            },
            "target_seconds": TARGET_SECONDS,
            "meets_target": statistics.median(seconds) <= TARGET_SECONDS,
        }
        if variant != first:
            ratios = [
                r["seconds"] / timed[(first, r["concept"], r["round"])]
                for r in own
                if (first, r["concept"], r["round"]) in timed
            ]
            if ratios:
                low, high = median_interval(ratios)
                entry[f"ratio_to_{first}"] = {
                    "pairs": len(ratios),
                    "median": round(statistics.median(ratios), 3),
                    "interval": [round(low, 3), round(high, 3)],
                }
        summary[variant] = entry
    return summary


def table(results: dict) -> str:
    variants = list(results["summary"])
    first = variants[0] if variants else ""
    lines = [
        "| variant | erasures | median s [95 % interval] | data | profile | saliency | train "
        f"| ratio to {first} [95 % interval] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, e in results["summary"].items():
        stages = " | ".join(f"{e['stage_median'][s]:.1f}" for s in STAGES)
        ratio = e.get(f"ratio_to_{first}")
        ratio_text = f"{ratio['median']:.3f} [{ratio['interval'][0]:.3f}, {ratio['interval'][1]:.3f}]" if ratio else "-"
        low, high = e["seconds_interval"]
        median = f"{e['seconds_median']:.1f} [{low:.1f}, {high:.1f}]"
        lines.append(f"| {variant} | {e['erasures']} | {median} | {stages} | {ratio_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", nargs="+", default=list(CONCEPTS), help="concepts to erase (default: 11)")
    p.add_argument(
        "--variants", nargs="+", default=["default"],
        help="settings variants: default or name=value[,name=value]; ratios are to the first",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="erasures of each concept and variant")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "erase_speed.json")
    p.add_argument("--table", type=Path, help="print the table of a results file and exit")
    args = p.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        print(table(results))
        return results
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    overrides = {variant: parse_variant(variant) for variant in args.variants}
    pairs = {concept: ConceptPair(concept, surrogate_of(concept)) for concept in args.concepts}
    configs = {
        (variant, concept): ErasureConfig(concepts=[pairs[concept]]).with_settings(**settings)
        for variant, settings in overrides.items()
        for concept in args.concepts
    }
    for config in configs.values():  # a misspelt setting or a value out of range fails before any erasure
        config.validate()
    torch.set_num_threads(2)
    backend = open_model()
    results: dict = {
        "torch_threads": torch.get_num_threads(),
        "variants": overrides,
        # Every variant's settings in full, so that "default" still says what it was after the defaults change.
        "settings": {variant: json.loads(configs[(variant, args.concepts[0])].to_json()) for variant in args.variants},
        "runs": [],
        "summary": {},
    }
    for round_index in range(args.rounds):
        for concept_index, concept in enumerate(args.concepts):
            for variant in run_order(args.variants, concept_index + round_index):
                began = time.perf_counter()
                result = erase(backend, configs[(variant, concept)])
                seconds = round(time.perf_counter() - began, 2)
                run = {"variant": variant, "concept": concept, "round": round_index, "seconds": seconds}
                results["runs"].append(run | {"stages": dict(result.seconds)})
                print(f"{variant:>32} {concept:>9}: {seconds:6.1f} s  {result.seconds}", flush=True)
                results["summary"] = summarise(results["runs"], args.variants)
                write_json(args.out, results)
    print(table(results))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
