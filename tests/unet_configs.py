"""UNet (and scheduler) configs the tests build models from.

Full-size ones come from the configs SPARE ships for loading checkpoint files
(``spare_core/model_configs``), so there is one statement of each
architecture's shape. The tiny ones keep an architecture's block structure at
widths a test can afford.
"""

from __future__ import annotations

from typing import Any

from spare_core.single_file import component_configs


def shipped(arch: str, path: str) -> dict[str, Any]:
    """A shipped config of ``arch`` (``sd1``, ``sd2``, ``sdxl``; ``path`` e.g. ``unet/config.json``) as keywords."""
    return {k: v for k, v in component_configs(arch)[path].items() if not k.startswith("_")}


def full_size(arch: str, **changes: Any) -> dict[str, Any]:
    """The shipped full-size UNet config of ``arch``, with ``changes``."""
    return {**shipped(arch, "unet/config.json"), **changes}


#: SD 1.x's block structure at tiny widths (proj_in / proj_out are 1x1 convs).
SD1_LIKE = dict(
    sample_size=8,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=2,
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
#: SD 2.x: the same, with Linear proj_in / proj_out.
SD2_LIKE = dict(SD1_LIKE, use_linear_projection=True)
#: SDXL's block structure (three levels, deeper transformers, size conditioning) at tiny widths.
SDXL_LIKE = dict(
    sample_size=8,
    block_out_channels=(8, 16, 16),
    layers_per_block=2,
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=8 + 6 * 4,
)
