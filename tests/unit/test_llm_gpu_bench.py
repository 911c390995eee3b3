"""bench/llm_gpu.py (the GPU measurement of issue 3) on a 2-layer bf16 model on the CPU: the same code path
a GPU machine runs, so that its one short session is not spent finding a bug."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_bench_runs_npo_lora_on_a_bf16_llama_and_writes_its_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "llm_gpu.py"), "--size", "tiny", "--device", "cpu",
         "--dtype", "bfloat16", "--warmup", "2", "--steps", "6", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "llm_gpu.json").read_text())
    npo, full = result["npo_lora"], result["baseline"]
    assert [r["steps"] for r in npo["runs"]] == [r["steps"] for r in full["runs"]] == [2, 8]
    assert result["dtype"] == "bfloat16" and result["config"]["num_hidden_layers"] == 2
    # LoRA r=8 on gate/up/down of 2 layers: 8·(64+128)·3 per layer; the baseline trains every weight
    assert npo["trainable_params"] == 2 * 3 * 8 * (64 + 128)
    assert full["recipe"] == "ga-full" and full["trainable_params"] == result["params"]
    assert full["output_bytes"] > 10 * npo["output_bytes"]  # a whole model against an adapter
    assert math.isfinite(npo["seconds_per_100_steps"]) and math.isfinite(full["seconds_per_100_steps"])
    assert npo["peak_bytes"] is None  # not a CUDA device: not measured, and the table says so
    table = (tmp_path / "llm_gpu.md").read_text()
    assert "seconds per 100 steps" in table and "not measured" in table and "| ga-full |" in table

def test_the_gpu_bench_refuses_cuda_without_a_device(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "llm_gpu.py"), "--device", "cuda", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "llm_gpu.json").exists()
