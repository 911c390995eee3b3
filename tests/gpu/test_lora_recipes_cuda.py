"""The LoRA recipes for causal LMs on a CUDA device: their batches follow the model onto the device, and the
adapter each stores is an ordinary peft adapter that gives the trained model's logits on the CPU. Skipped
without CUDA; a GPU machine runs it with `pytest tests/gpu` (bench/gpu_session.sh)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("recipe_name", ["npo-lora", "graddiff-lora", "simnpo-lora"])
def test_a_lora_recipe_trains_on_cuda_and_its_adapter_gives_the_same_logits_on_the_cpu(tmp_path, recipe_name):
    from peft import PeftModel

    from forgetd.training.registry import get_recipe

    sys.path.insert(0, str(ROOT / "bench"))
    import llm_gpu

    tokenizer, data = llm_gpu._data()
    base, _ = llm_gpu._build("tiny", tokenizer, "cpu", "float32")  # CPU and CUDA draw different random weights
    on_gpu = copy.deepcopy(base).to("cuda")
    recipe = get_recipe(ROOT / "adapters", recipe_name, max_steps=6, eval_every=3, stop="fixed")
    result = recipe.module().train(recipe, model=on_gpu, tokenizer=tokenizer, data=data, out_dir=tmp_path / "adapter")
    assert result["steps"] == 6 and next(on_gpu.parameters()).is_cuda

    ids = tokenizer(data.forget_texts[:4], return_tensors="pt", padding=True)
    on_cpu = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    on_gpu.eval()
    with torch.no_grad():
        expected = on_gpu(**{k: v.to("cuda") for k, v in ids.items()}).logits.cpu()
        got = on_cpu(**ids).logits
        with on_cpu.disable_adapter():
            untouched = on_cpu(**ids).logits
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()
    assert not torch.allclose(got, untouched, atol=1e-4)  # the adapter is not a no-op
