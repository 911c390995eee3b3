"""The image-classifier demo: a tiny ViT trained on scikit-learn's handwritten digits, built offline and
cached by config.

- Data: `sklearn.datasets.load_digits()` (1,797 real 8×8 grey images, values 0-16, ten classes; shipped
  inside scikit-learn, so nothing is downloaded), split per class with a seeded shuffle into train /
  validation / test (60/20/20 by default). One record per image (`d0000`…), so a kind-data request can name
  any set of images as a subject's samples.
- `build_dataset(cfg)`: the forgetd-records/v1 dataset (pixels included) that is registered with the model.
- `fit_digits_vit(cfg)` / `train_digits_vit(cfg, out_dir)`: a `ViTForImageClassification` from a
  `ViTConfig` (8×8 input, 2×2 patches), random init, seeded, trained in-process on the train split
  (classes in `cfg.exclude_labels` left out: the "retrained without them" gold standard) for a fixed
  number of epochs (AdamW, one-cycle schedule). The test split is measured, never used for a choice.
  Saved as an ordinary Hugging Face directory under `model/`, the dataset as `dataset.json` beside it, and
  `forgetd_demo.json` (config, metrics, seconds) in the model directory.
- `ensure_digits_vit(home, cfg)`: the cached root `home/cache/digits-vit-<cache_key>`, built once (in a
  temporary directory renamed into place, under a file lock).

The default (3 layers, width 64, ≈103k parameters) is measured by bench/vision_forgetting.py.
torch, transformers and scikit-learn are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from forgetd.demo.tiny_lm import _no_hf_progress_bars, _torch_threads
from forgetd.families.image_classifier import PIXEL_MEAN_KEY, PIXEL_STD_KEY

__all__ = [
    "DATASET_FILE",
    "DEMO_META_FILE",
    "DigitsConfig",
    "TrainedDigitsViT",
    "build_dataset",
    "dataset_path",
    "ensure_digits_vit",
    "fit_digits_vit",
    "model_path",
    "read_demo_meta",
    "train_digits_vit",
]

FORMAT_VERSION = 1  # bump when code changes what a given config produces
DEMO_META_FILE = "forgetd_demo.json"
DATASET_FILE = "dataset.json"
MODEL_DIR = "model"
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class DigitsConfig:
    """Everything that determines the split and the trained weights (thread count aside)."""

    split_seed: int = 0
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 2
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    seed: int = 0
    exclude_labels: tuple[int, ...] = ()  # classes left out of training (a "retrained without them" model)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if 8 % self.patch_size:
            raise ValueError("patch_size must divide the 8-pixel image side")
        if not (0 < self.validation_fraction and 0 < self.test_fraction and self.validation_fraction + self.test_fraction < 1):
            raise ValueError("validation and test fractions must be positive and leave training data")
        object.__setattr__(self, "exclude_labels", tuple(sorted(set(self.exclude_labels))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude_labels"] = list(self.exclude_labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DigitsConfig":
        d = dict(d)
        d["exclude_labels"] = tuple(d.get("exclude_labels", ()))
        return cls(**d)

    def cache_key(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- data
def _digits() -> tuple[list[list[int]], list[int]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rows = [[int(v) for v in image.reshape(-1)] for image in bunch.images]
    return rows, [int(t) for t in bunch.target]


def build_dataset(cfg: DigitsConfig | None = None) -> dict[str, Any]:
    """The forgetd-records/v1 dataset: one record per image, split per class so every split has every
    class in proportion (a forgotten class is then judged on as many held-out images as the others)."""
    cfg = cfg or DigitsConfig()
    rows, labels = _digits()
    rng = random.Random(f"digits-split-{cfg.split_seed}")
    splits: dict[str, list[str]] = {"retain": [], "validation": [], "test": []}
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        rng.shuffle(members)
        n_val = round(len(members) * cfg.validation_fraction)
        n_test = round(len(members) * cfg.test_fraction)
        splits["validation"] += [f"d{i:04d}" for i in members[:n_val]]
        splits["test"] += [f"d{i:04d}" for i in members[n_val : n_val + n_test]]
        splits["retain"] += [f"d{i:04d}" for i in members[n_val + n_test :]]
    return {
        "format": "forgetd-records/v1",
        "records": {f"d{i:04d}": {"samples": [i], "labels": [label]} for i, label in enumerate(labels)},
        **{name: sorted(ids) for name, ids in splits.items()},
        "inputs": {"shape": [1, 8, 8], "scale": 16, "rows": rows},
    }


# ------------------------------------------------------------------------------------------- model
def _build_model(cfg: DigitsConfig, num_labels: int):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(cfg.seed)
    config = ViTConfig(
        image_size=8,
        patch_size=cfg.patch_size,
        num_channels=1,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        id2label={i: str(i) for i in range(num_labels)},
        label2id={str(i): i for i in range(num_labels)},
        **{PIXEL_MEAN_KEY: PIXEL_MEAN, PIXEL_STD_KEY: PIXEL_STD},
    )
    return ViTForImageClassification(config)


@dataclass
class TrainedDigitsViT:
    """An in-memory result of `fit_digits_vit`."""

    config: DigitsConfig
    model: Any
    dataset: dict[str, Any]
    metrics: dict[str, Any]

    def save(self, out_dir: Path | str) -> Path:
        out = Path(out_dir)
        _save(self, out)
        return out


def train_digits_vit(
    cfg: DigitsConfig | None = None, out_dir: Path | str | None = None, progress: Progress | None = None,
    *, threads: int | None = 1,
) -> dict[str, Any]:
    """Train and save to `out_dir` (if given): `out_dir/model` (Hugging Face) and `out_dir/dataset.json`.
    One thread by default: bit-reproducible, and immune to OpenMP spin-waits on a busy 2-core machine."""
    trained = fit_digits_vit(cfg, progress, threads=threads)
    if out_dir is not None:
        trained.save(out_dir)
    return trained.metrics


def fit_digits_vit(
    cfg: DigitsConfig | None = None, progress: Progress | None = None, *, threads: int | None = 1
) -> TrainedDigitsViT:
    """Train in memory (see `train_digits_vit`); the model is returned in eval mode."""
    cfg = cfg or DigitsConfig()
    with _torch_threads(threads):
        return _train(cfg, progress)


def _train(cfg: DigitsConfig, progress: Progress | None) -> TrainedDigitsViT:
    import torch

    from forgetd.datasets import parse_dataset
    from forgetd.families.image_classifier import images_of, logits, predict

    t0 = time.perf_counter()
    raw = build_dataset(cfg)
    dataset = parse_dataset(raw, source="digits")
    train = images_of(dataset, dataset.retain)
    if cfg.exclude_labels:
        train = train.where(~torch.isin(train.labels, torch.tensor(cfg.exclude_labels)))
    held = {split: images_of(dataset, getattr(dataset, split)) for split in ("validation", "test")}
    num_labels = len({label for r in dataset.records.values() for label in r.labels})
    model = _build_model(cfg, num_labels)
    n_params = sum(p.numel() for p in model.parameters())

    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_fraction, anneal_strategy="cos"
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    model.train()
    t_train, cpu_train = time.perf_counter(), time.process_time()
    loss_val = float("nan")
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), cfg.batch_size):
            batch = order[i : i + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(logits(model, train.pixels[batch]), train.labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_val = float(loss.detach())
            if not torch.isfinite(loss.detach()):
                raise RuntimeError(f"digits ViT training diverged in epoch {epoch} (loss {loss_val})")
        if epoch % 5 == 0 or epoch == cfg.epochs:
            val = _acc(predict(model, held["validation"]), held["validation"].labels)
            elapsed = time.perf_counter() - t_train
            history.append({"epoch": epoch, "loss": round(loss_val, 4), "validation_acc": round(val, 4),
                            "seconds": round(elapsed, 2)})
            if progress:
                progress({"phase": "train", "epoch": epoch, "epochs": cfg.epochs, "loss": loss_val,
                          "validation_acc": val, "seconds": elapsed})
    train_seconds = time.perf_counter() - t_train
    train_cpu_seconds = time.process_time() - cpu_train
    model.eval()
    excluded = torch.tensor(cfg.exclude_labels, dtype=torch.long)
    metrics: dict[str, Any] = {"params": n_params, "epochs": cfg.epochs, "steps": total, "final_loss": loss_val,
                               "train_samples": len(train)}
    for split, images in held.items():
        lg = predict(model, images)
        metrics[f"{split}_acc"] = round(_acc(lg, images.labels), 4)
        if cfg.exclude_labels:
            kept = ~torch.isin(images.labels, excluded)
            metrics[f"{split}_acc_kept_classes"] = round(_acc(lg[kept], images.labels[kept]), 4)
            metrics[f"{split}_acc_excluded_classes"] = round(_acc(lg[~kept], images.labels[~kept]), 4)
    metrics.update({
        "train_seconds": round(train_seconds, 3),
        "train_cpu_seconds": round(train_cpu_seconds, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "threads": torch.get_num_threads(),
        "history": history,
    })
    if progress:
        progress({"phase": "done", **{k: v for k, v in metrics.items() if k != "history"}})
    return TrainedDigitsViT(config=cfg, model=model, dataset=raw, metrics=metrics)


def _acc(lg, labels) -> float:
    return float((lg.argmax(-1) == labels).float().mean()) if len(labels) else float("nan")


def _save(trained: TrainedDigitsViT, out_dir: Path) -> None:
    import torch
    import transformers

    model_dir = out_dir / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    with _no_hf_progress_bars():
        trained.model.save_pretrained(model_dir, safe_serialization=True)
    (out_dir / DATASET_FILE).write_text(json.dumps(trained.dataset, separators=(",", ":")) + "\n")
    meta = {
        "kind": "forgetd-demo-digits-vit",
        "cache_key": trained.config.cache_key(),
        "config": trained.config.to_dict(),
        "metrics": trained.metrics,
        "train_seconds": trained.metrics["train_seconds"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "dataset_file": f"../{DATASET_FILE}",
    }
    (model_dir / DEMO_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------- cache
def model_path(root: Path | str) -> Path:
    """The Hugging Face model directory inside a built root (what `forgetd models register` takes)."""
    return Path(root) / MODEL_DIR


def dataset_path(root: Path | str) -> Path:
    """The dataset file beside it (what `--dataset` takes). Kept outside the model directory so composed
    checkpoints, which copy the base directory's extra files, do not carry a copy of it."""
    return Path(root) / DATASET_FILE


def ensure_digits_vit(home: Path | str, cfg: DigitsConfig | None = None, progress: Progress | None = None) -> Path:
    """The cached root `home/cache/digits-vit-<cache_key>` (see `model_path`, `dataset_path`), trained first
    if missing (`forgetd.demo.cache.ensure_built`), on one thread (`CACHE_BUILD_THREADS`)."""
    from forgetd.demo.cache import CACHE_BUILD_THREADS, ensure_built, finished_build

    cfg = cfg or DigitsConfig()
    return ensure_built(home, f"digits-vit-{cfg.cache_key()}",
                        ready=lambda d: finished_build(model_path(d) / DEMO_META_FILE),
                        build=lambda d: train_digits_vit(cfg, d, progress, threads=CACHE_BUILD_THREADS))


def read_demo_meta(root_or_model_dir: Path | str) -> dict[str, Any]:
    path = Path(root_or_model_dir)
    if not (path / DEMO_META_FILE).is_file():
        path = model_path(path)
    return json.loads((path / DEMO_META_FILE).read_text())
