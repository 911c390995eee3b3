"""A seeded synthetic credit dataset and the tiny MLP decision model trained on it (no hub, no files in).

Each fictitious subject (`s0001` …) has several loan applications (rows) sharing their immutable facts
(age, length of credit history) and their employment, with per-application loan amount, term, debt,
accounts, late payments, income and savings. Whether a loan is approved (class 1) follows the usual
risk drivers (debt-to-income, late payments, loan-to-income, history, savings, employment) plus an
*unobserved* per-subject effect. The model can only learn that effect for subjects it was trained on (it
recognises them by their immutable features), which is what makes training rows measurably more
familiar than a never-seen subject's: a loss-based membership test tells them apart, and forgetting a
subject has something to undo.

- ``generate_credit(cfg)`` → ``CreditData`` (per-subject rows/labels, train/validation/test subjects).
- ``fit_credit_model(cfg)`` / ``retrain_without(ids, cfg)``: full-batch Adam from a seeded init, one
  thread; the retrained model is the gold standard an unlearned model is compared with.
- ``ensure_credit_model(home, cfg)`` → ``CreditDemo``: ``home/cache/credit-mlp-<key>/`` holding
  ``model/`` (the family's directory format), ``dataset.json`` (forgetd-records/v1: retain = training
  subjects, reference = test subjects) and ``forgetd_demo.json`` (config, metrics, seconds). The dataset
  sits *beside* the model directory: compose copies a base directory's extra files into every merged
  checkpoint, and a checkpoint must not carry the subjects' rows.

torch is imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from forgetd.families.tabular_classifier import Feature, TabularConfig

FORMAT_VERSION = 1  # bump when generation or training changes what a config produces
DEMO_META_FILE = "forgetd_demo.json"
DATASET_FILE = "dataset.json"
MODEL_SUBDIR = "model"
CLASS_NAMES = ("reject", "approve")
APPROVE = 1

FEATURES: tuple[Feature, ...] = (
    Feature("age", "integer", 18, 90, immutable=True, unit="years"),
    Feature("income", "continuous", 6_000, 300_000, unit="EUR/year"),
    Feature("debt", "continuous", 0, 250_000, unit="EUR"),
    Feature("credit_history_months", "integer", 0, 864, immutable=True, unit="months"),
    Feature("num_accounts", "integer", 0, 30),
    Feature("late_payments_24m", "integer", 0, 24),
    Feature("employment_years", "integer", 0, 55, unit="years"),
    Feature("loan_amount", "continuous", 500, 150_000, unit="EUR"),
    Feature("loan_term_months", "integer", 6, 120, unit="months"),
    Feature("savings", "continuous", 0, 300_000, unit="EUR"),
)

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CreditConfig:
    n_subjects: int = 240
    rows_min: int = 5
    rows_max: int = 12
    split: tuple[float, float, float] = (0.6, 0.15, 0.25)  # train / validation / test, by subject
    signal: float = 2.0  # scale of the observable risk drivers in the log-odds
    subject_effect: float = 2.0  # sd of the unobserved per-subject log-odds effect
    hidden_sizes: tuple[int, ...] = (32, 32)
    activation: str = "silu"
    lr: float = 1e-2
    steps: int = 1000
    # An explicit L2 term (not AdamW decay) that keeps the optimum unique enough for a retrain without a
    # few rows to land near it: at 1e-3 the model memorises (train 98%, test 69%) and retraining without
    # 10 random rows moved test margins by ≈ 6 logits; at 5e-3 by ≈ 0.1 (train 80%, test 77%).
    l2: float = 5e-3
    seed: int = 0
    exclude_ids: tuple[str, ...] = ()  # training subjects left out (a "retrained without them" model)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", tuple(float(s) for s in self.split))
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "exclude_ids", tuple(sorted(set(self.exclude_ids))))
        if not 2 <= self.rows_min <= self.rows_max:
            raise ValueError("need 2 ≤ rows_min ≤ rows_max")
        if abs(sum(self.split) - 1.0) > 1e-9 or min(self.split) <= 0:
            raise ValueError("split must be three positive fractions summing to 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split"], d["hidden_sizes"] = list(self.split), list(self.hidden_sizes)
        d["exclude_ids"] = list(self.exclude_ids)
        return d

    def data_key(self) -> tuple:
        return (self.n_subjects, self.rows_min, self.rows_max, self.split, self.signal, self.subject_effect, self.seed)

    def cache_key(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tabular_config(cfg: CreditConfig) -> TabularConfig:
    return TabularConfig(
        features=FEATURES,
        class_names=CLASS_NAMES,
        hidden_sizes=cfg.hidden_sizes,
        activation=cfg.activation,
        favorable_class=APPROVE,
    )


# ------------------------------------------------------------------------------------------- data
@dataclass
class CreditData:
    subjects: dict[str, tuple[list[list[float]], list[int]]]
    train: list[str]
    validation: list[str]
    test: list[str]
    # The generator's unobserved per-subject effects (ground truth only a synthetic demo has): the subjects
    # with the largest |effect| are the ones a model can only fit by memorising them.
    effects: dict[str, float] = field(default_factory=dict)

    def arrays(self, ids: Sequence[str]):
        import numpy as np

        X = [r for i in ids for r in self.subjects[i][0]]
        y = [label for i in ids for label in self.subjects[i][1]]
        return np.asarray(X, dtype=np.float32).reshape(len(X), len(FEATURES)), np.asarray(y, dtype=np.int64)

    def owners(self, ids: Sequence[str]) -> list[str]:
        """The subject id of every row of `arrays(ids)`, in order."""
        return [i for i in ids for _ in self.subjects[i][1]]

    def to_records(self) -> dict[str, Any]:
        """forgetd-records/v1: retain = training subjects, reference = test subjects (never trained)."""
        return {
            "format": "forgetd-records/v1",
            "records": {i: {"rows": rows, "labels": labels} for i, (rows, labels) in self.subjects.items()},
            "retain": list(self.train),
            "reference": list(self.test),
        }


def _clip(v: float, f: Feature) -> float:
    v = min(max(v, f.min), f.max)
    return float(round(v)) if f.kind == "integer" else round(float(v), 2)


def generate_credit(cfg: CreditConfig | None = None) -> CreditData:
    cfg = cfg or CreditConfig()
    rng = random.Random(f"credit-{cfg.seed}")
    F = {f.name: f for f in FEATURES}
    subjects: dict[str, tuple[list[list[float]], list[int]]] = {}
    effects: dict[str, float] = {}
    for s in range(cfg.n_subjects):
        sid = f"s{s + 1:04d}"
        age = rng.randint(21, 75)
        history = min((age - 18) * 12, int(rng.gammavariate(3.0, 40.0)) + 6)
        employment = min(age - 18, max(0, int(rng.gauss((age - 22) * 0.45, 5))))
        income0 = math.exp(rng.gauss(10.55 + 0.008 * (age - 40) + 0.01 * employment, 0.45))
        savings0 = income0 * math.exp(rng.gauss(-1.2, 1.0))
        accounts0 = rng.randint(1, 8)
        lateness = rng.expovariate(1.0)  # the subject's tendency to pay late
        effect = rng.gauss(0.0, cfg.subject_effect)
        rows, labels = [], []
        for _ in range(rng.randint(cfg.rows_min, cfg.rows_max)):
            income = income0 * math.exp(rng.gauss(0, 0.05))
            debt = max(0.0, income * rng.uniform(0.0, 1.2) + rng.gauss(0, 2000))
            loan = income * math.exp(rng.gauss(-1.0, 0.6))
            term = rng.choice([12, 24, 36, 48, 60, 72, 84])
            late = min(24, int(rng.expovariate(1.0 / (0.3 + 1.5 * lateness))))
            accounts = max(0, accounts0 + rng.randint(-1, 2))
            savings = savings0 * math.exp(rng.gauss(0, 0.1))
            raw = {
                "age": age, "income": income, "debt": debt, "credit_history_months": history,
                "num_accounts": accounts, "late_payments_24m": late, "employment_years": employment,
                "loan_amount": loan, "loan_term_months": term, "savings": savings,
            }
            row = [_clip(raw[f.name], F[f.name]) for f in FEATURES]
            v = dict(zip([f.name for f in FEATURES], row))
            inc = max(v["income"], 1.0)
            logit = cfg.signal * (
                1.5
                - 2.2 * v["debt"] / inc
                - 0.45 * v["late_payments_24m"]
                - 1.6 * v["loan_amount"] / inc * (36.0 / v["loan_term_months"]) ** 0.5
                + 0.5 * math.log1p(v["credit_history_months"] / 12.0)
                + 0.35 * math.log1p(v["savings"] / 1000.0) - 1.0
                + 0.03 * v["employment_years"]
            ) + effect
            rows.append(row)
            labels.append(int(rng.random() < 1.0 / (1.0 + math.exp(-logit))))
        subjects[sid] = (rows, labels)
        effects[sid] = effect
    ids = list(subjects)
    rng.shuffle(ids)
    n_train = round(cfg.split[0] * len(ids))
    n_val = round(cfg.split[1] * len(ids))
    return CreditData(
        subjects=subjects,
        train=sorted(ids[:n_train]),
        validation=sorted(ids[n_train : n_train + n_val]),
        test=sorted(ids[n_train + n_val :]),
        effects=effects,
    )


# ------------------------------------------------------------------------------------------- training
def train_classifier(
    X,
    y,
    config: TabularConfig,
    *,
    steps: int,
    lr: float,
    l2: float,
    seed: int,
    mean=None,
    std=None,
    init_state: dict[str, Any] | None = None,
    progress: Progress | None = None,
):
    """Full-batch Adam (cosine-decayed) on mean CE + (l2/2)·‖θ‖² from a seeded init (or `init_state`).

    Full batch keeps training a deterministic function of (init, data): a model retrained without a few
    rows differs from the original only because of those rows, which is what influence estimates of a
    deletion describe. The standardisation defaults to the given rows' mean/std."""
    import numpy as np
    import torch

    from forgetd.families.tabular_classifier import build_model

    X = np.asarray(X, dtype=np.float32)
    mean = X.mean(0) if mean is None else mean
    std = X.std(0) if std is None else std
    model = build_model(config, seed=seed, mean=mean, std=std)
    if init_state is not None:
        model.load_state_dict(init_state)
        with torch.no_grad():
            model.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            model.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))
    xt = torch.as_tensor(X)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    params = [p for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    # Decaying to zero ends training at (near) a stationary point of the regularised loss: the point an
    # influence estimate of a deletion is taken around.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        if l2:
            loss = loss + 0.5 * l2 * sum((p * p).sum() for p in params)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"credit model training diverged at step {step}")
        if progress and (step % 250 == 0 or step == steps):
            progress({"phase": "train", "step": step, "max_steps": steps, "loss": float(loss.detach())})
    model.eval()
    return model


def accuracy(model, X, y) -> float:
    import numpy as np
    import torch

    if len(X) == 0:
        return float("nan")
    with torch.no_grad():
        pred = model(torch.as_tensor(np.asarray(X, dtype=np.float32))).argmax(-1).numpy()
    return float((pred == np.asarray(y)).mean())


@dataclass
class TrainedCredit:
    config: CreditConfig
    model: Any
    data: CreditData
    metrics: dict[str, Any] = field(default_factory=dict)

    def train_ids(self) -> list[str]:
        excluded = set(self.config.exclude_ids)
        return [i for i in self.data.train if i not in excluded]


_DATA_CACHE: dict[tuple, CreditData] = {}
_INIT_CACHE: dict[tuple, dict[str, Any]] = {}


def _data(cfg: CreditConfig) -> CreditData:
    key = cfg.data_key()
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = generate_credit(cfg)
    return _DATA_CACHE[key]


def fit_credit_model(
    cfg: CreditConfig | None = None,
    *,
    exclude_rows: Sequence[int] = (),
    progress: Progress | None = None,
    threads: int | None = 1,
) -> TrainedCredit:
    """Train on the training subjects minus ``cfg.exclude_ids`` (and minus training rows at positions
    ``exclude_rows`` of ``data.arrays(train_ids)``). Standardisation comes from the full training split so
    that a retrained model reads features exactly like the original."""
    import numpy as np
    import torch

    cfg = cfg or CreditConfig()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        data = _data(cfg)
        X_all, _ = data.arrays(data.train)
        mean, std = X_all.mean(0), X_all.std(0)
        excluded = set(cfg.exclude_ids)
        ids = [i for i in data.train if i not in excluded]
        X, y = data.arrays(ids)
        if len(exclude_rows):
            keep = np.ones(len(X), dtype=bool)
            keep[list(exclude_rows)] = False
            X, y = X[keep], y[keep]
        model = train_classifier(
            X, y, tabular_config(cfg), steps=cfg.steps, lr=cfg.lr, l2=cfg.l2, seed=cfg.seed, mean=mean, std=std,
            progress=progress,
        )
        seconds = time.perf_counter() - t0
        Xv, yv = data.arrays(data.validation)
        Xt, yt = data.arrays(data.test)
        metrics = {
            "params": sum(p.numel() for p in model.parameters()),
            "train_rows": int(len(X)),
            "train_subjects": len(ids),
            "train_acc": round(accuracy(model, X, y), 4),
            "validation_acc": round(accuracy(model, Xv, yv), 4),
            "test_acc": round(accuracy(model, Xt, yt), 4),
            "test_majority_baseline": round(float(max(yt.mean(), 1 - yt.mean())), 4),
            "approve_rate": round(float(np.concatenate([y, yv, yt]).mean()), 4),
            "train_seconds": round(seconds, 3),
            "threads": torch.get_num_threads(),
        }
    finally:
        torch.set_num_threads(old_threads)
    return TrainedCredit(config=cfg, model=model, data=data, metrics=metrics)


def retrain_without(ids: Sequence[str], cfg: CreditConfig | None = None, *, threads: int | None = 1):
    """The gold standard: the same training from the same init, without subjects `ids`."""
    from dataclasses import replace

    cfg = cfg or CreditConfig()
    return fit_credit_model(replace(cfg, exclude_ids=tuple(cfg.exclude_ids) + tuple(ids)), threads=threads).model


# ------------------------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class CreditDemo:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_SUBDIR

    @property
    def dataset_path(self) -> Path:
        return self.root / DATASET_FILE

    def meta(self) -> dict[str, Any]:
        return json.loads((self.root / DEMO_META_FILE).read_text())

    def config(self) -> CreditConfig:
        d = dict(self.meta()["config"])
        return CreditConfig(**{**d, "split": tuple(d["split"]), "hidden_sizes": tuple(d["hidden_sizes"]),
                               "exclude_ids": tuple(d["exclude_ids"])})


def save_credit(trained: TrainedCredit, root: Path) -> CreditDemo:
    import torch

    from forgetd.families.tabular_classifier import save_model

    root.mkdir(parents=True, exist_ok=True)
    save_model(trained.model, tabular_config(trained.config), root / MODEL_SUBDIR)
    (root / DATASET_FILE).write_text(json.dumps(trained.data.to_records()) + "\n")
    meta = {
        "kind": "forgetd-demo-credit-mlp",
        "cache_key": trained.config.cache_key(),
        "config": trained.config.to_dict(),
        "splits": {"train": trained.data.train, "validation": trained.data.validation, "test": trained.data.test},
        "metrics": trained.metrics,
        "versions": {"torch": torch.__version__},
    }
    (root / DEMO_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return CreditDemo(root)


def ensure_credit_model(
    home: Path | str, cfg: CreditConfig | None = None, progress: Progress | None = None
) -> CreditDemo:
    """``home/cache/credit-mlp-<cache_key>``, trained first if missing (`forgetd.demo.cache.ensure_built`), on
    one thread (`CACHE_BUILD_THREADS`)."""
    from forgetd.demo.cache import CACHE_BUILD_THREADS, ensure_built, finished_build

    cfg = cfg or CreditConfig()
    return CreditDemo(ensure_built(
        home, f"credit-mlp-{cfg.cache_key()}", ready=lambda d: finished_build(d / DEMO_META_FILE),
        build=lambda d: save_credit(fit_credit_model(cfg, progress=progress, threads=CACHE_BUILD_THREADS), d)))


def load_credit_dataset(demo: CreditDemo):
    from forgetd.datasets import load_dataset_file

    return load_dataset_file(demo.dataset_path)
