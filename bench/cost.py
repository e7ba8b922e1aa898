"""Benchmark: what one erasure training step costs on full-size UNets, SPARE beside ESD-x.

For each architecture (``sd15``: the SD1.5 UNet's shapes; ``sdxl``: the SDXL
base UNet's shapes), built directly as a diffusers ``UNet2DConditionModel``
with random weights (speed does not depend on the weights) and fed random
text conditioning of the right shapes, the training steps of three methods are
timed, each method in its own subprocess so that its peak memory is its own:

* ``spare``: one step of the engine's own trainer (``SelfDistillationTrainer``)
  with a ``SparseLoRA`` of the default rank on the default ``top_k`` modules of
  the default ``module_scope`` (``attention``: q, k, v and out of self- and cross-attention).
  The modules are the first ``top_k`` candidates, not saliency's pick (the cost
  is the same: they have the shapes saliency chooses from). Teacher: the same
  UNet with the adapter detached (no copy). Default loss: eta 1, so the teacher
  predicts surrogate, concept and retain, the student concept and retain.
  Timesteps are drawn uniformly (the profile's distribution costs the same).
* ``esd_x_published``: ESD-x as published (Gandikota et al. 2023, "Erasing
  Concepts from Diffusion Models", ICCV): full fine-tuning (Adam) of every
  parameter of the Linear/Conv2d modules whose name contains ``attn2`` (the ESD
  code's ``xattn``/``esd-x`` selection), a frozen copy of the UNet beside the
  trained one, and ``x_t`` drawn each iteration by guided DDIM sampling
  (guidance 3, a 50-step schedule) from the trained model. ESD draws a random
  number of those steps (0..49, 24.5 on average); here every iteration runs a
  fixed ``--esd-sample-steps`` (stated in the results), and the per-step
  sampling time is also measured so that ``step_seconds_esd_schedule``
  extrapolates to ESD's average. Loss:
  ``MSE(eps(x_t, c), eps*(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, "")))``,
  ``eps*`` the frozen copy, eta 1 (:func:`esd_target`).
* ``esd_x_lean``: the same objective and parameters without the copy: the
  teacher passes run the trained UNet with the cross-attention weights'
  original values (``torch.func.functional_call`` over a frozen copy of those
  weights only), and ``x_t`` is a random base latent noised forward to a
  random timestep (no sampling).

Each method gets the same batch (``--batch``; SPARE's forget and retain terms
each take that many samples, ESD's one term too). Per method: the median step
time with min/max over ``--steps`` steps after ``--warmup`` steps, peak
resident memory of its process (``ru_maxrss``), trainable parameters, and the
bytes of the file the method would write (SPARE: the kohya LoRA the engine
writes with ``lora_from_adapter``, fp16; ESD-x: its trained parameters as an
fp16 safetensors file; ESD's code saves them in its training dtype). Prints a
table and writes ``bench/results/cost.json``.

    .venv/bin/python bench/cost.py            # 7-10 minutes on 2 idle CPU cores, 64 px (8 x 8 latents)
    .venv/bin/python bench/cost.py --tiny     # reduced widths, 2 steps: a check that it runs (under a minute)

On CPU the SDXL UNet runs in bfloat16 (``--sdxl-dtype``): in fp32 published
ESD-x would need two 10 GB UNets plus Adam state for 0.55 B parameters. The
GPU variant (512 px / 1024 px, fp16) is ``bench/gpu.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from spare_core import ConceptPair, Conditioning, ErasureConfig, SparseLoRA, lora_from_adapter, write_json
from spare_core.backend import vp_add_noise
from spare_core.lora_naming import export_layer_names
from spare_core.saliency import candidate_modules
from spare_core.single_file import component_configs
from spare_core.timesteps import TimestepSampler
from spare_core.trainer import SelfDistillationTrainer, TrainingData

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("spare", "esd_x_published", "esd_x_lean")
ESD_ROWS = ("esd_x_published", "esd_x_lean")
TOKENS = 77


def shipped_unet(arch: str) -> dict:
    """The shipped full-size UNet config of ``arch`` as constructor keywords."""
    return {k: v for k, v in component_configs(arch)["unet/config.json"].items() if not k.startswith("_")}


#: The full-size UNets, from the configs SPARE ships for checkpoint files (SD 1.5, SDXL base 1.0).
SD15_UNET, SDXL_UNET = shipped_unet("sd1"), shipped_unet("sdxl")
#: The same block structure at reduced widths: a check that everything runs (``--tiny``).
TINY_UNETS = {
    "sd15": {**SD15_UNET, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "cross_attention_dim": 32},
    "sdxl": {
        **SDXL_UNET,
        "block_out_channels": (32, 64, 64),
        "transformer_layers_per_block": (1, 2, 2),
        "attention_head_dim": (2, 4, 4),
        "cross_attention_dim": 32,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 32 + 6 * 8,
        "layers_per_block": 1,
    },
}
ARCHS = {"sd15": ("sd1", SD15_UNET), "sdxl": ("sdxl", SDXL_UNET)}

#: ESD's settings (Gandikota et al. 2023 and their code): DDIM schedule length, guidance of the sampling, eta.
ESD_DDIM_STEPS = 50
ESD_GUIDANCE = 3.0
ESD_ETA = 1.0
ESD_LR = 1e-5
#: Targets of the benchmark: SPARE's share of published ESD-x's step time and peak memory; SD1.5 LoRA size.
TARGET_TIME, TARGET_MEMORY, TARGET_SD15_LORA_BYTES = 0.6, 0.7, 1_000_000

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- models


def unet_config(arch: str, tiny: bool, latent: int) -> dict:
    return {**(TINY_UNETS[arch] if tiny else ARCHS[arch][1]), "sample_size": latent}


def build_unet(config: dict, device: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A ``UNet2DConditionModel`` with random weights created directly on ``device`` in ``dtype``.

    Built on the meta device and filled in place (no fp32 copy on the host): matrices and
    kernels uniform in +-1/sqrt(fan_in) (PyTorch's default scale), norms 1, biases 0.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.dim() >= 2:
                bound = p[0].numel() ** -0.5
                p.uniform_(-bound, bound, generator=gen)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for _, b in unet.named_buffers():
            b.zero_()
    return unet.eval().requires_grad_(False)


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's schedule (``scaled_linear``, 0.00085 .. 0.012, 1000 steps), shared by SD1.5 and SDXL."""
    return ddim_scheduler().alphas_cumprod.float()


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(component_configs("sd1")["scheduler/scheduler_config.json"])


def random_conditioning(unet: nn.Module, n: int, gen: torch.Generator) -> Conditioning:
    """Text conditioning of the UNet's shapes: ``[n, 77, cross_attention_dim]`` (+ SDXL's pooled text and time ids)."""
    cfg = unet.config
    hidden = torch.randn(n, TOKENS, cfg.cross_attention_dim, generator=gen)
    extra = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["text_embeds"] = torch.randn(n, pooled, generator=gen)
        size = float(cfg.sample_size * 8)
        extra["time_ids"] = torch.tensor([[size, size, 0.0, 0.0, size, size]]).repeat(n, 1)
    return Conditioning(hidden, extra)


def to_device(cond: Conditioning, device, dtype) -> Conditioning:
    return Conditioning(cond.hidden_states.to(device, dtype), {k: v.to(device, dtype) for k, v in cond.extra.items()})


class UNetBackend:
    """A bare UNet seen through the engine's backend contract (what training needs; no text encoder, no VAE)."""

    domain = None
    num_train_timesteps = 1000

    def __init__(self, unet: nn.Module, arch: str):
        self.unet, self.arch = unet, arch
        self.conditioning_extras = ("text_embeds", "time_ids") if unet.config.addition_embed_type else ()
        self._alphas_cumprod = sd_alphas_cumprod()

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * 8

    def denoiser(self) -> nn.Module:
        return self.unet

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return vp_add_noise(x0, noise, t, self._alphas_cumprod)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extras = dict(cond.extra) or None
        return self.unet(x_t, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=extras).sample

    def lora_layer_names(self, module_names):
        return export_layer_names(module_names, self.arch, self.unet.config)

    def encode_prompts(self, prompts):
        raise NotImplementedError("the cost benchmark feeds random conditioning")

    def encode_images(self, images):
        raise NotImplementedError("the cost benchmark draws no images")

    def sample(self, prompts, seeds, steps, guidance_scale, on_step=None):
        raise NotImplementedError("the cost benchmark draws no images")

    def lora_layer_table(self):
        raise NotImplementedError("the cost benchmark reads no LoRA")


# --------------------------------------------------------------------------- the methods


def bench_config(batch: int) -> ErasureConfig:
    """The default erasure settings at the benchmark's batch size."""
    return ErasureConfig(concepts=[ConceptPair("concept", "surrogate")], base_model="random").with_settings(
        batch_size=batch
    )


def spare_modules(unet: nn.Module, config: ErasureConfig) -> list[str]:
    """The first ``top_k`` candidates of the default scope (saliency would rank them; the cost is the same)."""
    return candidate_modules(unet, config.module_scope)[: config.top_k]


class SpareStep:
    """One step of the engine's ``SelfDistillationTrainer`` on a ``SparseLoRA`` (teacher: the adapter detached)."""

    def __init__(self, unet: nn.Module, arch: str, batch: int):
        self.backend = UNetBackend(unet, arch)
        self.config = bench_config(batch)
        cfg, dev, dtype = self.config, self.backend.device, self.backend.dtype
        self.adapter = SparseLoRA(unet, spare_modules(unet, cfg), cfg.rank, cfg.alpha, seed=cfg.seed).to(dev)
        gen = torch.Generator().manual_seed(1)
        shape = self.backend.latent_shape
        prompts, per_prompt = 5, cfg.images_per_prompt  # the generic domain's five forget templates
        n_forget = prompts * per_prompt
        n_retain = cfg.retain_images
        data = TrainingData(
            forget_latents=torch.randn(n_forget, *shape, generator=gen),
            forget_prompt_index=torch.arange(prompts).repeat_interleave(per_prompt),
            concept_cond=to_device(random_conditioning(unet, prompts, gen), dev, dtype),
            surrogate_cond=to_device(random_conditioning(unet, prompts, gen), dev, dtype),
            retain_latents=torch.randn(n_retain, *shape, generator=gen),
            retain_prompt_index=torch.arange(n_retain) % 12,
            retain_cond=to_device(random_conditioning(unet, 12, gen), dev, dtype),
            surrogate_latents=torch.randn(prompts * cfg.surrogate_images_per_prompt, *shape, generator=gen),
            surrogate_prompt_index=torch.arange(prompts).repeat_interleave(cfg.surrogate_images_per_prompt),
        )
        sampler = TimestepSampler.uniform(self.backend.num_train_timesteps)
        self.trainer = SelfDistillationTrainer(self.backend, self.adapter, data, sampler, cfg)

    def step(self) -> None:
        self.trainer.train_step()

    def trainable_parameters(self) -> int:
        return self.adapter.num_trainable()

    def file_bytes(self) -> int:
        return len(lora_from_adapter(self.adapter, self.backend, self.config).to_bytes())

    def details(self) -> dict:
        return {
            "modules": self.adapter.module_names,
            "rank": self.config.rank,
            "module_scope": self.config.module_scope,
            "top_k": self.config.top_k,
            "eta": self.config.eta,
            "teacher": "the same UNet with the adapter detached (no copy)",
            "file": "kohya LoRA as lora_from_adapter writes it (fp16 tensors + settings metadata)",
        }


def esd_x_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """ESD-x's trained parameters: every parameter of the Linear/Conv2d modules whose name contains ``attn2``."""
    params = {}
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and "attn2" in name:
            for pname, p in module.named_parameters():
                params[f"{name}.{pname}"] = p
    return params


def esd_target(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, eta: float = ESD_ETA) -> torch.Tensor:
    """ESD's target (Gandikota et al. 2023): ``eps*(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, ""))``, ``eps*`` frozen."""
    return eps_uncond - eta * (eps_cond - eps_uncond)


def esd_loss(student: torch.Tensor, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, eta: float = ESD_ETA):
    """Mean squared error of the trained model's ``eps(x_t, c)`` to :func:`esd_target` (no gradient to the target)."""
    target = esd_target(eps_cond.detach().float(), eps_uncond.detach().float(), eta)
    return (student.float() - target).pow(2).mean()


class EsdStep:
    """One ESD-x iteration: published (frozen UNet copy, x_t sampled) or lean (no copy, x_t by forward noising)."""

    def __init__(self, unet: nn.Module, batch: int, published: bool, sample_steps: int):
        self.unet, self.batch, self.published, self.sample_steps = unet, batch, published, sample_steps
        self.params = esd_x_parameters(unet)
        for p in self.params.values():
            p.requires_grad_(True)
        if published:
            self.frozen = copy.deepcopy(unet).requires_grad_(False)  # the ESD code keeps a second UNet
            self.scheduler = ddim_scheduler()
            self.scheduler.set_timesteps(ESD_DDIM_STEPS)
        else:
            self.original = {n: p.detach().clone() for n, p in self.params.items()}  # only the trained weights
            self.alphas_cumprod = sd_alphas_cumprod()
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=ESD_LR)
        gen = torch.Generator().manual_seed(2)
        dev, dtype = unet.device, unet.dtype
        self.cond = to_device(random_conditioning(unet, 1, gen).repeat(batch), dev, dtype)
        self.uncond = to_device(random_conditioning(unet, 1, gen).repeat(batch), dev, dtype)
        self.gen = torch.Generator().manual_seed(3)
        self.sampling_seconds: list[float] = []

    def _eps(self, model_call, x, t, cond: Conditioning) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(len(x))
        extras = dict(cond.extra) or None
        return model_call(x, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=extras).sample

    def _noise(self) -> torch.Tensor:
        shape = (self.batch, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        return torch.randn(shape, generator=self.gen).to(self.unet.device, self.unet.dtype)

    def _sample_xt(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided DDIM sampling with the trained model for ``sample_steps`` steps of the 50-step schedule."""
        start = time.perf_counter()
        x = self._noise() * self.scheduler.init_noise_sigma
        both = Conditioning.cat([self.uncond, self.cond])
        for t in self.scheduler.timesteps[: self.sample_steps]:
            eps_u, eps_c = self._eps(self.unet, torch.cat([x, x]), t, both).chunk(2)
            eps = eps_u + ESD_GUIDANCE * (eps_c - eps_u)
            x = self.scheduler.step(eps, t, x).prev_sample
        _sync(x.device)
        if self.sample_steps:
            self.sampling_seconds.append((time.perf_counter() - start) / self.sample_steps)
        return x, self.scheduler.timesteps[self.sample_steps]

    def _noised_xt(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, len(self.alphas_cumprod), (self.batch,), generator=self.gen)
        x0 = self._noise()  # a base image latent (random: the cost does not depend on it)
        return vp_add_noise(x0, self._noise(), t, self.alphas_cumprod), t.to(self.unet.device)

    def step(self) -> None:
        with torch.no_grad():
            x_t, t = self._sample_xt() if self.published else self._noised_xt()
            both = Conditioning.cat([self.cond, self.uncond])
            x2 = torch.cat([x_t, x_t])
            t2 = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(self.batch).repeat(2)
            if self.published:
                teacher = self.frozen
            else:

                def teacher(*args, **kwargs):
                    return torch.func.functional_call(self.unet, self.original, args, kwargs, strict=False)

            eps_c, eps_u = self._eps(teacher, x2, t2, both).chunk(2)
        student = self._eps(self.unet, x_t, t, self.cond)
        loss = esd_loss(student, eps_c, eps_u)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def file_bytes(self) -> int:
        """Size of the trained parameters as an fp16 safetensors file (the header computed, no tensor copied)."""
        return safetensors_size({n: (tuple(p.shape), "F16", 2) for n, p in self.params.items()})

    def details(self) -> dict:
        d = {
            "trained": "every parameter of Linear/Conv2d modules whose name contains attn2 (ESD-x, 'xattn')",
            "optimizer": f"Adam lr {ESD_LR:g}",
            "eta": ESD_ETA,
            "file": "trained parameters as an fp16 safetensors file",
        }
        if self.published:
            d["teacher"] = "a frozen deep copy of the UNet"
            d["x_t"] = (
                f"guided DDIM sampling (guidance {ESD_GUIDANCE:g}) by the trained model, "
                f"{self.sample_steps} of {ESD_DDIM_STEPS} steps per iteration"
            )
        else:
            d["teacher"] = "the trained UNet with the attn2 weights' original values (torch.func.functional_call)"
            d["x_t"] = "forward noising of a base latent to a uniform random timestep"
        return d


def safetensors_size(tensors: dict[str, tuple[tuple[int, ...], str, int]]) -> int:
    """Bytes of a safetensors file holding tensors of these (shape, dtype name, element size), no metadata.

    The format: 8-byte header length, a JSON header (padded with spaces to a multiple of 8), then the data.
    """
    header, offset = {}, 0
    for name in sorted(tensors):
        shape, dtype, size = tensors[name]
        n = size
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text)) % 8 + offset


# --------------------------------------------------------------------------- one method in its process


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident set of this process, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(times: list[float]) -> dict:
    return {
        "median": round(statistics.median(times), 4),
        "min": round(min(times), 4),
        "max": round(max(times), 4),
        "all": [round(t, 4) for t in times],
    }


def measure(spec: dict) -> dict:
    """Build one architecture's UNet, time ``spec['method']``'s training step, and report its costs."""
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = spec["device"], DTYPES[spec["dtype"]]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    arch_key = ARCHS[spec["arch"]][0]
    build_start = time.perf_counter()
    unet = build_unet(unet_config(spec["arch"], spec["tiny"], spec["latent"]), device, dtype)
    _sync(device)
    build_seconds = time.perf_counter() - build_start
    method = spec["method"]
    if method == "spare":
        runner = SpareStep(unet, arch_key, spec["batch"])
    else:
        runner = EsdStep(unet, spec["batch"], method == "esd_x_published", spec["esd_sample_steps"])
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        _sync(device)
        start = time.perf_counter()
        runner.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    row = {
        "step_seconds": None,
        "step_seconds_stats": summary(times[spec["warmup"] :]),
        "warmup_seconds": [round(t, 4) for t in times[: spec["warmup"]]],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1) if device == "cuda" else None,
        "trainable_parameters": runner.trainable_parameters(),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "build_seconds": round(build_seconds, 2),
    }
    row["step_seconds"] = row["step_seconds_stats"]["median"]
    if method == "esd_x_published" and runner.sampling_seconds:
        per = statistics.median(runner.sampling_seconds[spec["warmup"] :] or runner.sampling_seconds)
        mean_steps = (ESD_DDIM_STEPS - 1) / 2  # ESD draws 0..49 steps
        row["sampling_step_seconds"] = round(per, 4)
        row["step_seconds_esd_schedule"] = round(row["step_seconds"] + (mean_steps - spec["esd_sample_steps"]) * per, 4)
    row["file_bytes"] = runner.file_bytes()  # after the peak was read: the file is not part of a training step
    row["details"] = runner.details()
    return row


def child_env() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository on the import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_child(spec: dict, timeout: float) -> dict:
    """Run :func:`measure` for ``spec`` in a fresh Python process; its result comes back through a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec), "--child-out", str(out)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            raise RuntimeError(f"{spec['arch']}/{spec['method']} failed (exit {proc.returncode}):\n" + "\n".join(tail))
        row = json.loads(out.read_text())
        row["process_seconds"] = round(time.perf_counter() - start, 1)
        return row


# --------------------------------------------------------------------------- the comparison


def add_ratios(rows: dict, memory_key: str = "peak_rss_mb") -> None:
    """SPARE's step time and peak memory as a share of each ESD-x row's (``ratio_time``, ``ratio_memory``)."""
    spare = rows.get("spare")
    if spare is None or "error" in spare:
        return
    spare["ratio_time"], spare["ratio_memory"] = {}, {}
    for name in ESD_ROWS:
        if name in rows and "error" not in rows[name]:
            spare["ratio_time"][name] = round(spare["step_seconds"] / rows[name]["step_seconds"], 4)
            spare["ratio_memory"][name] = round(spare[memory_key] / rows[name][memory_key], 4)
    published = rows.get("esd_x_published", {})
    if "step_seconds_esd_schedule" in published:
        spare["ratio_time_esd_schedule"] = {
            "esd_x_published": round(spare["step_seconds"] / published["step_seconds_esd_schedule"], 4)
        }


def architecture_rows(results: dict) -> dict[str, dict]:
    """The rows of each measured architecture (top-level keys ``sd15``, ``sdxl``), in order."""
    return {arch: results[arch] for arch in ARCHS if arch in results}


def check_targets(results: dict) -> dict:
    """Whether the targets are met (None where a row is missing)."""
    targets = {}
    for arch, rows in architecture_rows(results).items():
        spare = rows.get("spare", {})
        t = spare.get("ratio_time", {}).get("esd_x_published")
        m = spare.get("ratio_memory", {}).get("esd_x_published")
        targets[f"{arch}.time_vs_published<={TARGET_TIME}"] = None if t is None else t <= TARGET_TIME
        targets[f"{arch}.memory_vs_published<={TARGET_MEMORY}"] = None if m is None else m <= TARGET_MEMORY
    sd15 = results.get("sd15", {}).get("spare")
    if sd15 is not None and not results["settings"]["tiny"]:
        targets["sd15.lora_bytes<=1MB"] = sd15["file_bytes"] <= TARGET_SD15_LORA_BYTES
    return targets


def table(results: dict, memory_key: str = "peak_rss_mb") -> str:
    unit = "GPU MiB" if memory_key == "peak_gpu_mb" else "RSS MiB"
    lines = [
        f"{'arch':<5} {'method':<16} {'step s (median)':>15} {'min':>8} {'max':>8} {unit:>9} "
        f"{'trainable':>12} {'file bytes':>12} {'time/SPARE':>10} {'mem/SPARE':>9}"
    ]
    for arch, rows in architecture_rows(results).items():
        spare = rows.get("spare")
        spare = None if spare is None or "error" in spare else spare
        for method, r in rows.items():
            if "error" in r:
                lines.append(f"{arch:<5} {method:<16} failed: {r['error'].splitlines()[0]}")
                continue
            s = r["step_seconds_stats"]
            rel_t = rel_m = ""
            if spare is not None:
                rel_t = f"{r['step_seconds'] / spare['step_seconds']:.2f}x"
                rel_m = f"{r[memory_key] / spare[memory_key]:.2f}x"
            lines.append(
                f"{arch:<5} {method:<16} {s['median']:>15.3f} {s['min']:>8.3f} {s['max']:>8.3f} {r[memory_key]:>9.0f} "
                f"{r['trainable_parameters']:>12,} {r['file_bytes']:>12,} {rel_t:>10} {rel_m:>9}"
            )
        if spare is not None:
            for name in spare["ratio_time"]:
                t, m = spare["ratio_time"][name], spare["ratio_memory"][name]
                lines.append(f"      SPARE / {name}: time {t:.3f}, memory {m:.3f}")
        pub = rows.get("esd_x_published", {})
        if "step_seconds_esd_schedule" in pub:
            extra = ""
            if spare is not None:
                extra = f"; SPARE / that: time {spare['ratio_time_esd_schedule']['esd_x_published']:.3f}"
            lines.append(
                f"      esd_x_published at ESD's average of {(ESD_DDIM_STEPS - 1) / 2} sampling steps "
                f"(extrapolated): {pub['step_seconds_esd_schedule']:.3f} s per step{extra}"
            )
    return "\n".join(lines)


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def run_all(specs: dict[str, dict], methods, timeout: float, memory_key: str) -> dict:
    """Every method of every architecture, each in its own process; rows keyed by arch then method.

    A method that fails (out of memory, timeout) gets a row with its ``error`` and the others go on.
    """
    out: dict[str, dict] = {}
    for arch, spec in specs.items():
        rows = {}
        for method in methods:
            print(f"{arch} / {method} ...", flush=True)
            try:
                r = rows[method] = run_child({**spec, "method": method}, timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                rows[method] = {"error": str(exc)}
                print(f"  failed: {exc}", flush=True)
                continue
            print(
                f"  {r['step_seconds']:.3f} s per step (min {r['step_seconds_stats']['min']:.3f}, "
                f"max {r['step_seconds_stats']['max']:.3f}), peak {r[memory_key]:.0f} MiB, "
                f"{r['trainable_parameters']:,} trainable, {r['file_bytes']:,} file bytes "
                f"({r['process_seconds']:.0f} s in all)",
                flush=True,
            )
        add_ratios(rows, memory_key)
        out[arch] = rows
    return out


def report(results: dict, memory_key: str, out: Path) -> None:
    """Check the targets, print the table and the targets, write the results."""
    results["targets"] = check_targets(results)
    print()
    print(table(results, memory_key))
    for name, met in results["targets"].items():
        print(f"target {name}: {'met' if met else 'NOT met' if met is not None else 'not measured'}")
    write_json(out, results)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--latent", type=int, default=8, help="latent side (pixels / 8); 8 = 64 px")
    p.add_argument("--batch", type=int, default=1, help="samples per term, the same for every method")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--esd-sample-steps", type=int, default=4, help="DDIM steps of published ESD-x per iteration")
    p.add_argument("--sd15-dtype", default="fp32", choices=list(DTYPES))
    p.add_argument(
        "--sdxl-dtype", choices=list(DTYPES), help="default bf16 (fp32 with --tiny); fp32 needs about 30 GB for ESD-x"
    )
    p.add_argument("--tiny", action="store_true", help="reduced widths and 2 steps: checks that it runs")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed to one method's process")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cost.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        write_json(args.child_out, measure(json.loads(args.child)))
        return {}
    if args.tiny:
        args.steps, args.warmup, args.esd_sample_steps = min(args.steps, 2), min(args.warmup, 1), 2
    args.sdxl_dtype = args.sdxl_dtype or ("fp32" if args.tiny else "bf16")
    dtypes = {"sd15": args.sd15_dtype, "sdxl": args.sdxl_dtype}
    specs = {
        arch: {
            "arch": arch,
            "tiny": args.tiny,
            "device": "cpu",
            "dtype": dtypes[arch],
            "latent": args.latent,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "esd_sample_steps": args.esd_sample_steps,
            "threads": 1 if args.tiny else None,  # a check, not a timing: one thread leaves the machine to others
        }
        for arch in args.archs
    }
    start = time.perf_counter()
    rows = run_all(specs, args.methods, args.timeout, "peak_rss_mb")
    results = {
        "benchmark": "cost",
        "settings": {
            "device": "cpu",
            "tiny": args.tiny,
            "resolution_px": args.latent * 8,
            "latent": [4, args.latent, args.latent],
            "dtype": dtypes,
            "batch": args.batch,
            "batch_note": "samples per term for every method: SPARE's forget and retain terms each, ESD's one term",
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "esd_sample_steps": args.esd_sample_steps,
            "esd_ddim_schedule": ESD_DDIM_STEPS,
            "text_tokens": TOKENS,
            "weights": "random (built on the meta device, filled in place)",
            "spare_modules": "the first top_k candidates of the default module_scope (no saliency run)",
            "spare_timesteps": "uniform (the profile's distribution costs the same)",
            "memory": "peak_rss_mb: ru_maxrss of each method's own process (UNet build included)",
            "step_seconds": "median over the timed steps; step_seconds_stats holds min, max and every step",
        },
        "versions": versions(),
        "machine": machine(),
        **rows,  # one top-level entry per architecture: sd15, sdxl
    }
    results["seconds"] = round(time.perf_counter() - start, 1)
    report(results, "peak_rss_mb", args.out)
    return results


if __name__ == "__main__":
    main()
