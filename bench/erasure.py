"""Benchmark: SPARE erasure quality and speed on the toy world, every variant side by side.

For each concept (every toy style -> plain, every toy object -> the next
object) and each variant, runs a whole erasure (forget/retain generation,
profile, saliency, training) and scores it on evaluation seeds that the
forget/retain sets never use. The default variant runs first for each concept,
from an empty cache, so its time is that of a whole ``spare erase``; the other
variants reuse its forget/retain sets (same seeds), so their time is profile,
saliency and training only. The default variant is also scored with the
held-out caption template. Results are written after every concept, so an
interrupted run leaves what it measured. The default variant is also
scored on the concept's other names (synonyms and phrasings, which its forget
prompts never use), counting only names the base model draws correctly at
least 90 % of the time. Prints a table and writes
``bench/results/erasure.json``.

    .venv/bin/python bench/erasure.py --quick --variants default   # 2 styles, 2 objects, defaults only
    .venv/bin/python bench/erasure.py                               # every concept and variant (about 95 min)
    .venv/bin/python bench/erasure.py --variants default --cache-dir outputs/bench-cache   # defaults first, then
    .venv/bin/python bench/erasure.py --resume --cache-dir outputs/bench-cache             # the other variants
    .venv/bin/python bench/erasure.py --table bench/results/erasure.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spare_core import ConceptPair, ErasureConfig, build_lora, erase, open_model, proportion, write_json
from spare_core.toy.erasure_eval import alternative_name_accuracy, alternative_name_ua, focused_evaluation, score
from spare_core.toy.pipeline import load_toy_classifiers
from spare_core.toy.world import BENCHMARK_CONCEPTS, EVAL_TEMPLATE, HELD_OUT_TEMPLATE, benchmark_surrogate

ROOT = Path(__file__).resolve().parents[1]
#: 8 seeds x 6 prompts = 48 generations of each erased concept; the forget/retain sets use seeds >= 1e6.
ERASED_SEEDS = tuple(range(500, 508))
#: Seeds of every other prompt of the grid (IRA, CRA): 30 prompts x 2 = 60 generations.
OTHER_SEEDS = (500, 501)
TEMPLATES = {"eval": EVAL_TEMPLATE, "held_out": HELD_OUT_TEMPLATE}
#: Seeds of the other-name prompts: 6 prompts x 4 seeds = 24 generations per name.
NAME_SEEDS = ERASED_SEEDS[:4]

VARIANTS: dict[str, dict] = {
    "default": {},
    "scope=all": {"module_scope": "all"},
    "saliency=forget_over_retain": {"saliency_mode": "forget_over_retain"},
    "all-attention-lora": {"module_scope": "attention", "top_k": 0, "module_fraction": 1.0},
    "eta=0": {"eta": 0.0},
    "uniform-timesteps": {"timestep_mode": "uniform"},
    "retain-focus=0.8": {"retain_focus": 0.8},
    "floor=0.5+retain-focus=0.8": {"profile_floor": 0.5, "retain_focus": 0.8},
}


def concepts(quick: bool) -> list[ConceptPair]:
    pairs = [ConceptPair(c, benchmark_surrogate(c)) for c in BENCHMARK_CONCEPTS]
    if quick:
        pairs = [pairs[0], pairs[3], pairs[6], pairs[9]]  # red, stripes, circle, cross
    return pairs


def evaluate(backend, classifiers, pair: ConceptPair, templates: dict[str, str]) -> dict:
    result = {}
    for kind, template in templates.items():
        (scores,) = score(focused_evaluation(backend, classifiers, [pair], ERASED_SEEDS, OTHER_SEEDS, template), [pair])
        result[kind] = scores.as_dict()
    return result


def run_one(backend, classifiers, pair, variant, base, base_names, cache_dir, unet_fp16_bytes) -> dict:
    config = ErasureConfig(concepts=[pair]).with_settings(**VARIANTS[variant])
    start = time.perf_counter()
    result = erase(backend, config, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    lora_bytes = len(build_lora(result, backend).to_bytes())
    templates = TEMPLATES if variant == "default" else {"eval": EVAL_TEMPLATE}
    with result.adapter.applied():
        after = evaluate(backend, classifiers, pair, templates)
        after_names = (
            alternative_name_accuracy(backend, classifiers, pair.concept, NAME_SEEDS) if variant == "default" else None
        )
    row = {
        "variant": variant,
        "concept": pair.concept,
        "surrogate": pair.surrogate,
        "seconds": round(seconds, 1),
        "from_scratch": variant == "default",
        "stage_seconds": result.seconds,
        "trainable_parameters": result.adapter.num_trainable(),
        "modules": result.selected_modules,
        "lora_bytes": lora_bytes,
        "lora_share_of_unet_fp16": round(lora_bytes / unet_fp16_bytes, 5),
        **{kind: {"before": base[kind], "after": after[kind]} for kind in templates},
    }
    if after_names is not None:
        row["other_names"] = {
            "before": base_names,
            "after": after_names,
            **alternative_name_ua(base_names, after_names),
        }
    a, b = row["eval"]["after"], row["eval"]["before"]
    print(
        f"{variant:>20} {pair.concept:>9}: UA {a['ua']:.2f}  IRA {a['ira']:.3f} (base {b['ira']:.3f})  "
        f"CRA {a['cra']:.3f} (base {b['cra']:.3f})  surrogate {a['surrogate_rate']:.2f}  "
        f"other {a['other_attribute']:.3f} (base {b['other_attribute']:.3f})  "
        f"{seconds:.0f} s  {lora_bytes / 1024:.0f} KiB" + _other_names_note(row),
        flush=True,
    )
    return row


def _other_names_note(row: dict) -> str:
    ua = row.get("other_names", {}).get("ua")
    return "" if ua is None else f"  other names UA {ua:.2f}"


def summarise(rows: list[dict], variant: str) -> dict:
    mine = [r for r in rows if r["variant"] == variant]

    def mean(kind, when, key):
        return round(statistics.mean(r[kind][when][key] for r in mine), 4)

    keys = ("ua", "ira", "cra", "surrogate_rate", "other_attribute")
    worst = min(mine, key=lambda r: (r["eval"]["after"]["ua"], r["eval"]["after"]["ira"]))
    summary = {
        "concepts": len(mine),
        **{f"{k}_after": mean("eval", "after", k) for k in keys},
        **{f"{k}_before": mean("eval", "before", k) for k in ("ua", "ira", "cra", "other_attribute")},
        "median_seconds": statistics.median(r["seconds"] for r in mine),
        "median_train_seconds": statistics.median(r["stage_seconds"]["train"] for r in mine),
        "median_trainable_parameters": statistics.median(r["trainable_parameters"] for r in mine),
        "max_lora_bytes": max(r["lora_bytes"] for r in mine),
        "max_lora_share_of_unet_fp16": max(r["lora_share_of_unet_fp16"] for r in mine),
        "worst_concept": {"concept": worst["concept"], **worst["eval"]["after"]},
    }
    summary["pooled_eval_after"] = pooled(mine, "eval", "after")
    summary["pooled_eval_before"] = pooled(mine, "eval", "before")
    named = [r for r in mine if r.get("other_names", {}).get("n")]
    if named:
        k, n = sum(r["other_names"]["k"] for r in named), sum(r["other_names"]["n"] for r in named)
        summary["other_names_ua"] = proportion(k, n)
        worst = min(named, key=lambda r: r["other_names"]["ua"])
        summary["other_names_worst"] = {"concept": worst["concept"], "ua": worst["other_names"]["ua"]}
        summary["other_names_excluded"] = {
            r["concept"]: sorted(set(r["other_names"]["base_rate"]) - set(r["other_names"]["names_counted"]))
            for r in mine
            if "other_names" in r and set(r["other_names"]["base_rate"]) - set(r["other_names"]["names_counted"])
        }
    if all("held_out" in r for r in mine):
        summary.update({f"held_out_{k}_{w}": mean("held_out", w, k) for k in keys[:3] for w in ("before", "after")})
    return summary


def pooled(rows: list[dict], kind: str, when: str) -> dict:
    """UA and surrogate rate pooled over every erased generation of ``rows``, with Wilson intervals."""
    n = sum(r[kind][when]["erased_generations"] for r in rows)
    ua_k = round(sum(r[kind][when]["ua"] * r[kind][when]["erased_generations"] for r in rows))
    surrogate_k = round(sum(r[kind][when]["surrogate_rate"] * r[kind][when]["erased_generations"] for r in rows))
    return {"ua": proportion(ua_k, n), "surrogate_rate": proportion(surrogate_k, n)}


def markdown_table(results: dict) -> str:
    """The summary as a Markdown table (for the README and closing notes)."""
    lines = [
        "| variant | UA | IRA (base) | CRA (base) | surrogate | other attribute (base) | median s | LoRA KiB | worst |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in results["summary"].items():
        worst = s["worst_concept"]
        lines.append(
            f"| {variant} | {s['ua_after']:.3f} | {s['ira_after']:.3f} ({s['ira_before']:.3f}) "
            f"| {s['cra_after']:.3f} ({s['cra_before']:.3f}) | {s['surrogate_rate_after']:.3f} "
            f"| {s['other_attribute_after']:.3f} ({s['other_attribute_before']:.3f}) | {s['median_seconds']:.0f} "
            f"| {s['max_lora_bytes'] / 1024:.0f} | {worst['concept']} (UA {worst['ua']:.2f}, IRA {worst['ira']:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two styles and two objects only")
    p.add_argument("--variants", nargs="+", default=None, help=f"variants to run (default: all; {', '.join(VARIANTS)})")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of an existing results file and run only its missing (concept, variant) cells",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep each concept's forget/retain sets in a folder here, so that a later run of other variants "
        "reuses them (default: a temporary folder per concept). Sets are keyed by prompts and settings, not by "
        "the model's weights: use a new folder after retraining the toy model",
    )
    p.add_argument("--table", type=Path, default=None, help="only print the Markdown table of a results file")
    args = p.parse_args(argv)
    if args.table is not None:
        results = json.loads(args.table.read_text())
        print(markdown_table(results))
        return results
    variants = args.variants or list(VARIANTS)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}")
    if "default" in variants:  # first, so that its time is a whole erase from an empty cache
        variants = ["default"] + [v for v in variants if v != "default"]
    out = args.out or ROOT / "bench" / "results" / ("erasure_quick.json" if args.quick else "erasure.json")

    previous = json.loads(out.read_text()) if args.resume and out.exists() else {}
    if previous and previous.get("quick") != args.quick:
        p.error(f"{out} holds a {'quick' if previous['quick'] else 'full'} run; resume it with the same --quick")
    rows: list[dict] = list(previous.get("rows", []))
    minutes_before = previous.get("total_minutes", 0.0)

    backend = open_model("toy")
    classifiers = load_toy_classifiers()
    unet_fp16_bytes = sum(p.numel() for p in backend.denoiser().parameters()) * 2
    started = time.perf_counter()
    results = previous
    for pair in concepts(args.quick):
        done = {r["variant"] for r in rows if r["concept"] == pair.concept}
        todo = [v for v in variants if v not in done]
        if not todo:
            continue
        known = [r for r in rows if r["concept"] == pair.concept]
        if known and "default" not in todo:  # the base scores are those of the rows already measured
            base, base_names = {"eval": known[0]["eval"]["before"]}, None
        else:
            base = evaluate(backend, classifiers, pair, TEMPLATES)
            base_names = alternative_name_accuracy(backend, classifiers, pair.concept, NAME_SEEDS)
        with contextlib.ExitStack() as stack:
            if args.cache_dir is None:
                cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            else:
                cache_dir = args.cache_dir / pair.concept
            for variant in todo:
                rows.append(run_one(backend, classifiers, pair, variant, base, base_names, cache_dir, unet_fp16_bytes))
        measured = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
        results = {
            "benchmark": "erasure",
            "quick": args.quick,
            "erased_seeds": list(ERASED_SEEDS),
            "other_seeds": list(OTHER_SEEDS),
            "name_seeds": list(NAME_SEEDS),
            "torch_threads": torch.get_num_threads(),
            "total_minutes": round(minutes_before + (time.perf_counter() - started) / 60, 1),
            "defaults": ErasureConfig(concepts=[]).settings(),
            "variants": {v: VARIANTS[v] for v in measured},
            "summary": {v: summarise(rows, v) for v in measured},
            "rows": rows,
        }
        write_json(out, results)

    print(markdown_table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
