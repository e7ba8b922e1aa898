"""The toy canvas world: a synthetic objects x styles image world.

A miniature of the UnlearnCanvas benchmark that a CPU can train and evaluate.
Every image shows one object (a shape) drawn in one style (a colour fill or a
texture) on a light, slightly jittered background. Rendering is vectorised in
torch and deterministic for a given ``torch.Generator`` seed.

Images are float tensors in ``[-1, 1]`` of shape ``[N, 3, 32, 32]``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
#: The six concept styles, then ``plain``: the neutral look that serves as the
#: surrogate when a style is erased (the role of Seed_Images in UnlearnCanvas).
STYLES: tuple[str, ...] = ("red", "blue", "yellow", "stripes", "checker", "dots", "plain")
PLAIN_STYLE = "plain"

#: Caption templates seen in training.
FULL_TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "a {object} image in {style} style",
    "{style} style {object}",
    "an image of a {object} in {style} style",
)
OBJECT_TEMPLATES: tuple[str, ...] = ("a {object}", "an image of a {object}")
STYLE_TEMPLATES: tuple[str, ...] = ("an image in {style} style", "{style} style")
#: The evaluation template (UnlearnCanvas' prompt, lower case) and a held-out one
#: that training never sees.
EVAL_TEMPLATE = "a {object} image in {style} style"
HELD_OUT_TEMPLATE = "a picture of one {object} drawn in {style} style"

#: Every word any template or concept can produce: the tokenizer's vocabulary.
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(OBJECTS)
        | set(STYLES)
        | {
            w
            for t in FULL_TEMPLATES + OBJECT_TEMPLATES + STYLE_TEMPLATES + (EVAL_TEMPLATE, HELD_OUT_TEMPLATE)
            for w in t.split()
            if not w.startswith("{")
        }
    )
)


@dataclass(frozen=True)
class Sample:
    """What one rendered image shows, and the caption it was given."""

    object: str
    style: str
    caption: str


def full_caption(obj: str, style: str, template: str = EVAL_TEMPLATE) -> str:
    """Caption naming both the object and the style."""
    return template.format(object=obj, style=style)


def parse_caption(caption: str) -> tuple[str | None, str | None]:
    """Return the (object, style) a caption names; None for what it leaves out."""
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    objects = [w for w in words if w in OBJECTS]
    styles = [w for w in words if w in STYLES]
    if len(objects) > 1 or len(styles) > 1:
        raise ValueError(f"caption names more than one object or style: {caption!r}")
    return (objects[0] if objects else None, styles[0] if styles else None)


# --------------------------------------------------------------------------- shapes


def _shape_masks(u: torch.Tensor, v: torch.Tensor, object_index: torch.Tensor) -> torch.Tensor:
    """Inside-test of each sample's shape in its own local coordinates (radius ~1)."""
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    masks = torch.zeros_like(u, dtype=torch.bool)

    def put(name: str, inside: torch.Tensor) -> None:
        select = (object_index == OBJECTS.index(name)).view(-1, 1, 1)
        masks.logical_or_(select & inside)

    put("circle", r <= 0.95)
    put("square", torch.maximum(u.abs(), v.abs()) <= 0.78)
    # Equilateral triangle pointing up (inradius 0.5): inside all three half-planes.
    normals = [
        (math.cos(a), math.sin(a)) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
    ]
    tri = torch.stack([-(u * nx + v * ny) for nx, ny in normals]).amax(0) <= 0.52
    put("triangle", tri)
    put("cross", ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)))
    put("ring", (r <= 0.97) & (r >= 0.55))
    # Five-pointed star: the radius limit is a triangle wave between inner and outer radius.
    phase = torch.remainder(theta - math.pi / 2, 2 * math.pi / 5) / (2 * math.pi / 5)
    wave = (2 * phase - 1).abs()  # 1 at the points, 0 between them
    put("star", r <= 0.42 + 0.6 * wave)
    return masks


# --------------------------------------------------------------------------- styles

_SOLID_COLOURS = {
    "red": (0.86, 0.14, 0.14),
    "blue": (0.14, 0.30, 0.88),
    "yellow": (0.96, 0.80, 0.08),
    "plain": (0.55, 0.55, 0.55),
}
_TEXTURE_COLOURS = {
    "stripes": ((0.08, 0.50, 0.20), (0.62, 0.92, 0.62)),
    "checker": ((0.10, 0.05, 0.12), (0.88, 0.20, 0.80)),
    "dots": ((0.10, 0.65, 0.75), (0.20, 0.08, 0.30)),
}


def _style_fill(x: torch.Tensor, y: torch.Tensor, style_index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RGB fill [N, 3, H, W] of each sample's style, in canvas pixel coordinates."""
    n = style_index.shape[0]
    fill = torch.zeros(n, 3, *x.shape[1:])
    jitter = (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.08
    off_x = torch.rand(n, 1, 1, generator=gen) * 8
    off_y = torch.rand(n, 1, 1, generator=gen) * 8
    for name, colour in _SOLID_COLOURS.items():
        sel = style_index == STYLES.index(name)
        fill[sel] = torch.tensor(colour).view(3, 1, 1)
    for name, (a, b) in _TEXTURE_COLOURS.items():
        sel = style_index == STYLES.index(name)
        if not sel.any():
            continue
        xs, ys = x[sel] + off_x[sel], y[sel] + off_y[sel]
        if name == "stripes":  # diagonal stripes, period 4 px
            pattern = torch.remainder(xs + ys, 4.0) < 2.0
        elif name == "checker":  # 3 px cells
            pattern = (torch.floor(xs / 3) + torch.floor(ys / 3)).remainder(2) < 1
        else:  # dots of radius 1.1 px on a 4 px grid
            dx = torch.remainder(xs, 4.0) - 2.0
            dy = torch.remainder(ys, 4.0) - 2.0
            pattern = dx * dx + dy * dy > 1.21
        pa = torch.tensor(a).view(1, 3, 1, 1)
        pb = torch.tensor(b).view(1, 3, 1, 1)
        fill[sel] = torch.where(pattern.unsqueeze(1), pa, pb)
    return (fill + jitter).clamp(0, 1)


# --------------------------------------------------------------------------- rendering


def render(
    object_index: torch.Tensor, style_index: torch.Tensor, gen: torch.Generator, supersample: int = 2
) -> torch.Tensor:
    """Render images of the given objects in the given styles, in ``[-1, 1]``.

    Position, size, rotation, texture phase, colour and background are jittered
    from ``gen``; the same generator state gives the same images.
    """
    n = object_index.shape[0]
    hi = IMAGE_SIZE * supersample
    coords = (torch.arange(hi, dtype=torch.float32) + 0.5) / supersample  # canvas pixels
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x = x.expand(n, hi, hi)
    y = y.expand(n, hi, hi)

    radius = IMAGE_SIZE / 2 * (0.55 + 0.25 * torch.rand(n, 1, 1, generator=gen))
    margin = IMAGE_SIZE / 2 - radius
    cx = IMAGE_SIZE / 2 + (torch.rand(n, 1, 1, generator=gen) * 2 - 1) * margin * 0.8
    cy = IMAGE_SIZE / 2 + (torch.rand(n, 1, 1, generator=gen) * 2 - 1) * margin * 0.8
    angle = (torch.rand(n, 1, 1, generator=gen) * 2 - 1) * math.radians(35)
    cos, sin = torch.cos(angle), torch.sin(angle)
    dx, dy = (x - cx) / radius, (cy - y) / radius  # y up in local coordinates
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy

    inside = _shape_masks(u, v, object_index).unsqueeze(1).float()
    fill = _style_fill(x, y, style_index, gen)
    background = 0.9 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.12
    background = background + (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.06
    image = inside * fill + (1 - inside) * background.clamp(0, 1)
    image = F.avg_pool2d(image, supersample)
    return image * 2 - 1


def sample_batch(
    n: int,
    gen: torch.Generator,
    caption_mix: tuple[float, float, float, float] = (0.10, 0.60, 0.15, 0.15),
) -> tuple[torch.Tensor, list[Sample]]:
    """A training batch: images and captions drawn from the caption mix.

    ``caption_mix`` is the probability of (empty, full, object-only, style-only)
    captions. Empty captions teach the unconditional prediction used for
    classifier-free guidance; object-only and style-only captions give the
    surrogate prompts of an erasure a meaning.
    """
    object_index = torch.randint(len(OBJECTS), (n,), generator=gen)
    style_index = torch.randint(len(STYLES), (n,), generator=gen)
    images = render(object_index, style_index, gen)
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    rng = random.Random(seed)
    kinds = rng.choices(range(4), weights=caption_mix, k=n)
    samples = []
    for i, kind in enumerate(kinds):
        obj, style = OBJECTS[int(object_index[i])], STYLES[int(style_index[i])]
        if kind == 0:
            caption = ""
        elif kind == 1:
            caption = rng.choice(FULL_TEMPLATES).format(object=obj, style=style)
        elif kind == 2:
            caption = rng.choice(OBJECT_TEMPLATES).format(object=obj)
        else:
            caption = rng.choice(STYLE_TEMPLATES).format(style=style)
        samples.append(Sample(obj, style, caption))
    return images, samples


def labelled_set(n_per_class_pair: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced set over every object x style pair: images, object labels, style labels."""
    pairs = [(o, s) for o in range(len(OBJECTS)) for s in range(len(STYLES))]
    object_index = torch.tensor([o for o, _ in pairs] * n_per_class_pair)
    style_index = torch.tensor([s for _, s in pairs] * n_per_class_pair)
    gen = torch.Generator().manual_seed(seed)
    return render(object_index, style_index, gen), object_index, style_index


def degrade(
    images: torch.Tensor, gen: torch.Generator, blur_sigma: float = 1.0, noise_std: float = 0.1
) -> torch.Tensor:
    """Blur by ``blur_sigma`` px and add Gaussian noise: how generations look."""
    if blur_sigma > 0:
        radius = max(1, int(math.ceil(2 * blur_sigma)))
        k = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (k / blur_sigma) ** 2)
        k = k / k.sum()
        c = images.shape[1]
        padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
        images = F.conv2d(padded, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        images = F.conv2d(images, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if noise_std > 0:
        images = images + noise_std * torch.randn(images.shape, generator=gen)
    return images
