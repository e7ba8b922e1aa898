"""Benchmark: quality and speed of the shipped toy model.

Generates every object x style prompt (plain style included) with several
seeds, with the evaluation template and with the held-out template, classifies
the generations with the shipped classifiers (the style also with the
greyscale classifier, which sees textures only by their pattern), generates
every concept under each of its other names (synonyms and phrasings), and
times loading and sampling. Every accuracy is reported as k of n with a 95 %
Wilson interval. Prints the figures and writes them to
``bench/results/toy_quality.json``.

    .venv/bin/python bench/toy_quality.py            # or: make bench
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from spare_core import generate_images, proportion, write_json
from spare_core.toy.erasure_eval import alternative_name_accuracy
from spare_core.toy.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate_grid
from spare_core.toy.pipeline import (
    WEIGHTS_DIR,
    load_grey_style_classifier,
    load_toy_backend,
    load_toy_classifiers,
    read_manifest,
)
from spare_core.toy.world import ALTERNATIVE_NAMES, EVAL_TEMPLATE, HELD_OUT_TEMPLATE

# Seeds no test or demo uses.
DEFAULT_SEEDS = (101, 202, 303, 404)
ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[DEFAULT_GUIDANCE],
        help="guidance scales to evaluate; the first is the headline figure",
    )
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "toy_quality.json")
    args = p.parse_args(argv)

    load_seconds = _median_seconds(lambda: load_toy_backend(args.weights_dir), args.repeats)
    backend = load_toy_backend(args.weights_dir)
    object_clf, style_clf = load_toy_classifiers(args.weights_dir)
    grey_style_clf = load_grey_style_classifier(args.weights_dir)
    prompts = ["a circle image in red style", "a star image in dots style", "a ring", "an image in checker style"]
    sample_seconds = _median_seconds(
        lambda: generate_images(backend, prompts, [1], steps=20, guidance=DEFAULT_GUIDANCE), args.repeats
    )

    evaluations = []
    for guidance in args.guidance:
        for name, template in (("eval", EVAL_TEMPLATE), ("held_out", HELD_OUT_TEMPLATE)):
            start = time.perf_counter()
            result = generate_grid(
                backend, object_clf, style_clf, args.seeds, template=template, steps=args.steps, guidance_scale=guidance
            )
            n = len(result.images)
            object_k = int((result.object_pred == result.object_labels).sum())
            style_k = int((result.style_pred == result.style_labels).sum())
            grey_k = int((grey_style_clf.predict(result.images) == result.style_labels).sum())
            evaluations.append(
                {
                    "template_kind": name,
                    "template": template,
                    "guidance_scale": guidance,
                    "generations": n,
                    "object_accuracy": proportion(object_k, n),
                    "style_accuracy": proportion(style_k, n),
                    "grey_style_accuracy": proportion(grey_k, n),
                    "per_object": result.accuracy_by("object"),
                    "per_style": result.accuracy_by("style"),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(
                f"guidance {guidance:>4} {name:>8}: object {object_k / n:.1%}  style {style_k / n:.1%}  "
                f"greyscale style {grey_k / n:.1%}  ({n} generations)"
            )

    alternative_names = []
    for name, template in (("eval", EVAL_TEMPLATE), ("held_out", HELD_OUT_TEMPLATE)):
        start = time.perf_counter()
        rows = {
            concept: alternative_name_accuracy(
                backend, (object_clf, style_clf), concept, args.seeds, template, args.steps, args.guidance[0]
            )
            for concept in ALTERNATIVE_NAMES
        }
        k = sum(r["k"] for table in rows.values() for r in table.values())
        n = sum(r["n"] for table in rows.values() for r in table.values())
        worst_concept, worst_name = min(
            ((c, a) for c, table in rows.items() for a in table), key=lambda ca: rows[ca[0]][ca[1]]["accuracy"]
        )
        alternative_names.append(
            {
                "template_kind": name,
                "template": template,
                "guidance_scale": args.guidance[0],
                "accuracy": proportion(k, n),
                "worst": {"concept": worst_concept, "name": worst_name, **rows[worst_concept][worst_name]},
                "per_name": {
                    f"{concept}: {alt}": proportion(r["k"], r["n"])
                    for concept, table in rows.items()
                    for alt, r in table.items()
                },
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(
            f"other names, {name:>8}: the named concept drawn in {k / n:.1%} of {n} generations; "
            f"worst {worst_concept!r} as {worst_name!r}: {rows[worst_concept][worst_name]['accuracy']:.1%}"
        )

    manifest = read_manifest(args.weights_dir)
    files = {name: info["bytes"] for name, info in manifest["files"].items()}
    results = {
        "benchmark": "toy_quality",
        "seeds": args.seeds,
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "load_seconds_median": round(load_seconds, 3),
        "sample_4_images_20_steps_seconds_median": round(sample_seconds, 3),
        "file_bytes": files,
        "total_megabytes": round(sum(files.values()) / 1e6, 2),
        "training": manifest.get("training", {}),
        "evaluations": evaluations,
        "alternative_names": alternative_names,
    }
    print(
        f"load {load_seconds:.2f} s, 4 images x 20 steps {sample_seconds:.2f} s (medians of {args.repeats}); "
        f"weights {results['total_megabytes']} MB"
    )
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
