"""The backend contract (``spare_core/backend.py``), checked on every backend.

Every test here runs once per backend: the fake backend of ``tests/fakes.py``,
the shipped toy model (a v-prediction ``DiffusersBackend``), and an SD1.5-shaped
``StableDiffusionPipeline`` with random weights (``sd15_pipe`` in ``conftest.py``,
marked slow). The prediction and noising tests also run on an SD2-style variant
of that pipeline: the same UNet behind a v-prediction scheduler.

Each backend comes as a :class:`Case`: the backend plus an independent
reference for what it must equal (the scheduler's own ``add_noise``, the raw
model output and the scheduler's reading of it, kohya layer names written out
by hand). Later backends (SDXL, ComfyUI MODEL/CLIP) add themselves to the
parametrisation with a ``<name>_case`` fixture and an entry in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from fakes import FakeBackend
from torch import nn

from spare_core.adapter import SparseLoRA
from spare_core.architectures import get_architecture
from spare_core.backend import Conditioning, DiffusionBackend
from spare_core.config import ConceptPair, ErasureConfig
from spare_core.timesteps import TimestepSampler
from spare_core.trainer import SelfDistillationTrainer, TrainingData

Tensor = torch.Tensor


@dataclass
class Case:
    """A backend and the references its contract tests compare against."""

    backend: DiffusionBackend
    #: The model's own forward process (the scheduler's ``add_noise``; the fake's formula).
    reference_add_noise: Callable[[Tensor, Tensor, Tensor], Tensor]
    #: The model's raw output for (x_t, t, cond), before any conversion.
    raw_output: Callable[[Tensor, Tensor, Conditioning], Tensor]
    #: How the scheduler reads the raw output: "epsilon" or "v_prediction".
    prediction_type: str
    #: The scheduler's ``alphas_cumprod`` (per training timestep).
    alphas_cumprod: Tensor
    #: The scheduler's own v of (x0, eps, t), for v-prediction models.
    velocity: Callable[[Tensor, Tensor, Tensor], Tensor] | None
    num_train_timesteps: int
    extras: tuple[str, ...]  # the conditioning extras the model reads
    #: {module name: kohya layer name}, written out by hand.
    kohya: dict[str, str]
    train_modules: list[str]  # 1-2 modules the training test puts an adapter on
    prompts: tuple[str, str, str]  # concept, surrogate, retain
    sample_steps: int
    guidance: float
    domain: type | None  # the domain's class, or None


SLOW = pytest.mark.slow
BACKENDS = [
    "fake",
    "toy",
    pytest.param("sd15", marks=SLOW),
    # SDXL's layout at reduced width (``sdxl_pipe`` in conftest.py): two text encoders, pooled and size extras.
    "sdxl",
    # The ComfyUI backend (spare_nodes/comfy_backend.py) over the ComfyUI test double (tests/comfy/double).
    "comfy_toy",
    "comfy_sdxl",
    pytest.param("comfy_sd15", marks=SLOW),
]
#: Backends whose noising and prediction are checked: the above plus an SD2-style v-prediction variant.
PREDICTION_BACKENDS = [*BACKENDS, pytest.param("sd15v", marks=SLOW)]

# ---------------------------------------------------------------------------- the cases

FAKE_PROMPTS = ("a red cat", "a plain cat", "a dog")


@pytest.fixture(scope="module")
def fake_case() -> Case:
    g = torch.Generator().manual_seed(3)
    embeddings = {p: torch.randn(8, generator=g) for p in FAKE_PROMPTS}
    backend = FakeBackend(embeddings, weight_of_t=lambda t: 1.0 + t / 100)
    T = backend.num_train_timesteps
    alphas = torch.linspace(0.999, 0.01, T)

    def add_noise(x0, noise, t):
        a = alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def raw(x_t, t, cond):
        m = backend.model
        text = cond.hidden_states[:, 0] + cond.extra["pooled"]
        w = (1.0 + t.float() / 100).view(-1, 1, 1, 1)
        return m.image_head(x_t) + m.text_head(text)[:, :, None, None] * w

    return Case(
        backend=backend,
        reference_add_noise=add_noise,
        raw_output=raw,
        prediction_type="epsilon",
        alphas_cumprod=alphas,
        velocity=None,
        num_train_timesteps=100,
        extras=("pooled",),
        kohya={"image_head": "lora_unet_image_head", "text_head": "lora_unet_text_head"},
        train_modules=["image_head", "text_head"],
        prompts=FAKE_PROMPTS,
        sample_steps=4,
        guidance=5.0,
        domain=None,
    )


def _diffusers_case(backend, **fields) -> Case:
    from diffusers import DDPMScheduler

    pipe = backend.pipe
    scheduler = pipe.scheduler
    get_velocity = getattr(scheduler, "get_velocity", None) or DDPMScheduler.from_config(scheduler.config).get_velocity

    def raw(x_t, t, cond):
        return pipe.unet(x_t, t, encoder_hidden_states=cond.hidden_states).sample

    return Case(
        backend=backend,
        reference_add_noise=scheduler.add_noise,
        raw_output=raw,
        prediction_type=scheduler.config.prediction_type,
        alphas_cumprod=scheduler.alphas_cumprod.float(),
        velocity=get_velocity,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        extras=(),
        **fields,
    )


TOY_PROMPTS = ("a circle in red style", "a circle in plain style", "a square in blue style")
TOY_KOHYA = {
    "conv_in": "lora_unet_conv_in",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    ),
    "mid_block.resnets.0.conv1": "lora_unet_mid_block_resnets_0_conv1",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0": (
        "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0"
    ),
}


@pytest.fixture(scope="module")
def toy_case(toy_backend) -> Case:
    from spare_core.toy.domain import ToyDomain

    return _diffusers_case(
        toy_backend,
        kohya=TOY_KOHYA,
        train_modules=["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "mid_block.resnets.0.conv1"],
        prompts=TOY_PROMPTS,
        sample_steps=3,
        guidance=5.0,
        domain=ToyDomain,
    )


SD15_KOHYA = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    ),
    "mid_block.resnets.0.conv1": "lora_unet_mid_block_resnets_0_conv1",
    "time_embedding.linear_1": "lora_unet_time_embedding_linear_1",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0": (
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"
    ),
}
# Late modules, so that backward through the 3.4 GB UNet stays short.
SD15_TRAIN = [
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
]


@pytest.fixture(scope="module")
def sd15_case(sd15_backend) -> Case:
    assert sd15_backend.arch == "sd1"  # detected from the UNet, not given
    return _diffusers_case(
        sd15_backend,
        kohya=SD15_KOHYA,
        train_modules=SD15_TRAIN,
        prompts=TOY_PROMPTS,
        sample_steps=2,
        guidance=3.0,
        domain=None,
    )


@pytest.fixture(scope="module")
def sd15v_case(sd15_pipe) -> Case:
    """SD2-style: the same SD1.5-shaped UNet read as a v-prediction model."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from spare_core.backends.diffusers_backend import DiffusersBackend

    scheduler = DDIMScheduler.from_config(sd15_pipe.scheduler.config, prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(**{**sd15_pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
    case = _diffusers_case(
        DiffusersBackend(pipe),
        kohya=SD15_KOHYA,
        train_modules=SD15_TRAIN,
        prompts=TOY_PROMPTS,
        sample_steps=2,
        guidance=3.0,
        domain=None,
    )
    assert case.prediction_type == "v_prediction"
    return case


#: SDXL block numbering (kohya sd-scripts writes SDXL files in CompVis spelling), written out by hand for the
#: fixture's layout: levels Down / CrossAttnDown / CrossAttnDown, two layers each, 1 / 1 / 2 transformer blocks.
SDXL_KOHYA = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
    "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_v": "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_v",
    "mid_block.attentions.0.transformer_blocks.1.attn2.to_out.0": (
        "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0"
    ),
    "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k": (
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_k"
    ),
    "up_blocks.1.upsamplers.0.conv": "lora_unet_output_blocks_5_2_conv",
    "down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_3_0_op",
    "up_blocks.2.resnets.2.conv_shortcut": "lora_unet_output_blocks_8_0_skip_connection",
    "add_embedding.linear_1": "lora_unet_label_emb_0_0",
}


@pytest.fixture(scope="module")
def sdxl_case(sdxl_pipe) -> Case:
    """The SDXL backend; references: diffusers' DDPM forward process on the same betas (the pipeline samples
    with Euler, which works in sigma space), and the UNet called with the extras as ``added_cond_kwargs``."""
    from diffusers import DDPMScheduler

    from spare_core.backends.sdxl_backend import SDXLBackend

    reference = DDPMScheduler.from_config(sdxl_pipe.scheduler.config)

    def raw(x_t, t, cond):
        return sdxl_pipe.unet(
            x_t, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=dict(cond.extra)
        ).sample

    return Case(
        backend=SDXLBackend(sdxl_pipe),
        reference_add_noise=reference.add_noise,
        raw_output=raw,
        prediction_type=sdxl_pipe.scheduler.config.prediction_type,
        alphas_cumprod=reference.alphas_cumprod.float(),
        velocity=reference.get_velocity,
        num_train_timesteps=1000,
        extras=("text_embeds", "time_ids"),
        kohya=SDXL_KOHYA,
        train_modules=[
            "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k",
            "mid_block.attentions.0.transformer_blocks.1.attn2.to_v",
        ],
        prompts=TOY_PROMPTS,
        sample_steps=2,
        guidance=3.0,
        domain=None,
    )


def _comfy_case(comfy_double, parts, reference_pipe, **fields) -> Case:
    """The ComfyUI backend over a MODEL/CLIP/VAE of the double; references from ComfyUI's formulas and diffusers.

    Noising reference: ComfyUI's own forward process for the timestep's sigma, ``noise_scaling`` (x0 + sigma
    noise) then ``calculate_input`` (/ sqrt(sigma^2 + 1)), from the double's ``model_sampling``. Raw output:
    the wrapped diffusers UNet itself. v is read with the diffusers scheduler of the same weights.
    """
    from diffusers import DDPMScheduler

    from spare_nodes.comfy_backend import ComfyBackend

    model, clip, vae = parts
    sampling = model.get_model_object("model_sampling")
    unet = model.model.diffusion_model._diffusers

    def add_noise(x0, noise, t):
        sigma = sampling.sigmas[t]
        return sampling.calculate_input(sigma, sampling.noise_scaling(sigma, noise, x0))

    def raw(x_t, t, cond):
        return unet(x_t, t, encoder_hidden_states=cond.hidden_states).sample

    raw = fields.pop("raw", None) or raw
    scheduler = reference_pipe.scheduler
    get_velocity = getattr(scheduler, "get_velocity", None) or DDPMScheduler.from_config(scheduler.config).get_velocity
    backend_args = fields.pop("backend_args")
    with torch.inference_mode():
        backend = ComfyBackend(model, clip, vae, **backend_args)
    return Case(
        backend=backend,
        reference_add_noise=add_noise,
        raw_output=raw,
        prediction_type=scheduler.config.prediction_type,
        alphas_cumprod=scheduler.alphas_cumprod.float(),
        velocity=get_velocity,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        **{"extras": (), **fields},
    )


#: SDXL files keep ComfyUI's own CompVis names (kohya's SDXL spelling).
COMFY_SDXL_KOHYA = {
    "input_blocks.4.1.transformer_blocks.0.attn2.to_k": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
    "middle_block.1.transformer_blocks.1.attn2.to_out.0": "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0",
    "output_blocks.5.2.conv": "lora_unet_output_blocks_5_2_conv",
    "label_emb.0.0": "lora_unet_label_emb_0_0",
}


@pytest.fixture(scope="module")
def comfy_sdxl_case(comfy_double, comfy_sdxl, sdxl_pipe) -> Case:
    """Raw output: the diffusers SDXL UNet with diffusers' own size conditioning (text_embeds = the pooled part of
    ComfyUI's y, time_ids = the drawing size), so ComfyUI's adm vector is checked against diffusers' reading."""
    unet = comfy_sdxl[0].model.diffusion_model._diffusers
    pooled_dim = sdxl_pipe.text_encoder_2.config.projection_dim

    def raw(x_t, t, cond):
        side = 64
        extras = {
            "text_embeds": cond.extra["y"][:, :pooled_dim],
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * len(x_t), dtype=x_t.dtype),
        }
        return unet(x_t, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=extras).sample

    case = _comfy_case(
        comfy_double,
        comfy_sdxl,
        sdxl_pipe,
        backend_args=dict(arch="sdxl", image_size=64),
        raw=raw,
        extras=("y",),
        kohya=COMFY_SDXL_KOHYA,
        train_modules=[
            "output_blocks.2.1.transformer_blocks.1.attn2.to_k",
            "middle_block.1.transformer_blocks.0.attn2.to_v",
        ],
        prompts=TOY_PROMPTS,
        sample_steps=2,
        guidance=3.0,
        domain=None,
    )
    return case


#: CompVis module names -> kohya names in the diffusers spelling SD1 files use (toy layout: one
#: ResBlock per level, levels Down / CrossAttnDown / CrossAttnDown), written out by hand.
COMFY_TOY_KOHYA = {
    "input_blocks.0.0": "lora_unet_conv_in",
    "input_blocks.3.1.transformer_blocks.0.attn2.to_k": "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
    "middle_block.0.in_layers.2": "lora_unet_mid_block_resnets_0_conv1",
    "output_blocks.1.1.transformer_blocks.0.attn2.to_out.0": (
        "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0"
    ),
    "input_blocks.2.0.op": "lora_unet_down_blocks_0_downsamplers_0_conv",
}


@pytest.fixture(scope="module")
def comfy_toy_case(comfy_double, comfy_toy, toy_pipe) -> Case:
    from spare_core.toy.domain import ToyDomain

    return _comfy_case(
        comfy_double,
        comfy_toy,
        toy_pipe,
        backend_args=dict(arch="toy", domain=ToyDomain(), image_size=32),
        kohya=COMFY_TOY_KOHYA,
        train_modules=["input_blocks.3.1.transformer_blocks.0.attn2.to_k", "middle_block.0.in_layers.2"],
        prompts=TOY_PROMPTS,
        sample_steps=3,
        guidance=5.0,
        domain=ToyDomain,
    )


#: SD1.5 block numbering (ComfyUI comfy/utils.py unet_to_diffusers), written out by hand.
COMFY_SD15_KOHYA = {
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    "middle_block.0.in_layers.2": "lora_unet_mid_block_resnets_0_conv1",
    "time_embed.0": "lora_unet_time_embedding_linear_1",
    "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0": (
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"
    ),
    "input_blocks.4.0.skip_connection": "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
    "output_blocks.5.2.conv": "lora_unet_up_blocks_1_upsamplers_0_conv",
}


@pytest.fixture(scope="module")
def comfy_sd15_case(comfy_double, comfy_sd15, sd15_pipe) -> Case:
    case = _comfy_case(
        comfy_double,
        comfy_sd15,
        sd15_pipe,
        backend_args=dict(image_size=64),
        kohya=COMFY_SD15_KOHYA,
        train_modules=[
            "output_blocks.11.1.transformer_blocks.0.attn2.to_k",
            "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0",
        ],
        prompts=TOY_PROMPTS,
        sample_steps=2,
        guidance=3.0,
        domain=None,
    )
    assert case.backend.arch == "sd1"  # detected from the MODEL's unet_config, not given
    return case


@pytest.fixture
def case(request) -> Case:
    torch.manual_seed(0)
    return request.getfixturevalue(f"{request.param}_case")


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_backend_describes_itself(case):
    backend = case.backend
    assert isinstance(backend, DiffusionBackend)
    get_architecture(backend.arch)  # a registered architecture (raises otherwise)
    assert backend.num_train_timesteps == case.num_train_timesteps
    assert backend.conditioning_extras == case.extras
    if case.domain is None:
        assert backend.domain is None
    else:
        assert isinstance(backend.domain, case.domain)
    denoiser = backend.denoiser()
    assert isinstance(denoiser, nn.Module)
    weight = next(denoiser.parameters())
    assert weight.device == backend.device and weight.dtype == backend.dtype
    assert len(backend.latent_shape) == 3 and all(isinstance(s, int) and s > 0 for s in backend.latent_shape)
    assert isinstance(backend.image_size, int) and backend.image_size > 0


@pytest.mark.parametrize("case", PREDICTION_BACKENDS, indirect=True)
def test_contract_noising_is_the_schedulers_own(case):
    backend = case.backend
    T = backend.num_train_timesteps
    t = torch.tensor([0, T // 2, T - 1])
    x0, noise = _randn(3, *backend.latent_shape, seed=1), _randn(3, *backend.latent_shape, seed=2)
    ours = backend.add_noise(x0, noise, t)
    torch.testing.assert_close(ours, case.reference_add_noise(x0, noise, t), atol=1e-6, rtol=1e-5)
    # One timestep per sample: the same samples in another order get their own timesteps.
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(backend.add_noise(x0[order], noise[order], t[order]), ours[order])


@pytest.mark.parametrize("case", PREDICTION_BACKENDS, indirect=True)
def test_contract_prediction_is_epsilon(case):
    backend = case.backend
    T = backend.num_train_timesteps
    t = torch.tensor([1, T // 2, (9 * T) // 10])
    x0, noise = _randn(3, *backend.latent_shape, seed=3), _randn(3, *backend.latent_shape, seed=4)
    x_t = backend.add_noise(x0, noise, t)
    cond = backend.encode_prompts([case.prompts[0]] * 3)
    with torch.no_grad():
        eps = backend.predict_noise(x_t, t, cond)
        raw = case.raw_output(x_t, t, cond)
    assert eps.shape == x_t.shape and torch.isfinite(eps).all()
    if case.prediction_type == "epsilon":
        torch.testing.assert_close(eps, raw, atol=1e-5, rtol=1e-5)
        return
    assert case.prediction_type == "v_prediction"
    # Read eps as the scheduler would: x0 from (x_t, eps), then the scheduler's own v of (x0, eps).
    a = case.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    torch.testing.assert_close(case.velocity(x0_hat, eps, t), raw, atol=1e-4, rtol=1e-4)
    assert (eps - raw).abs().max() > 1e-2  # v was converted, not passed on


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_conditioning_reaches_the_model(case):
    backend = case.backend
    cond = backend.encode_prompts(list(case.prompts[:2]))
    assert set(cond.extra) == set(backend.conditioning_extras) == set(case.extras)
    assert len(cond) == 2 and all(v.shape[0] == 2 for v in cond.extra.values())
    t = torch.full((2,), (3 * backend.num_train_timesteps) // 10)
    x_t = backend.add_noise(_randn(2, *backend.latent_shape, seed=5), _randn(2, *backend.latent_shape, seed=6), t)
    with torch.no_grad():
        base = backend.predict_noise(x_t, t, cond)
        # The prompt reaches the model: the two prompts predict differently on the same x_t.
        swapped = backend.predict_noise(x_t, t, cond.select(torch.tensor([1, 0])))
        assert (swapped - base).abs().max() > 1e-4
        for name in backend.conditioning_extras:
            value = cond.extra[name]
            changed = value + 1.0 + _randn(*value.shape, seed=7).to(value)
            moved = backend.predict_noise(x_t, t, Conditioning(cond.hidden_states, {**cond.extra, name: changed}))
            assert (moved - base).abs().max() > 1e-4, f"the extra {name!r} does not reach the model"


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_shapes_agree_with_latent_shape_and_image_size(case):
    backend = case.backend
    n, shape, size = 2, tuple(backend.latent_shape), backend.image_size
    x0, noise = _randn(n, *shape, seed=8), _randn(n, *shape, seed=9)
    t = torch.tensor([10, backend.num_train_timesteps // 2])
    x_t = backend.add_noise(x0, noise, t)
    assert tuple(x_t.shape) == (n, *shape)
    with torch.no_grad():
        eps = backend.predict_noise(x_t, t, backend.encode_prompts(list(case.prompts[:2])))
    assert tuple(eps.shape) == (n, *shape)
    images = torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(10)) * 2 - 1
    latents = backend.encode_images(images)
    assert tuple(latents.shape) == (n, *shape) and torch.isfinite(latents).all()


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_sample_calls_on_step_and_depends_only_on_its_seed(case):
    backend = case.backend
    steps, size = case.sample_steps, backend.image_size
    calls: list[int] = []
    prompts = [case.prompts[0], case.prompts[2]]
    images = backend.sample(prompts, [7, 8], steps=steps, guidance_scale=case.guidance, on_step=lambda: calls.append(1))
    # Once per denoising step of every sampling call: a backend may draw the two prompts in one call or two.
    assert len(calls) in (steps, 2 * steps)
    assert tuple(images.shape) == (2, 3, size, size)
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    alone = backend.sample(prompts[:1], [7], steps=steps, guidance_scale=case.guidance)
    torch.testing.assert_close(alone[0], images[0], atol=1e-4, rtol=1e-4)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_an_exception_in_on_step_stops_sampling(case):
    calls: list[int] = []

    def stop():
        calls.append(1)
        raise _Stop

    with pytest.raises(_Stop):
        case.backend.sample([case.prompts[0]], [0], steps=case.sample_steps, guidance_scale=case.guidance, on_step=stop)
    assert len(calls) == 1


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_training_works_on_inference_mode_weights_latents_and_conditioning(case):
    """ComfyUI hands over weights, latents and conditioning made under ``torch.inference_mode()``."""
    backend = case.backend
    denoiser = backend.denoiser()
    originals = dict(denoiser.named_parameters())
    owners = {name: denoiser.get_submodule(name.rpartition(".")[0]) for name in originals}
    concept, surrogate, retain = case.prompts
    with torch.inference_mode():
        clones = {name: nn.Parameter(p.detach().clone(), requires_grad=False) for name, p in originals.items()}
        for name, p in clones.items():
            owners[name]._parameters[name.rpartition(".")[2]] = p
        g = torch.Generator().manual_seed(11)
        forget_latents = torch.randn((2, *backend.latent_shape), generator=g)
        retain_latents = torch.randn((2, *backend.latent_shape), generator=g)
        data = TrainingData(
            forget_latents=forget_latents,
            forget_prompt_index=torch.zeros(2, dtype=torch.long),
            concept_cond=backend.encode_prompts([concept]),
            surrogate_cond=backend.encode_prompts([surrogate]),
            retain_latents=retain_latents,
            retain_prompt_index=torch.zeros(2, dtype=torch.long),
            retain_cond=backend.encode_prompts([retain]),
        )
    try:
        assert all(p.is_inference() for p in denoiser.parameters())
        assert data.forget_latents.is_inference() and data.concept_cond.hidden_states.is_inference()
        assert all(v.is_inference() for v in data.concept_cond.extra.values())
        adapter = SparseLoRA(denoiser, case.train_modules, rank=2, alpha=2.0, seed=0)
        before = {k: v.clone() for k, v in adapter.state_dict().items()}
        config = ErasureConfig(concepts=[ConceptPair("red", "plain")], steps=2, batch_size=1, lr=1e-2)
        trainer = SelfDistillationTrainer(
            backend, adapter, data, TimestepSampler.uniform(backend.num_train_timesteps), config
        )
        history = trainer.run()
        assert len(history.losses) == 2 and all(torch.isfinite(torch.tensor(history.losses)))
        for name, branch in zip(adapter.module_names, adapter.branches, strict=True):
            assert not torch.equal(branch.up, before[f"branches.{adapter.module_names.index(name)}.up"]), name
            assert torch.isfinite(branch.up).all() and torch.isfinite(branch.down).all(), name
        # The model holds the inference weights it was given, bitwise unchanged.
        for name, p in denoiser.named_parameters():
            assert p is clones[name], name
            assert torch.equal(p, originals[name]), name
    finally:
        for name, p in originals.items():
            owners[name]._parameters[name.rpartition(".")[2]] = p
    assert all(p is originals[name] for name, p in denoiser.named_parameters())


@pytest.mark.parametrize("case", BACKENDS, indirect=True)
def test_contract_export_names_are_the_kohya_names(case):
    backend = case.backend
    modules = dict(backend.denoiser().named_modules())
    assert all(isinstance(modules.get(name), (nn.Linear, nn.Conv2d)) for name in case.kohya)
    assert backend.lora_layer_names(list(case.kohya)) == case.kohya
    table = backend.lora_layer_table()
    for module, layer in case.kohya.items():
        assert table[layer] == module
