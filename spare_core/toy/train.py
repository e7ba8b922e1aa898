"""Train the toy canvas model and its classifiers from a seed.

    python -m spare_core.toy.train --out spare_core/toy/weights

Trains the object and style classifiers, then the text encoder and UNet
jointly (v-prediction, plain MSE, EMA of the weights), and writes
safetensors files plus a manifest (sha256, configs, command, step count). The
run checkpoints every ``--checkpoint-every`` steps and resumes from its last
checkpoint when started again with the same ``--out`` (``--restart`` ignores
it). Every batch is drawn from a generator seeded by (seed, step), so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from ..checkpoint import load_optimizer_tensors, optimizer_tensors
from ..fileio import save_safetensors, write_json
from .classifier import CLASSIFIER_FILES, train_classifiers
from .model import (
    DDIM_EXTRA,
    SCHEDULER_CONFIG,
    TEXT_ENCODER_CONFIG,
    UNET_CONFIG,
    build_text_encoder,
    build_train_scheduler,
    build_unet,
)
from .text import build_tokenizer
from .world import sample_batch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "train_state.safetensors"


class Trainer:
    """Joint text-encoder + UNet training with EMA and resumable state."""

    def __init__(self, seed: int, steps: int, batch_size: int, lr: float, ema_decay: float, min_snr_gamma: float):
        torch.manual_seed(seed)
        self.seed, self.steps, self.batch_size = seed, steps, batch_size
        self.lr, self.ema_decay, self.min_snr_gamma = lr, ema_decay, min_snr_gamma
        self.tokenizer = build_tokenizer()
        self.text_encoder = build_text_encoder()
        self.unet = build_unet()
        self.scheduler = build_train_scheduler()
        self.modules = {"text_encoder": self.text_encoder, "unet": self.unet}
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
        self.ema = {
            name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in self.modules.items()
        }
        alphas = self.scheduler.alphas_cumprod
        self.snr = alphas / (1 - alphas)
        self.step = 0

    def learning_rate(self, step: int) -> float:
        warmup = 200
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_step(self) -> float:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        images, samples = sample_batch(self.batch_size, gen)
        latents = F.pixel_unshuffle(images, 2)
        ids = self.tokenizer(
            [s.caption for s in samples],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (self.batch_size,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        noisy = self.scheduler.add_noise(latents, noise, t)
        pred = self.unet(noisy, t, self.text_encoder(ids)[0]).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        if self.min_snr_gamma > 0:
            # min-SNR-gamma weighting (Hang et al. 2023) for epsilon prediction. Measured here
            # with the cosine schedule: it starves the low-noise steps and DDIM samples keep a
            # speckle of the initial noise, so the default is plain MSE.
            per_sample = per_sample * torch.clamp(self.snr[t], max=self.min_snr_gamma) / self.snr[t]
        loss = per_sample.mean()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()], 1.0)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        for name, module in self.modules.items():
            for k, v in module.state_dict().items():
                ema = self.ema[name][k]
                if v.dtype.is_floating_point:
                    ema.mul_(decay).add_(v, alpha=1 - decay)
                else:
                    ema.copy_(v)

    # ------------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self.modules.items():
            for k, v in module.state_dict().items():
                tensors[f"model.{name}.{k}"] = v
                tensors[f"ema.{name}.{k}"] = self.ema[name][k]
        tensors.update(optimizer_tensors(self.optimizer))
        tensors["step"] = torch.tensor(self.step)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, module in self.modules.items():
            prefix, ema_prefix = f"model.{name}.", f"ema.{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            self.ema[name] = {k[len(ema_prefix) :]: v.clone() for k, v in tensors.items() if k.startswith(ema_prefix)}
        load_optimizer_tensors(self.optimizer, tensors)
        self.step = int(tensors["step"])


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m spare_core.toy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the weights, manifest and checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--steps", type=int, default=5000, help="diffusion training steps (default 5000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument(
        "--min-snr-gamma", type=float, default=0.0, help="min-SNR loss weighting gamma; 0 (default) is plain MSE"
    )
    p.add_argument("--classifier-steps", type=int, default=800)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    classifier_files = [out / name for name in CLASSIFIER_FILES]
    if args.restart or not all(f.exists() for f in classifier_files):
        start = time.time()
        bar = tqdm(total=args.classifier_steps, desc="classifiers", unit="step")
        classifiers = train_classifiers(
            args.classifier_steps,
            args.seed,
            on_step=lambda s, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
        )
        bar.close()
        for clf, path in zip(classifiers, classifier_files, strict=True):
            save_safetensors(clf.state_dict(), path)
        timings["classifier_seconds"] = round(time.time() - start, 1)
    else:
        logger.info("classifiers already trained in %s, keeping them", out)

    trainer = Trainer(args.seed, args.steps, args.batch_size, args.lr, args.ema_decay, args.min_snr_gamma)
    checkpoint = out / "checkpoint" / CHECKPOINT_NAME
    elapsed_before = 0.0
    if checkpoint.exists() and not args.restart:
        trainer.load_state_tensors(load_file(checkpoint))
        progress_file = checkpoint.with_suffix(".json")
        if progress_file.exists():
            elapsed_before = json.loads(progress_file.read_text())["elapsed_seconds"]
        logger.info("resuming from step %d (%s)", trainer.step, checkpoint)
    first_step = trainer.step

    start = time.time()
    bar = tqdm(total=args.steps, initial=trainer.step, desc="diffusion", unit="step")
    while trainer.step < args.steps:
        loss = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if trainer.step % args.checkpoint_every == 0 or trainer.step == args.steps:
            save_safetensors(trainer.state_tensors(), checkpoint)
            write_json(
                checkpoint.with_suffix(".json"),
                {"step": trainer.step, "elapsed_seconds": elapsed_before + time.time() - start},
            )
    bar.close()
    timings["diffusion_seconds"] = round(elapsed_before + time.time() - start, 1)

    save_safetensors(trainer.ema["unet"], out / "unet.safetensors")
    save_safetensors(trainer.ema["text_encoder"], out / "text_encoder.safetensors")
    files = ["unet.safetensors", "text_encoder.safetensors", *CLASSIFIER_FILES]
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    command = "python -m spare_core.toy.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    previous = manifest.get("training", {}) if first_step > 0 else {}
    if "classifier_seconds" not in timings and "classifier_seconds" in previous:
        timings["classifier_seconds"] = previous["classifier_seconds"]
    # A model resumed with more --steps than its first run had is the work of several commands: list them all.
    runs = [*previous.get("runs", []), {"command": command, "from_step": first_step, "to_step": args.steps}]
    manifest.update(
        {
            "files": {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size} for name in files},
            "unet_config": UNET_CONFIG,
            "text_encoder_config": TEXT_ENCODER_CONFIG,
            "scheduler_config": {**SCHEDULER_CONFIG, **DDIM_EXTRA},
            "training": {
                "command": command,
                "runs": runs,
                "seed": args.seed,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "ema_decay": args.ema_decay,
                "min_snr_gamma": args.min_snr_gamma,
                "classifier_steps": args.classifier_steps,
                "torch": torch.__version__,
                **timings,
            },
        }
    )
    write_json(manifest_path, manifest)
    logger.info("wrote %s", ", ".join(files))


if __name__ == "__main__":
    main()
