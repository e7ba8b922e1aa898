"""The cost benchmark (bench/cost.py) and its GPU variant (bench/gpu.py): they run, their figures add up.

Both scripts run in their tiny mode (reduced widths, 1-2 steps, on CPU), side by
side in subprocesses; the unit tests check ESD-x's parameter selection against
a count made by hand and ESD's target against its formula.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_module import load_bench

ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = {"step_seconds", "step_seconds_stats", "peak_rss_mb", "trainable_parameters", "file_bytes"}
METHODS = ("spare", "esd_x_published", "esd_x_lean")


@pytest.fixture(scope="module")
def cost():
    return load_bench("cost")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """cost.py --tiny (both architectures, every method) and gpu.py --tiny --device cpu, run at the same time."""
    tmp = tmp_path_factory.mktemp("bench_cost")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cost_out, gpu_out = tmp / "cost.json", tmp / "gpu.json"
    procs = {
        "cost": subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cost.py"), "--tiny", "--out", str(cost_out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        ),
        "gpu": subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "gpu.py"), str(gpu_out), "--tiny", "--device", "cpu"]
            + ["--archs", "sd15", "--methods", "spare", "esd_x_lean"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        ),
    }
    try:
        printed = {name: p.communicate(timeout=300)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:  # its own process group: the method processes it started go too
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} failed:\n{printed[name]}"
    return {
        "cost": (json.loads(cost_out.read_text()), printed["cost"]),
        "gpu": (json.loads(gpu_out.read_text()), printed["gpu"]),
    }


def _check_rows(results: dict, archs, methods, memory_key: str) -> None:
    assert {"sd15", "sdxl"} & set(results) == set(archs)  # one top-level entry per architecture
    for arch in archs:
        rows = results[arch]
        assert set(rows) == set(methods)
        for method, row in rows.items():
            assert "error" not in row, f"{arch}/{method}: {row.get('error')}"
            assert ROW_FIELDS <= set(row), f"{arch}/{method} lacks {ROW_FIELDS - set(row)}"
            stats = row["step_seconds_stats"]
            assert stats["min"] <= row["step_seconds"] == stats["median"] <= stats["max"]
            assert row[memory_key] > 0 and row["trainable_parameters"] > 0 and row["file_bytes"] > 0
        spare = rows["spare"]
        esd_rows = [m for m in methods if m != "spare"]
        assert set(spare["ratio_time"]) == set(spare["ratio_memory"]) == set(esd_rows)
        for name in esd_rows:
            assert spare["ratio_time"][name] == round(spare["step_seconds"] / rows[name]["step_seconds"], 4)
            assert spare["ratio_memory"][name] == round(spare[memory_key] / rows[name][memory_key], 4)
        # SPARE trains a few adapter weights; ESD-x every cross-attention weight.
        assert all(spare["trainable_parameters"] < rows[name]["trainable_parameters"] for name in esd_rows)
        if "esd_x_published" in rows:
            assert "sampling_step_seconds" in rows["esd_x_published"]
            assert "esd_x_published" in spare["ratio_time_esd_schedule"]


@pytest.mark.slow
def test_cost_tiny_run_has_every_field_and_consistent_ratios(tiny_runs, cost):
    results, printed = tiny_runs["cost"]
    _check_rows(results, ("sd15", "sdxl"), METHODS, "peak_rss_mb")
    assert results["settings"]["tiny"] is True
    assert results["versions"]["torch"] == torch.__version__
    assert {"cpu_count", "platform"} <= set(results["machine"])
    assert results["settings"]["batch"] >= 1 and results["settings"]["timed_steps"] in (1, 2)
    for arch in ("sd15", "sdxl"):
        rows = results[arch]
        assert rows["esd_x_published"]["trainable_parameters"] == rows["esd_x_lean"]["trainable_parameters"]
    # the tiny SD1.5-shaped UNet's ESD-x count, by hand (see test_esd_x_trains_exactly_the_cross_attention)
    assert results["sd15"]["esd_x_published"]["trainable_parameters"] == 74_176
    assert "SPARE / esd_x_published: time" in printed and "wrote" in printed
    assert any(name.startswith("sd15.time_vs_published") for name in results["targets"])


@pytest.mark.slow
def test_gpu_script_runs_on_cpu_at_tiny_size(tiny_runs):
    results, printed = tiny_runs["gpu"]
    assert results["settings"]["device"] == "cpu" and results["settings"]["memory_key"] == "peak_rss_mb"
    _check_rows(results, ("sd15",), ("spare", "esd_x_lean"), "peak_rss_mb")
    erasure = results["erasure"]
    assert "error" not in erasure, erasure
    assert set(erasure["stage_seconds"]) == {"data", "profile", "saliency", "train"}
    assert erasure["lora_bytes"] > 0 and erasure["seconds"] > 0
    assert "whole default erasure" in printed


def test_esd_x_trains_exactly_the_cross_attention(cost):
    """The tiny SD1.5-shaped UNet, counted by hand from its config.

    block_out_channels (32, 32, 64, 64), one layer per block, cross_attention_dim 32:
    transformer blocks at width 32: down 0 and 1 (one each) + up 2 and 3 (two each) = 6;
    at width 64: down 2 (one) + mid (one) + up 1 (two) = 4. Each block's attn2 holds
    to_q (C x C), to_k and to_v (C x 32), to_out.0 (C x C plus a bias of C).
    """
    unet = cost.build_unet(cost.unet_config("sd15", tiny=True, latent=8), "cpu", torch.float32)
    params = cost.esd_x_parameters(unet)

    def block(c: int, cross: int = 32) -> int:
        return c * c + 2 * c * cross + c * c + c

    assert sum(p.numel() for p in params.values()) == 6 * block(32) + 4 * block(64) == 74_176
    assert all(".attn2." in name for name in params)
    kinds = {name.split(".attn2.")[1] for name in params}
    assert kinds == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"}
    assert len(params) == 5 * 10
    # nothing outside attn2 is trained, and every attn2 weight is
    every = {n for n, _ in unet.named_parameters() if ".attn2." in n}
    assert set(params) == every


def test_esd_target_matches_the_formula_by_hand(cost):
    eps_c = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    eps_u = torch.tensor([[0.5, -1.0], [1.0, 1.0]])
    # eps_u - eta (eps_c - eps_u), eta 1: [0.5 - 0.5, -1 - 3], [1 + 1, 1 + 2]
    assert torch.equal(cost.esd_target(eps_c, eps_u, 1.0), torch.tensor([[0.0, -4.0], [2.0, 3.0]]))
    # eta 2: [0.5 - 1, -1 - 6], [1 + 2, 1 + 4]
    assert torch.equal(cost.esd_target(eps_c, eps_u, 2.0), torch.tensor([[-0.5, -7.0], [3.0, 5.0]]))
    student = torch.tensor([[1.0, -4.0], [2.0, 1.0]], requires_grad=True)
    loss = cost.esd_loss(student, eps_c, eps_u, 1.0)
    assert loss.item() == pytest.approx((1.0 + 0.0 + 0.0 + 4.0) / 4)
    loss.backward()
    assert torch.allclose(student.grad, torch.tensor([[0.5, 0.0], [0.0, -1.0]]))


def test_safetensors_size_matches_a_written_file(cost):
    from safetensors.torch import save

    tensors = {"b.weight": torch.zeros(3, 5, dtype=torch.float16), "a.bias": torch.zeros(7, dtype=torch.float16)}
    expected = len(save(tensors))
    assert cost.safetensors_size({n: (tuple(t.shape), "F16", 2) for n, t in tensors.items()}) == expected
