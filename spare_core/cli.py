"""The ``spare`` command line: profile, saliency, erase, generate, inspect, eval, batch, convert, toy-grid, app, demo.

A thin front end over the public API (``spare_core.__all__``): it turns options
into settings and API calls, and results into files. The erasure settings'
options are generated from the settings schema (:data:`spare_core.SETTINGS`),
named after the settings (``--top-k`` for ``top_k``). Every command works on the
shipped toy model by default (``--model toy``). Bad input ends with one line on
stderr and exit status 2, before any work starts where it can be checked
then; no output file is ever left half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger("spare")


class UsageError(ValueError):
    """A bad command-line value; the message says what to change."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# --------------------------------------------------------------------------- options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="'toy' (the shipped toy model, default), a Stable Diffusion 1.x/2.x/SDXL .safetensors checkpoint file, "
        "or a local diffusers pipeline folder",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="model weights dtype (default fp32); adapter weights always train in fp32",
    )


def _add_concept_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--concept", action="append", help="concept to erase (repeat for several, e.g. --concept red --concept circle)"
    )
    p.add_argument(
        "--surrogate",
        action="append",
        help="what to draw instead: one for all concepts, or one per --concept in the same order",
    )


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return "automatic" if not value else ", ".join(value)
    if value == "":
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_setting_options(p: argparse.ArgumentParser) -> None:
    """One option per setting of the schema; given options override the defaults (or a stored erasure)."""
    from . import SETTINGS

    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in SETTINGS:
        group = groups.get(s.group) or groups.setdefault(s.group, p.add_argument_group(f"{s.group} settings"))
        details = [f"default {_format_default(s.default)}"] + ([s.range_text()] if s.range_text() else [])
        text = f"{s.help} ({'; '.join(details)})" + (" [advanced]" if s.advanced else "")
        names = [s.option, *s.aliases]
        kw: dict[str, Any] = dict(dest=s.name, default=argparse.SUPPRESS, help=text)
        if s.kind == "bool":
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif s.kind == "list":
            group.add_argument(*names, action="append", metavar="TEXT", **kw)
        elif s.kind == "choice":
            group.add_argument(*names, choices=s.choices, **kw)
        else:
            number = {"int": int, "float": float, "str": str}[s.kind]
            group.add_argument(*names, type=number, metavar={"str": "TEXT"}.get(s.kind, s.kind.upper()), **kw)


#: `spare eval --attacks` values (the harness's attacks; the command line names them without importing torch).
ATTACK_CHOICES = ("neighbours", "rephrasing", "inversion")


def _attacks(values: list[str]) -> list[str]:
    """The attacks `--attacks` names: some of :data:`ATTACK_CHOICES`, ``all`` or ``none`` (alone)."""
    if len(values) > 1 and {"all", "none"} & set(values):
        raise UsageError(f"--attacks {' '.join(values)}: give 'all' or 'none' alone, or some of the attacks")
    if values == ["all"]:
        return list(ATTACK_CHOICES)
    if values == ["none"]:
        return []
    return list(dict.fromkeys(values))


def _concept_pairs(args: argparse.Namespace) -> list:
    from . import pair_concepts

    if not args.concept:
        raise UsageError("no --concept given: name what to erase")
    if not args.surrogate:
        raise UsageError("no --surrogate given: name what the model should draw instead")
    return pair_concepts(args.concept, args.surrogate)


def _resolve_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any], str]:
    """The validated settings, the options that override them, and the model to open."""
    from . import SETTINGS, ErasureConfig, read_lora

    overrides = {s.name: getattr(args, s.name) for s in SETTINGS if hasattr(args, s.name)}
    from_file = getattr(args, "from_file", None)
    if from_file is not None:
        if args.concept or args.surrogate:
            raise UsageError("--from re-runs a stored erasure; do not combine it with --concept or --surrogate")
        stored = read_lora(from_file).config()
        model = args.model or stored.base_model
        base = stored
    else:
        model = args.model or "toy"
        base = ErasureConfig(concepts=_concept_pairs(args))
    base.base_model = model
    config = base.with_settings(**overrides).validate()
    return config, (overrides if from_file is not None else {}), model


def _check_output(path: Path, suffix: str) -> Path:
    if path.suffix.lower() != suffix:
        raise UsageError(f"output {path} should end in {suffix}")
    if path.exists() and path.is_dir():
        raise UsageError(f"output {path} is a folder; give a file name ending in {suffix}")
    return path


class _ProgressBars:
    """Turns the engine's events into one progress bar per stage (on stderr)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            self.bar = tqdm(total=event.total, desc=event.stage, unit="", file=sys.stderr, leave=True)
        self.bar.total = event.total
        self.bar.n = event.step
        if event.loss is not None:
            self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # also when the run fails or is cancelled, so the error line stands on its own


@contextmanager
def _cancel_on_ctrl_c() -> Iterator:
    """A cancel token that the first Ctrl-C sets (the run stops at its next check); a second one stops at once."""
    from . import CancelToken

    token = CancelToken()
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def handler(signum, frame) -> None:
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel("cancelled with Ctrl-C")
        print("\n[spare] stopping at the next step (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield token
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- commands


def _prepare(args: argparse.Namespace, suffix: str, bars: _ProgressBars):
    """Validated config, output path, backend and sets of a profile/saliency run (settings checked first)."""
    from . import open_model, prepare_sets

    config, _, model = _resolve_config(args)
    out = _check_output(args.out, suffix)
    backend = open_model(model, args.device, args.dtype)
    sets = prepare_sets(backend, config, cache_dir=args.cache_dir, on_event=bars)
    return config, out, backend, sets


def _cmd_profile(args: argparse.Namespace) -> int:
    """Measure where in the denoising trajectory the concept is decided (timestep profile)."""
    from . import measure_profile, plot_profile

    with _ProgressBars() as bars:
        config, out, backend, sets = _prepare(args, ".json", bars)
        profile = measure_profile(backend, config, sets, on_event=bars)
    profile.save(out)
    if args.plot:
        plot_profile(profile, args.plot)
    print(f"wrote {out}; the concept is decided most around t={profile.peak()}")
    return 0


def _cmd_saliency(args: argparse.Namespace) -> int:
    """Rank the model's modules by how much they carry the concept, and select those erase would train."""
    from . import measure_profile, plot_saliency, select_modules

    with _ProgressBars() as bars:
        config, out, backend, sets = _prepare(args, ".json", bars)
        profile = measure_profile(backend, config, sets, on_event=bars) if config.timestep_mode == "profile" else None
        saliency = select_modules(backend, config, sets, profile, on_event=bars)
    saliency.save(out)
    if args.plot:
        plot_saliency(saliency, args.plot, saliency.selected)
    print(f"wrote {out}; {len(saliency.selected)} modules selected:")
    for name in saliency.selected:
        print(f"  {saliency.module_scores[name]:.4g}  {name}")
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    """Erase concepts: train a sparse LoRA by self-distillation and write it as a kohya LoRA file."""
    from . import Saliency, TimestepProfile, build_lora, erase, open_model, plot_profile, plot_saliency

    if args.out is None and not args.dry_run:
        raise UsageError("give --out FILE.safetensors: the LoRA file to write")
    out = _check_output(args.out, ".safetensors") if args.out is not None else None
    config, overrides, model = _resolve_config(args)
    if args.dry_run:
        resolved = {
            "model": model,
            "concepts": [[p.concept, p.surrogate] for p in config.concepts],
            "settings": config.settings(),
            "overrides": overrides,
        }
        print(json.dumps(resolved, indent=2))
        return 0
    profile = _load_stage(TimestepProfile, args.profile, "profile")
    saliency = _load_stage(Saliency, args.saliency, "saliency")
    backend = open_model(model, args.device, args.dtype)
    with _ProgressBars() as bars, _cancel_on_ctrl_c() as token:
        result = erase(
            backend,
            config,
            cache_dir=args.cache_dir,
            on_event=bars,
            cancel=token,
            checkpoint=args.checkpoint,
            profile=profile,
            saliency=saliency,
        )
    lora = build_lora(result, backend, overrides=overrides)
    if args.plots:
        plot_saliency(result.saliency, args.plots / "saliency.png", result.selected_modules)
        if result.profile is not None:
            plot_profile(result.profile, args.plots / "profile.png")
    lora.write(out)
    if args.checkpoint is not None and Path(args.checkpoint).exists():
        Path(args.checkpoint).unlink()  # the run finished: its checkpoint has served
    size_kb = out.stat().st_size / 1024
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(
        f"wrote {out} ({size_kb:.1f} KiB, {len(result.selected_modules)} modules, "
        f"{result.adapter.num_trainable()} trainable weights; {timing})"
    )
    return 0


def _load_stage(kind, path: Path | None, what: str):
    if path is None:
        return None
    if not Path(path).is_file():
        raise UsageError(f"{what} file {path} not found; write one with `spare {what} --out {path}`")
    return kind.load(path)


def _cmd_generate(args: argparse.Namespace) -> int:
    """Generate images for prompts on fixed seeds, with or without a LoRA, to a PNG grid."""
    from . import generate_images, grid_image, open_model, read_lora, save_png

    out = _check_output(args.out, ".png")
    if not args.prompt or not all(p.strip() for p in args.prompt):
        raise UsageError("give at least one non-empty --prompt")
    lora = read_lora(args.lora) if args.lora else None
    backend = open_model(args.model or "toy", args.device, args.dtype)
    with _ProgressBars() as bars:
        images = generate_images(
            backend, args.prompt, args.seeds, lora, args.strength, args.steps, args.guidance, on_event=bars
        )
    save_png(grid_image(images, args.prompt, [f"seed {s}" for s in args.seeds], scale=args.scale), out)
    print(f"wrote {out} ({len(args.prompt)} prompts x {len(args.seeds)} seeds)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Print what a LoRA file holds: base model, concepts, settings, modules."""
    from . import read_lora

    info = read_lora(Path(args.file)).describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"file:        {args.file} ({info['bytes'] / 1024:.1f} KiB)")
    print(f"base model:  {info['base_model']}")
    print(f"arch:        {info['arch']}")
    print(f"rank/alpha:  {info['rank']}/{info['alpha']}")
    for concept, surrogate in info["concepts"]:
        print(f"erases:      {concept!r} -> {surrogate!r}")
    if info["settings"] is None:
        print("settings:    (not a SPARE file: no erasure settings stored)")
    else:
        shown = {k: v for k, v in info["settings"].items() if v not in ("", [])}
        print("settings:    " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if info["overrides"]:
        print("overrides:   " + ", ".join(f"{k}={v}" for k, v in info["overrides"].items()))
    print(f"modules ({len(info['modules'])}):")
    for m in info["modules"]:
        print(f"  {m['layer']}  down {'x'.join(str(s) for s in m['down'])}")
    skipped = info.get("skipped_text_encoder_layers") or []
    if skipped:
        print(f"text-encoder layers ({len(skipped)}; not applied by SPARE's adapter, applied by ComfyUI's loader):")
        for layer in skipped:
            print(f"  {layer}")
    return 0


def _cmd_toy_grid(args: argparse.Namespace) -> int:
    """Render the toy model's full object x style grid and report how the classifiers read it."""
    from .demo import run_toy_grid

    run_toy_grid(args.out, seed=args.seed, steps=args.steps, guidance=args.guidance)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Erase one toy style end to end and write before/after, plots, the LoRA and report.json."""
    from .demo import run_demo

    run_demo(args.out, concept=args.concept_name, surrogate=args.surrogate_name, seed=args.seed)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Convert a pickled PyTorch weights file (.pth, .pt, .ckpt) to safetensors, safely."""
    from . import convert_to_safetensors

    out = args.out or Path(args.file).with_suffix(".safetensors")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    summary = convert_to_safetensors(args.file, out)
    print(f"wrote {out} ({summary['tensors']} tensors, {summary['parameters']:,} values, {summary['bytes']:,} bytes)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate erasures on the toy world: UA, IRA, CRA, surrogate rate with intervals, on both templates."""
    from . import (
        BaseGrids,
        evaluate_edit,
        load_edit,
        open_model,
        pair_concepts,
        plot_prompt_matrix,
        report_markdown,
        write_json,
        write_text,
    )

    if args.protocol == "unlearncanvas":
        return _eval_unlearncanvas(args)
    if (args.model or "toy") != "toy":
        raise UsageError("on a real model use --protocol unlearncanvas with the benchmark's model and classifiers")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    attacks = _attacks(args.attacks)
    for path in args.edits:
        if not Path(path).is_file():
            raise UsageError(
                f"{path} not found: give a LoRA (.safetensors) or a full-weight delta (.delta.safetensors)"
            )
    backend = open_model("toy", args.device, args.dtype)
    base = BaseGrids(args.steps, args.guidance)
    for path in args.edits:
        edit, stored = load_edit(path, backend)
        if args.concept:
            pairs = _concept_pairs(args)
        elif stored:
            pairs = pair_concepts([c for c, _ in stored], [s for _, s in stored])
        else:
            raise UsageError(f"{path} does not say what it erases; give --concept and --surrogate")
        report = evaluate_edit(
            backend,
            pairs,
            edit,
            seeds=range(args.seeds),
            templates=args.templates,
            strength=args.strength,
            base=base,
            attacks=attacks,
        ).as_dict()
        report["file"] = str(path)
        stem = Path(path).name.split(".")[0]
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / f"{stem}.json", report)
        table = report_markdown(report)
        write_text(args.out / f"{stem}.md", f"# {Path(path).name}\n\n{table}")
        for template in args.templates:
            plot_prompt_matrix(report, template, args.out / f"{stem}_matrix_{template}.png")
        print(f"## {Path(path).name}\n\n{table}")
    print(f"wrote {args.out}/ (a JSON report, a Markdown table and per-prompt matrix plots per file)")
    return 0


def _eval_unlearncanvas(args: argparse.Namespace) -> int:
    """`spare eval --protocol unlearncanvas`: the published protocol on the user's local files."""
    from . import Event, describe_error, evaluate_unlearncanvas, load_edit, open_model, write_json, write_text

    if not args.model or args.model == "toy":
        raise UsageError("--protocol unlearncanvas needs --model: the benchmark's fine-tuned SD 1.5 checkpoint")
    for option in ("style_classifier", "object_classifier"):
        path = getattr(args, option)
        if path is None or not Path(path).is_file():
            raise UsageError(
                f"--{option.replace('_', '-')} must name the benchmark's classifier as .safetensors "
                "(convert the published .pth with `spare convert`)"
            )
    if args.inception is not None and not Path(args.inception).is_file():
        raise UsageError(
            f"--inception {args.inception} not found: give the FID Inception-v3 weights as .safetensors "
            "(convert pytorch-fid's pt_inception-2015-12-05 .pth with `spare convert`)"
        )
    if args.fid_reference is not None and (args.inception is None or not Path(args.fid_reference).is_dir()):
        raise UsageError("--fid-reference must be a folder of images, and needs --inception")
    backend = open_model(args.model, args.device, args.dtype)
    runs = []
    for path in args.edits:
        edit, stored = load_edit(path, backend)
        concepts = args.concept or [c for c, _ in stored]
        if len(concepts) != 1:
            raise UsageError(f"{path}: an UnlearnCanvas run erases one concept; give it with --concept")
        runs.append((edit, concepts[0]))
    with _ProgressBars() as bars:
        try:
            result = evaluate_unlearncanvas(
                backend, runs, args.style_classifier, args.object_classifier,
                on_batch=lambda done, total: bars(Event("preview", done, total, message="UnlearnCanvas answer set")),
                inception_path=args.inception, fid_reference=args.fid_reference,
            )  # fmt: skip
        except ValueError as exc:
            raise UsageError(describe_error(exc)) from None
    write_json(args.out / "unlearncanvas.json", result)
    with_fid = args.inception is not None
    lines = ["| run | domain | UA | IRA | CRA |" + (" FID |" if with_fid else ""),
             "|---|---|---|---|---|" + ("---|" if with_fid else "")]  # fmt: skip
    rows = [(r["target"], r) for r in result["runs"]]
    rows += [(f"average ({d}, {a['runs']} runs)", a) for d, a in result["averages"].items()]
    for name, r in rows:
        cells = [f"{r[m]['value']:.3f} [{r[m]['ci_low']:.3f}, {r[m]['ci_high']:.3f}]" for m in ("ua", "ira", "cra")]
        if with_fid:
            cells.append(f"{r['fid']:.2f}")
        lines.append(f"| {name} | {r['domain']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    write_text((args.out / "unlearncanvas").with_suffix(".md"), table)
    print(table + f"wrote {args.out / 'unlearncanvas.json'}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    """Run a list of erasures (JSON or TOML) over every process and device; see the README for accelerate launch."""
    from . import BASELINES, ProcessInfo, erasure_worker, load_jobs, run_batch

    jobs = load_jobs(args.jobs, known_methods=("spare", *BASELINES))
    for job in jobs:
        if job.method != "spare" and BASELINES[job.method].parametrisation == "full":
            if not job.output.name.endswith(".delta.safetensors"):
                raise UsageError(
                    f"job {job.index + 1}: {job.method} writes a full-weight delta; name its output *.delta.safetensors"
                )
    results = args.results or args.jobs.with_name(args.jobs.stem + "_results")
    process = ProcessInfo.from_environment()
    worker = erasure_worker(args.model or "toy", args.device, args.dtype, args.cache_dir)
    report = run_batch(jobs, worker, results, args.model or "toy", process)
    if report is None:  # not the main process: the main one reports
        return 0
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    print(f"{len(jobs)} jobs: {counts}; wrote {results / 'batch.json'}")
    for job in report.jobs:
        if job["status"] not in ("done",):
            print(f"  job {job['index'] + 1} ({Path(job['output']).name}): {job['status']}: {job.get('error', '')}")
    return 0 if all(job["status"] == "done" for job in report.jobs) else 1


# --------------------------------------------------------------------------- parser


def _cmd_app(args: argparse.Namespace) -> int:
    """Start the before/after app in the browser (gradio; on the toy model by default)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # found, not imported: the app turns analytics off first
        raise UsageError("the app needs gradio: pip install 'spare-unlearning[app]'")
    from spare_app import launch

    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1 to 65535, got {args.port}")
    launch(
        out_dir=args.out_dir,
        host=args.host,
        port=args.port,
        model=args.model or "toy",
        device=args.device,
        dtype=args.dtype,
        share=args.share,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spare", description="SPARE: erase a concept from a text-to-image diffusion model with a sparse LoRA."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func):
        p = sub.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__)
        p.set_defaults(func=func)
        return p

    cache_help = "keep generated forget/retain sets here and re-use them"
    for name, func, suffix in (("profile", _cmd_profile, "profile"), ("saliency", _cmd_saliency, "saliency")):
        p = command(name, func)
        _add_model_options(p)
        _add_concept_options(p)
        _add_setting_options(p)
        p.add_argument(
            "--out", type=Path, default=Path(f"{suffix}.json"), help=f"{suffix} file (.json; default {suffix}.json)"
        )
        p.add_argument("--plot", type=Path, help=f"also save the {suffix} plot to this PNG")
        p.add_argument("--cache-dir", type=Path, help=cache_help)

    p = command("erase", _cmd_erase)
    _add_model_options(p)
    _add_concept_options(p)
    _add_setting_options(p)
    p.add_argument("--out", type=Path, help="the LoRA file to write (.safetensors; required unless --dry-run)")
    p.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        help="re-run the erasure stored in this SPARE LoRA file; other setting options override its settings",
    )
    p.add_argument("--profile", type=Path, help="re-use a timestep profile written by `spare profile`")
    p.add_argument("--saliency", type=Path, help="re-use a module selection written by `spare saliency`")
    p.add_argument("--plots", type=Path, help="folder for the profile and saliency plots")
    p.add_argument("--cache-dir", type=Path, help=cache_help)
    p.add_argument(
        "--checkpoint", type=Path, help="training checkpoint: saved during training (kept if cancelled), resumed from"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit")

    p = command("generate", _cmd_generate)
    _add_model_options(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several rows)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="noise seeds, one column each")
    p.add_argument("--lora", type=Path, help="a LoRA file to apply")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength (default 1.0; 0 = off)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    p.add_argument(
        "--scale", type=int, default=None, help="pixel upscale of the grid (default: small images to 128 px)"
    )
    p.add_argument("--out", type=Path, default=Path("generated.png"), help="grid image (.png)")

    p = command("inspect", _cmd_inspect)
    p.add_argument("file", help="a LoRA .safetensors file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")

    p = command("convert", _cmd_convert)
    p.add_argument("file", type=Path, help="a pickled PyTorch state dict (.pth, .pt, .ckpt)")
    p.add_argument("--out", type=Path, help="the safetensors file to write (default: same name, .safetensors)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")

    p = command("eval", _cmd_eval)
    _add_model_options(p)
    _add_concept_options(p)
    p.add_argument("edits", nargs="+", type=Path, help="LoRA files or full-weight delta files (.delta.safetensors)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per object x style prompt (default 5)")
    p.add_argument(
        "--templates",
        nargs="+",
        default=["evaluation", "held_out"],
        choices=["evaluation", "held_out"],
        help="caption templates to evaluate on (default both)",
    )
    p.add_argument("--strength", type=float, default=1.0, help="strength the edit is applied at (default 1.0)")
    p.add_argument(
        "--attacks", nargs="+", default=["neighbours", "rephrasing"], choices=[*ATTACK_CHOICES, "all", "none"],
        help="toy: robustness checks per erased concept, some of neighbours rephrasing inversion, or all, or none "
        "(default: neighbours rephrasing; inversion learns a word against the erased model, a minute per concept)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    p.add_argument(
        "--out", type=Path, default=Path("outputs/eval"), help="folder for the reports (default outputs/eval)"
    )
    p.add_argument(
        "--protocol", default="toy", choices=("toy", "unlearncanvas"),
        help="toy (default: the toy world's harness) or unlearncanvas (the published protocol on --model)",
    )  # fmt: skip
    p.add_argument("--style-classifier", type=Path, help="UnlearnCanvas: the style ViT-L/16 as .safetensors")
    p.add_argument("--object-classifier", type=Path, help="UnlearnCanvas: the object ViT-L/16 as .safetensors")
    p.add_argument(
        "--inception", type=Path,
        help="UnlearnCanvas: the FID Inception-v3 as .safetensors; adds each run's FID (none without it)",
    )  # fmt: skip
    p.add_argument(
        "--fid-reference", type=Path,
        help="UnlearnCanvas: a folder of reference images for the FID (default: the unedited model's answer set)",
    )  # fmt: skip

    p = command("batch", _cmd_batch)
    p.add_argument("jobs", type=Path, help="the job list: a .json list or a .toml file of [[jobs]]")
    p.add_argument("--model", default=None, help="'toy' (default), a checkpoint file or a diffusers folder")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: this process's GPU under accelerate launch, else cpu), or a device",
    )
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="model weights dtype")
    p.add_argument("--results", type=Path, help="folder for job results and batch.json (default: JOBS_results)")
    p.add_argument("--cache-dir", type=Path, help="keep generated forget/retain sets here and re-use them")

    p = command("toy-grid", _cmd_toy_grid)
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the grid and its report")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the grid (default 0)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")

    p = command("app", _cmd_app)
    _add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--out-dir", type=Path, default=Path("outputs/app"), help="folder for the app's LoRAs and reports")
    p.add_argument("--share", action="store_true", help="also create a public gradio share link (off by default)")

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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line usage error
        return exc.code if isinstance(exc.code, int) else 2
    from . import ErasureCancelled, describe_error

    try:
        return args.func(args)
    except (ErasureCancelled, KeyboardInterrupt):
        print(f"spare {args.command}: cancelled; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure a user can cause ends as one line (SPARE_DEBUG=1 shows the traceback)
        if os.environ.get("SPARE_DEBUG"):
            raise
        print(f"spare {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
