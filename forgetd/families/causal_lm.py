"""Family `causal_lm`: local Hugging Face causal LMs (DESIGN 9).

Loading always goes through `load_model`, which checks the registered weight hash first. Forget data
comes from the request payload (raw texts / QA pairs, or ids of records in the model's registered
dataset); retain and reference data come from the registered dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forgetd.errors import DomainError, InputError, IntegrityFailure, Unavailable

QA_PROMPT = "Question: {question} Answer:"


def format_prompt(question: str) -> str:
    return QA_PROMPT.format(question=question)


def format_qa(question: str, answer: str) -> str:
    return f"{format_prompt(question)} {answer}"


def check_weights(model_dir: Path, expected_sha256: str | None) -> None:
    """The weights on disk must be the ones registered (or composed): nothing else is ever loaded."""
    if expected_sha256 is None:
        return
    from forgetd.api import hash_model_dir

    if not Path(model_dir).is_dir():
        raise IntegrityFailure(f"the model directory {model_dir} is gone (moved or deleted); put it back, then "
                               "`forgetd request retry`", field="base_sha256")
    actual, files = hash_model_dir(model_dir)
    if not files:
        raise IntegrityFailure(f"no weight files left under {model_dir}; restore them, then `forgetd request retry`",
                               field="base_sha256")
    if actual != expected_sha256:
        raise IntegrityFailure(
            f"weights under {model_dir} hash to {actual[:12]}, registered {expected_sha256[:12]}", field="base_sha256"
        )


def quiet_transformers() -> None:
    """Loading bars and library deprecation chatter are noise in an operator's terminal and in logs."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def load_model(model_dir: Path, *, expected_sha256: str | None = None, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    check_weights(model_dir, expected_sha256)
    # use_kernels=False: transformers otherwise swaps layers for kernels fetched from the Hugging Face hub
    # (never here: no hub downloads); on the CPU it re-kernelized the model at every train()/eval() switch
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), local_files_only=True, use_kernels=False
    )
    model.eval()
    return model


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):
        # registration loaded it (check_model_dir), so its files went missing or broke since; the weight hash
        # does not cover them. transformers' own message may quote file contents: not repeated.
        raise Unavailable(f"the tokenizer under {model_dir} no longer loads (its files are missing or broken); "
                          "restore the model directory as registered, then forgetd request retry",
                          field="model") from None


def check_model_dir(model_dir: Path) -> None:
    """Registration's check (forgetd.families.model_files): a config of a model type AutoModelForCausalLM
    loads, whole safetensors files, and a tokenizer that loads; the weights themselves are not loaded."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from forgetd.families.model_files import FIELD, check_safetensors, read_json_object

    config = read_json_object(Path(model_dir), "config.json", what="Hugging Face causal LM directory")
    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InputError(f"config.json's model_type {model_type!r} is not a causal LM (AutoModelForCausalLM has no "
                         "such type); check --family", field=FIELD)
    check_safetensors(Path(model_dir))
    try:
        load_tokenizer(Path(model_dir))
    except Exception as exc:  # noqa: BLE001 -- any failure here means the pipeline could not tokenize
        raise InputError(f"the causal LM's tokenizer does not load from the directory ({type(exc).__name__}); "
                         "save it beside the model (tokenizer.save_pretrained)", field=FIELD) from None


def check_dataset(dataset, model_dir: Path) -> None:
    """Registration: a causal LM's dataset is records of texts (and QA): retain (trained, must keep working)
    and reference (never trained: what forgotten looks like) both hold texts."""
    if any(record.rows or record.samples for record in dataset.records.values()):
        raise InputError("its records hold rows or samples: that is a classifier's dataset; a causal LM's records "
                         "hold texts and QA pairs", field="--dataset")
    for group in ("retain", "reference"):
        if not dataset.texts_of(list(getattr(dataset, group))):
            raise InputError(f"{group} must name records that hold texts (retain: trained texts that must keep "
                             "working; reference: texts the model never saw)", field="--dataset")


# Module names per architecture: "mlp" targets the feed-forward block, "attn" the attention projections.
_TARGETS = {
    "llama": {"mlp": ["gate_proj", "up_proj", "down_proj"], "attn": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "gpt2": {"mlp": ["c_fc", "mlp.c_proj"], "attn": ["c_attn", "attn.c_proj"]},
}


def lora_targets(model, target: str) -> tuple[list[str], bool]:
    """(target module names, fan_in_fan_out) for `target` in {mlp, attn, all}."""
    arch = model.config.model_type
    if arch not in _TARGETS:
        raise DomainError(f"no LoRA target map for architecture {arch}", field="adapter.target")
    names = _TARGETS[arch]["mlp"] + _TARGETS[arch]["attn"] if target == "all" else _TARGETS[arch][target]
    return names, arch == "gpt2"  # GPT-2 uses Conv1D, whose weight is transposed


@dataclass
class ForgetData:
    """Everything a recipe or verifier needs about one request (or a batch of one model's requests)."""

    forget_texts: list[str]
    forget_qa: list[tuple[str, str]]
    retain_texts: list[str]
    retain_qa: list[tuple[str, str]]
    reference_texts: list[str]
    reference_qa: list[tuple[str, str]]
    general_texts: list[str] = field(default_factory=list)
    # What the checkpoint the adapter trains against already forgets: (texts, QA) per completed request of
    # the model. Recipes that keep it forgotten read it; verification never does.
    forgotten: list[tuple[list[str], list[tuple[str, str]]]] = field(default_factory=list)
    # The dataset's reference_split (0 calibration, 1 verification per reference text); None: alternate.
    reference_split: list[int] | None = None

    def _reference_half(self, half: int) -> "ForgetData":
        split = self.reference_split
        if split is None or len(split) != len(self.reference_texts):
            split = [i % 2 for i in range(len(self.reference_texts))]
        texts = [t for t, h in zip(self.reference_texts, split) if h == half]
        # QA pairs are judged by exact answers, not by likelihood, so alternating halves serve them
        return replace(self, reference_texts=texts, reference_qa=self.reference_qa[half::2], reference_split=None)

    def calibration_half(self) -> "ForgetData":
        """Reference half 0: what recipes may look at to decide when to stop."""
        return self._reference_half(0)

    def verification_half(self) -> "ForgetData":
        """Reference half 1, never seen by a stopping rule: what verification judges with."""
        return self._reference_half(1)

    def forget_documents(self) -> list[str]:
        return self.forget_texts + [format_qa(q, a) for q, a in self.forget_qa]

    def retain_documents(self) -> list[str]:
        return self.retain_texts + [format_qa(q, a) for q, a in self.retain_qa]

    def training_documents(self) -> list[str]:
        """What a model retrained without every record being forgotten would train on."""
        return self.retain_documents() + self.general_texts

    def unseen_mia_auc(self, tokenizer) -> float:
        """The forget texts' MIA AUC against these reference texts that a model retrained without them would
        give, estimated by counting (verify.unseen_estimate): where forgetting aims, and what it is judged by."""
        from forgetd.verify.unseen_estimate import unseen_auc

        return unseen_auc(tokenizer, self.training_documents(), self.forget_texts, self.reference_texts)

    def forgotten_unseen_mia_aucs(self, tokenizer) -> list[float]:
        """`unseen_mia_auc` of each earlier request in `forgotten`."""
        from forgetd.verify.unseen_estimate import unseen_auc

        documents = self.training_documents()
        return [unseen_auc(tokenizer, documents, texts, self.reference_texts) for texts, _ in self.forgotten]


def _resolve(dataset, payloads: list[dict[str, Any]]) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(record ids, texts, QA) the payloads ask to forget: their raw texts, then their records' texts and QA."""
    forget_ids: list[str] = []
    texts: list[str] = []
    for payload in payloads:
        for record_id in payload.get("corpus_ids", []):
            if dataset is None or record_id not in dataset.records:
                raise DomainError("the request names a record id that is not in the model's dataset", field="forget.corpus_ids")
            forget_ids.append(record_id)
        texts += payload.get("texts", [])
    if dataset is None:
        return forget_ids, texts, []
    return forget_ids, texts + dataset.texts_of(forget_ids), dataset.qa_of(forget_ids)


def check_forget(spec: dict[str, Any], dataset: Callable[[], Any], *, model: str) -> None:
    """At intake (forgetd.families.forget_spec): texts, and record ids the registered dataset holds."""
    from forgetd.families import forget_spec

    forget_spec.check_keys(spec, family="causal_lm", used=("texts", "corpus_ids"),
                           forgets="texts (forget.texts) and records of the model's dataset (forget.corpus_ids)")
    forget_spec.check_record_ids(spec, dataset, model=model)


def forget_data(dataset, payloads: list[dict[str, Any]], *, exclude_from_retain: set[str] = frozenset()) -> ForgetData:
    """Resolve request payloads against the model's dataset. Records being forgotten (by any request in
    `payloads` or `exclude_from_retain`) never count as retain data."""
    forget_ids, texts, qa = _resolve(dataset, payloads)
    if not texts and not qa:
        raise DomainError("nothing to forget: the payload names no texts and no dataset records", field="forget")
    excluded = set(forget_ids) | set(exclude_from_retain)
    retain_ids = [i for i in (dataset.retain if dataset else []) if i not in excluded]
    reference_ids = list(dataset.reference) if dataset else []
    return ForgetData(
        forget_texts=texts,
        forget_qa=qa,
        retain_texts=dataset.texts_of(retain_ids) if dataset else [],
        retain_qa=dataset.qa_of(retain_ids) if dataset else [],
        reference_texts=dataset.texts_of(reference_ids) if dataset else [],
        reference_qa=dataset.qa_of(reference_ids) if dataset else [],
        general_texts=list(dataset.general) if dataset else [],
        reference_split=list(dataset.reference_split) or None if dataset else None,
    )


def with_forgotten(data: ForgetData, dataset, payloads: list[dict[str, Any]]) -> ForgetData:
    """`data` plus the forget data of `payloads` (the requests the served checkpoint already honours), so
    that a recipe can hold them where they are: a new adapter composed on top must not bring them back."""
    forgotten = []
    for payload in payloads:
        _, texts, qa = _resolve(dataset, [payload])
        if texts or qa:
            forgotten.append((texts, qa))
    return replace(data, forgotten=forgotten)


def matched_reference_split(model, tokenizer, texts: list[str]) -> list[int]:
    """Halves of `texts` (0 calibration, 1 verification) that `model` finds equally familiar: texts sorted
    by their Min-K% score are dealt in consecutive pairs, one to each half, the lower-scored one going to
    alternate halves pair by pair. A stopping rule aims the forget set at the calibration half's scores
    and verification judges against the other half; alternating halves of the demo model's holdout texts
    differed by an AUC of 0.56 under it, and requests that met the rule failed verification."""
    from forgetd.verify.causal_lm import min_k_scores

    return deal_matched_halves(min_k_scores(model, tokenizer, texts))


def deal_matched_halves(scores: list[float]) -> list[int]:
    """0/1 per score: sorted scores dealt in consecutive pairs, one to each half, the lower one going to
    half 0 and half 1 in turn (so with an even number of pairs the halves' AUC is exactly 0.5)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    split = [0] * len(scores)
    for rank, index in enumerate(order):
        pair, second = divmod(rank, 2)
        split[index] = second if pair % 2 == 0 else 1 - second
    return split


def needs_matched_split(dataset) -> bool:
    """The dataset gives no reference_split and has reference texts to halve (what registration scores)."""
    return not dataset.reference_split and len(dataset.texts_of(dataset.reference)) >= 2


def with_matched_reference_split(dataset, model, tokenizer):
    """`dataset` with reference_split filled in from `model` (unchanged when it has one or no reference)."""
    if not needs_matched_split(dataset):
        return dataset
    split = matched_reference_split(model, tokenizer, dataset.texts_of(dataset.reference))
    return dataset.model_copy(update={"reference_split": split})


def evaluate(model, tokenizer, data: ForgetData, *, original: dict[str, Any] | None = None) -> dict[str, Any]:
    """The family surface the pipeline calls (DESIGN 11 metrics; `original` is unused here)."""
    from forgetd.verify.causal_lm import evaluate as _evaluate

    return _evaluate(model, tokenizer, data)


def checks(metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]):
    from forgetd.verify.checks import causal_lm_checks

    return causal_lm_checks(metrics, original, thresholds)
