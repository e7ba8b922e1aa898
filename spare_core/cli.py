"""The ``spare`` command line: profile, saliency, erase, generate, inspect, demo.

Every command works on the shipped toy model by default (``--model toy``).
Bad input ends with one clear line on stderr and exit status 2; no output file
is left half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger("spare")


class UsageError(ValueError):
    """A bad command-line value; the message says what to change."""


# --------------------------------------------------------------------------- shared options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", help="'toy' (the shipped toy model, default) or a local diffusers folder")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="model weights dtype (default fp32); adapter weights always train in fp32",
    )


def _add_concept_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--concept",
        action="append",
        required=required,
        help="concept to erase (repeat for several, e.g. --concept red --concept circle)",
    )
    p.add_argument(
        "--surrogate",
        action="append",
        required=required,
        help="what to draw instead: one for all concepts, or one per --concept in the same order",
    )


def _concept_pairs(args: argparse.Namespace):
    from .config import ConceptPair

    concepts, surrogates = args.concept or [], args.surrogate or []
    if not concepts:
        raise UsageError("no --concept given: name what to erase")
    if len(surrogates) == 1:
        surrogates = surrogates * len(concepts)
    if len(surrogates) != len(concepts):
        raise UsageError(f"{len(concepts)} concepts but {len(surrogates)} surrogates: give one, or one per concept")
    return [ConceptPair(c, s) for c, s in zip(concepts, surrogates, strict=True)]


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from .config import MODULE_SCOPES, ErasureConfig

    d = ErasureConfig(concepts=[])
    g = p.add_argument_group("erasure settings")
    g.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    g.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    g.add_argument("--alpha", type=float, default=d.alpha, help=f"LoRA alpha; scale = alpha/rank (default {d.alpha})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate, cosine schedule (default {d.lr})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    g.add_argument(
        "--eta",
        type=float,
        default=d.eta,
        help=f"surrogate guidance of the forget target; 0 = pure self-distillation (default {d.eta})",
    )
    g.add_argument("--forget-weight", type=float, default=d.forget_weight, help=f"w_f (default {d.forget_weight})")
    g.add_argument("--retain-weight", type=float, default=d.retain_weight, help=f"w_r (default {d.retain_weight})")
    g.add_argument(
        "--saliency-mode",
        default=d.saliency_mode,
        choices=("denoise", "forget", "forget_over_retain"),
        help=f"what saliency measures (default {d.saliency_mode})",
    )
    g.add_argument(
        "--scope",
        default=d.module_scope,
        choices=MODULE_SCOPES,
        help=f"modules saliency may choose from: every Linear/Conv, attention projections, cross-attention "
        f"projections, or text (cross-attention keys and values) (default {d.module_scope})",
    )
    g.add_argument(
        "--top-k", type=int, default=d.top_k, help=f"number of modules that carry the LoRA (default {d.top_k})"
    )
    g.add_argument(
        "--channel-fraction",
        type=float,
        default=d.channel_fraction,
        help="share of output channels trained in each chosen module (row mask; default 1.0 = all)",
    )
    g.add_argument(
        "--timesteps",
        default=d.timestep_mode,
        choices=("profile", "uniform"),
        help=f"timestep sampling (default {d.timestep_mode})",
    )
    g.add_argument(
        "--gamma", type=float, default=d.profile_gamma, help=f"p(t) ~ d(t)^gamma (default {d.profile_gamma})"
    )
    g.add_argument(
        "--floor", type=float, default=d.profile_floor, help=f"uniform share of p(t) (default {d.profile_floor})"
    )
    g.add_argument(
        "--images-per-prompt",
        type=int,
        default=d.images_per_prompt,
        help=f"forget images per prompt (default {d.images_per_prompt})",
    )
    g.add_argument(
        "--forget-image-dir",
        metavar="DIR",
        help="use your own images of the concept (PNG/JPEG, cropped to a square) instead of generating them; "
        "image i goes with forget prompt i mod n",
    )
    g.add_argument(
        "--retain-image-dir",
        metavar="DIR",
        help="use your own images of what must not change instead of generating them; "
        "image i goes with retain prompt i mod n",
    )
    g.add_argument(
        "--surrogate-images-per-prompt",
        type=int,
        default=d.surrogate_images_per_prompt,
        help="images of each surrogate prompt added to the forget pool, so the erased model also agrees with the "
        f"surrogate where its own sampling goes; 0 turns it off (default {d.surrogate_images_per_prompt})",
    )
    g.add_argument(
        "--retain-images", type=int, default=d.retain_images, help=f"retain images (default {d.retain_images})"
    )
    g.add_argument(
        "--retain-prompt", action="append", help="a prompt that must not change (repeatable; default: automatic)"
    )
    g.add_argument("--seed", type=int, default=d.seed, help=f"seed of every random draw (default {d.seed})")


def _config_from_args(args: argparse.Namespace):
    from .config import ErasureConfig

    return ErasureConfig(
        concepts=_concept_pairs(args),
        base_model=args.model,
        retain_prompts=args.retain_prompt,
        images_per_prompt=args.images_per_prompt,
        surrogate_images_per_prompt=args.surrogate_images_per_prompt,
        forget_image_dir=args.forget_image_dir,
        retain_image_dir=args.retain_image_dir,
        retain_images=args.retain_images,
        saliency_mode=args.saliency_mode,
        module_scope=args.scope,
        top_k=args.top_k,
        channel_fraction=args.channel_fraction,
        timestep_mode=args.timesteps,
        profile_gamma=args.gamma,
        profile_floor=args.floor,
        rank=args.rank,
        alpha=args.alpha,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eta=args.eta,
        forget_weight=args.forget_weight,
        retain_weight=args.retain_weight,
        seed=args.seed,
    ).validate()


def _check_output(path: Path, suffix: str) -> Path:
    if path.suffix.lower() != suffix:
        raise UsageError(f"output {path} should end in {suffix}")
    if path.exists() and path.is_dir():
        raise UsageError(f"output {path} is a folder; give a file name ending in {suffix}")
    return path


def _stage_printer(stage: str) -> None:
    print(f"[spare] {stage} ...", file=sys.stderr)


def _progress_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="training", unit="step")

    def update(report) -> None:
        bar.n = report.step
        bar.set_postfix(loss=f"{report.loss:.4f}", refresh=False)
        bar.refresh()
        if report.step >= report.total:
            bar.close()

    return update


# --------------------------------------------------------------------------- commands


def _prepare_sets(args: argparse.Namespace):
    """Validated config, output path, backend, prompt set and forget/retain data of a profile/saliency run."""
    from .erasure import build_training_data
    from .models import open_backend
    from .prompts import build_prompt_set

    config = _config_from_args(args)
    out = _check_output(args.out, ".json")
    backend = open_backend(args.model, args.device, args.dtype)
    prompts = build_prompt_set(config, backend.arch == "toy")
    _stage_printer("generating forget and retain images")
    data = build_training_data(backend, config, prompts, args.cache_dir)
    return config, out, backend, prompts, data


def _cmd_profile(args: argparse.Namespace) -> int:
    """Measure where in the denoising trajectory the concept is decided (timestep profile)."""
    from .erasure import build_profile
    from .timesteps import plot_profile

    config, out, backend, prompts, data = _prepare_sets(args)
    _stage_printer("measuring the timestep profile")
    profile = build_profile(backend, config, prompts, data, backend.arch == "toy")
    profile.save(out)
    if args.plot:
        plot_profile(profile, args.plot)
    print(f"wrote {out}; the concept is decided most around t={profile.peak()}")
    return 0


def _cmd_saliency(args: argparse.Namespace) -> int:
    """Rank the model's modules by how much they carry the concept."""
    from .erasure import concept_saliency
    from .saliency import plot_saliency
    from .timesteps import TimestepSampler

    config, out, backend, prompts, data = _prepare_sets(args)
    _stage_printer(f"computing {config.saliency_mode} saliency")
    sampler = TimestepSampler.uniform(backend.num_train_timesteps)
    saliency, modules = concept_saliency(backend, config, prompts, data, sampler)
    saliency.save(out)
    if args.plot:
        plot_saliency(saliency, args.plot, modules)
    print(f"wrote {out}; top {len(modules)} modules:")
    for name in modules:
        print(f"  {saliency.module_scores[name]:.4g}  {name}")
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    """Erase concepts: train a sparse LoRA by self-distillation and write it as a kohya LoRA file."""
    from .erasure import erase
    from .lora_io import config_from_file, save_adapter
    from .models import open_backend

    out = _check_output(args.out, ".safetensors")
    if args.from_file:
        config = config_from_file(args.from_file).validate()
        if args.concept:
            raise UsageError("--from re-runs a stored erasure; do not combine it with --concept")
        model = args.model if args.model != "toy" else config.base_model
    else:
        config = _config_from_args(args)
        model = args.model
    backend = open_backend(model, args.device, args.dtype)
    result = erase(
        backend,
        config,
        progress=_progress_bar(config.steps),
        cache_dir=args.cache_dir,
        checkpoint_path=args.checkpoint,
        stage=_stage_printer,
    )
    extra = {
        "selected_modules_scores": {m: result.saliency.module_scores[m] for m in result.selected_modules},
        "seconds": result.seconds,
        "final_loss": result.history.losses[-1],
    }
    if result.profile is not None:
        extra["profile_peak"] = result.profile.peak()
    save_adapter(out, result.adapter, backend, config, extra)
    if args.plots:
        from .saliency import plot_saliency
        from .timesteps import plot_profile

        args.plots.mkdir(parents=True, exist_ok=True)
        plot_saliency(result.saliency, args.plots / "saliency.png", result.selected_modules)
        if result.profile is not None:
            plot_profile(result.profile, args.plots / "profile.png")
    size_kb = out.stat().st_size / 1024
    print(
        f"wrote {out} ({size_kb:.1f} KiB, {len(result.selected_modules)} modules, "
        f"{result.adapter.num_trainable()} trainable weights) in {sum(result.seconds.values()):.0f} s"
    )
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    """Generate images for a prompt on fixed seeds, with or without a LoRA, to a PNG grid."""
    from .fileio import save_png
    from .lora_io import load_adapter
    from .models import open_backend
    from .toy.evaluate import grid_image

    out = _check_output(args.out, ".png")
    if not args.prompt or not all(p.strip() for p in args.prompt):
        raise UsageError("give at least one non-empty --prompt")
    backend = open_backend(args.model, args.device, args.dtype)
    seeds = args.seeds
    prompts = [p for p in args.prompt for _ in seeds]
    all_seeds = [s for _ in args.prompt for s in seeds]
    if args.lora:
        adapter, _ = load_adapter(args.lora, backend)
        with adapter.applied(args.strength):
            images = backend.sample(prompts, all_seeds, args.steps, args.guidance)
    else:
        images = backend.sample(prompts, all_seeds, args.steps, args.guidance)
    save_png(grid_image(images, args.prompt, [f"seed {s}" for s in seeds], scale=args.scale), out)
    print(f"wrote {out} ({len(args.prompt)} prompts x {len(seeds)} seeds)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Print what a LoRA file holds: base model, concepts, settings, modules."""
    from .lora_file import read_safetensors

    tensors, metadata = read_safetensors(Path(args.file))
    layers = sorted({k.split(".", 1)[0] for k in tensors})
    print(f"file:        {args.file} ({Path(args.file).stat().st_size / 1024:.1f} KiB)")
    print(f"base model:  {metadata.get('spare_base_model', metadata.get('ss_base_model_version', 'unknown'))}")
    print(f"arch:        {metadata.get('spare_arch', metadata.get('ss_base_model_version', 'unknown'))}")
    print(f"rank/alpha:  {metadata.get('ss_network_dim', '?')}/{metadata.get('ss_network_alpha', '?')}")
    if "spare_concepts" in metadata:
        for concept, surrogate in json.loads(metadata["spare_concepts"]):
            print(f"erases:      {concept!r} -> {surrogate!r}")
    if "spare_config" in metadata:
        config = json.loads(metadata["spare_config"])
        config.pop("concepts", None)
        print("settings:    " + ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if v not in (None, {}, [])))
    else:
        print("settings:    (not a SPARE file: no erasure settings stored)")
    print(f"modules ({len(layers)}):")
    for layer in layers:
        down = tensors.get(f"{layer}.lora_down.weight")
        shape = "x".join(str(s) for s in down.shape) if down is not None else "?"
        print(f"  {layer}  down {shape}")
    return 0


def _cmd_toy_grid(args: argparse.Namespace) -> int:
    """Render the toy model's full object x style grid and report how the classifiers read it."""
    import torch

    from .fileio import save_png, write_json
    from .toy.evaluate import generate_grid, grid_image
    from .toy.pipeline import load_toy_classifiers, load_toy_pipeline
    from .toy.world import EVAL_TEMPLATE, OBJECTS, STYLES

    torch.manual_seed(0)
    start = time.time()
    pipe = load_toy_pipeline()
    object_clf, style_clf = load_toy_classifiers()
    result = generate_grid(
        pipe, object_clf, style_clf, seeds=[args.seed], steps=args.steps, guidance_scale=args.guidance
    )
    wrong = (result.object_pred != result.object_labels) | (result.style_pred != result.style_labels)
    out: Path = args.out
    save_png(grid_image(result.images, OBJECTS, STYLES, marks=wrong), out / "toy_grid.png")
    report = {
        "prompt_template": EVAL_TEMPLATE,
        "seed": args.seed,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "generations": len(result.images),
        "object_accuracy": result.object_accuracy,
        "style_accuracy": result.style_accuracy,
        "seconds": round(time.time() - start, 2),
    }
    write_json(out / "toy_grid.json", report)
    print(f"wrote {out / 'toy_grid.png'} ({len(OBJECTS)} objects x {len(STYLES)} styles, seed {args.seed})")
    print(
        f"classifiers recognise the object in {result.object_accuracy:.1%} and the style in "
        f"{result.style_accuracy:.1%} of the {len(result.images)} generations (red frames: misread); "
        f"{report['seconds']:.1f} s"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Erase one toy style end to end and write before/after, plots, the LoRA and report.json."""
    from .demo import run_demo

    run_demo(args.out, concept=args.concept_name, surrogate=args.surrogate_name, seed=args.seed)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spare", description="SPARE: erase a concept from a text-to-image diffusion model with a sparse LoRA."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, **kw):
        p = sub.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__, **kw)
        p.set_defaults(func=func)
        return p

    p = command("profile", _cmd_profile)
    _add_model_options(p)
    _add_concept_options(p)
    _add_training_options(p)
    p.add_argument("--out", type=Path, default=Path("profile.json"), help="profile file (.json; default profile.json)")
    p.add_argument("--plot", type=Path, help="also save the profile plot to this PNG")
    p.add_argument("--cache-dir", type=Path, help="keep generated forget/retain sets here for re-use")

    p = command("saliency", _cmd_saliency)
    _add_model_options(p)
    _add_concept_options(p)
    _add_training_options(p)
    p.add_argument(
        "--out", type=Path, default=Path("saliency.json"), help="saliency file (.json; default saliency.json)"
    )
    p.add_argument("--plot", type=Path, help="also save the saliency bar chart to this PNG")
    p.add_argument("--cache-dir", type=Path, help="keep generated forget/retain sets here for re-use")

    p = command("erase", _cmd_erase)
    _add_model_options(p)
    _add_concept_options(p, required=False)
    _add_training_options(p)
    p.add_argument("--out", type=Path, required=True, help="the LoRA file to write (.safetensors)")
    p.add_argument("--from", dest="from_file", type=Path, help="re-run the erasure stored in this SPARE LoRA file")
    p.add_argument("--plots", type=Path, help="folder for the profile and saliency plots")
    p.add_argument("--cache-dir", type=Path, help="keep generated forget/retain sets here for re-use")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file: saved during training, resumed from if present")

    p = command("generate", _cmd_generate)
    _add_model_options(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several rows)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="noise seeds, one column each")
    p.add_argument("--lora", type=Path, help="a LoRA file to apply")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength (default 1.0; 0 = off)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    p.add_argument("--scale", type=int, default=4, help="pixel upscale of the grid (default 4)")
    p.add_argument("--out", type=Path, default=Path("generated.png"), help="grid image (.png)")

    p = command("inspect", _cmd_inspect)
    p.add_argument("file", help="a LoRA .safetensors file")

    p = command("toy-grid", _cmd_toy_grid)
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the grid and its report")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the grid (default 0)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")

    p = command("demo", _cmd_demo)
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default outputs)")
    p.add_argument("--concept", dest="concept_name", default="red", help="toy style or object to erase (default red)")
    p.add_argument("--surrogate", dest="surrogate_name", default="plain", help="what to draw instead (default plain)")
    p.add_argument("--seed", type=int, default=0, help="seed of the erasure (default 0)")
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (e.g. transformers' note that torchvision is missing) off the terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .lora_file import LoraFileError
    from .toy.pipeline import ToyWeightsError
    from .trainer import ErasureCancelled

    try:
        return args.func(args)
    except (UsageError, ValueError, LoraFileError, ToyWeightsError, FileNotFoundError) as exc:
        print(f"spare {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ErasureCancelled, KeyboardInterrupt):
        print(f"spare {args.command}: cancelled; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
