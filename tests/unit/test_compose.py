"""Composition is exact: merged weights, runtime multi-adapter and the `cat` adapter agree (peft-style
parity tests on tiny models built from configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from forgetd import compose  # noqa: E402


def _llama(directory: Path) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def _gpt2(directory: Path) -> Path:
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def _loader(base_dir: Path):
    def load():
        return transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)

    return load


def _random_adapter(base_dir: Path, out: Path, seed: int, *, gpt2: bool = False) -> Path:
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_fc", "c_proj"] if gpt2 else ["gate_proj", "up_proj", "down_proj"],
        fan_in_fan_out=gpt2,
        init_lora_weights=False,  # random A and B: a zero B would make every parity check trivial
        use_rslora=False,
        use_dora=False,
    )
    model = peft.get_peft_model(_loader(base_dir)(), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.2)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base = _llama(root / "base")
    adapters = [_random_adapter(base, root / f"a{i}", seed=100 + i) for i in range(10)]
    return base, adapters


TOKENS = torch.tensor([[1, 5, 9, 13, 2, 40, 33, 7], [3, 3, 8, 60, 22, 11, 4, 0]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


@pytest.mark.parametrize("n", [1, 3, 10])
def test_merged_equals_runtime_multi_adapter(llama, tmp_path, n):
    base, adapters = llama
    chosen = adapters[:n]
    runtime = compose.load_with_adapters(_loader(base), chosen)
    merged_dir = compose.build_merged_dir(_loader(base), base, chosen, [1.0] * n, tmp_path / "merged")
    stock = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True)
    reference = _logits(runtime)
    assert (reference - _logits(_loader(base)())).abs().max() > 1e-3, "adapters must change the outputs"
    assert (_logits(stock) - reference).abs().max() < 1e-4


def test_cat_adapter_equals_runtime(llama, tmp_path):
    base, adapters = llama
    cat_dir = compose.build_cat_adapter(_loader(base), adapters[:3], [1.0, 1.0, 1.0], tmp_path / "cat")
    stock = peft.PeftModel.from_pretrained(_loader(base)(), cat_dir)
    runtime = compose.load_with_adapters(_loader(base), adapters[:3])
    assert (_logits(stock) - _logits(runtime)).abs().max() < 1e-4


def test_weights_scale_each_delta(llama, tmp_path):
    base, adapters = llama
    half = compose.merged_model(_loader(base), adapters[:1], [0.5])
    full = compose.merged_model(_loader(base), adapters[:1], [1.0])
    pristine = _loader(base)()
    name = "model.layers.0.mlp.down_proj.weight"
    d_half = half.state_dict()[name] - pristine.state_dict()[name]
    d_full = full.state_dict()[name] - pristine.state_dict()[name]
    assert torch.allclose(2 * d_half, d_full, atol=1e-6)


def test_withdrawal_rebuild_is_bitwise_a_fresh_composition(llama, tmp_path):
    base, adapters = llama
    kept = [adapters[0], adapters[2]]
    # the rebuild after withdrawing adapters[1] goes through the same path as a first build
    rebuilt = compose.build_merged_dir(_loader(base), base, kept, [1.0, 1.0], tmp_path / "rebuilt")
    fresh = compose.build_merged_dir(_loader(base), base, kept, [1.0, 1.0], tmp_path / "fresh")
    with_all = compose.build_merged_dir(_loader(base), base, adapters[:3], [1.0] * 3, tmp_path / "all")
    read = (lambda d: (d / "model.safetensors").read_bytes())
    assert read(rebuilt) == read(fresh)
    assert read(rebuilt) != read(with_all)


def test_gpt2_conv1d_parity(tmp_path):
    base = _gpt2(tmp_path / "base")
    adapters = [_random_adapter(base, tmp_path / f"a{i}", seed=i, gpt2=True) for i in range(3)]
    runtime = compose.load_with_adapters(_loader(base), adapters)
    merged_dir = compose.build_merged_dir(_loader(base), base, adapters, [1.0] * 3, tmp_path / "merged")
    stock = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True)
    assert (_logits(stock) - _logits(runtime)).abs().max() < 1e-4


def test_content_id_dedupes_identical_compositions():
    versions = {"torch": "x", "transformers": "y", "peft": "z"}
    m = [compose.ManifestEntry("a" * 64), compose.ManifestEntry("b" * 64)]
    assert compose.content_id("0" * 64, m, dtype="float32", versions=versions) == compose.content_id(
        "0" * 64, list(m), dtype="float32", versions=versions
    )
    assert compose.content_id("0" * 64, m, dtype="float32", versions=versions) != compose.content_id(
        "0" * 64, m[::-1], dtype="float32", versions=versions
    )
