"""Benchmark: quality and speed of the shipped toy model.

Generates every object x style prompt (plain style included) with several
seeds, with the evaluation template and with the held-out template, classifies
the generations with the shipped classifiers, and times loading and sampling.
Prints the figures and writes them to ``bench/results/toy_quality.json``.

    .venv/bin/python bench/toy_quality.py            # or: make bench
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from spare_core import generate_images, write_json
from spare_core.toy.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate_grid
from spare_core.toy.pipeline import WEIGHTS_DIR, load_toy_backend, load_toy_classifiers, read_manifest
from spare_core.toy.world import EVAL_TEMPLATE, HELD_OUT_TEMPLATE

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
            evaluations.append(
                {
                    "template_kind": name,
                    "template": template,
                    "guidance_scale": guidance,
                    "generations": len(result.images),
                    "object_accuracy": round(result.object_accuracy, 4),
                    "style_accuracy": round(result.style_accuracy, 4),
                    "per_object": result.accuracy_by("object"),
                    "per_style": result.accuracy_by("style"),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(
                f"guidance {guidance:>4} {name:>8}: object {result.object_accuracy:.1%}  "
                f"style {result.style_accuracy:.1%}  ({len(result.images)} generations)"
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
