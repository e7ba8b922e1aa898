"""Benchmark: SPARE erasure quality and speed on the toy world, every variant side by side.

For each concept (every toy style -> plain, every toy object -> the next
object) and each variant, runs a whole erasure (forget/retain generation,
profile, saliency, training) from scratch and scores it on evaluation seeds
that the forget/retain sets never use, with the evaluation template and the
held-out template. Prints a table and writes ``bench/results/erasure.json``.

    .venv/bin/python bench/erasure.py --quick      # 2 styles, 2 objects, default variant
    .venv/bin/python bench/erasure.py              # everything
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spare_core.backends.diffusers_backend import DiffusersBackend
from spare_core.config import ConceptPair, ErasureConfig
from spare_core.erasure import erase
from spare_core.fileio import write_json
from spare_core.lora_io import save_adapter
from spare_core.toy.erasure_eval import evaluation_grid, score
from spare_core.toy.pipeline import load_toy_classifiers, load_toy_pipeline
from spare_core.toy.world import EVAL_TEMPLATE, HELD_OUT_TEMPLATE, OBJECTS, PLAIN_STYLE, STYLES

ROOT = Path(__file__).resolve().parents[1]
#: 8 seeds x 6 prompts = 48 generations of each erased concept; the forget/retain sets use seeds >= 1e6.
EVAL_SEEDS = tuple(range(500, 508))

VARIANTS: dict[str, dict] = {
    "default": {},
    "saliency=denoise": {"saliency_mode": "denoise"},
    "saliency=forget": {"saliency_mode": "forget"},
    "all-attention-lora": {"module_scope": "attention", "top_k": None, "module_fraction": 1.0},
    "eta=0": {"eta": 0.0},
    "eta=0.5": {"eta": 0.5},
    "eta=2": {"eta": 2.0},
    "uniform-timesteps": {"timestep_mode": "uniform"},
    "rows=0.5": {"channel_fraction": 0.5},
}


def concepts(quick: bool) -> list[ConceptPair]:
    styles = [s for s in STYLES if s != PLAIN_STYLE]
    pairs = [ConceptPair(s, PLAIN_STYLE) for s in styles]
    pairs += [ConceptPair(o, OBJECTS[(i + 1) % len(OBJECTS)]) for i, o in enumerate(OBJECTS)]
    if quick:
        pairs = [pairs[0], pairs[3], pairs[6], pairs[9]]  # red, stripes, circle, cross
    return pairs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two styles and two objects only")
    p.add_argument("--variants", nargs="+", default=None, help=f"variants to run (default: all; {', '.join(VARIANTS)})")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    variants = args.variants or (["default"] if args.quick else list(VARIANTS))
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}")
    out = args.out or ROOT / "bench" / "results" / ("erasure_quick.json" if args.quick else "erasure.json")

    pipe = load_toy_pipeline()
    classifiers = load_toy_classifiers()
    backend = DiffusersBackend(pipe, arch="toy")
    unet_fp16_bytes = sum(p.numel() for p in pipe.unet.parameters()) * 2
    templates = {"eval": EVAL_TEMPLATE, "held_out": HELD_OUT_TEMPLATE}
    base = {k: evaluation_grid(pipe, classifiers, EVAL_SEEDS, t) for k, t in templates.items()}

    rows = []
    for variant in variants:
        for pair in concepts(args.quick):
            config = dataclasses.replace(ErasureConfig(concepts=[pair]), **VARIANTS[variant])
            start = time.perf_counter()
            result = erase(backend, config)
            seconds = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "lora.safetensors"
                save_adapter(path, result.adapter, backend, config)
                lora_bytes = path.stat().st_size
            row = {
                "variant": variant,
                "concept": pair.concept,
                "surrogate": pair.surrogate,
                "seconds": round(seconds, 1),
                "stage_seconds": result.seconds,
                "trainable_parameters": result.adapter.num_trainable(),
                "modules": result.selected_modules,
                "lora_bytes": lora_bytes,
                "lora_share_of_unet_fp16": round(lora_bytes / unet_fp16_bytes, 5),
            }
            for kind, template in templates.items():
                (before,) = score(base[kind], [pair])
                with result.adapter.applied():
                    (after,) = score(evaluation_grid(pipe, classifiers, EVAL_SEEDS, template), [pair])
                row[kind] = {"before": before.as_dict(), "after": after.as_dict()}
            rows.append(row)
            a, b = row["eval"]["after"], row["eval"]["before"]
            print(
                f"{variant:>20} {pair.concept:>9}: UA {a['ua']:.2f}  IRA {a['ira']:.2f} (base {b['ira']:.2f})  "
                f"CRA {a['cra']:.2f} (base {b['cra']:.2f})  surrogate {a['surrogate_rate']:.2f}  "
                f"other {a['other_attribute']:.2f} (base {b['other_attribute']:.2f})  "
                f"held-out UA {row['held_out']['after']['ua']:.2f}  {seconds:.0f} s  {lora_bytes / 1024:.0f} KiB",
                flush=True,
            )

    summary = {}
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]

        def mean(kind, when, key, rows=mine):
            return round(statistics.mean(r[kind][when][key] for r in rows), 4)

        worst = min(mine, key=lambda r: r["eval"]["after"]["ua"])
        summary[variant] = {
            "concepts": len(mine),
            **{
                f"{k}_after": mean("eval", "after", k)
                for k in ("ua", "ira", "cra", "surrogate_rate", "other_attribute")
            },
            **{f"{k}_before": mean("eval", "before", k) for k in ("ua", "ira", "cra", "other_attribute")},
            "held_out_ua_after": mean("held_out", "after", "ua"),
            "held_out_ira_after": mean("held_out", "after", "ira"),
            "held_out_cra_after": mean("held_out", "after", "cra"),
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "max_lora_share_of_unet_fp16": max(r["lora_share_of_unet_fp16"] for r in mine),
            "worst_concept": {"concept": worst["concept"], "ua": worst["eval"]["after"]["ua"]},
        }
        s = summary[variant]
        print(
            f"{variant:>20} MEAN: UA {s['ua_after']:.3f}  IRA {s['ira_after']:.3f} (base {s['ira_before']:.3f})  "
            f"CRA {s['cra_after']:.3f} (base {s['cra_before']:.3f})  surrogate {s['surrogate_rate_after']:.3f}  "
            f"median {s['median_seconds']:.0f} s  worst {s['worst_concept']}"
        )
    results = {
        "benchmark": "erasure",
        "quick": args.quick,
        "eval_seeds": list(EVAL_SEEDS),
        "torch_threads": torch.get_num_threads(),
        "defaults": dataclasses.asdict(ErasureConfig(concepts=[])),
        "summary": summary,
        "rows": rows,
    }
    write_json(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
