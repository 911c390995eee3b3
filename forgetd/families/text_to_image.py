"""Family `text_to_image`: local diffusers `StableDiffusionPipeline` directories whose concepts (shapes) can be
erased (DESIGN 9).

A model directory is a stock pipeline folder plus two things diffusers ignores:
- `verifier/`: a small CNN that names the shape ("none" included) and the colour of a generated image. It is
  how forgetting is measured (no human looks at the images), so it ships with the weights it judges;
  `load_tokenizer` returns it because the generic pipeline hands "the tokenizer" to recipes and `evaluate`.
- `forgetd_t2i.json`: generation settings (image size, sampling steps, guidance, shape and colour vocabulary),
  so the same images come out of a directory wherever it is loaded.

Requests name a concept (`{"concept": "circle"}`), resolved against the registered dataset (one record per
shape: texts = its synonyms, canonical word first; one per colour, labelled "colour"). Prompts are
`a <colour> <word>`; a target is judged on its canonical word and, separately, on its synonyms, and the
shapes nobody erases are judged on their own prompts. Noise seeds depend on the prompt and the half only:
calibration (what recipes may look at) and verification (what verdicts use) never share a seed, and the
same prompt gets the same noise on every model, so images can be compared pixel by pixel.

torch, diffusers and numpy are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from forgetd.errors import DomainError, InputError

# Weight integrity is family-independent: one implementation for every family.
from forgetd.families.causal_lm import check_weights

__all__ = [
    "COLOUR_LABEL",
    "ConceptData",
    "SETTINGS_FILE",
    "VERIFIER_DIR",
    "Verifier",
    "check_weights",
    "checks",
    "classify",
    "evaluate",
    "forget_data",
    "generate_batch",
    "generate_images",
    "load_model",
    "load_tokenizer",
    "prompt_for",
    "read_settings",
]

SETTINGS_FILE = "forgetd_t2i.json"
VERIFIER_DIR = "verifier"
SETTINGS_ATTR = "forgetd_t2i"  # load_model hangs the settings on the pipeline under this name
COLOUR_LABEL = "colour"
NONE_SHAPE = "none"
IMAGES_PER_PROMPT = 32  # 4 colour prompts × 32 = 128 images per shape (DESIGN 17: ≥ 128 per rate)
VERIFICATION_SEED_OFFSET = 1_000_003
DEFAULT_SETTINGS = {"num_inference_steps": 20, "guidance_scale": 5.0}


def prompt_for(word: str, colour: str | None = None) -> str:
    """The one prompt template, shared by training captions and evaluation."""
    return f"a {colour} {word}" if colour else f"a {word}"


# --- loading ---------------------------------------------------------------------------------------------


def read_settings(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        raise InputError(f"not a forgetd text-to-image model directory (no {SETTINGS_FILE})", field="--path")
    return json.loads(path.read_text())


def load_model(model_dir: Path, *, expected_sha256: str | None = None, dtype: str = "float32"):
    """The pipeline on CPU, weights checked against the registered hash first, no safety checker (the demo
    draws shapes), progress bars off, generation settings attached."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from forgetd.families.causal_lm import quiet_transformers

    quiet_transformers()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    check_weights(model_dir, expected_sha256)
    settings = read_settings(model_dir)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), dtype=getattr(torch, dtype), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    setattr(pipe, SETTINGS_ATTR, settings)
    return pipe


PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_dataset(dataset, model_dir: Path) -> None:
    """Registration: the dataset lists the concepts requests may name (records of texts: a concept's synonyms)."""
    try:
        _vocabulary(dataset)
    except DomainError as exc:
        raise InputError(exc.message, field="--dataset") from None


def scope_forget(spec: dict[str, Any], dataset) -> dict[str, Any]:
    """The specification as intake compares it for duplicates: the concept by its canonical name, so that
    "disc" filed after "circle" by the same subject is the same demand (forget_data erases the same concept).
    Unchanged when the dataset does not list it (check_forget refuses that first)."""
    if dataset is None or not isinstance(spec.get("concept"), str):
        return spec
    try:
        shapes, _ = _vocabulary(dataset)
    except DomainError:
        return spec
    by_word = _concept_of(shapes)
    canonical = by_word.get(spec["concept"].strip().lower())
    return {**spec, "concept": canonical} if canonical else spec


def check_model_dir(model_dir: Path) -> None:
    """Registration's check (forgetd.families.model_files): a diffusers StableDiffusionPipeline folder with
    its parts, forgetd's generation settings, the verifier, and whole safetensors files; nothing is loaded."""
    from forgetd.families.model_files import FIELD, check_safetensors, read_json_object

    model_dir = Path(model_dir)
    what = "diffusers text-to-image pipeline directory"
    index = read_json_object(model_dir, "model_index.json", what=what)
    missing = [part for part in PIPELINE_PARTS if part not in index or not (model_dir / part).is_dir()]
    if missing:
        raise InputError(f"the pipeline has no {missing[0]}/ (model_index.json and a folder per part: "
                         f"{', '.join(PIPELINE_PARTS)})", field=FIELD)
    read_json_object(model_dir, SETTINGS_FILE, what=f"forgetd {what} (its generation settings)")
    read_json_object(model_dir, f"{VERIFIER_DIR}/config.json", what=f"forgetd {what} (its verifier)")
    check_safetensors(model_dir)


def load_tokenizer(model_dir: Path) -> "Verifier":
    """The verifier (see the module docstring), in eval mode."""
    directory = Path(model_dir) / VERIFIER_DIR
    if not directory.is_dir():
        raise InputError(f"the model directory has no {VERIFIER_DIR}/", field="--path")
    return Verifier.load(directory)


# --- the verifier ----------------------------------------------------------------------------------------


class Verifier:
    """Shape (with "none") and colour classifier of [N, H, W, 3] images. A plain object around a torch
    network, so this module needs no torch at import time; `net` is what training updates."""

    def __init__(self, net, shapes: Sequence[str], colours: Sequence[str], image_size: int, widths: Sequence[int]):
        self.net = net
        self.shapes = list(shapes)
        self.colours = list(colours)
        self.shape_names = self.shapes + [NONE_SHAPE]
        self.image_size = int(image_size)
        self.widths = list(widths)

    @staticmethod
    def _net(n_out: int, image_size: int, widths: Sequence[int]):
        import torch.nn as nn

        w1, w2, w3 = widths
        side = image_size // 4
        return nn.Sequential(
            nn.Conv2d(3, w1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w2, w3, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(w3 * side * side, 64), nn.ReLU(), nn.Linear(64, n_out),
        )

    @classmethod
    def build(cls, shapes: Sequence[str], colours: Sequence[str], image_size: int,
              widths: Sequence[int] = (16, 32, 32)) -> "Verifier":
        net = cls._net(len(shapes) + 1 + len(colours), image_size, widths)
        return cls(net, shapes, colours, image_size, widths)

    def config(self) -> dict[str, Any]:
        return {"kind": "forgetd-t2i-verifier", "shapes": self.shapes, "colours": self.colours,
                "image_size": self.image_size, "widths": self.widths}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(directory / "model.safetensors"))

    @classmethod
    def load(cls, directory: Path) -> "Verifier":
        from safetensors.torch import load_file

        config = json.loads((Path(directory) / "config.json").read_text())
        verifier = cls.build(config["shapes"], config["colours"], config["image_size"], config["widths"])
        verifier.net.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        verifier.net.eval()
        return verifier

    def eval(self) -> "Verifier":
        self.net.eval()
        return self

    def preprocess(self, images):
        """uint8 (or [0, 1] float) [N, H, W, 3] numpy/torch → float [N, 3, H, W] in [0, 1]."""
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != self.image_size:
            side = self.image_size
            raise DomainError(f"the verifier takes [N, {side}, {side}, 3] images, got {tuple(x.shape)}", field="images")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x.permute(0, 3, 1, 2).contiguous()

    def logits(self, x):
        """(shape logits, colour logits) for preprocessed images (gradients flow)."""
        out = self.net(x)
        k = len(self.shape_names)
        return out[:, :k], out[:, k:]

    def predict(self, images, *, batch_size: int = 512):
        """(shape index [N], colour index [N]) long tensors; index len(shapes) is "none"."""
        import torch

        x = self.preprocess(images)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                parts = [self.logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        finally:
            self.net.train(was_training)
        if not parts:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat([p[0] for p in parts]).argmax(-1), torch.cat([p[1] for p in parts]).argmax(-1)

    def classify(self, images) -> tuple[list[str], list[str]]:
        shapes, colours = self.predict(images)
        return [self.shape_names[i] for i in shapes.tolist()], [self.colours[i] for i in colours.tolist()]


def classify(verifier: Verifier, images) -> tuple[list[str], list[str]]:
    """(shape names, colour names) of [N, H, W, 3] images; shape "none" when no shape is recognised."""
    return verifier.classify(images)


# --- generation ------------------------------------------------------------------------------------------


def _settings(pipe) -> dict[str, Any]:
    settings = getattr(pipe, SETTINGS_ATTR, None)
    if settings is None:
        source = getattr(getattr(pipe, "config", None), "_name_or_path", None)
        if source and (Path(source) / SETTINGS_FILE).is_file():
            settings = read_settings(Path(source))
    return {**DEFAULT_SETTINGS, **(settings or {})}


def generate_images(pipe, prompt: str, n: int, *, seed: int, steps: int | None = None):
    """n images for one prompt as uint8 [n, H, W, 3], from one seeded generator: the same (prompt, n, seed)
    gives the same starting noise on every model, so outputs compare pixel by pixel."""
    return generate_batch(pipe, [(prompt, n, seed)], steps=steps)[0]


# Images per pipeline call in `generate_batch`: on the demo UNet (8×8 latents) a call costs about as much
# for 16 images as for 200, so batching prompts is what makes an evaluation fast; the cap bounds memory.
BATCH_IMAGES = 512


def generate_batch(pipe, requests: Sequence[tuple[str, int, int]], *, steps: int | None = None,
                   max_images: int = BATCH_IMAGES) -> list:
    """uint8 [n, H, W, 3] images for each (prompt, n, seed), through as few pipeline calls as `max_images`
    allows. Each request's starting noise is drawn exactly as a one-prompt call with its seeded generator
    draws it, so the images equal `generate_images(pipe, prompt, n, seed=seed)` one request at a time
    (DPM-Solver adds no noise after the first step)."""
    import numpy as np
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    settings = _settings(pipe)
    scale = pipe.vae_scale_factor
    size = settings.get("image_size") or pipe.unet.config.sample_size * scale
    shape = (pipe.unet.config.in_channels, int(size) // scale, int(size) // scale)
    dtype = pipe.unet.dtype
    outputs: list = []
    chunk: list[tuple[str, int, int]] = []

    def flush() -> None:
        if not chunk:
            return
        latents = torch.cat([randn_tensor((n, *shape), generator=torch.Generator().manual_seed(int(seed)),
                                          dtype=dtype) for _, n, seed in chunk])
        with torch.no_grad():
            out = pipe(
                prompt=[prompt for prompt, n, _ in chunk for _ in range(n)],
                num_inference_steps=int(steps or settings["num_inference_steps"]),
                guidance_scale=float(settings["guidance_scale"]), height=size, width=size, latents=latents,
                output_type="np",
            )
        images = np.asarray(out.images if hasattr(out, "images") else out[0], dtype=np.float32)
        images = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        start = 0
        for _, n, _ in chunk:
            outputs.append(images[start:start + n])
            start += n
        chunk.clear()

    for prompt, n, seed in requests:
        if chunk and sum(c[1] for c in chunk) + n > max_images:
            flush()
        chunk.append((prompt, int(n), int(seed)))
    flush()
    return outputs


def prompt_seed(base: int, prompt: str) -> int:
    """A prompt's noise seed: fixed per (half, prompt), independent of which other prompts are evaluated."""
    return (int(base) + zlib.crc32(prompt.encode())) % (2**31 - 1)


# --- data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptData:
    """Everything a recipe or verifier needs about one request (or a batch of one model's requests)."""

    kind: str  # "concept"
    targets: tuple[str, ...]  # canonical names of the concepts erased
    target_prompts: tuple[str, ...]  # prompts naming a target with its canonical word
    synonym_prompts: tuple[str, ...]  # the same with synonyms only
    other_prompts: tuple[tuple[str, str], ...]  # (prompt, expected shape) for shapes nobody erases
    anchors: tuple[str, ...]  # anchor concept words (payload's, else the remaining shapes' names)
    seed: int  # noise seed base of this half
    images_per_prompt: int = IMAGES_PER_PROMPT
    replacement: str | None = None  # what the payload asks targets to become (recipes may ignore it)
    half: str = "calibration"  # the safe default: a rule that forgets to pick a half never sees verdict seeds
    root_seed: int = 0

    def calibration_half(self) -> "ConceptData":
        """What recipes may look at (stopping, best-of)."""
        return replace(self, half="calibration", seed=self.root_seed)

    def verification_half(self) -> "ConceptData":
        """What verification judges with: other seeds, never seen by a stopping rule."""
        return replace(self, half="verification", seed=self.root_seed + VERIFICATION_SEED_OFFSET)

    def seed_for(self, prompt: str) -> int:
        return prompt_seed(self.seed, prompt)


def _vocabulary(dataset) -> tuple[dict[str, list[str]], list[str]]:
    """(shape → synonyms, canonical first; colours) from the registered dataset."""
    if dataset is None:
        raise DomainError("a text-to-image model needs its registered dataset (concept records)", field="dataset")
    shapes: dict[str, list[str]] = {}
    colours: list[str] = []
    for record_id, record in dataset.records.items():
        if list(record.labels) == [COLOUR_LABEL]:
            colours.append(record.texts[0] if record.texts else record_id)
        elif record.texts:
            shapes[record_id] = list(record.texts)
    if not shapes:
        raise DomainError("the model's dataset names no concepts (records with texts)", field="dataset.records")
    return shapes, colours


def _concept_of(shapes: dict[str, list[str]]) -> dict[str, str]:
    """Any word of a concept (lower case) → its canonical name."""
    return {word.lower(): name for name, words in shapes.items() for word in words}


def check_forget(spec: dict[str, Any], dataset: Callable[[], Any], *, model: str) -> None:
    """At intake (forgetd.families.forget_spec): a concept the model's dataset lists (any synonym), optional
    anchors, and a replacement that is not the concept itself."""
    from forgetd.families import forget_spec

    forget_spec.check_keys(spec, family="text_to_image", used=("concept", "anchors", "replacement"),
                           forgets="a concept (forget.concept, optionally forget.anchors and forget.replacement)")
    if not str(spec.get("concept") or "").strip():
        raise InputError("a text_to_image request names the concept to erase", field="forget.concept")
    for i, anchor in enumerate(spec.get("anchors") or []):
        if not anchor.strip():
            raise InputError("must not be blank", field=f"forget.anchors[{i}]")
    if "replacement" in spec and not spec["replacement"].strip():
        raise InputError("must not be blank; name a concept, or leave the key out", field="forget.replacement")
    registered = dataset()
    if registered is None:
        raise InputError(f"model {model} has no registered dataset listing its concepts; register it with "
                         "`forgetd model register … --dataset FILE`", field="forget.concept")
    try:
        shapes, _ = _vocabulary(registered)
    except DomainError as exc:
        raise InputError(exc.message, field="forget.concept") from None
    by_word = _concept_of(shapes)
    listed = ", ".join(sorted(shapes))
    concept = by_word.get(spec["concept"].strip().lower())
    if concept is None:
        raise InputError(f"model {model}'s dataset does not list this concept (it lists: {listed}; any synonym "
                         "of one will do)", field="forget.concept")
    if "replacement" in spec and by_word.get(spec["replacement"].strip().lower()) == concept:
        raise InputError("names the concept being erased; name another concept or leave it out",
                         field="forget.replacement")


def forget_data(dataset, payloads: list[dict[str, Any]], *, exclude_from_retain=frozenset(),
                seed: int = 0) -> ConceptData:
    """Resolve `{"concept": name, "anchors": [...], "replacement": "..."}` payloads against the dataset.
    A concept may be named by any of its synonyms. Concepts in `exclude_from_retain` (what other requests of
    the model erase) are neither judged as "other" concepts nor used as anchors."""
    shapes, colours = _vocabulary(dataset)
    by_word = _concept_of(shapes)
    targets: list[str] = []
    anchors: list[str] = []
    replacement = None
    for payload in payloads:
        concept = payload.get("concept")
        if not isinstance(concept, str) or not concept.strip():
            raise DomainError("the request names no concept", field="forget.concept")
        name = by_word.get(concept.strip().lower())
        if name is None:
            raise DomainError("the request names a concept the model's dataset does not list", field="forget.concept")
        targets.append(name)
        for anchor in payload.get("anchors") or []:
            if not isinstance(anchor, str) or not anchor.strip():
                raise DomainError("anchors must be non-empty strings", field="forget.anchors")
            anchors.append(anchor.strip())
        if payload.get("replacement") is not None:
            if not isinstance(payload["replacement"], str) or not payload["replacement"].strip():
                raise DomainError("replacement must be a non-empty string", field="forget.replacement")
            replacement = payload["replacement"].strip()
    if not targets:
        raise DomainError("nothing to forget: no payload", field="forget")
    targets = list(dict.fromkeys(targets))
    if replacement is not None and by_word.get(replacement.lower()) in targets:
        raise DomainError("the replacement names the concept being erased; name another concept or leave it out",
                          field="forget.replacement")
    excluded = {by_word.get(str(e).lower(), str(e)) for e in exclude_from_retain} | set(targets)
    others = [s for s in shapes if s not in excluded]
    colour_words: list[str | None] = list(colours) or [None]
    anchors = [a for a in dict.fromkeys(anchors) if by_word.get(a.lower()) not in excluded]
    return ConceptData(
        kind="concept",
        targets=tuple(targets),
        target_prompts=tuple(prompt_for(t, c) for t in targets for c in colour_words),
        synonym_prompts=tuple(prompt_for(w, c) for t in targets for w in shapes[t][1:] for c in colour_words),
        other_prompts=tuple((prompt_for(s, c), s) for s in others for c in colour_words),
        anchors=tuple(anchors or others),
        seed=seed,
        replacement=replacement,
        root_seed=seed,
    )


# --- metrics ---------------------------------------------------------------------------------------------


def _colour_of(prompt: str, colours: Sequence[str]) -> str | None:
    words = prompt.split()
    return next((c for c in colours if c in words), None)


def _judge(model, verifier: Verifier, data: ConceptData, prompts: Sequence[str]):
    """Per prompt: (shape names, colour names) of its images."""
    batches = generate_batch(model, [(p, data.images_per_prompt, data.seed_for(p)) for p in prompts])
    return [verifier.classify(images) for images in batches]


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def evaluate(model, verifier: Verifier, data: ConceptData, *, original: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate `images_per_prompt` images per prompt and let the verifier judge them.

    erase_rate: share of target-prompt images labelled as any target shape (lower is better);
    synonym_erase_rate: the same for synonym prompts; other_acc: share of other-concept images labelled with
    the prompted shape (per shape too); colour_acc: share of other-concept images with the prompted colour;
    other_acc_ratio: other_acc / original's (with `original`, this function's result for the original model
    on the same data)."""
    targets = set(data.targets)
    colours = verifier.colours
    metrics: dict[str, Any] = {"images_per_prompt": data.images_per_prompt, "half": data.half}
    other_prompts = [p for p, _ in data.other_prompts]
    # every prompt in one batch: per-prompt seeds keep each prompt's images what they would be on their own
    judged = _judge(model, verifier, data, [*data.target_prompts, *data.synonym_prompts, *other_prompts])
    n_target, n_synonym = len(data.target_prompts), len(data.synonym_prompts)
    for key, part in (("erase_rate", judged[:n_target]), ("synonym_erase_rate", judged[n_target:n_target + n_synonym])):
        flags: list[bool] = []
        none: list[bool] = []
        for shapes, _ in part:
            flags += [s in targets for s in shapes]
            none += [s == NONE_SHAPE for s in shapes]
        metrics[key] = _share(flags)
        metrics[key.replace("erase_rate", "none_rate")] = _share(none)
    per_shape: dict[str, list[bool]] = {}
    colour_flags: list[bool] = []
    for (prompt, expected), (shapes, got_colours) in zip(data.other_prompts, judged[n_target + n_synonym:]):
        per_shape.setdefault(expected, []).extend(s == expected for s in shapes)
        wanted = _colour_of(prompt, colours)
        if wanted is not None:
            colour_flags += [c == wanted for c in got_colours]
    metrics["other_acc"] = _share([f for flags in per_shape.values() for f in flags])
    metrics["other_acc_per_shape"] = {s: _share(f) for s, f in per_shape.items()}
    metrics["colour_acc"] = _share(colour_flags)
    metrics["n_target_images"] = len(data.target_prompts) * data.images_per_prompt
    metrics["n_other_images"] = len(data.other_prompts) * data.images_per_prompt
    if original is not None:
        base = original.get("other_acc", float("nan"))
        metrics["other_acc_ratio"] = metrics["other_acc"] / base if base and not math.isnan(base) else float("nan")
    return metrics


def checks(metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]):
    """erase_rate ≤ t, synonym_erase_rate ≤ t, other_acc ≥ t × original's. Fail-closed: a missing or NaN
    metric fails its check (no other concept left to judge counts as NaN, hence failing other_acc)."""
    from forgetd.verify.checks import Check

    out: list[Check] = []
    nan = float("nan")

    def ok(value: float, condition: bool) -> bool:
        return not math.isnan(value) and condition

    for metric, key in (("erase_rate", "erase_rate_max"), ("synonym_erase_rate", "synonym_erase_rate_max")):
        if key in thresholds:
            t = float(thresholds[key])
            value = float(metrics.get(metric, nan))
            out.append(Check(metric, value, t, ok(value, value <= t + 1e-12)))
    if "other_acc_min_ratio" in thresholds:
        t = float(thresholds["other_acc_min_ratio"])
        base = float(original.get("other_acc", nan))
        ratio = float(metrics.get("other_acc", nan)) / base if base and not math.isnan(base) else nan
        out.append(Check("other_acc_ratio", ratio, t, ok(ratio, ratio >= t - 1e-12)))
    return out


# The family's LoRA surface (diffusers-format adapters, transport, exact composition) lives in t2i_lora; the
# generic pipeline finds everything of a family on its module.
from forgetd.families.t2i_lora import (  # noqa: E402,F401
    build_cat_adapter,
    build_merged_dir,
    load_with_adapters,
    merged_pipeline,
)
