"""Saliency: a constructed case with a known answer, selection, and persistence."""

import pytest
import torch
from fakes import FakeBackend

from spare_core.saliency import SALIENCY_MODES, Saliency, candidate_modules, compute_saliency

PROMPTS = {
    # The concept prompt embeds far from the surrogate and the retain prompts:
    # only text_head reads the prompt, so it is the module that carries the concept.
    "a red cat": torch.tensor([3.0, 0, 0, 0]),
    "a plain cat": torch.tensor([0.0, 0.1, 0, 0]),
    "a dog": torch.tensor([0.0, 0, 0.1, 0]),
}


def _compute(mode: str) -> Saliency:
    backend = FakeBackend(PROMPTS, weight_of_t=lambda t: 1.0)
    g = torch.Generator().manual_seed(0)
    latents = 0.1 * torch.randn(8, 4, 4, 4, generator=g)
    return compute_saliency(
        backend,
        latents,
        torch.zeros(8, dtype=torch.long),
        ["a red cat"],
        ["a plain cat"],
        mode=mode,
        retain_latents=latents,
        retain_prompt_index=torch.zeros(8, dtype=torch.long),
        retain_prompts=["a dog"],
        batches=3,
        batch_size=4,
    )


@pytest.mark.parametrize("mode", SALIENCY_MODES)
def test_the_module_that_reads_the_concept_ranks_first(mode):
    saliency = _compute(mode)
    assert saliency.ranked()[0] == "text_head"
    assert set(saliency.module_scores) == {"image_head", "text_head"}
    assert len(saliency.channel_scores["text_head"]) == 4


def test_forget_saliency_is_zero_when_concept_and_surrogate_agree():
    backend = FakeBackend({"x": torch.ones(4), "y": torch.ones(4)}, weight_of_t=lambda t: 1.0)
    latents = torch.randn(4, 4, 4, 4)
    s = compute_saliency(backend, latents, torch.zeros(4, dtype=torch.long), ["x"], ["y"], mode="forget", batches=1)
    assert all(v == 0 for v in s.module_scores.values())


def test_selection_respects_fraction_and_top_k():
    scores = {f"m{i}": float(i) for i in range(10)}
    s = Saliency("forget", scores, {n: [1.0, 3.0, 2.0, 0.0] for n in scores})
    assert s.select_modules(fraction=0.3) == ["m9", "m8", "m7"]
    assert s.select_modules(top_k=2) == ["m9", "m8"]
    assert len(s.select_modules(fraction=0.01)) == 1
    with pytest.raises(ValueError):
        s.select_modules(fraction=1.5)
    masks = s.row_masks(["m9"], fraction=0.5)
    assert masks["m9"].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_saliency_save_load_and_plot(tmp_path):
    from spare_core.saliency import plot_saliency

    s = _compute("forget")
    s.save(tmp_path / "s.json")
    assert Saliency.load(tmp_path / "s.json") == s
    plot_saliency(s, tmp_path / "s.png", ["text_head"])
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a SPARE saliency file"):
        Saliency.load(tmp_path / "bad.json")


def test_candidate_scopes():
    from spare_core.toy.model import build_unet

    unet = build_unet()
    everything = candidate_modules(unet, "all")
    attention = candidate_modules(unet, "attention")
    cross = candidate_modules(unet, "cross_attention")
    text = candidate_modules(unet, "text")
    assert set(text) < set(cross) < set(attention) < set(everything)
    assert all(".attn2." in n for n in cross)
    # The text scope is what reads the prompt: k and v of every cross-attention, nothing else.
    assert sorted(text) == sorted(n for n in cross if n.endswith((".to_k", ".to_v")))
    assert len(text) == 2 * sum(1 for n in cross if n.endswith(".to_q"))
    assert "conv_in" in everything and "time_embedding.linear_1" in everything
    with pytest.raises(ValueError, match="unknown module scope"):
        candidate_modules(unet, "some")


def test_unknown_mode_is_refused():
    backend = FakeBackend(PROMPTS, weight_of_t=lambda t: 1.0)
    with pytest.raises(ValueError, match="unknown saliency mode"):
        compute_saliency(
            backend,
            torch.zeros(1, 4, 4, 4),
            torch.zeros(1, dtype=torch.long),
            ["a red cat"],
            ["a plain cat"],
            mode="magic",
        )
