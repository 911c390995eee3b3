"""Exact composition of LoRA adapters into checkpoints (DESIGN 10).

A checkpoint is W₀ + Σ_j w_j·ΔW_j over an ordered manifest, built from the pristine base in fp32 with
peft's own `get_delta_weight` and cast once at the end. Nothing is ever unmerged or fused with a negative
weight: withdrawing an adapter means building again without it. The `cat` adapter is the one exact way
to carry several LoRAs as a single adapter (peft's other combination types approximate).

Family-independent: callers pass a function that loads the family's base model in fp32.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPOSITION_METHOD = "fp32-delta-sum-v1"
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
BASE_METADATA_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "weight": self.weight}


def library_versions(family: str | None = None) -> dict[str, str]:
    import peft
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    if family == "text_to_image":  # its UNet, LoRA loading and merged directory come from diffusers
        import diffusers

        versions["diffusers"] = diffusers.__version__
    return versions


def content_id(base_sha256: str, manifest: Sequence[ManifestEntry], *, dtype: str, versions: dict[str, str]) -> str:
    """Identical compositions get identical ids, so building one twice is a no-op."""
    canonical = json.dumps(
        {
            "base_sha256": base_sha256,
            "manifest": [e.to_dict() for e in manifest],
            "method": COMPOSITION_METHOD,
            "dtype": dtype,
            "versions": versions,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _adapter_name(index: int) -> str:
    return f"m{index}"


def load_with_adapters(load_base: Callable[[], Any], adapter_dirs: Sequence[Path]):
    """The base with every adapter loaded and all of them active at once (runtime composition)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(), str(adapter_dirs[0]), adapter_name=_adapter_name(0))
    for i, directory in enumerate(adapter_dirs[1:], start=1):
        model.load_adapter(str(directory), adapter_name=_adapter_name(i))
    model.base_model.set_adapter([_adapter_name(i) for i in range(len(adapter_dirs))])
    model.eval()
    return model


def merged_model(load_base: Callable[[], Any], adapter_dirs: Sequence[Path], weights: Sequence[float]):
    """W₀ + Σ w_j ΔW_j in fp32, in manifest order, as a plain model (no peft wrappers)."""
    import torch
    from peft.tuners.lora import LoraLayer

    if len(adapter_dirs) != len(weights):
        raise ValueError("one weight per adapter")
    if not adapter_dirs:
        return load_base()
    model = load_with_adapters(load_base, adapter_dirs)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            base_weight = module.get_base_layer().weight
            total = base_weight.detach().to(torch.float32).clone()
            for i, weight in enumerate(weights):
                name = _adapter_name(i)
                if name in module.lora_A:
                    total += float(weight) * module.get_delta_weight(name).to(torch.float32)
            base_weight.data.copy_(total.to(base_weight.dtype))
    return model.unload()


def copy_base_extras(base_dir: Path, out_dir: Path) -> None:
    """Tokenizer and processor files travel with the merged weights; weights and config are rewritten."""
    for path in base_dir.iterdir():
        if path.is_file() and path.suffix not in WEIGHT_FILE_SUFFIXES and path.name not in BASE_METADATA_FILES:
            shutil.copy2(path, out_dir / path.name)


def build_merged_dir(
    load_base: Callable[[], Any],
    base_dir: Path,
    adapter_dirs: Sequence[Path],
    weights: Sequence[float],
    out_dir: Path,
    *,
    dtype: str = "float32",
) -> Path:
    """A directory loadable with the family's stock `from_pretrained`."""
    import torch

    model = merged_model(load_base, adapter_dirs, weights)
    model = model.to(getattr(torch, dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_base_extras(base_dir, out_dir)
    return out_dir


def build_cat_adapter(
    load_base: Callable[[], Any], adapter_dirs: Sequence[Path], weights: Sequence[float], out_dir: Path
) -> Path:
    """All adapters as one peft adapter (rank = Σ ranks), exact: peft's `cat` combination."""
    if not adapter_dirs:
        raise ValueError("a composed adapter needs at least one adapter")
    model = load_with_adapters(load_base, adapter_dirs)
    names = [_adapter_name(i) for i in range(len(adapter_dirs))]
    model.add_weighted_adapter(names, [float(w) for w in weights], "composed", combination_type="cat")
    staging = out_dir.parent / (out_dir.name + ".staging")
    model.save_pretrained(str(staging), selected_adapters=["composed"], safe_serialization=True)
    # peft saves non-default adapters under a subfolder named after the adapter
    source = staging / "composed" if (staging / "composed").is_dir() else staging
    shutil.move(str(source), out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return out_dir
