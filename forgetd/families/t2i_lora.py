"""diffusers-format LoRA on a StableDiffusionPipeline's UNet: save, load, facilitated transport, exact
composition (DESIGN 9, 10).

- An adapter directory is `pytorch_lora_weights.safetensors`, written by
  `StableDiffusionPipeline.save_lora_weights` *with* the adapter metadata (without it diffusers loads
  alpha = r and silently rescales every adapter whose alpha differs), plus `forgetd_lora.json` (method,
  rank, alpha and the concept texts facilitated transport compares prompts with). Stock
  `pipe.load_lora_weights(dir)` loads it.
- Static composition never goes through peft's fuse/unfuse: W = W₀ + Σ_j w_j·(α_j/r_j)·B_j·A_j is summed
  in fp32 from the pristine base, read straight from the safetensors files, and cast once.
- Facilitated transport (SPM, Lyu et al. 2024): every adapter is loaded at once and, per prompt p, scaled
  by γ_j(p) = max(cos(E(p), E(c_j)), token overlap(p, c_j)), so ΔW(p) = Σ_j γ_j·w_j·ΔW_j. peft's LoRA
  forward adds B(A(x))·scale for each active adapter, which is linear in the scale: no γ² and no
  products between adapters (the public SPM code squares γ and mixes adapters; that is not copied).
  Prompts unrelated to every erased concept get γ near 0 and so outputs near the original model's, which
  a static merge cannot give.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_META = "forgetd_lora.json"
UNET_PREFIX = "unet."
TRAIN_ADAPTER = "forgetd_train"


def lora_targets(unet, target: str) -> list[str]:
    """Names of the UNet linears an adapter covers. `transformer`: every linear inside a Transformer2D
    block (SPM). `attn2`: cross-attention only (ESD-x: only the text-conditioned path changes)."""
    import torch

    if target not in ("transformer", "attn2"):
        raise ValueError(f"unknown text-to-image LoRA target {target!r}")
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".attentions." not in f".{name}":
            continue
        if target == "attn2" and ".attn2." not in name:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"the UNet has no linears for LoRA target {target!r}")
    return names


def lora_config(unet, spec):
    """Plain LoRA (no rsLoRA/DoRA/bias: composition is exact only for those, DESIGN 10), explicit module names."""
    from peft import LoraConfig

    from forgetd.errors import DomainError

    target = spec.target
    if target not in ("transformer", "attn2"):
        raise DomainError(f"text-to-image adapters target 'transformer' or 'attn2', not {target!r}",
                          field="adapter.target")
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        target_modules=lora_targets(unet, target),
        lora_dropout=0.0,
        bias="none",
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
    )


def _metadata(config) -> dict[str, Any]:
    meta = config.to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items()}


def save_adapter(unet, adapter_name: str, out_dir: Path, *, method: str, concepts: Sequence[str],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the UNet's adapter `adapter_name` as a diffusers LoRA directory (weights + metadata + forgetd_lora.json)."""
    from peft.utils import get_peft_model_state_dict

    config = unet.peft_config[adapter_name]
    state = {k: v.detach().to("cpu").contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
    meta = _metadata(config)
    # peft shortens long target lists to suffixes that are unambiguous in *this* UNet; the file names the
    # modules it holds, so that a reader never has to resolve suffixes
    meta["target_modules"] = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    return _write(out_dir, state, meta, method=method, concepts=concepts,
                  rank=int(config.r), alpha=float(config.lora_alpha), extra=extra)


def _write(out_dir: Path, state: dict, metadata: dict[str, Any], *, method: str, concepts: Sequence[str],
           rank: int, alpha: float, extra: dict[str, Any] | None = None) -> Path:
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir), unet_lora_layers=state, unet_lora_adapter_metadata=metadata,
        weight_name=ADAPTER_WEIGHTS, safe_serialization=True,
    )
    meta = {"format": "diffusers-lora-unet", "method": method, "concepts": list(concepts), "rank": rank,
            "alpha": alpha, **(extra or {})}
    (out_dir / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def adapter_info(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / ADAPTER_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_adapter(adapter_dir: Path) -> dict[str, tuple[Any, Any, float]]:
    """{UNet module name: (A [r, in], B [out, r], scale α/r)} straight from the safetensors file and its
    metadata (forgetd's own reader: independent of how peft/diffusers wrap the layers)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    raw = header.get("lora_adapter_metadata")
    if raw is None:
        raise ValueError(f"{adapter_dir}: the LoRA file carries no adapter metadata (alpha unknown)")
    meta = json.loads(raw)
    # diffusers flattens the metadata of the UNet's adapter under "unet." keys
    meta = {k[len(UNET_PREFIX):]: v for k, v in meta.items() if k.startswith(UNET_PREFIX)} or meta
    rank, alpha = int(meta["r"]), float(meta["lora_alpha"])
    rank_pattern, alpha_pattern = meta.get("rank_pattern") or {}, meta.get("alpha_pattern") or {}
    out = {}
    for key, a in tensors.items():
        # peft key names, or the older diffusers ones (lora.down / lora.up) other tools write
        for down, up in ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight")):
            if key.endswith(down):
                break
        else:
            continue
        module = key[: -len(down)]
        module = module[len(UNET_PREFIX):] if module.startswith(UNET_PREFIX) else module
        b = tensors[key[: -len(down)] + up]
        r = _pattern(rank_pattern, module, rank)
        out[module] = (a, b, _pattern(alpha_pattern, module, alpha) / r)
    if not out:
        raise ValueError(f"{adapter_dir}: no UNet LoRA weights found")
    return out


def _pattern(patterns: dict[str, Any], module: str, default):
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def delta_weights(adapter_dir: Path) -> dict[str, Any]:
    """ΔW = (α/r)·B·A per module, fp32."""
    import torch

    return {m: s * (b.to(torch.float32) @ a.to(torch.float32)) for m, (a, b, s) in read_adapter(adapter_dir).items()}


# ---------------------------------------------------------------------------------------------- static merge


def merged_pipeline(load_base: Callable[[], Any], adapter_dirs: Sequence[Path], weights: Sequence[float]):
    """W₀ + Σ_j w_j·ΔW_j in fp32 from the pristine base, summed before a single cast (DESIGN 10)."""
    import torch

    if len(adapter_dirs) != len(weights):
        raise ValueError("one weight per adapter")
    pipe = load_base()
    if not adapter_dirs:
        return pipe
    modules = dict(pipe.unet.named_modules())
    totals: dict[str, Any] = {}
    for directory, weight in zip(adapter_dirs, weights):
        for name, delta in delta_weights(directory).items():
            if name not in modules:
                raise ValueError(f"{directory}: adapter targets {name}, which the base UNet does not have")
            if name not in totals:
                totals[name] = modules[name].weight.detach().to(torch.float32).clone()
            totals[name] += float(weight) * delta
    with torch.no_grad():
        for name, total in totals.items():
            param = modules[name].weight
            param.copy_(total.to(param.dtype))
    return pipe


def build_merged_dir(
    load_base: Callable[[], Any],
    base_dir: Path,
    adapter_dirs: Sequence[Path],
    weights: Sequence[float],
    out_dir: Path,
    *,
    dtype: str = "float32",
) -> Path:
    """A StableDiffusionPipeline directory loadable with stock `from_pretrained`: the rewritten unet/ and a
    copy of every other file and folder of the base (vae, text encoder, tokenizer, scheduler, verifier,
    generation settings)."""
    import torch

    pipe = merged_pipeline(load_base, adapter_dirs, weights)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.unet.to(getattr(torch, dtype)).save_pretrained(str(out_dir / "unet"), safe_serialization=True)
    for path in Path(base_dir).iterdir():
        if path.name == "unet":
            continue
        if path.is_dir():
            shutil.copytree(path, out_dir / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, out_dir / path.name)
    return out_dir


def build_cat_adapter(
    load_base: Callable[[], Any], adapter_dirs: Sequence[Path], weights: Sequence[float], out_dir: Path
) -> Path:
    """All adapters as one diffusers LoRA of rank Σ r_j, exact: A = [A_1; …; A_n], B = [w_1 s_1 B_1 … w_n s_n B_n]
    with α = r (scale 1). A module an adapter does not cover gets zero rows for it (adds exactly 0), so
    adapters with different targets (SPM, ESD-x) compose too. `load_base` is unused: the composition needs
    only the adapters (kept for the signature of forgetd.compose.build_cat_adapter)."""
    import torch
    from peft import LoraConfig

    del load_base
    if not adapter_dirs:
        raise ValueError("a composed adapter needs at least one adapter")
    if len(adapter_dirs) != len(weights):
        raise ValueError("one weight per adapter")
    read = [read_adapter(d) for d in adapter_dirs]
    ranks = [max(a.shape[0] for a, _, _ in r.values()) for r in read]
    total = sum(ranks)
    shapes: dict[str, tuple[int, int, Any]] = {}
    for r in read:
        for m, (a, b, _) in r.items():
            shapes.setdefault(m, (a.shape[1], b.shape[0], a.dtype))
    state = {}
    for module in sorted(shapes):
        fan_in, fan_out, dtype = shapes[module]
        a_cat = torch.zeros((total, fan_in), dtype=torch.float32)
        b_cat = torch.zeros((fan_out, total), dtype=torch.float32)
        offset = 0
        for r, rank, weight in zip(read, ranks, weights):
            if module in r:
                a, b, scale = r[module]
                k = a.shape[0]
                a_cat[offset : offset + k] = a.to(torch.float32)
                b_cat[:, offset : offset + k] = float(weight) * scale * b.to(torch.float32)
            offset += rank
        state[f"{module}.lora_A.weight"] = a_cat.to(dtype).contiguous()
        state[f"{module}.lora_B.weight"] = b_cat.to(dtype).contiguous()
    config = LoraConfig(r=total, lora_alpha=total, target_modules=sorted(shapes), lora_dropout=0.0, bias="none")
    infos = [adapter_info(d) for d in adapter_dirs]
    return _write(out_dir, state, _metadata(config), method="cat", concepts=[], rank=total, alpha=float(total),
                  extra={"components": [{"method": i.get("method"), "concepts": i.get("concepts", []),
                                         "weight": float(w)} for i, w in zip(infos, weights)]})


# ------------------------------------------------------------------------------------- facilitated transport


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_overlap(prompt: str, concept: str) -> float:
    """Share of the concept's words that the prompt contains (1.0 when the prompt names the concept)."""
    words = _words(concept)
    if not words:
        return 0.0
    present = set(_words(prompt))
    return sum(w in present for w in words) / len(words)


def text_embeddings(pipe, texts: Sequence[str]):
    """E(text): the text encoder's pooled output (the end-of-text token's state), the embedding CLIP's
    similarity is defined on."""
    import torch

    tok = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))
    return out.pooler_output.to(torch.float32)


class TransportPipeline:
    """The base pipeline with every adapter loaded (stock `load_lora_weights`); called like a
    StableDiffusionPipeline. Per prompt, adapter j runs at scale w_j·γ_j(p) (γ_j = 1 for adapters without
    concepts, or with `transport=False`), so the UNet computes (W₀ + Σ_j w_j γ_j(p) ΔW_j)·x exactly."""

    def __init__(self, pipe, adapter_dirs: Sequence[Path], weights: Sequence[float] | None = None,
                 *, transport: bool = True) -> None:
        self.pipe = pipe
        self.names = [f"m{i}" for i in range(len(adapter_dirs))]
        self.weights = [1.0] * len(adapter_dirs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.names):
            raise ValueError("one weight per adapter")
        self.transport = transport
        self.concepts = [list(adapter_info(d).get("concepts") or []) for d in adapter_dirs]
        import warnings

        with warnings.catch_warnings():
            # peft warns that a second adapter joins the first: that is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            for name, directory in zip(self.names, adapter_dirs):
                pipe.load_lora_weights(str(directory), adapter_name=name, use_safetensors=True)
        flat = [c for cs in self.concepts for c in cs]
        self._concept_emb = dict(zip(flat, text_embeddings(pipe, flat))) if flat else {}
        self._cache: dict[str, list[float]] = {}
        self._applied: list[float] | None = None

    def __getattr__(self, name: str):
        # everything a caller reads off a pipeline (unet, tokenizer, scheduler, progress bar config…)
        return getattr(self.__dict__["pipe"], name)

    def gammas(self, prompt: str) -> list[float]:
        """γ_j(p) per adapter, in [0, 1]."""
        if prompt not in self._cache:
            import torch

            emb = None
            out = []
            for concepts in self.concepts:
                if not self.transport or not concepts:
                    out.append(1.0)
                    continue
                if emb is None:
                    emb = text_embeddings(self.pipe, [prompt])[0]
                best = 0.0
                for c in concepts:
                    cos = float(torch.nn.functional.cosine_similarity(emb, self._concept_emb[c], dim=0))
                    best = max(best, cos, token_overlap(prompt, c))
                out.append(min(1.0, max(0.0, best)))
            self._cache[prompt] = out
        return self._cache[prompt]

    def scales(self, prompt: str) -> list[float]:
        return [w * g for w, g in zip(self.weights, self.gammas(prompt))]

    def _apply(self, scales: list[float]) -> None:
        if scales != self._applied:
            self.pipe.set_adapters(self.names, adapter_weights=scales)
            self._applied = scales

    def __call__(self, prompt: str | Sequence[str] | None = None, **kwargs):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts:
            raise ValueError("facilitated transport needs the prompt text (prompt_embeds alone carry no concept)")
        if len(set(prompts)) == 1:
            self._apply(self.scales(prompts[0]))
            return self.pipe(prompt=prompt, **kwargs)
        # Different prompts need different scales: one call per prompt (per run of prompts at equal scales
        # where the noise is given per image), in order. A list of generators or latents is split with them; one
        # shared generator is consumed prompt by prompt.
        return self._per_prompt(prompts, kwargs)

    def _per_prompt(self, prompts: list[str], kwargs: dict[str, Any]):
        import numpy as np

        generator = kwargs.pop("generator", None)
        negative = kwargs.pop("negative_prompt", None)
        latents = kwargs.pop("latents", None)
        per_prompt = kwargs.get("num_images_per_prompt", 1) or 1
        images = []
        # neighbours at equal scales (the same prompt, or prompts every adapter scores alike) share a call
        # when each image's noise is fixed in advance (latents or one generator per image); a shared
        # generator keeps one call per prompt, so it is consumed as before
        mergeable = negative is None and (latents is not None or isinstance(generator, list))
        start = 0
        while start < len(prompts):
            end = start + 1
            scales = self.scales(prompts[start])
            while mergeable and end < len(prompts) and self.scales(prompts[end]) == scales:
                end += 1
            sl = slice(start * per_prompt, end * per_prompt)
            extra = dict(kwargs)
            if isinstance(generator, list):
                extra["generator"] = generator[sl]
            elif generator is not None:
                extra["generator"] = generator
            if negative is not None:
                extra["negative_prompt"] = negative if isinstance(negative, str) else negative[start]
            if latents is not None:
                extra["latents"] = latents[sl]
            self._apply(scales)
            images.append(self.pipe(prompt=prompts[start:end], **extra).images)
            start = end
        first = images[0]
        if isinstance(first, np.ndarray):
            out = np.concatenate(images)
        elif hasattr(first, "shape"):  # output_type "pt" / "latent"
            import torch

            out = torch.cat(images)
        else:  # PIL images
            out = [im for batch in images for im in batch]
        from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

        return StableDiffusionPipelineOutput(images=out, nsfw_content_detected=None)


def load_with_adapters(load_base: Callable[[], Any], adapter_dirs: Sequence[Path],
                       weights: Sequence[float] | None = None, *, transport: bool = True) -> TransportPipeline:
    """The base with every adapter loaded; per-prompt γ scaling when `transport` (runtime composition)."""
    return TransportPipeline(load_base(), adapter_dirs, weights, transport=transport)
