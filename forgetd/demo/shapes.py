"""The text-to-image demo: a tiny Stable-Diffusion-shaped pipeline that draws coloured shapes, built offline
and cached by config.

- Data: seeded synthetic RGB images (`cfg.image_size` square) of one filled shape (circle, square, triangle,
  cross) in one colour on a plain background, with random position and size; rendered 4× supersampled and
  averaged, so edges are anti-aliased like the generator's output. Captions use synonyms ("a red disc",
  "a box", "a green plus sign"), so a concept is more than one word and erasing it must take its synonyms
  along (DESIGN 17).
- Models, all built from configs with random init and trained in-process, in this order:
  1. a tiny `AutoencoderKL` (one downsampling: 16×16 pixels → 4×8×8 latents); its latent scale is measured
     and written to `scaling_factor`;
  2. a small `UNet2DConditionModel` (cross-attention in Transformer2D blocks, where SPM/ESD-x adapters sit)
     and a small `CLIPTextModel`, trained together on ε-prediction with caption dropout for classifier-free
     guidance, one-cycle learning rate;
  3. the verifier: a small CNN with two heads (shape incl. "none", colour), trained on rendered images, the
     VAE's reconstructions of them (generator-like blur) and "none" images (blank, speckles, fragments).
  The tokenizer is a word-level `CLIPTokenizer` built from a vocabulary and merges that simulate BPE on each
  word (transformers 5), so every vocabulary word is one token.
- Saved as `root/model/` (a `StableDiffusionPipeline` folder plus `verifier/`, `forgetd_t2i.json` with the
  generation settings and `forgetd_demo.json` with config and metrics) and `root/dataset.json` (one
  forgetd-records/v1 record per shape with its synonyms, one per colour).
- `ensure_shapes_t2i(home, cfg)`: the cached root `home/cache/shapes-t2i-<cache_key>`, built once (in a
  temporary directory renamed into place, under a file lock).

DESIGN 17's 32×32 route (≈1200 UNet steps, 8-12 min on one thread) does not fit the demo's budget; 16×16
images, 8×8 latents, a narrow UNet (16/32 channels, 253k parameters), min-SNR-γ loss weighting and a
one-cycle learning rate do. Measured here on one thread (process CPU time; the machine was shared): the
default trains in ≈120 s (VAE 16, UNet 95, verifier 6) on an AVX-512 Xeon, ≈196 s (28, 154, 11) on an AVX2
EPYC, and draws the prompted shape ≥ 96% of the time per shape (synonym prompts ≥ 97%, colour ≥ 97%; 10
DPM-Solver steps at guidance 5); `for_tests()` trains in ≈68 s and draws it 93-100%. Fewer UNet training
samples than that (≤ 40k) gave 30-90% with large seed-to-seed swings; the same samples in fewer steps
(600 × 128, 1000 × 48, 1200 × 40) drew some shapes only 85-93% of the time. Two threads only pay on an idle
machine: with any other process running, OpenMP spin-waits made a UNet step 10× slower here.
torch, diffusers and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from forgetd.demo.tiny_lm import _no_hf_progress_bars, _torch_threads
from forgetd.families.text_to_image import COLOUR_LABEL, SETTINGS_FILE, VERIFIER_DIR, Verifier, prompt_for

__all__ = [
    "COLOURS",
    "DATASET_FILE",
    "DEMO_META_FILE",
    "SHAPES",
    "ShapesConfig",
    "build_dataset",
    "build_tokenizer",
    "dataset_path",
    "ensure_shapes_t2i",
    "model_path",
    "read_demo_meta",
    "render",
    "train_shapes_t2i",
]

FORMAT_VERSION = 1  # bump when code changes what a given config produces
DEMO_META_FILE = "forgetd_demo.json"
DATASET_FILE = "dataset.json"
MODEL_DIR = "model"

# Canonical word first; every synonym is trained as a caption of the same images.
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "pyramid"),
    "cross": ("cross", "plus", "plus sign"),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "grey": (96, 96, 96)}
TOKENIZER_EXTRA_WORDS = ("a", "an", "of", "in", "the", "shape", "picture", "sign")

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that determines the data and the trained weights (thread count aside)."""

    image_size: int = 16
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    backgrounds: tuple[str, ...] = ("black",)
    n_images: int = 4096
    seed: int = 0
    # VAE
    vae_channels: tuple[int, ...] = (16, 32)
    vae_steps: int = 300
    vae_batch: int = 32
    vae_lr: float = 2e-3
    # text encoder
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 8
    # UNet
    unet_channels: tuple[int, ...] = (16, 32)
    unet_head_dim: int = 8
    unet_steps: int = 1200
    unet_batch: int = 64
    unet_lr: float = 3e-3
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0  # min-SNR-γ loss weighting (0 = plain ε MSE): converges in fewer steps
    no_colour_fraction: float = 0.25
    # sampling
    # DPM-Solver++: 10 steps judge the same as 20 on this model (circle prompts 1.000 vs 1.000, other shapes
    # 0.987 vs 0.987, colours 0.984 vs 1.000; 128 images each) in half the time, and every verification,
    # stopping-rule evaluation and demo grid is that many UNet calls
    num_inference_steps: int = 10
    guidance_scale: float = 5.0
    # verifier
    verifier_steps: int = 800
    verifier_batch: int = 64
    verifier_lr: float = 3e-3

    def __post_init__(self) -> None:
        for name in ("shapes", "colours", "backgrounds", "vae_channels", "unet_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        unknown += [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown:
            raise ValueError(f"unknown shape, colour or background: {unknown[0]!r}")
        if self.image_size % 8:
            raise ValueError("image_size must be a multiple of 8 (StableDiffusionPipeline's rule)")
        if len(self.shapes) < 2 or not self.colours or not self.backgrounds:
            raise ValueError("need at least two shapes, one colour and one background")

    @classmethod
    def for_tests(cls) -> "ShapesConfig":
        """Small enough to train inside the test suite on one thread, good enough to erase a concept from."""
        return cls(
            colours=("red", "green", "blue"), n_images=2048, vae_steps=200, unet_steps=1000,
            unet_batch=32, verifier_steps=400,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShapesConfig":
        return cls(**d)

    def cache_key(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


# ------------------------------------------------------------------------------------------- data
def _shape_mask(shape: str, cx: float, cy: float, r: float, yy, xx):
    import numpy as np

    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = r * 0.85
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    if shape == "triangle":  # apex up, base at the bottom
        top, bottom = cy - r, cy + 0.8 * r
        inside_y = (yy >= top) & (yy <= bottom)
        half_width = (yy - top) / (bottom - top) * r
        return inside_y & (np.abs(xx - cx) <= half_width)
    if shape == "cross":
        t = r * 0.36
        return ((np.abs(xx - cx) <= t) & (np.abs(yy - cy) <= r)) | ((np.abs(yy - cy) <= t) & (np.abs(xx - cx) <= r))
    raise ValueError(shape)


def render(shape: str | None, colour: str, size: int, rng, *, background: str = "black", supersample: int = 4):
    """One [size, size, 3] uint8 image; `shape=None` renders an empty background. Position and size are
    drawn from `rng` (a numpy Generator) so that the shape stays inside the frame."""
    import numpy as np

    s = size * supersample
    r = rng.uniform(0.28, 0.40) * size
    margin = r + 0.5
    cx, cy = rng.uniform(margin, size - margin, 2)
    bg = np.array(BACKGROUNDS[background], dtype=np.float32)
    img = np.broadcast_to(bg, (s, s, 3)).copy()
    if shape is not None:
        coords = (np.arange(s, dtype=np.float32) + 0.5) / supersample
        yy, xx = np.meshgrid(coords, coords, indexing="ij")
        mask = _shape_mask(shape, cx, cy, r, yy, xx)
        img[mask] = np.array(COLOURS[colour], dtype=np.float32)
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).round().astype(np.uint8)


def render_none(size: int, rng, *, background: str = "black"):
    """A "none" image for the verifier: a blank background, coloured speckles, or a fragment (a thin bar or
    a small blob), i.e. what a broken generator draws instead of a shape."""
    import numpy as np

    img = render(None, "red", size, rng, background=background).astype(np.float32)
    kind = rng.integers(0, 3)
    colour = np.array(list(COLOURS.values())[rng.integers(0, len(COLOURS))], dtype=np.float32)
    if kind == 1:
        n = rng.integers(3, 12)
        ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
        img[ys, xs] = colour * rng.uniform(0.4, 1.0, (n, 1))
    elif kind == 2:
        y0, x0 = rng.integers(0, size - 3, 2)
        thin, long = rng.integers(1, 3), rng.integers(3, size // 2)
        h, w = (thin, long) if rng.random() < 0.5 else (long, thin)
        img[y0 : y0 + h, x0 : x0 + w] = colour * rng.uniform(0.4, 1.0)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def caption(shape: str, colour: str | None, rng) -> str:
    words = SHAPES[shape]
    return prompt_for(words[rng.integers(0, len(words))], colour)


def make_images(cfg: ShapesConfig, n: int, seed_tag: str):
    """n labelled images: (uint8 [n, H, W, 3], shape index [n], colour index [n])."""
    import numpy as np

    rng = np.random.default_rng(_seed(cfg.seed, seed_tag))
    shapes = rng.integers(0, len(cfg.shapes), n)
    colours = rng.integers(0, len(cfg.colours), n)
    backgrounds = rng.integers(0, len(cfg.backgrounds), n)
    images = np.stack([
        render(cfg.shapes[s], cfg.colours[c], cfg.image_size, rng, background=cfg.backgrounds[b])
        for s, c, b in zip(shapes, colours, backgrounds)
    ])
    return images, shapes, colours


def _seed(seed: int, tag: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}-{tag}".encode()).digest()[:4], "little")


def build_dataset(cfg: ShapesConfig | None = None) -> dict[str, Any]:
    """The forgetd-records/v1 dataset registered with the model: one record per shape (texts = its synonyms,
    canonical word first; labels = [shape]) and one per colour (labels = ["colour"]); all of them trained."""
    cfg = cfg or ShapesConfig()
    records: dict[str, Any] = {s: {"texts": list(SHAPES[s]), "labels": [s]} for s in cfg.shapes}
    records.update({c: {"texts": [c], "labels": [COLOUR_LABEL]} for c in cfg.colours})
    return {"format": "forgetd-records/v1", "records": records, "retain": list(records)}


# ------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(cfg: ShapesConfig):
    """A word-level CLIPTokenizer. Merges are made by replaying BPE on each word with the merges so far and
    appending the ones that join what is left, left to right (naive per-word letter chains break: "round"'s
    ("r", "o") outranks "cross"'s ("c", "r") and splits it). Appended merges rank last, so they never change
    how an earlier word is split: every vocabulary word ends up one token."""
    from transformers import CLIPTokenizer

    words: list[str] = []
    for shape in cfg.shapes:
        for synonym in SHAPES[shape]:
            words += synonym.split()
    words += list(cfg.colours) + list(TOKENIZER_EXTRA_WORDS)
    words = list(dict.fromkeys(words))
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted({c for w in words for c in w}):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks.setdefault(pair, len(ranks))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    merges = sorted(ranks, key=ranks.__getitem__)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=cfg.max_length)


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE as the tokenizers library runs it: merge the best-ranked adjacent pair until none is known."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        known = [(r, i) for r, i in pairs if r is not None]
        if not known:
            break
        _, i = min(known)
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2:]]
    return pieces


# ------------------------------------------------------------------------------------------- models
def _build_vae(cfg: ShapesConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.vae_channels, layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=cfg.image_size, mid_block_add_attention=False,
    )


def _build_text_encoder(cfg: ShapesConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length, projection_dim=cfg.text_hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(config)


def _build_unet(cfg: ShapesConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    # Cross-attention at the lower resolutions only: the 8×8 level is the costly one, and shape identity is
    # decided at the coarse level anyway.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=cfg.unet_channels, down_block_types=down, up_block_types=up,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_head_dim, norm_num_groups=8,
    )


def _train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _sample_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        steps_offset=1,
    )


def _one_cycle(opt, lr: float, total: int):
    import torch

    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1, anneal_strategy="cos")


def _to_tensor(images):
    """uint8 [N, H, W, 3] → float [N, 3, H, W] in [-1, 1] (the VAE's range)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _check(loss, what: str, step: int) -> float:
    import torch

    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"{what} training diverged at step {step}")
    return float(loss.detach())


def _train_vae(cfg: ShapesConfig, images, gen, progress: Progress | None):
    import torch

    vae = _build_vae(cfg)
    x_all = _to_tensor(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, fused=True)
    sched = _one_cycle(opt, cfg.vae_lr, cfg.vae_steps)
    vae.train()
    loss_val = float("nan")
    for step in range(cfg.vae_steps):
        x = x_all[torch.randint(0, len(x_all), (cfg.vae_batch,), generator=gen)]
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = _check(loss, "VAE", step)
        if progress and (step + 1) % 100 == 0:
            progress({"phase": "vae", "step": step + 1, "steps": cfg.vae_steps, "loss": loss_val})
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(x_all[i : i + 512]).latent_dist.mean for i in range(0, len(x_all), 512)])
        scale = float(1.0 / latents.std())
        sample = x_all[:256]
        mse = float(torch.nn.functional.mse_loss(vae.decode(vae.encode(sample).latent_dist.mean).sample, sample))
    vae.register_to_config(scaling_factor=scale)
    return vae, latents * scale, {"vae_final_loss": loss_val, "vae_recon_mse": mse, "vae_scaling_factor": scale}


class _CaptionIds:
    """Token ids per distinct caption, tokenized once: the captions are a few dozen strings, and tokenizing
    each step's 64 took about 2 ms (AMD Zen 4), some 2.4 s of the default build's 1200 UNet steps. Each row is
    what tokenizing the batch gives (fixed-length padding): the saved weights are the same bit for bit."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self._rows = tokenizer, {}

    def __call__(self, prompts: list[str]):
        import torch

        new = [p for p in dict.fromkeys(prompts) if p not in self._rows]
        if new:
            ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._rows.update(zip(new, ids))
        return torch.stack([self._rows[p] for p in prompts])


def _train_unet(cfg: ShapesConfig, tokenizer, latents, shapes, colours, gen, progress: Progress | None):
    import numpy as np
    import torch

    torch.manual_seed(cfg.seed)
    text_encoder = _build_text_encoder(cfg, len(tokenizer.get_vocab()))
    unet = _build_unet(cfg)
    noise_sched = _train_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    # fused: 244 small tensors make the foreach step's per-tensor overhead 17 ms of a 145 ms step here (2 ms
    # fused); the VAE and verifier steps gain the same way
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01, fused=True)
    sched = _one_cycle(opt, cfg.unet_lr, cfg.unet_steps)
    rng = np.random.default_rng(_seed(cfg.seed, "captions"))
    caption_ids = _CaptionIds(tokenizer)
    alphas = noise_sched.alphas_cumprod
    unet.train()
    text_encoder.train()
    loss_val, ema = float("nan"), None
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        prompts = []
        for i in idx.tolist():
            u = rng.random()
            if u < cfg.caption_dropout:
                prompts.append("")
            else:
                colour = None if rng.random() < cfg.no_colour_fraction else cfg.colours[colours[i]]
                prompts.append(caption(cfg.shapes[shapes[i]], colour, rng))
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=text_encoder(caption_ids(prompts))[0]).sample
        loss = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            snr = alphas[t] / (1 - alphas[t])
            loss = loss * torch.clamp(snr, max=cfg.snr_gamma) / snr
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_val = _check(loss, "UNet", step)
        ema = loss_val if ema is None else 0.98 * ema + 0.02 * loss_val
        if progress and (step + 1) % 100 == 0:
            progress({"phase": "unet", "step": step + 1, "steps": cfg.unet_steps, "loss": ema})
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, {"unet_final_loss_ema": ema}


def _verifier_batch(cfg: ShapesConfig, rng, n: int):
    """n images for the verifier: ~1/(k+1) of them "none" (label k = len(shapes)), colour -1 for those."""
    import numpy as np

    k = len(cfg.shapes)
    shapes = rng.integers(0, k + 1, n)
    colours = rng.integers(0, len(cfg.colours), n)
    out = []
    for s, c in zip(shapes, colours):
        bg = cfg.backgrounds[rng.integers(0, len(cfg.backgrounds))]
        if s == k:
            out.append(render_none(cfg.image_size, rng, background=bg))
        else:
            out.append(render(cfg.shapes[s], cfg.colours[c], cfg.image_size, rng, background=bg))
    colours = np.where(shapes == k, -1, colours)
    return np.stack(out), shapes, colours


def _train_verifier(cfg: ShapesConfig, vae, gen, progress: Progress | None):
    import numpy as np
    import torch

    torch.manual_seed(cfg.seed + 1)
    verifier = Verifier.build(list(cfg.shapes), list(cfg.colours), cfg.image_size)
    net = verifier.net
    rng = np.random.default_rng(_seed(cfg.seed, "verifier"))
    pool_n = cfg.verifier_batch * 32
    images, shapes, colours = _verifier_batch(cfg, rng, pool_n)
    # Half the pool goes through the VAE: the generator's images have its blur and colour shifts.
    with torch.no_grad():
        half = _to_tensor(images[: pool_n // 2])
        recon = torch.cat([vae.decode(vae.encode(half[i : i + 512]).latent_dist.mean).sample
                           for i in range(0, len(half), 512)])
        images[: pool_n // 2] = ((recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    x_all = verifier.preprocess(images)
    ys, yc = torch.from_numpy(shapes).long(), torch.from_numpy(colours).long()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.verifier_lr, weight_decay=0.01, fused=True)
    sched = _one_cycle(opt, cfg.verifier_lr, cfg.verifier_steps)
    net.train()
    loss_val = float("nan")
    for step in range(cfg.verifier_steps):
        idx = torch.randint(0, pool_n, (cfg.verifier_batch,), generator=gen)
        x = x_all[idx]
        x = x + 0.03 * torch.randn(x.shape, generator=gen)  # robustness to generator noise
        shape_logits, colour_logits = verifier.logits(x)
        loss = torch.nn.functional.cross_entropy(shape_logits, ys[idx])
        loss = loss + torch.nn.functional.cross_entropy(colour_logits, yc[idx], ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = _check(loss, "verifier", step)
        if progress and (step + 1) % 200 == 0:
            progress({"phase": "verifier", "step": step + 1, "steps": cfg.verifier_steps, "loss": loss_val})
    net.eval()
    # Held-out real images (never the training pool): the verifier's own accuracy.
    test_rng = np.random.default_rng(_seed(cfg.seed, "verifier-test"))
    test_images, test_shapes, test_colours = _verifier_batch(cfg, test_rng, 1024)
    shape_names, colour_names = verifier.classify(test_images)
    names = list(cfg.shapes) + ["none"]
    shape_ok = np.array([names[s] == p for s, p in zip(test_shapes, shape_names)])
    has = test_colours >= 0
    colour_ok = np.array([cfg.colours[c] == p for c, p in zip(test_colours[has], np.array(colour_names)[has])])
    return verifier, {"verifier_final_loss": loss_val, "verifier_shape_acc": float(shape_ok.mean()),
                      "verifier_colour_acc": float(colour_ok.mean())}


@dataclass
class TrainedShapes:
    config: ShapesConfig
    pipeline: Any
    verifier: Any
    dataset: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


def fit_shapes_t2i(
    cfg: ShapesConfig | None = None, progress: Progress | None = None, *, threads: int | None = 1
) -> TrainedShapes:
    """Train everything in memory (see the module docstring); models come back in eval mode."""
    cfg = cfg or ShapesConfig()
    with _torch_threads(threads), _no_hf_progress_bars():
        return _train(cfg, _pinned(progress, threads))


def _pinned(progress: Progress | None, threads: int | None) -> Progress | None:
    """`progress` that cannot change the build's thread count: a callback that takes free cores (the demo's
    second process does, forgetd.demo.prebuild.FreeCores) would give a build that is neither a one-thread
    build nor a two-thread one, which the cache then records as two threads and builds again."""
    if progress is None or not threads:
        return progress

    def show(event: dict[str, Any]) -> None:
        import torch

        progress(event)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    return show


def _train(cfg: ShapesConfig, progress: Progress | None) -> TrainedShapes:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, shapes, colours = make_images(cfg, cfg.n_images, "train")
    seconds: dict[str, float] = {"data": time.perf_counter() - t0}
    cpu: dict[str, float] = {"data": time.process_time() - cpu0}
    t, c = time.perf_counter(), time.process_time()
    vae, latents, metrics = _train_vae(cfg, images, gen, progress)
    seconds["vae"], cpu["vae"] = time.perf_counter() - t, time.process_time() - c
    tokenizer = build_tokenizer(cfg)
    t, c = time.perf_counter(), time.process_time()
    unet, text_encoder, m = _train_unet(cfg, tokenizer, latents, shapes, colours, gen, progress)
    metrics.update(m)
    seconds["unet"], cpu["unet"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    verifier, m = _train_verifier(cfg, vae, gen, progress)
    metrics.update(m)
    seconds["verifier"], cpu["verifier"] = time.perf_counter() - t, time.process_time() - c
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    params = {name: sum(p.numel() for p in mod.parameters()) for name, mod in
              (("vae", vae), ("unet", unet), ("text_encoder", text_encoder), ("verifier", verifier.net))}
    metrics.update({
        "params": params,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},  # wall time on a shared machine says little
        "train_seconds": round(time.perf_counter() - t0, 2),
        "train_cpu_seconds": round(time.process_time() - cpu0, 2),
        "threads": torch.get_num_threads(),
    })
    if progress:
        progress({"phase": "done", "train_seconds": metrics["train_seconds"]})
    return TrainedShapes(config=cfg, pipeline=pipe, verifier=verifier, dataset=build_dataset(cfg), metrics=metrics)


def settings_of(cfg: ShapesConfig) -> dict[str, Any]:
    """forgetd_t2i.json: what generation needs besides the weights."""
    return {
        "image_size": cfg.image_size,
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "shapes": {s: list(SHAPES[s]) for s in cfg.shapes},
        "colours": list(cfg.colours),
    }


def save(trained: TrainedShapes, out_dir: Path | str) -> Path:
    import diffusers
    import torch
    import transformers

    out = Path(out_dir)
    model_dir = out / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    with _no_hf_progress_bars():
        trained.pipeline.save_pretrained(model_dir, safe_serialization=True)
    trained.verifier.save(model_dir / VERIFIER_DIR)
    (model_dir / SETTINGS_FILE).write_text(json.dumps(settings_of(trained.config), indent=2) + "\n")
    (out / DATASET_FILE).write_text(json.dumps(trained.dataset, indent=1) + "\n")
    meta = {
        "kind": "forgetd-demo-shapes-t2i",
        "cache_key": trained.config.cache_key(),
        "config": trained.config.to_dict(),
        "metrics": trained.metrics,
        "train_seconds": trained.metrics["train_seconds"],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "dataset_file": f"../{DATASET_FILE}",
    }
    (model_dir / DEMO_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def train_shapes_t2i(
    cfg: ShapesConfig | None = None, out_dir: Path | str | None = None, progress: Progress | None = None,
    *, threads: int | None = 1,
) -> dict[str, Any]:
    """Train and save to `out_dir` (if given): `out_dir/model` and `out_dir/dataset.json`. One thread by
    default: bit-reproducible, and immune to OpenMP spin-waits on a busy machine."""
    trained = fit_shapes_t2i(cfg, progress, threads=threads)
    if out_dir is not None:
        save(trained, out_dir)
    return trained.metrics


# ------------------------------------------------------------------------------------------- cache
def model_path(root: Path | str) -> Path:
    """The pipeline directory inside a built root (what `forgetd model register` takes)."""
    return Path(root) / MODEL_DIR


def dataset_path(root: Path | str) -> Path:
    """The dataset file beside it (what `--dataset` takes), outside the model directory so composed
    checkpoints, which copy the base directory's extra files, do not carry a copy."""
    return Path(root) / DATASET_FILE


def ensure_shapes_t2i(home: Path | str, cfg: ShapesConfig | None = None, progress: Progress | None = None) -> Path:
    """The cached root `home/cache/shapes-t2i-<cache_key>` (see `model_path`, `dataset_path`), trained first
    if missing (`forgetd.demo.cache.ensure_built`), on one thread (`CACHE_BUILD_THREADS`)."""
    from forgetd.demo.cache import CACHE_BUILD_THREADS, ensure_built

    cfg = cfg or ShapesConfig()
    return ensure_built(home, cache_name(cfg), ready=is_built,
                        build=lambda d: train_shapes_t2i(cfg, d, progress, threads=CACHE_BUILD_THREADS))


def cache_name(cfg: ShapesConfig) -> str:
    """The folder under `home/cache` that `ensure_shapes_t2i` builds for `cfg`."""
    return f"shapes-t2i-{cfg.cache_key()}"


def is_built(root: Path | str) -> bool:
    """Whether `root` holds a finished one-thread build (`forgetd.demo.cache.finished_build`)."""
    from forgetd.demo.cache import finished_build

    return finished_build(model_path(root) / DEMO_META_FILE)


def read_demo_meta(root_or_model_dir: Path | str) -> dict[str, Any]:
    path = Path(root_or_model_dir)
    if not (path / DEMO_META_FILE).is_file():
        path = model_path(path)
    return json.loads((path / DEMO_META_FILE).read_text())
