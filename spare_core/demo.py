"""The main job on the embedded default: erase one toy style with SPARE, end to end.

A front end like the command line: it uses the public API (``spare_core``)
and the toy world (``spare_core.toy``) only. Writes to the output folder:
``before_after.png`` (fixed seeds; the erased concept and several retained
ones), ``profile.png``, ``saliency.png``, the LoRA file, and ``report.json``
with UA, IRA and CRA before and after.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from spare_core import (
    ConceptPair,
    ErasureConfig,
    build_lora,
    erase,
    grid_image,
    open_model,
    plot_profile,
    plot_saliency,
    preview,
    save_png,
    write_json,
)
from spare_core.toy.erasure_eval import before_after_scores, preview_prompts
from spare_core.toy.evaluate import generate_grid
from spare_core.toy.pipeline import load_grey_style_classifier, load_toy_classifiers
from spare_core.toy.world import EVAL_TEMPLATE, OBJECTS, STYLES

logger = logging.getLogger(__name__)

#: Evaluation seeds of the demo (the forget/retain sets use seeds from 1e6 on).
DEMO_SEEDS = (11, 12, 13, 14)


class _StagePrinter:
    """One line per stage on stderr, and a dot-free training summary."""

    def __init__(self) -> None:
        self.stage = None

    def __call__(self, event) -> None:
        if event.stage != self.stage:
            self.stage = event.stage
            print(f"[demo] {event.stage} ...", file=sys.stderr)
        if event.stage == "train" and event.step in (1, event.total) and event.loss is not None:
            print(f"[demo]   step {event.step}/{event.total}, loss {event.loss:.4f}", file=sys.stderr)


def run_demo(out: Path, concept: str = "red", surrogate: str = "plain", seed: int = 0) -> dict:
    start = time.perf_counter()
    torch.manual_seed(seed)
    out = Path(out)
    backend = open_model("toy")
    classifiers = load_toy_classifiers()
    config = ErasureConfig(concepts=[ConceptPair(concept, surrogate)], seed=seed).validate()
    result = erase(backend, config, on_event=_StagePrinter())

    lora = build_lora(result, backend)
    lora_path = lora.write(out / f"spare_{concept}.safetensors")
    plot_saliency(result.saliency, out / "saliency.png", result.selected_modules)
    if result.profile is not None:
        plot_profile(result.profile, out / "profile.png")

    print("[demo] evaluating before and after ...", file=sys.stderr)
    erased, retained = preview_prompts(concept)
    save_png(preview(backend, erased + retained, DEMO_SEEDS, result.adapter).grid(), out / "before_after.png")

    (before,), (after,), generations = before_after_scores(
        backend, classifiers, config.concepts, DEMO_SEEDS, result.adapter
    )
    report = {
        "concept": concept,
        "surrogate": surrogate,
        "before": before.as_dict(),
        "after": after.as_dict(),
        "evaluation": {"template": EVAL_TEMPLATE, "seeds": list(DEMO_SEEDS), "generations": generations},
        "selected_modules": result.selected_modules,
        "trainable_parameters": result.adapter.num_trainable(),
        "lora_file": lora_path.name,
        "lora_bytes": lora_path.stat().st_size,
        "erase_seconds": result.seconds,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "report.json", report)
    print(
        f"erased {concept!r} -> {surrogate!r}: UA {before.ua:.2f} -> {after.ua:.2f}, "
        f"IRA {before.ira:.2f} -> {after.ira:.2f}, CRA {before.cra:.2f} -> {after.cra:.2f}, "
        f"surrogate rate {after.surrogate_rate:.2f}"
    )
    print(
        f"wrote {out}/: before_after.png, profile.png, saliency.png, {lora_path.name}, report.json "
        f"({report['total_seconds']:.0f} s)"
    )
    return report


def run_toy_grid(out: Path, seed: int = 0, steps: int = 20, guidance: float = 5.0) -> dict:
    """Render the toy model's object x style grid (misread cells framed in red) and its report."""
    start = time.time()
    torch.manual_seed(0)
    backend = open_model("toy")
    object_clf, style_clf = load_toy_classifiers()
    result = generate_grid(backend, object_clf, style_clf, seeds=[seed], steps=steps, guidance_scale=guidance)
    grey_style_pred = load_grey_style_classifier().predict(result.images)
    grey_style_accuracy = float((grey_style_pred == result.style_labels).float().mean())
    wrong = (result.object_pred != result.object_labels) | (result.style_pred != result.style_labels)
    out = Path(out)
    save_png(grid_image(result.images, OBJECTS, STYLES, marks=wrong), out / "toy_grid.png")
    report = {
        "prompt_template": EVAL_TEMPLATE,
        "seed": seed,
        "steps": steps,
        "guidance_scale": guidance,
        "generations": len(result.images),
        "object_accuracy": result.object_accuracy,
        "style_accuracy": result.style_accuracy,
        "grey_style_accuracy": grey_style_accuracy,
        "seconds": round(time.time() - start, 2),
    }
    write_json(out / "toy_grid.json", report)
    print(f"wrote {out / 'toy_grid.png'} ({len(OBJECTS)} objects x {len(STYLES)} styles, seed {seed})")
    print(
        f"classifiers recognise the object in {result.object_accuracy:.1%} and the style in "
        f"{result.style_accuracy:.1%} of the {len(result.images)} generations (red frames: misread), "
        f"the greyscale style classifier the style in {grey_style_accuracy:.1%}; {report['seconds']:.1f} s"
    )
    return report
