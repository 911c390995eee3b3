"""Family `image_classifier`: local Hugging Face ViT image classifiers (DESIGN 9).

Loading goes through `load_model`, which checks the registered weight hash first. Pixels come from the
model's registered dataset (forgetd-records/v1 with `inputs`); requests name classes (`labels`, kind class)
or a subject's records (`corpus_ids`, kind data). Held-out data comes in two splits with fixed roles:
`validation` is what stopping rules may look at (`calibration_half`), `test` is what verification judges
with (`verification_half`) and is never used for a choice.

Preprocessing is (raw / inputs.scale − mean) / std with mean and std from the model's config.json
(`forgetd_pixel_mean`, `forgetd_pixel_std`): transformers' ViT image processor needs torchvision and PIL,
which this project does not depend on, so `load_tokenizer` returns None.

torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forgetd.errors import DomainError, InputError

# Weight integrity and library chatter are family-independent: one implementation for every family.
from forgetd.families.causal_lm import check_weights, quiet_transformers

__all__ = [
    "ForgetData",
    "Images",
    "check_model_dir",
    "check_weights",
    "checks",
    "evaluate",
    "forget_data",
    "h_mean",
    "images_of",
    "lora_groups",
    "lora_targets",
    "load_model",
    "load_tokenizer",
    "logits",
]

PIXEL_MEAN_KEY, PIXEL_STD_KEY = "forgetd_pixel_mean", "forgetd_pixel_std"
SPLITS = ("validation", "test")


def load_model(model_dir: Path, *, expected_sha256: str | None = None, dtype: str = "float32"):
    import torch
    from transformers import ViTForImageClassification

    quiet_transformers()
    check_weights(model_dir, expected_sha256)
    model = ViTForImageClassification.from_pretrained(  # no hub kernels: see causal_lm.load_model
        model_dir, dtype=getattr(torch, dtype), local_files_only=True, use_kernels=False
    )
    model.eval()
    return model


def load_tokenizer(model_dir: Path) -> None:
    """No processor object: see the module docstring (the pipeline passes this through unchanged)."""
    return None


def check_dataset(dataset, model_dir: Path) -> None:
    """Registration: images in the file (`inputs`), a shape the model takes, labels among its classes."""
    from forgetd.families.model_files import read_json_object

    if dataset.inputs is None:
        raise InputError("an image classifier's dataset carries its images (`inputs`: shape, scale, rows)",
                         field="--dataset")
    config = read_json_object(Path(model_dir), "config.json", what="Hugging Face ViT image classifier directory")
    want = [config.get("num_channels", 3), config.get("image_size"), config.get("image_size")]
    if list(dataset.inputs.shape) != want:
        raise InputError(f"inputs.shape is {list(dataset.inputs.shape)}; the model takes {want} (channels, height, "
                         "width, from its config.json)", field="--dataset")
    classes = int(config.get("num_labels") or len(config.get("id2label") or {}) or 0)
    for i, record in enumerate(dataset.records.values()):
        for label in record.labels:
            try:
                ok = 0 <= _label(label) < classes
            except DomainError:
                ok = False
            if not ok:
                raise InputError(f"records[{i}] has a label that is not a class index of the model (0 to "
                                 f"{classes - 1})", field="--dataset")


def check_model_dir(model_dir: Path) -> None:
    """Registration's check (forgetd.families.model_files): a ViT config (what `load_model` loads) with its
    class labels, and whole safetensors files; the weights themselves are not loaded."""
    from forgetd.families.model_files import FIELD, check_safetensors, read_json_object

    config = read_json_object(Path(model_dir), "config.json", what="Hugging Face ViT image classifier directory")
    if config.get("model_type") != "vit":
        raise InputError(f"config.json's model_type is {config.get('model_type')!r}; image_classifier loads ViT "
                         "models (ViTForImageClassification); check --family", field=FIELD)
    check_safetensors(Path(model_dir))


# --- LoRA targets and groups ----------------------------------------------------------------------------

# Block linears by transformers generation: ≥ 5 names them mlp.fc1/fc2 and attention.{q,k,v,o}_proj;
# 4.x named them intermediate.dense/output.dense, where "output.dense" alone would also match the attention
# output (attention.output.dense), so matching is anchored on the block index.
_BLOCK_LINEARS = (
    (r"(?:.*\.)?layers\.(\d+)\.mlp\.(?:fc1|fc2)", r"(?:.*\.)?layers\.(\d+)\.attention\.(?:q_proj|k_proj|v_proj|o_proj)"),
    (
        r"(?:.*\.)?layer\.(\d+)\.(?:intermediate\.dense|output\.dense)",
        r"(?:.*\.)?layer\.(\d+)\.attention\.(?:attention\.(?:query|key|value)|output\.dense)",
    ),
)
_BLOCK_OF = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def lora_targets(model, target: str) -> tuple[list[str], bool]:
    """(full module names, fan_in_fan_out) for `target` in {mlp, attn, all}: "mlp" is both feed-forward
    linears of every block (GS-LoRA's placement), never the attention output."""
    import torch

    if getattr(model.config, "model_type", None) != "vit":
        raise DomainError(f"no LoRA target map for architecture {model.config.model_type}", field="adapter.target")
    if target not in ("mlp", "attn", "all"):
        raise DomainError(f"unknown LoRA target {target!r}", field="adapter.target")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for mlp, attn in _BLOCK_LINEARS:
        patterns = {"mlp": [mlp], "attn": [attn], "all": [mlp, attn]}[target]
        names = [n for n in linears if any(re.fullmatch(p, n) for p in patterns)]
        if names:
            return names, False
    raise DomainError("found no transformer block linears to adapt in this ViT", field="adapter.target")


def block_of(name: str) -> int | None:
    """Index of the transformer block a parameter or module name belongs to (None outside blocks)."""
    m = _BLOCK_OF.search(name)
    return int(m.group(1)) if m else None


def lora_groups(model) -> dict[int, list[tuple[str, Any]]]:
    """GS-LoRA's groups: one per transformer block, holding every LoRA A and B matrix of that block."""
    groups: dict[int, list[tuple[str, Any]]] = {}
    for name, param in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and (block := block_of(name)) is not None:
            groups.setdefault(block, []).append((name, param))
    return dict(sorted(groups.items()))


# --- data ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    """Pixels scaled to [0, 1] (N × C × H × W float tensor) and their labels (N long tensor)."""

    pixels: Any
    labels: Any

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def where(self, mask) -> "Images":
        return Images(self.pixels[mask], self.labels[mask])

    def cat(self, other: "Images") -> "Images":
        import torch

        return Images(torch.cat([self.pixels, other.pixels]), torch.cat([self.labels, other.labels]))


def images_of(dataset, ids: list[str]) -> Images:
    """The samples of `ids`, in order, as tensors."""
    import torch

    if dataset is None or dataset.inputs is None:
        raise DomainError("the model's dataset carries no images (inputs)", field="dataset.inputs")
    rows, labels = [], []
    for record_id in ids:
        record = dataset.records[record_id]
        for sample, label in zip(record.samples, record.labels):
            rows.append(dataset.inputs.rows[sample])
            labels.append(_label(label))
    shape = list(dataset.inputs.shape)
    pixels = torch.tensor(rows, dtype=torch.float32).reshape([len(rows), *shape]) / float(dataset.inputs.scale)
    return Images(pixels, torch.tensor(labels, dtype=torch.long))


def _label(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise DomainError("image classifier labels must be class indices", field="labels") from None
    return value


@dataclass
class ForgetData:
    """Everything a recipe or verifier needs about one request (or a batch of one model's requests).

    `forget_train`/`retain_train` are trained samples (what a recipe may train on). Held-out samples live in
    `splits` ("validation", "test") as (forget classes' samples, remaining classes' samples); `split` says
    which one this view evaluates on."""

    forget_classes: tuple[int, ...]
    forget_train: Images
    retain_train: Images
    splits: dict[str, tuple[Images, Images]]
    forget_ids: tuple[str, ...] = ()
    split: str = "validation"  # the safe default: a rule that forgets to pick a half never sees test data
    data_samples: Images | None = field(default=None, repr=False)  # the named subject's samples (kind data)
    # trained samples of classes the starting checkpoint already forgets (completed class requests;
    # `with_forgotten`): a recipe keeps them forgotten, so an adapter composed on top cannot bring them back
    held_train: Images | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "class" if self.forget_classes else "data"

    def calibration_half(self) -> "ForgetData":
        """Validation split: what recipes may look at to decide when to stop or what to keep."""
        return replace(self, split="validation")

    def verification_half(self) -> "ForgetData":
        """Test split, never seen by a stopping rule: what verification judges with."""
        return replace(self, split="test")

    @property
    def forget_eval(self) -> Images:
        """Forgotten classes are judged on held-out samples; a subject's data on the samples themselves
        (they were trained: the question is whether they still look trained)."""
        held_out = self.splits[self.split][0]
        if self.data_samples is None:
            return held_out
        return held_out.cat(self.data_samples) if len(held_out) else self.data_samples

    @property
    def retain_eval(self) -> Images:
        return self.splits[self.split][1]

    @property
    def reference_eval(self) -> Images:
        """Never-trained samples of the remaining classes: what a forgotten subject's data should look like."""
        return self.splits[self.split][1]


def check_forget(spec: dict[str, Any], dataset: Callable[[], Any], *, model: str) -> None:
    """At intake (forgetd.families.forget_spec): classes the model has, and record ids its dataset holds."""
    from forgetd.families import forget_spec

    forget_spec.check_keys(spec, family="image_classifier", used=("labels", "corpus_ids"),
                           forgets="classes (forget.labels) and records of the model's dataset (forget.corpus_ids)")
    forget_spec.check_record_ids(spec, dataset, model=model)
    if not spec.get("labels"):
        return
    registered = dataset()
    if registered is None:
        raise InputError(f"model {model} has no registered dataset to find its classes in; register it with "
                         "`forgetd model register … --dataset FILE`", field="forget.labels")
    known = set()
    for record in registered.records.values():
        for label in record.labels:
            try:
                known.add(_label(label))
            except DomainError:
                continue
    for i, label in enumerate(spec["labels"]):
        try:
            value = _label(label)
        except DomainError:
            raise InputError("must be a class index", field=f"forget.labels[{i}]") from None
        if value not in known:
            shown = ", ".join(str(k) for k in sorted(known)[:12]) + (", …" if len(known) > 12 else "")
            raise InputError(f"not a class of model {model} (its classes: {shown})", field=f"forget.labels[{i}]")


def forget_data(dataset, payloads: list[dict[str, Any]], *, exclude_from_retain=frozenset()) -> ForgetData:
    """Resolve request payloads against the model's dataset.

    Payloads name classes (`labels: [int, …]`) or records (`corpus_ids: [...]`). `exclude_from_retain`
    holds what other requests of the model forget: record ids (str) and class labels (int); none of it
    counts as retain data, trained or held out, so no recipe trains forgotten data back in."""
    import torch

    if dataset is None or dataset.inputs is None:
        raise DomainError("the model's dataset carries no images (inputs)", field="dataset.inputs")
    known_labels = {_label(label) for r in dataset.records.values() for label in r.labels}
    classes: list[int] = []
    forget_ids: list[str] = []
    for payload in payloads:
        for label in payload.get("labels", []):
            value = _label(label)
            if value not in known_labels:
                raise DomainError("the request names a label that is not a class of the model", field="forget.labels")
            classes.append(value)
        for record_id in payload.get("corpus_ids", []):
            if record_id not in dataset.records:
                raise DomainError("the request names a record id that is not in the model's dataset", field="forget.corpus_ids")
            forget_ids.append(record_id)
    if not classes and not forget_ids:
        raise DomainError("nothing to forget: the payload names no labels and no dataset records", field="forget")
    forget_classes = tuple(sorted(set(classes)))
    forget_id_set = set(forget_ids)
    excluded_ids = {i for i in exclude_from_retain if isinstance(i, str)} | forget_id_set
    excluded_classes = {i for i in exclude_from_retain if isinstance(i, int) and not isinstance(i, bool)}
    gone = torch.tensor(sorted(set(forget_classes) | excluded_classes), dtype=torch.long)

    trained = images_of(dataset, [i for i in dataset.retain if i not in excluded_ids])
    named = list(dict.fromkeys(forget_ids))
    data_samples = images_of(dataset, named) if named else None
    in_forget = torch.isin(trained.labels, torch.tensor(forget_classes, dtype=torch.long))
    forget_train = trained.where(in_forget)
    if data_samples is not None:
        forget_train = forget_train.cat(data_samples) if len(forget_train) else data_samples
    retain_train = trained.where(~torch.isin(trained.labels, gone))
    splits = {}
    for split in SPLITS:
        held = images_of(dataset, [i for i in getattr(dataset, split) if i not in excluded_ids])
        forget_held = held.where(torch.isin(held.labels, torch.tensor(forget_classes, dtype=torch.long)))
        splits[split] = (forget_held, held.where(~torch.isin(held.labels, gone)))
    if data_samples is not None and forget_classes:
        # a subject's samples of a class being forgotten anyway are already judged by the class
        data_samples = data_samples.where(~torch.isin(data_samples.labels, torch.tensor(forget_classes)))
        data_samples = data_samples if len(data_samples) else None
    return ForgetData(
        forget_classes=forget_classes,
        forget_train=forget_train,
        retain_train=retain_train,
        splits=splits,
        forget_ids=tuple(named),
        data_samples=data_samples,
    )


def with_forgotten(data: ForgetData, dataset, payloads: list[dict[str, Any]]) -> ForgetData:
    """`data` plus the trained samples of the classes that `payloads` (the requests the served checkpoint
    already honours) forget. Subjects' records are not held: their samples are out of the retain data
    already, and a never-trained sample is not pushed anywhere."""
    import torch

    classes = sorted({_label(label) for payload in payloads for label in payload.get("labels", [])}
                     - set(data.forget_classes))
    if not classes:
        return data
    trained = images_of(dataset, list(dataset.retain))
    held = trained.where(torch.isin(trained.labels, torch.tensor(classes, dtype=torch.long)))
    return replace(data, held_train=held if len(held) else None)


# --- forward and metrics ---------------------------------------------------------------------------------


def normalize(model, pixels):
    """[0, 1] pixels → the model's input scale (mean and std saved in its config)."""
    config = model.config
    mean = float(getattr(config, PIXEL_MEAN_KEY, 0.5))
    std = float(getattr(config, PIXEL_STD_KEY, 0.5))
    return (pixels - mean) / std


def logits(model, pixels):
    """Class logits for [0, 1] pixels (gradients flow; callers choose no_grad)."""
    return model(pixel_values=normalize(model, pixels)).logits


def predict(model, images: Images, *, batch_size: int = 512):
    """Logits for every sample, in eval mode, without gradients (the model's mode is restored)."""
    import torch

    if len(images) == 0:
        return torch.zeros((0, int(model.config.num_labels)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return torch.cat(
                [logits(model, images.pixels[i : i + batch_size].to(device)).float().cpu()
                 for i in range(0, len(images), batch_size)]
            )
    finally:
        model.train(was_training)


def accuracy(model, images: Images) -> float:
    if len(images) == 0:
        return float("nan")
    return float((predict(model, images).argmax(-1) == images.labels).float().mean())


def h_mean(forget_acc: float, retain_acc: float, original_forget_acc: float) -> float:
    """GS-LoRA's H-Mean: harmonic mean of retain accuracy and the drop in forget accuracy relative to the
    original model (a model that forgets nothing scores 0). A negative drop counts as no drop."""
    if any(math.isnan(v) for v in (forget_acc, retain_acc, original_forget_acc)):
        return float("nan")
    drop = max(0.0, original_forget_acc - forget_acc)
    return 2 * drop * retain_acc / (drop + retain_acc) if drop + retain_acc > 0 else 0.0


def evaluate(model, tokenizer, data: ForgetData, *, original: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy on the forget and retain samples of `data`'s split (fractions), per forgotten class, and with
    `original` (this function's result for the original model on the same data) GS-LoRA's H-Mean. For kind
    data also the reference accuracy and a loss-based MIA AUC of the subject's samples against never-trained
    samples (0.5 is what a model that never saw them gives)."""
    import torch

    forget, retain = data.forget_eval, data.retain_eval
    forget_logits, retain_logits = predict(model, forget), predict(model, retain)

    def acc(lg, labels) -> float:
        return float((lg.argmax(-1) == labels).float().mean()) if len(labels) else float("nan")

    metrics: dict[str, Any] = {
        "forget_acc": acc(forget_logits, forget.labels),
        "retain_acc": acc(retain_logits, retain.labels),
        "n_forget": len(forget),
        "n_retain": len(retain),
    }
    for c in data.forget_classes:
        mask = forget.labels == c
        metrics[f"forget_acc_c{c}"] = acc(forget_logits[mask], forget.labels[mask])
    if data.data_samples is not None:
        from forgetd.verify.causal_lm import auc

        reference = data.reference_eval
        samples_logits = predict(model, data.data_samples)
        loss = torch.nn.functional.cross_entropy
        member = (-loss(samples_logits, data.data_samples.labels, reduction="none")).tolist()
        unseen = (-loss(retain_logits, reference.labels, reduction="none")).tolist()
        metrics["data_acc"] = acc(samples_logits, data.data_samples.labels)
        metrics["reference_acc"] = metrics["retain_acc"]
        metrics["mia_auc"] = auc(member, unseen)
    if original is not None:
        metrics["h_mean"] = h_mean(metrics["forget_acc"], metrics["retain_acc"], original.get("forget_acc", float("nan")))
    return metrics


def checks(metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]):
    """Policy thresholds for this family (forgetd.verify.checks.image_classifier_checks)."""
    from forgetd.verify.checks import image_classifier_checks

    return image_classifier_checks(metrics, original, thresholds)
