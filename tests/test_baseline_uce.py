"""UCE's closed-form edit satisfies its normal equations and does what its objective says."""

import pytest
import torch

from spare_core.baselines.uce import uce_edit


def _problem(seed=0, out=6, dim=5, n=2, m=2):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(out, dim, generator=gen, dtype=torch.float64),
        torch.randn(n, dim, generator=gen, dtype=torch.float64),
        torch.randn(n, dim, generator=gen, dtype=torch.float64),
        torch.randn(m, dim, generator=gen, dtype=torch.float64),
    )


def test_the_edit_solves_the_normal_equations():
    w0, c, g, p = _problem()
    lam, es, ps = 0.5, 1.3, 0.7
    w = uce_edit(w0, c, g, p, lam=lam, erase_scale=es, preserve_scale=ps)
    # Gradient of lam||W-W0||^2 + es sum||W c_i - W0 g_i||^2 + ps sum||W c_j - W0 c_j||^2, halved:
    grad = lam * (w - w0)
    grad += sum(es * torch.outer(w @ ci - w0 @ gi, ci) for ci, gi in zip(c, g, strict=True))
    grad += sum(ps * torch.outer(w @ pj - w0 @ pj, pj) for pj in p)
    assert grad.abs().max() < 1e-10


def test_one_concept_without_preserves_matches_sherman_morrison():
    w0, c, g, _ = _problem(n=1)
    lam = 0.5
    w = uce_edit(w0, c, g, lam=lam)
    ci, gi = c[0], g[0]
    # (lam W0 + W0 g c^T)(lam I + c c^T)^-1 applied to c: (lam W0 c + (c.c) W0 g) / (lam + c.c).
    expected = (lam * w0 @ ci + (ci @ ci) * (w0 @ gi)) / (lam + ci @ ci)
    assert torch.allclose(w @ ci, expected, atol=1e-10)
    # Directions orthogonal to the erased embedding are untouched.
    x = torch.randn(5, dtype=torch.float64)
    x = x - (x @ ci) / (ci @ ci) * ci
    assert torch.allclose(w @ x, w0 @ x, atol=1e-10)


def test_small_lambda_maps_the_concept_to_its_guide_and_keeps_preserved_outputs():
    w0, c, g, p = _problem(n=1, m=1)
    w = uce_edit(w0, c, g, p, lam=1e-6, preserve_scale=1.0)
    assert torch.allclose(w @ c[0], w0 @ g[0], atol=1e-4)
    assert torch.allclose(w @ p[0], w0 @ p[0], atol=1e-4)


def test_dtype_is_kept_and_bad_shapes_are_refused():
    w0, c, g, _ = _problem()
    assert uce_edit(w0.float(), c.float(), g.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="one shape"):
        uce_edit(w0, c, g[:1])
    with pytest.raises(ValueError, match="width"):
        uce_edit(w0, c[:, :3], g[:, :3])
    with pytest.raises(ValueError, match="lam must be positive"):
        uce_edit(w0, c, g, lam=0.0)
