"""Benchmark on an NVIDIA GPU: bench/cost.py's measurement at full resolution, and a whole default erasure.

The same three training steps as ``bench/cost.py`` (``spare``,
``esd_x_published``, ``esd_x_lean``; each method in its own process), at
512 px for ``sd15`` (64 x 64 latents) and 1024 px for ``sdxl`` (128 x 128),
with the UNet's random weights created directly on the GPU in fp16 (SPARE's
adapter stays fp32, as the engine makes it). Peak memory is
``torch.cuda.max_memory_reserved`` of the method's process (``peak_gpu_mb``;
the ratios use it). The batch is the same for every method of an architecture
(``--batch``; default 8 for sd15, SPARE's default, and 2 for sdxl at 1024 px).

Then, in a process of its own, a whole default SPARE erasure (sets,
profile, saliency, training: ``spare_core.erase`` with the default settings)
on a random-weight SD1.5 pipeline (the SD1.5 UNet, a one-layer CLIP text
encoder of SD1's width with the toy tokenizer, a tiny random VAE with SD's
latent channels and scale factor), opened as the engine opens diffusers
pipelines (``DiffusersBackend(pipe, arch="sd1")``), timed per stage.

    .venv/bin/python bench/gpu.py bench/results/cost_gpu.json               # on a GPU machine (a few minutes)
    .venv/bin/python bench/gpu.py /tmp/gpu.json --tiny --device cpu        # reduced widths on CPU (a check)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cost  # noqa: E402  (bench/cost.py: the measurement itself)
import torch  # noqa: E402

from spare_core import ConceptPair, ErasureConfig, build_lora, describe_error, erase, write_json  # noqa: E402

RESOLUTION = {"sd15": 512, "sdxl": 1024}
BATCH = {"sd15": 8, "sdxl": 2}
#: Settings of the whole erasure in --tiny mode (a check that every stage runs, not a timing).
TINY_ERASURE = dict(
    images_per_prompt=1,
    surrogate_images_per_prompt=1,
    retain_images=4,
    sample_steps=1,
    saliency_batches=1,
    profile_points=2,
    steps=2,
    batch_size=2,
)


# --------------------------------------------------------------------------- a whole erasure


def random_sd15_pipeline(device: str, dtype: torch.dtype, tiny: bool, latent: int):
    """A StableDiffusionPipeline of SD1.5's UNet with random weights (tests/conftest.py's sd15_pipe, on ``device``)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from spare_core.toy.text import BOS_ID, EOS_ID, PAD_ID, build_tokenizer

    unet_config = cost.unet_config("sd15", tiny, latent)
    unet = cost.build_unet(unet_config, device, dtype)
    tokenizer = build_tokenizer()
    width = unet_config["cross_attention_dim"]
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=width,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=latent * 8,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.to(device, dtype).eval(),
        text_encoder=text_encoder.to(device, dtype).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=cost.ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_erasure(spec: dict) -> dict:
    """Time a whole default erasure (every stage) on a random SD1.5 pipeline; errors are reported, not raised."""
    from spare_core.backends.diffusers_backend import DiffusersBackend

    device, dtype = spec["device"], cost.DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    if spec["tiny"]:
        torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = random_sd15_pipeline(device, dtype, spec["tiny"], spec["latent"])
    backend = DiffusersBackend(pipe, arch="sd1")
    build_seconds = time.perf_counter() - start
    config = ErasureConfig(concepts=[ConceptPair("Van Gogh", "a painter")], base_model="random-sd15")
    if spec["tiny"]:
        config = config.with_settings(**TINY_ERASURE)
    row: dict = {"settings": json.loads(config.to_json()), "build_seconds": round(build_seconds, 2)}
    start = time.perf_counter()
    try:
        result = erase(backend, config)
        cost._sync(device)
        row["seconds"] = round(time.perf_counter() - start, 2)
        row["stage_seconds"] = result.seconds
        row["lora_bytes"] = len(build_lora(result, backend).to_bytes())
        row["trainable_parameters"] = result.adapter.num_trainable()
        row["modules"] = result.selected_modules
    except Exception as exc:  # the report says what failed; the timings of the steps stand on their own
        row["error"] = describe_error(exc)
        row["traceback"] = traceback.format_exc().splitlines()[-8:]
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["peak_gpu_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1) if device == "cuda" else None
    return row


def run_erasure_child(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "erasure.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--erasure-child", json.dumps(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cost.child_env())
        except subprocess.TimeoutExpired:
            return {"error": f"the erasure took longer than {timeout:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            return {"error": f"the erasure process failed (exit {proc.returncode})", "traceback": tail}
        return json.loads(out.read_text())


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="where to write the results (JSON)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="reduced widths at 64 px, 1 step: checks that it runs")
    p.add_argument("--archs", nargs="+", default=list(cost.ARCHS), choices=list(cost.ARCHS))
    p.add_argument("--methods", nargs="+", default=list(cost.METHODS), choices=list(cost.METHODS))
    p.add_argument("--batch", type=int, help="samples per term for every method (default: 8 for sd15, 2 for sdxl)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--esd-sample-steps", type=int, default=4, help="DDIM steps of published ESD-x per iteration")
    p.add_argument("--no-erasure", action="store_true", help="skip the whole-erasure timing")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed to one process")
    p.add_argument("--erasure-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.erasure_child:
        write_json(args.out, measure_erasure(json.loads(args.erasure_child)))
        return {}
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; use --device cpu (with --tiny) to check the script on a CPU")
    dtype = "fp16" if args.device == "cuda" else "fp32"
    if args.tiny:
        args.steps, args.warmup, args.esd_sample_steps = min(args.steps, 1), min(args.warmup, 1), 2
    memory_key = "peak_gpu_mb" if args.device == "cuda" else "peak_rss_mb"
    specs = {}
    for arch in args.archs:
        latent = 8 if args.tiny else RESOLUTION[arch] // 8
        specs[arch] = {
            "arch": arch,
            "tiny": args.tiny,
            "device": args.device,
            "dtype": dtype,
            "latent": latent,
            "batch": args.batch or (1 if args.tiny else BATCH[arch]),
            "steps": args.steps,
            "warmup": args.warmup,
            "esd_sample_steps": args.esd_sample_steps,
            "threads": 1 if args.tiny else None,
        }
    start = time.perf_counter()
    rows = cost.run_all(specs, args.methods, args.timeout, memory_key)
    results = {
        "benchmark": "cost_gpu",
        "settings": {
            "device": args.device,
            "tiny": args.tiny,
            "resolution_px": {arch: spec["latent"] * 8 for arch, spec in specs.items()},
            "dtype": dtype,
            "adapter_dtype": "fp32",
            "batch": {arch: spec["batch"] for arch, spec in specs.items()},
            "batch_note": "samples per term for every method: SPARE's forget and retain terms each, ESD's one term",
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "esd_sample_steps": args.esd_sample_steps,
            "esd_ddim_schedule": cost.ESD_DDIM_STEPS,
            "weights": f"random, created directly on the {args.device} in {dtype}",
            "spare_modules": "the first top_k candidates of the default module_scope (no saliency run)",
            "memory": (
                "peak_gpu_mb: torch.cuda.max_memory_reserved of each method's own process"
                if args.device == "cuda"
                else "peak_rss_mb: ru_maxrss of each method's own process"
            ),
            "memory_key": memory_key,
        },
        "versions": cost.versions(),
        "machine": cost.machine(),
        **rows,  # one top-level entry per architecture: sd15, sdxl
    }
    if not args.no_erasure:
        print("whole default erasure (sd15) ...", flush=True)
        spec = {"device": args.device, "dtype": dtype, "tiny": args.tiny, "latent": specs.get("sd15", {}).get("latent")}
        spec["latent"] = spec["latent"] or (8 if args.tiny else RESOLUTION["sd15"] // 8)
        erasure = run_erasure_child(spec, args.timeout)
        results["erasure"] = erasure
        if "error" in erasure:
            print(f"  failed: {erasure['error']}", flush=True)
        else:
            print(f"  {erasure['seconds']:.1f} s in all; stages {erasure['stage_seconds']}", flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    cost.report(results, memory_key, args.out)
    return results


if __name__ == "__main__":
    main()
