"""The toy canvas world: a synthetic objects x styles image world.

A miniature of the UnlearnCanvas benchmark that a CPU can train and evaluate.
Every image shows one object (a shape) drawn in one style on a light, slightly
jittered background. Styles are more than colours: three are solid fills told
apart by colour (and by brightness, so a greyscale eye sees them too), three are
textures, two of which (``stripes`` and ``checker``) share one palette and
differ only in pattern, and the surrogate look ``plain`` is an outline drawing.
Every concept has more than one name: a synonym, and for some a phrasing that
names it without its word ("five pointed shape" for ``star``); training captions
use them at a fixed rate, so the model draws the same concept for each name.
Rendering is vectorised in torch and deterministic for a given
``torch.Generator`` seed.

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


def benchmark_surrogate(concept: str) -> str:
    """The surrogate the benchmarks erase a concept toward: ``plain`` for a style, the next object for an object.

    Each object's surrogate is its neighbour in :data:`OBJECTS` (``star`` wraps round to ``circle``), so
    several surrogates look like what they replace (``cross`` -> ``ring``, ``ring`` -> ``star``).
    """
    if concept in OBJECTS:
        return OBJECTS[(OBJECTS.index(concept) + 1) % len(OBJECTS)]
    if concept in STYLES and concept != PLAIN_STYLE:
        return PLAIN_STYLE
    erasable = [c for c in STYLES + OBJECTS if c != PLAIN_STYLE]
    raise ValueError(f"unknown toy concept {concept!r}; use one of {', '.join(erasable)}")


#: The concepts the benchmarks erase, styles first: every style but ``plain``, then every object.
BENCHMARK_CONCEPTS: tuple[str, ...] = tuple(s for s in STYLES if s != PLAIN_STYLE) + OBJECTS

#: Every other name of each concept: synonyms (one word), then phrasings that
#: name the concept without its word. Captions name a concept by one of these
#: at ``ALTERNATIVE_NAME_RATE``; a domain's default forget prompts never do.
ALTERNATIVE_NAMES: dict[str, tuple[str, ...]] = {
    "circle": ("disc",),
    "square": ("box", "four sided shape"),
    "triangle": ("wedge", "three sided shape"),
    "cross": ("plus", "plus sign"),
    "ring": ("hoop",),
    "star": ("pentagram", "five pointed shape"),
    "red": ("crimson", "cherry coloured"),
    "blue": ("azure", "sky coloured"),
    "yellow": ("golden", "lemon coloured"),
    "stripes": ("striped",),
    "checker": ("checkered",),
    "dots": ("dotted", "polka dot"),
    "plain": ("outline",),
}
#: Share of concept mentions in training captions that use an alternative name.
ALTERNATIVE_NAME_RATE = 0.25

#: Caption templates seen in training. The toy domain's forget prompts use the
#: core ones; the others teach the words of the held-out template ("picture",
#: "one", "drawn") in other arrangements, so that the held-out template tests an
#: unseen phrasing of known words, not unknown words (which the tokenizer maps
#: to one unknown token).
CORE_TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "a {object} image in {style} style",
    "{style} style {object}",
    "an image of a {object} in {style} style",
)
FULL_TEMPLATES: tuple[str, ...] = CORE_TEMPLATES + (
    "a picture of a {object} in {style} style",
    "one {object} in {style} style",
    "a {object} drawn in {style} style",
)
OBJECT_TEMPLATES: tuple[str, ...] = ("a {object}", "an image of a {object}")
STYLE_TEMPLATES: tuple[str, ...] = ("an image in {style} style", "{style} style")
#: The evaluation template (UnlearnCanvas' prompt, lower case) and a held-out one
#: that training never sees.
EVAL_TEMPLATE = "a {object} image in {style} style"
HELD_OUT_TEMPLATE = "a picture of one {object} drawn in {style} style"


def names_of(concept: str) -> tuple[str, ...]:
    """Every name of a concept: its own word first, then its alternative names."""
    return (concept,) + ALTERNATIVE_NAMES.get(concept, ())


#: Every name of every concept, mapped to the concept it names.
_NAME_TO_CONCEPT: dict[str, str] = {name: c for c in OBJECTS + STYLES for name in names_of(c)}
_LONGEST_NAME_WORDS = max(len(name.split()) for name in _NAME_TO_CONCEPT)

#: Every word any template or name can produce: the tokenizer's vocabulary.
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {w for name in _NAME_TO_CONCEPT for w in name.split()}
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


def concepts_named(caption: str) -> list[str]:
    """The concepts a caption names, in order, by any of their names (longest name first)."""
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    found, i = [], 0
    while i < len(words):
        for length in range(min(_LONGEST_NAME_WORDS, len(words) - i), 0, -1):
            concept = _NAME_TO_CONCEPT.get(" ".join(words[i : i + length]))
            if concept is not None:
                found.append(concept)
                i += length
                break
        else:
            i += 1
    return found


def parse_caption(caption: str) -> tuple[str | None, str | None]:
    """Return the (object, style) a caption names, by any of their names; None for what it leaves out."""
    named = concepts_named(caption)
    objects = [c for c in named if c in OBJECTS]
    styles = [c for c in named if c in STYLES]
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

#: Solid fills. Their luminances (about 0.33, 0.54 and 0.74) differ as much as
#: their hues, so a style classifier that sees only greyscale tells them apart.
_SOLID_COLOURS = {
    "red": (0.84, 0.12, 0.12),
    "blue": (0.30, 0.55, 0.95),
    "yellow": (0.96, 0.76, 0.06),
}
#: Two-colour textures: (pattern colour, ground colour). ``stripes`` and
#: ``checker`` share one palette, so only their pattern tells them apart.
_SHARED_PALETTE = ((0.10, 0.42, 0.22), (0.70, 0.92, 0.62))
_TEXTURE_COLOURS = {
    "stripes": _SHARED_PALETTE,
    "checker": _SHARED_PALETTE,
    "dots": ((0.20, 0.08, 0.30), (0.10, 0.65, 0.75)),
}
#: ``plain``: a pale grey fill inside a dark grey outline, like a sketch.
_PLAIN_FILL, _PLAIN_OUTLINE = (0.80, 0.80, 0.80), (0.22, 0.22, 0.22)
#: Outline width of ``plain``, in canvas pixels.
_OUTLINE_WIDTH = 1.5


def _texture_pattern(name: str, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Where a texture shows its pattern colour, in canvas pixel coordinates.

    Periods are 5 to 12 pixels, coarse enough to survive the model's 2 x 2 latent
    pixels and the blur of generation. Stripes run horizontally so that they
    cannot be mistaken for a checkerboard, whose cells line up along diagonals;
    checker cells are 6 px, three latent pixels, so that even the thin shapes
    (ring, star) hold a recognisable cell.
    """
    if name == "stripes":  # horizontal bands, period 8 px
        return torch.remainder(ys, 8.0) < 4.0
    if name == "checker":  # 6 px cells
        return (torch.floor(xs / 6) + torch.floor(ys / 6)).remainder(2) < 1
    # dots of radius 1.6 px on a 5 px grid
    dx = torch.remainder(xs, 5.0) - 2.5
    dy = torch.remainder(ys, 5.0) - 2.5
    return dx * dx + dy * dy <= 1.6**2


def _style_fill(
    x: torch.Tensor, y: torch.Tensor, inside: torch.Tensor, style_index: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """RGB fill [N, 3, H, W] of each sample's style, in canvas pixel coordinates.

    ``inside`` is each sample's shape mask [N, H, W], for the outline of ``plain``.
    """
    n = style_index.shape[0]
    fill = torch.zeros(n, 3, *x.shape[1:])
    jitter = (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.08
    off_x = torch.rand(n, 1, 1, generator=gen) * 12  # a full period of every texture
    off_y = torch.rand(n, 1, 1, generator=gen) * 12
    for name, colour in _SOLID_COLOURS.items():
        sel = style_index == STYLES.index(name)
        fill[sel] = torch.tensor(colour).view(3, 1, 1)
    for name, (a, b) in _TEXTURE_COLOURS.items():
        sel = style_index == STYLES.index(name)
        if not sel.any():
            continue
        pattern = _texture_pattern(name, x[sel] + off_x[sel], y[sel] + off_y[sel])
        pa = torch.tensor(a).view(1, 3, 1, 1)
        pb = torch.tensor(b).view(1, 3, 1, 1)
        fill[sel] = torch.where(pattern.unsqueeze(1), pa, pb)
    sel = style_index == STYLES.index(PLAIN_STYLE)
    if sel.any():
        supersample = x.shape[-1] // IMAGE_SIZE
        width = max(1, round(_OUTLINE_WIDTH * supersample))
        mask = inside[sel].unsqueeze(1).float()
        interior = -F.max_pool2d(-mask, 2 * width + 1, stride=1, padding=width)  # erosion
        outline = (mask - interior) > 0.5
        pa = torch.tensor(_PLAIN_OUTLINE).view(1, 3, 1, 1)
        pb = torch.tensor(_PLAIN_FILL).view(1, 3, 1, 1)
        fill[sel] = torch.where(outline, pa, pb)
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

    inside = _shape_masks(u, v, object_index)
    fill = _style_fill(x, y, inside, style_index, gen)
    inside = inside.unsqueeze(1).float()
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
    surrogate prompts of an erasure a meaning. Each concept is named by one of
    its alternative names at ``ALTERNATIVE_NAME_RATE``.
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
        obj_name, style_name = _caption_name(obj, rng), _caption_name(style, rng)
        if kind == 0:
            caption = ""
        elif kind == 1:
            caption = rng.choice(FULL_TEMPLATES).format(object=obj_name, style=style_name)
        elif kind == 2:
            caption = rng.choice(OBJECT_TEMPLATES).format(object=obj_name)
        else:
            caption = rng.choice(STYLE_TEMPLATES).format(style=style_name)
        samples.append(Sample(obj, style, caption))
    return images, samples


def _caption_name(concept: str, rng: random.Random) -> str:
    """The concept's own word, or at ``ALTERNATIVE_NAME_RATE`` one of its other names (uniformly)."""
    alternatives = ALTERNATIVE_NAMES.get(concept, ())
    if alternatives and rng.random() < ALTERNATIVE_NAME_RATE:
        return rng.choice(alternatives)
    return concept


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
