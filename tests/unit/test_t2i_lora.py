"""diffusers-format LoRA I/O, facilitated transport and exact composition (forgetd.families.t2i_lora), on a
tiny random-init StableDiffusionPipeline built from configs (no training, no download)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from forgetd.families import t2i_lora  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _tiny_pipe(tmp: Path):
    """A StableDiffusionPipeline small enough to run in milliseconds; a letter-level CLIP tokenizer needs
    no merges."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4, layers_per_block=1,
        norm_num_groups=8, sample_size=8,
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("t2i")
    pipe = _tiny_pipe(root)
    base_dir = root / "base"
    pipe.save_pretrained(str(base_dir))
    (base_dir / "verifier").mkdir()  # a forgetd model directory carries folders diffusers ignores
    (base_dir / "verifier" / "config.json").write_text("{}")
    (base_dir / "forgetd_t2i.json").write_text('{"num_inference_steps": 3}')

    def load_base():
        from diffusers import StableDiffusionPipeline

        p = StableDiffusionPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    adapters = []
    # different targets, ranks and alpha ≠ r: a loader that dropped alpha or the targets would show. Small
    # weights, like trained ones: large random deltas make the tiny random UNet chaotic, and fp32 rounding
    # (W+ΔW)x vs Wx+ΔWx then grows past any tolerance over the sampling steps
    for i, (target, r, alpha, concept) in enumerate(
        [("transformer", 1, 3.0, "circle"), ("attn2", 2, 1.0, "square"), ("transformer", 3, 6.0, "cross")]
    ):
        p = load_base()
        p.unet.add_adapter(t2i_lora.lora_config(p.unet, SimpleNamespace(r=r, alpha=alpha, target=target)),
                           adapter_name="x")
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in p.unet.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        adapters.append(t2i_lora.save_adapter(p.unet, "x", root / f"adapter{i}", method="spm", concepts=[concept]))
    return SimpleNamespace(root=root, dir=base_dir, load=load_base, adapters=adapters)


def _images(pipe, prompt="a red circle"):
    return pipe(prompt=[prompt] * 2, num_inference_steps=3, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def _lora_layers(unet):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in unet.named_modules() if isinstance(m, LoraLayer)}


def test_adapter_directory_carries_metadata_and_concepts(base):
    from safetensors import safe_open

    d = base.adapters[0]
    assert (d / t2i_lora.ADAPTER_WEIGHTS).is_file()
    info = t2i_lora.adapter_info(d)
    assert info["concepts"] == ["circle"] and info["rank"] == 1 and info["alpha"] == 3.0
    with safe_open(str(d / t2i_lora.ADAPTER_WEIGHTS), framework="pt") as f:
        assert "lora_adapter_metadata" in (f.metadata() or {})
    read = t2i_lora.read_adapter(base.adapters[1])
    assert read and all(".attn2." in m for m in read)
    assert all(s == pytest.approx(0.5) for _, _, s in read.values())  # alpha 1 / r 2, not 1


def test_gamma_composition_is_exactly_linear_in_gamma(base):
    """For every adapted linear: output = W₀x + Σ_i γ_i·s_i·B_i·A_i·x, with no γ² and no cross terms."""
    tp = t2i_lora.load_with_adapters(base.load, base.adapters)
    prompt = "a blue triangle"  # overlaps no concept: γ from the embedding cosine only, strictly in (0, 1)
    gammas = tp.gammas(prompt)
    assert all(0.0 < g < 1.0 for g in gammas), gammas
    assert tp.gammas("a red circle")[0] == 1.0  # token overlap
    tp._apply(tp.scales(prompt))
    deltas = [t2i_lora.delta_weights(d) for d in base.adapters]
    layers = _lora_layers(tp.unet)
    assert set(layers) == set().union(*deltas)
    gen = torch.Generator().manual_seed(1)
    worst, worst_sq = 0.0, 0.0
    for name, layer in layers.items():
        w0 = layer.get_base_layer().weight.detach()
        x = torch.randn((5, w0.shape[1]), generator=gen)
        with torch.no_grad():
            got = layer(x)
        linear = w0.clone()
        squared = w0.clone()
        for g, delta in zip(gammas, deltas):
            if name in delta:
                linear += g * delta[name]
                squared += g * g * delta[name]
        bias = layer.get_base_layer().bias
        expected = x @ linear.T + (0 if bias is None else bias.detach())
        as_squared = x @ squared.T + (0 if bias is None else bias.detach())
        worst = max(worst, float((got - expected).abs().max()))
        worst_sq = max(worst_sq, float((got - as_squared).abs().max()))
    assert worst < 1e-5
    assert worst_sq > 1e-3  # the γ² composition (the public SPM code's) is measurably different


def test_transport_equals_static_merge_at_the_same_gammas(base):
    tp = t2i_lora.load_with_adapters(base.load, base.adapters)
    prompt = "a blue triangle"
    merged = t2i_lora.merged_pipeline(base.load, base.adapters, tp.gammas(prompt))
    assert abs(_images(tp, prompt) - _images(merged, prompt)).max() < 1e-4


def test_stock_load_lora_weights_matches_forgetd_loading(base):
    plain = _images(base.load())
    for d in base.adapters:
        stock = base.load()
        stock.load_lora_weights(str(d))
        ours = t2i_lora.merged_pipeline(base.load, [d], [1.0])  # forgetd's reader: file + metadata → ΔW
        a, b = _images(stock), _images(ours)
        assert abs(a - b).max() < 1e-5
        assert abs(a - plain).max() > 1e-3  # the adapter does something


@pytest.mark.parametrize("k", [1, 3])
def test_merged_matches_runtime_composition(base, k):
    weights = [1.0, 0.5, 2.0][:k]
    runtime = t2i_lora.load_with_adapters(base.load, base.adapters[:k], weights, transport=False)
    merged = t2i_lora.merged_pipeline(base.load, base.adapters[:k], weights)
    assert abs(_images(runtime) - _images(merged)).max() < 1e-4


def test_cat_adapter_reproduces_the_merge(base, tmp_path):
    weights = [1.0, 0.5, 2.0]
    out = t2i_lora.build_cat_adapter(base.load, base.adapters, weights, tmp_path / "cat")
    info = t2i_lora.adapter_info(out)
    assert info["method"] == "cat" and info["rank"] == 6
    stock = base.load()
    stock.load_lora_weights(str(out))  # one stock-loadable adapter
    merged = t2i_lora.merged_pipeline(base.load, base.adapters, weights)
    assert abs(_images(stock) - _images(merged)).max() < 1e-4


def test_merged_directory_reloads_with_stock_from_pretrained(base, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = t2i_lora.build_merged_dir(base.load, base.dir, base.adapters, [1.0, 1.0, 1.0], tmp_path / "merged")
    assert (out / "verifier" / "config.json").is_file() and (out / "forgetd_t2i.json").is_file()
    reloaded = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, requires_safety_checker=False)
    reloaded.set_progress_bar_config(disable=True)
    merged = t2i_lora.merged_pipeline(base.load, base.adapters, [1.0, 1.0, 1.0])
    assert abs(_images(reloaded) - _images(merged)).max() < 1e-5


def test_merge_starts_from_the_pristine_base(base):
    """Building twice from the same base gives the same weights: nothing is fused into a shared model."""
    a = t2i_lora.merged_pipeline(base.load, base.adapters, [1.0, 1.0, 1.0])
    b = t2i_lora.merged_pipeline(base.load, base.adapters, [1.0, 1.0, 1.0])
    for (n, p), (_, q) in zip(a.unet.named_parameters(), b.unet.named_parameters()):
        assert torch.equal(p, q), n


def _concept_data():
    from forgetd.families.text_to_image import ConceptData

    return ConceptData(
        kind="concept", targets=("circle",), target_prompts=("a red circle", "a blue circle"),
        synonym_prompts=("a red disc",), other_prompts=(("a red square", "square"),), anchors=("square",),
        seed=0, images_per_prompt=1, root_seed=0,
    )


@pytest.mark.parametrize("recipe_name", ["spm", "esd-x-lora"])
def test_recipe_fails_closed_on_divergence(base, tmp_path, monkeypatch, recipe_name):
    from forgetd.training.common import TrainingFailed
    from forgetd.training.recipes import spm
    from forgetd.training.registry import get_recipe

    monkeypatch.setattr(spm, "_evaluate", lambda pipe, verifier, data: {"erase_rate": 1.0, "other_acc": 1.0})
    adapters_dir = Path(__file__).resolve().parents[2] / "adapters"
    recipe = get_recipe(adapters_dir, recipe_name, lr=1e30, max_steps=5, pool_images=1, batch_size=2,
                        retain_batch_size=2, eval_every=100, eval_images=1)
    pipe = base.load()
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    out = tmp_path / "adapter"
    with pytest.raises(TrainingFailed):
        recipe.module().train(recipe, model=pipe, tokenizer=None, data=_concept_data(), out_dir=out)
    assert not out.exists()
    assert not getattr(pipe.unet, "peft_config", None)  # the caller's pipeline is left as it was
    after = dict(pipe.unet.named_parameters())
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)


def test_erase_text_and_anchors():
    from forgetd.training.recipes import spm

    assert spm.erase_text(["a red circle", "a blue circle"]) == "a circle"
    anchors = spm.anchor_candidates(_concept_data(), "a circle")
    assert "" in anchors and "a square" in anchors and "a red square" in anchors
    assert not any("circle" in a for a in anchors)
    assert spm.concept_words(_concept_data()) == ["circle", "disc"]


def test_mixed_prompt_batch_gets_each_prompts_own_gammas(base):
    tp = t2i_lora.load_with_adapters(base.load, base.adapters)
    prompts = ["a red circle", "a blue triangle"]
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = tp(prompt=prompts, num_inference_steps=3, guidance_scale=3.0, generator=gens, output_type="np").images
    for i, p in enumerate(prompts):
        one = tp(prompt=p, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(3 + i),
                 output_type="np").images
        assert abs(both[i : i + 1] - one).max() < 1e-6


def test_recipe_refuses_a_pipeline_that_carries_adapters(base, tmp_path):
    """Earlier erasures must arrive merged: with loaded LoRAs, "adapter off" would switch them off too."""
    from forgetd.errors import DomainError
    from forgetd.training.registry import get_recipe

    recipe = get_recipe(Path(__file__).resolve().parents[2] / "adapters", "spm")
    pipe = base.load()
    pipe.load_lora_weights(str(base.adapters[0]))
    with pytest.raises(DomainError):
        recipe.module().train(recipe, model=pipe, tokenizer=None, data=_concept_data(), out_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_batched_generation_through_transport_equals_one_prompt_at_a_time(base):
    """Evaluations generate every prompt in one batch; with facilitated transport each prompt must still
    run at its own γ, so the batch equals the prompts generated one by one."""
    from forgetd.families import text_to_image as family

    tp = t2i_lora.load_with_adapters(base.load, base.adapters)
    prompts = ["a blue triangle", "a red circle", "a blue triangle"]
    assert tp.gammas(prompts[0]) != tp.gammas(prompts[1])
    requests = [(p, 2, 11 + i) for i, p in enumerate(prompts)]
    batched = family.generate_batch(tp, requests)
    alone = [family.generate_images(tp, p, n, seed=s) for p, n, s in requests]
    for a, b in zip(batched, alone):
        assert a.shape == b.shape and (a == b).all()
    assert not (batched[0] == batched[2]).all()  # same prompt, other seed: other images
    # without transport every prompt runs at the same scales, so the whole batch is one call: still equal
    fixed = t2i_lora.load_with_adapters(base.load, base.adapters, transport=False)
    for a, b in zip(family.generate_batch(fixed, requests), [family.generate_images(fixed, p, n, seed=s)
                                                             for p, n, s in requests]):
        assert (a == b).all()
