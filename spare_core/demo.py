"""The main job on the embedded default: erase one toy style with SPARE, end to end.

Writes to the output folder: ``before_after.png`` (fixed seeds; the erased
concept and several retained ones), ``profile.png``, ``saliency.png``, the
LoRA file, and ``report.json`` with UA, IRA and CRA before and after.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from .backends.diffusers_backend import DiffusersBackend
from .config import ConceptPair, ErasureConfig
from .erasure import erase
from .fileio import save_png, write_json
from .lora_io import save_adapter
from .saliency import plot_saliency
from .timesteps import plot_profile
from .toy.erasure_eval import domain_of, evaluation_grid, score
from .toy.evaluate import grid_image
from .toy.pipeline import load_toy_classifiers, load_toy_pipeline
from .toy.world import EVAL_TEMPLATE, OBJECTS, STYLES

logger = logging.getLogger(__name__)

#: Evaluation seeds of the demo (the forget/retain sets use seeds from 1e6 on).
DEMO_SEEDS = (11, 12, 13, 14)


def _preview_prompts(concept: str) -> tuple[list[str], list[str]]:
    """Prompts for the before/after grid: three naming the concept, three retained ones."""
    if domain_of(concept) == "style":
        erased = [EVAL_TEMPLATE.format(object=o, style=concept) for o in OBJECTS[:3]]
        others = [s for s in STYLES if s not in (concept, "plain")]
        retained = [EVAL_TEMPLATE.format(object=o, style=s) for o, s in zip(OBJECTS[3:], others, strict=False)]
    else:
        erased = [EVAL_TEMPLATE.format(object=concept, style=s) for s in STYLES[:3]]
        others = [o for o in OBJECTS if o != concept]
        retained = [EVAL_TEMPLATE.format(object=o, style=s) for o, s in zip(others, STYLES[3:6], strict=False)]
    return erased, retained[:3]


def before_after(backend: DiffusersBackend, adapter, prompts: list[str], seeds: tuple[int, ...]) -> torch.Tensor:
    """Rows of [before x seeds | after x seeds] images for each prompt."""
    all_prompts = [p for p in prompts for _ in seeds]
    all_seeds = [s for _ in prompts for s in seeds]
    before = backend.sample(all_prompts, all_seeds, 20, 5.0)
    with adapter.applied():
        after = backend.sample(all_prompts, all_seeds, 20, 5.0)
    rows = []
    for i in range(len(prompts)):
        rows += [before[i * len(seeds) : (i + 1) * len(seeds)], after[i * len(seeds) : (i + 1) * len(seeds)]]
    return torch.cat(rows)


def run_demo(out: Path, concept: str = "red", surrogate: str = "plain", seed: int = 0) -> dict:
    start = time.perf_counter()
    torch.manual_seed(seed)
    out = Path(out)
    pipe = load_toy_pipeline()
    classifiers = load_toy_classifiers()
    backend = DiffusersBackend(pipe, arch="toy")
    config = ErasureConfig(concepts=[ConceptPair(concept, surrogate)], seed=seed).validate()

    def stage(name: str) -> None:
        print(f"[demo] {name} ...", file=sys.stderr)

    from tqdm import tqdm

    bar = tqdm(total=config.steps, desc="training", unit="step", file=sys.stderr)
    result = erase(backend, config, progress=lambda r: bar.update(1), stage=stage)
    bar.close()

    lora_path = out / f"spare_{concept}.safetensors"
    save_adapter(lora_path, result.adapter, backend, config, {"seconds": result.seconds})
    plot_saliency(result.saliency, out / "saliency.png", result.selected_modules)
    if result.profile is not None:
        plot_profile(result.profile, out / "profile.png")

    stage("evaluating before and after")
    erased, retained = _preview_prompts(concept)
    prompts = erased + retained
    images = before_after(backend, result.adapter, prompts, DEMO_SEEDS)
    row_labels = [label for p in prompts for label in (f"{p[:28]} | before", "after")]
    save_png(grid_image(images, row_labels, [f"seed {s}" for s in DEMO_SEEDS]), out / "before_after.png")

    base_grid = evaluation_grid(pipe, classifiers, DEMO_SEEDS)
    with result.adapter.applied():
        erased_grid = evaluation_grid(pipe, classifiers, DEMO_SEEDS)
    before = score(base_grid, config.concepts)[0]
    after = score(erased_grid, config.concepts)[0]
    report = {
        "concept": concept,
        "surrogate": surrogate,
        "before": before.as_dict(),
        "after": after.as_dict(),
        "evaluation": {"template": EVAL_TEMPLATE, "seeds": list(DEMO_SEEDS), "generations": len(base_grid.images)},
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
