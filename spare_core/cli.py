"""The ``spare`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("spare")


def _cmd_demo(args: argparse.Namespace) -> int:
    """Render the toy model's object x style grid and report classifier accuracy."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spare", description="SPARE: erase a concept from a text-to-image diffusion model."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help=_cmd_demo.__doc__, description=_cmd_demo.__doc__)
    demo.add_argument(
        "--out", type=Path, default=Path("outputs"), help="folder for the grid and its report (default: outputs)"
    )
    demo.add_argument("--seed", type=int, default=0, help="noise seed of the grid (default 0)")
    demo.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    demo.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
