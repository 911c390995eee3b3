"""Family `tabular_classifier`: a small torch MLP decision model over named tabular features (DESIGN 9).

On disk a model is a directory with
- `model.safetensors`: the linear layers *and* the input standardisation (mean/std buffers), so the
  registered weight hash covers everything that changes a decision;
- `config.json`: `{"format": "forgetd-tabular/v1", "architecture": "tabular-mlp", "features": [...],
  "class_names": [...], "hidden_sizes": [...], "activation": ..., "favorable_class": ...}` where each
  feature has `name`, `kind` (continuous | integer | binary), `min`, `max`, `immutable`.

The model takes raw feature rows (float32, in the units of the config) and returns class logits. Its
linear layers are `layers.0 … layers.L` (the last one is the output head) and are plain `nn.Linear`, so
peft LoRA wraps them by name and `forgetd.compose` merges them like any Hugging Face model's: the module
has `save_pretrained`, which is all the merge path calls on it.

Forget data: a request names subject ids (`{"corpus_ids": [...]}`) of the model's registered dataset
(forgetd-records/v1 with `rows` and `labels` per record); the retain set is the dataset's retain subjects
minus everything any request is forgetting; the reference set is never-trained subjects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetd.errors import DomainError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

FORMAT = "forgetd-tabular/v1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FEATURE_KINDS = ("continuous", "integer", "binary")
ACTIVATIONS = ("silu", "relu", "tanh", "gelu")


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Feature:
    name: str
    kind: str = "continuous"
    min: float = 0.0
    max: float = 1.0
    # Immutable features (age, length of credit history) are never changed by a counterfactual: advice
    # to "be older" is not recourse.
    immutable: bool = False
    unit: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature {self.name}: kind must be one of {', '.join(FEATURE_KINDS)}")
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or self.min >= self.max:
            raise ValueError(f"feature {self.name}: needs finite min < max")


@dataclass(frozen=True)
class TabularConfig:
    features: tuple[Feature, ...]
    class_names: tuple[str, ...]
    hidden_sizes: tuple[int, ...] = (32, 32)
    activation: str = "silu"
    # The decision a person asks recourse towards (e.g. "approve"); None when no class is favourable.
    favorable_class: int | None = None

    def __post_init__(self) -> None:
        features = tuple(f if isinstance(f, Feature) else Feature(**f) for f in self.features)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        names = [f.name for f in self.features]
        if not names or len(set(names)) != len(names):
            raise ValueError("features must be a non-empty list of uniquely named features")
        if len(self.class_names) < 2:
            raise ValueError("a classifier needs at least two class names")
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError("hidden sizes must be positive")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if self.favorable_class is not None and not 0 <= self.favorable_class < len(self.class_names):
            raise ValueError("favorable_class must index class_names")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "architecture": "tabular-mlp",
            "features": [asdict(f) for f in self.features],
            "class_names": list(self.class_names),
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "favorable_class": self.favorable_class,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TabularConfig":
        if data.get("format") != FORMAT:
            raise InputError(f"not a {FORMAT} model config", field="config.json")
        return cls(
            features=tuple(Feature(**f) for f in data["features"]),
            class_names=tuple(data["class_names"]),
            hidden_sizes=tuple(data["hidden_sizes"]),
            activation=data.get("activation", "silu"),
            favorable_class=data.get("favorable_class"),
        )


# ------------------------------------------------------------------------------------------- module
def _module_class():
    """The nn.Module subclass, defined on first use so importing this family stays torch-free."""
    global _TabularMLP
    if _TabularMLP is not None:
        return _TabularMLP
    import torch
    from torch import nn

    class TabularMLP(nn.Module):
        """Standardise, then Linear → activation → … → Linear head. Input: raw feature rows."""

        def __init__(self, config: TabularConfig) -> None:
            super().__init__()
            self.tabular_config = config
            sizes = [config.n_features, *config.hidden_sizes, len(config.class_names)]
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            # Persistent buffers: they live in the weights file and therefore in its hash.
            self.register_buffer("input_mean", torch.zeros(config.n_features))
            self.register_buffer("input_std", torch.ones(config.n_features))
            self._act = {"silu": nn.functional.silu, "relu": nn.functional.relu, "tanh": torch.tanh,
                         "gelu": nn.functional.gelu}[config.activation]

        def standardize(self, x):
            return (x - self.input_mean) / self.input_std

        def forward_standardized(self, z):
            for layer in self.layers[:-1]:
                z = self._act(layer(z))
            return self.layers[-1](z)

        def forward(self, x):
            return self.forward_standardized(self.standardize(x.to(self.input_mean.dtype)))

        def save_pretrained(self, out_dir, safe_serialization: bool = True, **_: Any) -> None:
            """The directory format; compose.build_merged_dir calls this on the merged model."""
            save_model(self, self.tabular_config, Path(out_dir))

    TabularMLP.__qualname__ = "TabularMLP"
    TabularMLP.__module__ = __name__
    _TabularMLP = TabularMLP
    return TabularMLP


_TabularMLP = None


def build_model(config: TabularConfig, *, seed: int | None = None, mean=None, std=None):
    """A freshly initialised model (seeded), with the standardisation of the training data."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    model = _module_class()(config)
    with torch.no_grad():
        if mean is not None:
            model.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        if std is not None:
            model.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))
    return model


def base_of(model):
    """The TabularMLP inside a peft wrapper (or the model itself)."""
    cls = _module_class()
    if isinstance(model, cls):
        return model
    for module in model.modules():
        if isinstance(module, cls):
            return module
    raise DomainError("not a tabular_classifier model", field="model")


def config_of(model) -> TabularConfig:
    return base_of(model).tabular_config


# ------------------------------------------------------------------------------------------- disk
def check_weights(model_dir: Path, expected_sha256: str | None) -> None:
    """Same convention as every family: the hash over the directory's weight files (api.hash_model_dir)."""
    from forgetd.families.causal_lm import check_weights as _check

    _check(Path(model_dir), expected_sha256)


def read_config(model_dir: Path) -> TabularConfig:
    path = Path(model_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InputError("missing or unreadable config.json in the model directory", field="config.json") from None
    try:
        return TabularConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"invalid tabular model config: {exc}", field="config.json") from None


def save_model(model, config: TabularConfig, out_dir: Path) -> Path:
    """Weights (safetensors, fp as the module holds them) and config.json into `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in base_of(model).state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return out_dir


def expected_tensors(config: TabularConfig) -> dict[str, list[int]]:
    """The state dict `load_model` needs for `config`: name → shape."""
    sizes = [config.n_features, *config.hidden_sizes, len(config.class_names)]
    tensors = {"input_mean": [config.n_features], "input_std": [config.n_features]}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        tensors[f"layers.{i}.weight"] = [b, a]
        tensors[f"layers.{i}.bias"] = [b]
    return tensors


def check_model_dir(model_dir: Path) -> None:
    """Registration's check (forgetd.families.model_files): a forgetd-tabular/v1 config and a whole
    model.safetensors holding exactly the tensors, of the shapes, that config needs (read from its header)."""
    from forgetd.families.model_files import FIELD, safetensors_header

    try:
        config = read_config(model_dir)
    except InputError as exc:
        raise InputError(f"config.json: {exc.message}; a tabular_classifier directory is what "
                         "tabular_classifier.save_model writes", field=FIELD) from None
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"no {WEIGHTS_FILE} in the model directory", field=FIELD)
    found = {name: list(t.get("shape", [])) for name, t in safetensors_header(path).items()}
    expected = expected_tensors(config)
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(n for n in expected if found[n] != expected[n])
        raise InputError(f"{WEIGHTS_FILE} does not match config.json (first difference: {wrong[0]}): "
                         f"expected {len(expected)} tensors for {config.n_features} features, hidden sizes "
                         f"{list(config.hidden_sizes)} and {len(config.class_names)} classes", field=FIELD)


def check_dataset(dataset, model_dir: Path) -> None:
    """Registration: the dataset fits the model, or its first request would fail at training. Rows have the
    model's features, labels are its classes, and retain and reference hold rows. Records are named by
    position (their ids are subjects')."""
    config = read_config(model_dir)
    classes = len(config.class_names)
    for i, record in enumerate(dataset.records.values()):
        for row in record.rows:
            if len(row) != config.n_features:
                names = ", ".join(f.name for f in config.features[:4]) + (", …" if config.n_features > 4 else "")
                raise InputError(f"records[{i}] has rows of {len(row)} values; the model takes {config.n_features} "
                                 f"features ({names}), in its config's order", field="--dataset")
        for label in record.labels:
            try:
                ok = not isinstance(label, bool) and 0 <= int(label) < classes and float(label) == int(label)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"records[{i}] has a label that is not a class index of the model (0 to "
                                 f"{classes - 1}: {', '.join(config.class_names)})", field="--dataset")
    for group in ("retain", "reference"):
        ids = getattr(dataset, group)
        if not ids or not all(dataset.records[i].rows for i in ids):
            raise InputError(f"{group} must name records that hold rows (retain: trained rows that must keep "
                             "working; reference: rows the model never saw)", field="--dataset")


def load_model(model_dir: Path, *, expected_sha256: str | None = None, dtype: str = "float32"):
    import torch
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    check_weights(model_dir, expected_sha256)
    config = read_config(model_dir)
    model = _module_class()(config)
    try:
        state = load_file(str(model_dir / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"weights do not match config.json: {type(exc).__name__}", field="model.safetensors") from None
    model = model.to(getattr(torch, dtype))
    model.eval()
    return model


def load_tokenizer(model_dir: Path) -> None:
    """Tabular models have no tokenizer; the pipeline passes this None through to recipes and metrics."""
    return None


def lora_targets(model, target: str) -> tuple[list[str], bool]:
    """(linear module names, fan_in_fan_out). The whole model is an MLP, so `mlp` and `all` both mean
    every linear layer including the head; there is no attention."""
    if target not in ("mlp", "all"):
        raise DomainError(f"tabular models have no {target!r} modules (use mlp or all)", field="adapter.target")
    n = len(base_of(model).layers)
    return [f"layers.{i}" for i in range(n)], False


# ------------------------------------------------------------------------------------------- forget data
@dataclass
class TabularForgetData:
    """Rows (raw feature values, float32) and integer labels of one request (or a batch of requests)."""

    forget_X: "np.ndarray"
    forget_y: "np.ndarray"
    retain_X: "np.ndarray"
    retain_y: "np.ndarray"
    reference_X: "np.ndarray"
    reference_y: "np.ndarray"
    forget_ids: list[str] = field(default_factory=list)

    def calibration_half(self) -> "TabularForgetData":
        """Even-indexed reference rows: what a stopping rule may look at."""
        return replace(self, reference_X=self.reference_X[::2], reference_y=self.reference_y[::2])

    def verification_half(self) -> "TabularForgetData":
        """Odd-indexed reference rows, never seen by a stopping rule: what verification judges with."""
        return replace(self, reference_X=self.reference_X[1::2], reference_y=self.reference_y[1::2])


def _rows(dataset, ids: Sequence[str], n_features: int | None):
    import numpy as np

    X = [row for i in ids for row in dataset.records[i].rows]
    y = [int(label) for i in ids for label in dataset.records[i].labels]
    width = n_features if n_features is not None else (len(X[0]) if X else 0)
    return np.asarray(X, dtype=np.float32).reshape(len(X), width), np.asarray(y, dtype=np.int64)


def check_forget(spec: dict[str, Any], dataset: Callable[[], Any], *, model: str) -> None:
    """At intake (forgetd.families.forget_spec): record ids of the registered dataset that hold rows."""
    from forgetd.families import forget_spec

    forget_spec.check_keys(spec, family="tabular_classifier", used=("corpus_ids",),
                           forgets="records of the model's dataset (forget.corpus_ids)")
    forget_spec.check_record_ids(spec, dataset, model=model,
                                 needs=lambda record: None if record.rows else "holds no tabular rows")


def forget_data(
    dataset, payloads: list[dict[str, Any]], *, exclude_from_retain: set[str] | frozenset[str] = frozenset()
) -> TabularForgetData:
    """Resolve request payloads (subject ids of the registered dataset) into forget/retain/reference rows.
    Subjects forgotten by any request in `payloads` or `exclude_from_retain` never count as retain data."""
    if dataset is None:
        raise DomainError("a tabular model needs a registered dataset to resolve forget requests", field="dataset")
    forget_ids: list[str] = []
    for payload in payloads:
        for record_id in payload.get("corpus_ids", []):
            if record_id not in dataset.records:
                raise DomainError(
                    "the request names a record id that is not in the model's dataset", field="forget.corpus_ids"
                )
            if not dataset.records[record_id].rows:
                raise DomainError("the named record holds no tabular rows", field="forget.corpus_ids")
            forget_ids.append(record_id)
    forget_ids = list(dict.fromkeys(forget_ids))
    if not forget_ids:
        raise DomainError("nothing to forget: the payload names no dataset records", field="forget")
    width = len(dataset.records[forget_ids[0]].rows[0])
    excluded = set(forget_ids) | set(exclude_from_retain)
    retain_ids = [i for i in dataset.retain if i not in excluded]
    fX, fy = _rows(dataset, forget_ids, width)
    rX, ry = _rows(dataset, retain_ids, width)
    refX, refy = _rows(dataset, list(dataset.reference), width)
    return TabularForgetData(fX, fy, rX, ry, refX, refy, forget_ids=forget_ids)


# ------------------------------------------------------------------------------------------- metrics
# Hessian damping of the leave-out estimate: 1e-3 tracked retraining best on the demo credit model (1e-2
# under-estimated the leave-out loss more).
INFLUENCE_DAMPING = 1e-3
# Rows used for the influence Hessian (a random sample beyond this: the estimate needs the curvature's
# shape, not every row, and the p×p solve dominates anyway).
INFLUENCE_MAX_ROWS = 4096


def leave_out_losses(model, data: "TabularForgetData", *, damping: float = INFLUENCE_DAMPING, seed: int = 0):
    """Per forget row: its CE under a one-Newton-step estimate of `model` retrained without all forget rows
    (forgetd.explain.influence), never below its CE under `model` itself. A tensor.

    This is the per-subject stand-in for "a model that never saw these rows": a population reference set
    cannot judge a handful of rows (a model truly retrained without one demo subject fails the reference
    accuracy/MIA checks for 4 of 5 subjects), while the leave-out estimate says where *these* rows' loss
    would be."""
    import numpy as np
    import torch

    from forgetd.explain.influence import DeletionInfluence

    retain_X, retain_y = np.asarray(data.retain_X), np.asarray(data.retain_y)
    n_total = len(retain_X) + len(data.forget_X)
    if n_total > INFLUENCE_MAX_ROWS:
        pick = np.random.default_rng(seed).choice(len(retain_X), INFLUENCE_MAX_ROWS - len(data.forget_X), replace=False)
        retain_X, retain_y = retain_X[np.sort(pick)], retain_y[np.sort(pick)]
    X = np.concatenate([retain_X, data.forget_X]).astype(np.float32)
    y = np.concatenate([retain_y, data.forget_y]).astype(np.int64)
    n_params = sum(p.numel() for p in model.parameters())
    try:
        influence = DeletionInfluence(model, X, y, damping=damping, scope="full" if n_params <= 6000 else "last_layer",
                                      n_total=n_total)
    except RuntimeError:  # a NaN model's Hessian has no Cholesky factor
        raise DomainError("the leave-out loss cannot be estimated (non-finite model)", field="model") from None
    estimate = influence.removed_model(range(len(retain_X), len(X)))
    fX = torch.as_tensor(np.asarray(data.forget_X, dtype=np.float32))
    fy = torch.as_tensor(np.asarray(data.forget_y, dtype=np.int64))
    with torch.no_grad():
        now = torch.nn.functional.cross_entropy(model(fX).float(), fy, reduction="none")
        after = torch.nn.functional.cross_entropy(estimate(fX).float(), fy, reduction="none")
    bounds = torch.maximum(now, after)
    if not bool(torch.isfinite(bounds).all()):
        raise DomainError("the leave-out loss is not finite", field="model")
    return bounds


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(positive score > negative score), ties half (Mann-Whitney U); NaN if any score is NaN (a diverged
    model must fail its checks, and NaN would never compare equal while ranking ties)."""
    from forgetd.verify.causal_lm import auc as _auc

    pos, neg = [float(v) for v in positives], [float(v) for v in negatives]
    if any(math.isnan(v) for v in pos + neg):
        return float("nan")
    return _auc(pos, neg)


def row_losses(model, X, y, *, batch_size: int = 4096) -> tuple[list[float], list[bool]]:
    """Per-row cross-entropy and correctness (argmax == label)."""
    import torch

    if len(X) == 0:
        return [], []
    param = next(model.parameters())
    losses: list[float] = []
    correct: list[bool] = []
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            xb = torch.as_tensor(X[i : i + batch_size], dtype=param.dtype, device=param.device)
            yb = torch.as_tensor(y[i : i + batch_size], dtype=torch.long, device=param.device)
            logits = model(xb).float()
            losses += torch.nn.functional.cross_entropy(logits, yb, reduction="none").tolist()
            correct += (logits.argmax(-1) == yb).tolist()
    return losses, correct


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate(model, tokenizer, data: TabularForgetData, *, original: dict[str, Any] | None = None) -> dict[str, Any]:
    """Forgetting and utility for one model state.

    - forget/retain/reference accuracy and mean cross-entropy;
    - forget_loss_gap = forget loss − reference loss (≈ 0 when the forget rows look never-trained,
      negative while they are remembered);
    - mia_auc: AUC of the loss-based membership score (−CE) of forget rows against reference rows. 0.5 is
      what a model that never saw them gives; far below 0.5 is over-forgetting."""
    was_training = model.training
    model.eval()
    try:
        f_loss, f_ok = row_losses(model, data.forget_X, data.forget_y)
        r_loss, r_ok = row_losses(model, data.retain_X, data.retain_y)
        ref_loss, ref_ok = row_losses(model, data.reference_X, data.reference_y)
    finally:
        model.train(was_training)
    metrics = {
        "forget_acc": _mean([float(c) for c in f_ok]),
        "retain_acc": _mean([float(c) for c in r_ok]),
        "reference_acc": _mean([float(c) for c in ref_ok]),
        "forget_loss": _mean(f_loss),
        "retain_loss": _mean(r_loss),
        "reference_loss": _mean(ref_loss),
        "mia_auc": auc([-v for v in f_loss], [-v for v in ref_loss]),
        "n_forget": len(f_loss),
        "n_reference": len(ref_loss),
    }
    metrics["forget_loss_gap"] = metrics["forget_loss"] - metrics["reference_loss"]
    if original is None and len(data.forget_X):
        # the original model's view: where these rows' loss would sit had it never seen them
        metrics["leave_out_loss"] = float(leave_out_losses(model, data).mean())
    return metrics


def checks(metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]):
    """Policy thresholds on tabular metrics. Fail-closed: NaN or a missing metric fails its check.

    - forget_qa_acc_max_over_reference: forget accuracy − reference accuracy ≤ t (the policy key is
      shared with causal_lm; for a classifier "answering" is classifying the row);
    - retain_acc_min_ratio: retain accuracy ≥ t × the original model's;
    - mia_auc_max_dev: |loss-MIA AUC − 0.5| ≤ t;
    - forget_acc_max: forget accuracy ≤ t (class removal);
    - leave_out_loss_min_ratio: the forget rows' mean CE ≥ t × the original model's leave-out estimate of
      it (`leave_out_losses`). Where the policy sets it, it *replaces* the two population checks above
      (forget accuracy over reference, MIA deviation): a subject's handful of rows cannot be judged against
      a population — a model truly retrained without one demo subject fails those for 4 of 5 subjects —
      so their values stay in the evidence but decide nothing."""
    from forgetd.verify.checks import Check

    nan = float("nan")

    def ok(value: float, condition: bool) -> bool:
        return isinstance(value, (int, float)) and not math.isnan(value) and condition

    def get(d: dict[str, Any], key: str) -> float:
        value = d.get(key, nan)
        return float(value) if isinstance(value, (int, float)) and value is not None else nan

    out = []
    per_subject = "leave_out_loss_min_ratio" in thresholds
    if per_subject:
        t = thresholds["leave_out_loss_min_ratio"]
        bound, loss = get(original, "leave_out_loss"), get(metrics, "forget_loss")
        if bound == 0 and loss >= 0:
            # a model that never saw these rows would predict them perfectly: any loss is at or above that
            # (0/0 read as "at the estimate"; was NaN, which failed every request for such rows)
            ratio = 1.0 if loss == 0 else math.inf
        else:
            ratio = loss / bound if bound and not math.isnan(bound) else nan
        out.append(Check("forget_loss_vs_leave_out", ratio, t, ok(ratio, ratio >= t - 1e-12)))
    if "forget_qa_acc_max_over_reference" in thresholds and not per_subject:
        t = thresholds["forget_qa_acc_max_over_reference"]
        gap = get(metrics, "forget_acc") - get(metrics, "reference_acc")
        out.append(Check("forget_acc_over_reference", gap, t, ok(gap, gap <= t + 1e-12)))
    if "retain_acc_min_ratio" in thresholds:
        t = thresholds["retain_acc_min_ratio"]
        base = get(original, "retain_acc")
        ratio = get(metrics, "retain_acc") / base if base and not math.isnan(base) else nan
        out.append(Check("retain_acc_ratio", ratio, t, ok(ratio, ratio >= t - 1e-12)))
    if "mia_auc_max_dev" in thresholds and not per_subject:
        t = thresholds["mia_auc_max_dev"]
        dev = abs(get(metrics, "mia_auc") - 0.5)
        out.append(Check("mia_auc_deviation", dev, t, ok(dev, dev <= t + 1e-12)))
    if "forget_acc_max" in thresholds:
        t = thresholds["forget_acc_max"]
        acc = get(metrics, "forget_acc")
        out.append(Check("forget_acc", acc, t, ok(acc, acc <= t + 1e-12)))
    return out
