"""Benchmark: how much one erasure's result depends on its seed, per concept and settings variant.

The comparison benchmark erases each concept once, at seed 0. On the hard toy
concepts (objects whose surrogate looks like them) the retained accuracy of
one erasure moves by more than the 4-point target between seeds, so a change
to the defaults judged on one seed can be luck. This benchmark erases each
concept at several seeds and reports, per variant and concept, the spread
over seeds (lowest, mean, highest) and the pooled figure with its Wilson
interval, on both evaluation templates.

With ``--swap A B`` it instead runs every mix of two seeds over the three
stages that draw random numbers (the image sets with the timestep profile,
the saliency, the training), so that the stage whose seed moves the result
most can be found.

Evaluation is the comparison's: ``spare eval``'s harness, evaluation seeds
0-4 of every object x style prompt on both templates. Results are written
after every erasure to ``bench/results/seed_stability.json``; a re-run skips
the erasures already there (same concept, variant, seeds and settings: an
earlier run whose variant now means other settings, because a default changed,
is run again and replaced). An erasure's seconds are its stages' time; the
image sets are drawn once per concept, data seed and settings that shape them,
so later variants reuse them and read faster (time erasures with
``bench/erasure.py`` instead). Run it alone: two torch processes on 2 cores
slow each other about tenfold.

    .venv/bin/python bench/seed_stability.py                                  # defaults, 4 concepts x 3 seeds
    .venv/bin/python bench/seed_stability.py --concepts cross --variants default retain_weight=3
    .venv/bin/python bench/seed_stability.py --concepts cross --swap 0 1 --out bench/results/seed_swap.json
    .venv/bin/python bench/seed_stability.py --table bench/results/seed_stability.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
import time
from pathlib import Path

from spare_core import ConceptPair, ErasureConfig, open_model, proportion, write_json
from spare_core.erasure import measure_profile, prepare_sets, select_modules, train
from spare_core.toy.harness import TEMPLATES, BaseGrids, evaluate_edit
from spare_core.toy.pipeline import load_toy_classifiers
from spare_core.toy.world import benchmark_surrogate

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEEDS = tuple(range(5))
#: The concepts whose retained accuracy moved most between seeds: objects erased toward a similar object.
HARD_CONCEPTS = ("cross", "ring", "star", "square")
METRICS = ("ua", "ira", "cra", "surrogate_rate")
STAGES = ("data", "saliency", "train")


def surrogate_of(concept: str) -> str:
    """The comparison benchmark's surrogate; an unknown concept ends the run with its message."""
    try:
        return benchmark_surrogate(concept)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def parse_variant(spec: str) -> dict:
    """``default`` or ``name=value[,name=value...]`` (values as JSON, else text) as settings overrides."""
    if spec == "default":
        return {}
    overrides = {}
    for part in spec.split(","):
        name, sep, text = part.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"variant {spec!r}: write default or name=value[,name=value], e.g. retain_weight=3")
        try:
            overrides[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name.strip()] = text
    return overrides


def stage_seeds(seeds: list[int], swap: list[int] | None) -> list[dict[str, int]]:
    """The seed of each stage per erasure: one seed for every stage, or every mix of the two swapped seeds."""
    if swap:
        return [dict(zip(STAGES, mix, strict=True)) for mix in itertools.product(swap, repeat=len(STAGES))]
    return [dict.fromkeys(STAGES, seed) for seed in seeds]


def run_key(concept: str, variant: str, seeds: dict[str, int]) -> str:
    return f"{concept}|{variant}|" + ",".join(f"{stage}={seeds[stage]}" for stage in STAGES)


def settings_hash(pair: ConceptPair, overrides: dict) -> str:
    """Every setting of a variant's erasure but the seed, so that a run made before the defaults changed
    (a ``default`` run, or a variant that overrides only some settings) is not taken for a present one."""
    settings = json.loads(ErasureConfig([pair]).with_settings(**overrides).to_json())
    settings.pop("seed")
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Runner:
    """Erases stage by stage, each stage at its own seed; keeps the model, classifiers, base grids and sets."""

    def __init__(self, cache_dir: Path):
        self.backend = open_model("toy")
        self.classifiers = load_toy_classifiers()
        self.base = BaseGrids()
        self.cache_dir = cache_dir
        self.profiles: dict[tuple, object] = {}

    def erase_and_score(self, pair: ConceptPair, overrides: dict, seeds: dict[str, int]) -> dict:
        config = ErasureConfig([pair]).with_settings(**overrides)
        config.validate()
        at = {stage: config.with_settings(seed=seed) for stage, seed in seeds.items()}
        began = time.perf_counter()
        sets = prepare_sets(self.backend, at["data"], cache_dir=self.cache_dir)
        profile = None
        if config.timestep_mode == "profile":
            key = (pair.concept, json.dumps(overrides, sort_keys=True), seeds["data"])
            if key not in self.profiles:
                self.profiles[key] = measure_profile(self.backend, at["data"], sets)
            profile = self.profiles[key]
        saliency = select_modules(self.backend, at["saliency"], sets, profile)
        # train() refuses a saliency made at another seed; mixing the stages' seeds is this benchmark's point.
        saliency.settings["seed"] = seeds["train"]
        trained = train(self.backend, at["train"], sets, saliency, profile)
        seconds = time.perf_counter() - began
        report = evaluate_edit(
            self.backend, [pair], trained.adapter, classifiers=self.classifiers, seeds=EVAL_SEEDS,
            templates=tuple(TEMPLATES), base=self.base,
        ).as_dict()  # fmt: skip
        scores = {}
        for template, entry in report["templates"].items():
            figures = entry["per_concept"][pair.concept]
            scores[template] = {m: figures[m] for m in METRICS} | {"base": {m: figures["base"][m] for m in METRICS}}
        return {
            "seconds": round(seconds, 1),
            "modules": list(saliency.selected),
            "scores": scores,
            # Which prompts an erasure changed: per template, object -> style -> share of seeds drawn right.
            "prompt_matrix": {template: entry["prompt_matrix"] for template, entry in report["templates"].items()},
        }


def summarise(runs: list[dict]) -> dict:
    """Per variant and concept (and pooled over a variant's concepts), per template and metric: the lowest, mean and
    highest value over seeds (pooled over concepts, one seed's value pools all its concepts' generations),
    and the proportion of all the group's generations with its interval."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["concept"]), []).append(run)
    for variant in {run["variant"]: None for run in runs}:  # pooled last, where a variant has several concepts
        if sum(v == variant for v, _ in groups) > 1:
            groups[(variant, "pooled")] = [run for run in runs if run["variant"] == variant]
    summary: dict = {}
    for (variant, concept), group in groups.items():
        per_template = {}
        for template in group[0]["scores"]:
            per_metric = {}
            for metric in METRICS:
                entries = [run["scores"][template][metric] for run in group]
                # The spread is over seeds: pooled over concepts, each seed's figure pools its concepts.
                by_seeds: dict[str, tuple[int, int]] = {}
                for run, entry in zip(group, entries, strict=True):
                    seed_key = json.dumps(run["seeds"], sort_keys=True)
                    k, n = by_seeds.get(seed_key, (0, 0))
                    by_seeds[seed_key] = (k + entry["k"], n + entry["n"])
                values = [round(k / n, 4) for k, n in by_seeds.values()]
                per_metric[metric] = {
                    "runs": len(entries),
                    "min": min(values),
                    "mean": round(sum(values) / len(values), 4),
                    "max": max(values),
                    "pooled": proportion(sum(e["k"] for e in entries), sum(e["n"] for e in entries)),
                }
            per_template[template] = per_metric
        summary.setdefault(variant, {})[concept] = per_template
    return summary


def table(results: dict) -> str:
    """The summary as Markdown: IRA and surrogate rate, lowest / mean / highest over seeds, per template."""
    lines = [
        "| variant | concept | runs | UA min | IRA min / mean / max (evaluation) | IRA min / mean / max (held-out) "
        "| surrogate rate mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, concepts in results["summary"].items():
        for concept, templates in concepts.items():
            ev, held = templates.get("evaluation"), templates.get("held_out")

            def spread(t: dict | None) -> str:
                if t is None:
                    return "-"
                ira = t["ira"]
                return f"{ira['min']:.3f} / {ira['mean']:.3f} / {ira['max']:.3f}"

            lines.append(
                f"| {variant} | {concept} | {ev['ua']['runs']} | {ev['ua']['min']:.3f} | {spread(ev)} "
                f"| {spread(held)} | {ev['surrogate_rate']['mean']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", nargs="+", default=list(HARD_CONCEPTS), help="toy concepts to erase")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="erasure seeds")
    parser.add_argument(
        "--variants", nargs="+", default=["default"], help="default, or name=value[,name=value] settings overrides"
    )
    parser.add_argument("--swap", nargs=2, type=int, metavar=("A", "B"), help="every mix of two seeds over stages")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "seed_stability.json")
    parser.add_argument("--table", type=Path, help="print the table of a results file and stop")
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        print(table(results))
        return results
    variants = {spec: parse_variant(spec) for spec in args.variants}
    pairs = [ConceptPair(c, surrogate_of(c)) for c in args.concepts]
    for overrides in variants.values():  # a misspelt setting fails before any erasure
        ErasureConfig(pairs[:1]).with_settings(**overrides).validate()
    previous = json.loads(args.out.read_text())["runs"] if args.out.exists() else []

    def save() -> dict:
        results = {"evaluation_seeds": list(EVAL_SEEDS), "runs": runs, "summary": summarise(runs)}
        write_json(args.out, results)
        return results

    present = {(p.concept, spec): settings_hash(p, overrides) for p in pairs for spec, overrides in variants.items()}

    def is_current(run: dict) -> bool:  # runs of variants not asked for now are kept as they are
        wanted = present.get((run["concept"], run["variant"]))
        return wanted is None or run.get("settings_hash") == wanted

    runs = [run for run in previous if is_current(run)]
    if len(runs) < len(previous):
        print(f"{len(previous) - len(runs)} earlier runs were made with other settings (a default changed): run again")
    done = {run["key"] for run in runs}
    with tempfile.TemporaryDirectory(prefix="spare-seeds-") as cache:
        runner = None
        for pair, (spec, overrides), seeds in itertools.product(
            pairs, variants.items(), stage_seeds(args.seeds, args.swap)
        ):
            key = run_key(pair.concept, spec, seeds)
            if key in done:
                continue
            runner = runner or Runner(Path(cache))
            run = {"key": key, "concept": pair.concept, "surrogate": pair.surrogate, "variant": spec,
                   "settings": overrides, "settings_hash": present[(pair.concept, spec)], "seeds": seeds}  # fmt: skip
            run |= runner.erase_and_score(pair, overrides, seeds)
            runs.append(run)
            ev, held = run["scores"]["evaluation"], run["scores"]["held_out"]
            print(
                f"{pair.concept:>8} {spec:>28} {seeds}: UA {ev['ua']['value']:.3f}  IRA {ev['ira']['value']:.3f} / "
                f"{held['ira']['value']:.3f} (base {ev['base']['ira']['value']:.3f} / "
                f"{held['base']['ira']['value']:.3f})  CRA {ev['cra']['value']:.3f}  "
                f"surrogate {ev['surrogate_rate']['value']:.2f}  {run['seconds']:.0f} s",
                flush=True,
            )
            save()
    results = save()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
