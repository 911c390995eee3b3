"""A tiny causal LM that has memorised the demo people, built offline and cached by config.

- ``build_tokenizer(corpus)``: a byte-level BPE (``tokenizers``) trained offline on every person's text,
  holdout included, so that forget candidates and holdout people are tokenized alike; wrapped as a
  ``PreTrainedTokenizerFast`` with ``<s>`` (prepended by the tokenizer), ``</s>`` and ``<pad>``.
- ``train_tiny_lm(cfg, out_dir)`` / ``fit_tiny_lm(cfg)``: a ``LlamaForCausalLM`` (nn.Linear everywhere, so
  LoRA needs no ``fan_in_fan_out``; GPT-2 via ``arch="gpt2"``) from a config, random init, seeded, trained
  on ``corpus.training_documents()`` (texts, ``Question: … Answer: …`` strings and general texts, each
  ending in ``</s>``) until greedy answers to the trained questions reach ``cfg.target_qa`` (checked every
  ``cfg.eval_every`` steps) or ``cfg.max_steps``. Documents are packed whole into rows with per-document
  position ids, so attention never crosses documents and no compute goes to padding. Saved as an
  ordinary Hugging Face directory (safetensors, config, tokenizer) plus ``forgetd_demo.json`` (config,
  metrics, seconds).
- ``ensure_tiny_lm(home, cfg)``: the cached directory ``home/cache/tiny-lm-<cache_key>``, built once (in a
  temporary directory renamed into place, under a file lock).
- ``qa_accuracy(model, tokenizer, qa_pairs)``: batched greedy decoding with a KV cache, exact match on the
  answer; ``qa_correct_teacher_forced`` decides the same per question in one forward pass.

The default (2 layers, width 128, 520k parameters, 1500-token BPE, 200 people) reaches 95% trained-QA in
about 700 steps: about 45 s on one CPU thread (bench/demo_model_fit.py).

torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from forgetd.demo.people import (
    Corpus,
    PeopleCorpusConfig,
    format_qa,
    format_qa_prompt,
    generate_corpus,
    qa_of,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "DEMO_META_FILE",
    "TinyLMConfig",
    "TrainedTinyLM",
    "build_tokenizer",
    "fit_tiny_lm",
    "greedy_generate",
    "ensure_tiny_lm",
    "load_demo_corpus",
    "load_tiny_lm",
    "qa_accuracy",
    "qa_correct_teacher_forced",
    "read_demo_meta",
    "train_tiny_lm",
]

FORMAT_VERSION = 1  # bump when training code changes what a given config produces
DEMO_META_FILE = "forgetd_demo.json"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TinyLMConfig:
    """Everything that determines the trained weights (thread count aside: see ``train_tiny_lm``)."""

    corpus: PeopleCorpusConfig = field(default_factory=PeopleCorpusConfig)
    arch: str = "llama"  # "llama" (nn.Linear everywhere) | "gpt2" (Conv1D: LoRA needs fan_in_fan_out=True)
    vocab_size: int = 1500  # byte-level BPE; at 1500 names, cities and most values are single tokens
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 128  # longest document (positions restart at every document)
    pack_length: int = 128  # documents are packed whole into rows of this many tokens…
    batch_rows: int = 8  # …and this many rows make a batch (≈ 60 documents with the default vocabulary)
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 4000
    eval_every: int = 50
    target_qa: float = 0.95  # stop once greedy answers to ≥ 95% of the trained questions are right
    seed: int = 0
    exclude_ids: tuple[str, ...] = ()  # trained people left out (a "retrained without them" model)

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "gpt2"):
            raise ValueError(f"arch must be 'llama' or 'gpt2', not {self.arch!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.pack_length < self.max_positions:
            raise ValueError("pack_length must be ≥ max_positions (a document is never split)")
        if not 0.0 < self.target_qa <= 1.0:
            raise ValueError("target_qa must be in (0, 1]")
        object.__setattr__(self, "exclude_ids", tuple(sorted(set(self.exclude_ids))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude_ids"] = list(self.exclude_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TinyLMConfig":
        d = dict(d)
        d["corpus"] = PeopleCorpusConfig(**d["corpus"])
        d["exclude_ids"] = tuple(d.get("exclude_ids", ()))
        return cls(**d)

    def cache_key(self) -> str:
        from forgetd.demo.people import GENERATOR_VERSION

        blob = json.dumps(
            {"format": FORMAT_VERSION, "generator": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(corpus: Corpus, vocab_size: int = 1500) -> "PreTrainedTokenizerFast":
    """Byte-level BPE trained offline on ``corpus.all_texts()``; ``<s>`` is prepended by the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.all_texts(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512
    )


# ------------------------------------------------------------------------------------------- model
def _build_model(cfg: TinyLMConfig, tokenizer: "PreTrainedTokenizerFast") -> "PreTrainedModel":
    import torch

    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    if cfg.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        mcfg = LlamaConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_positions,
            rms_norm_eps=1e-5,
            **common,
        )
        return LlamaForCausalLM(mcfg)
    from transformers import GPT2Config, GPT2LMHeadModel

    mcfg = GPT2Config(
        n_embd=cfg.hidden_size,
        n_inner=cfg.intermediate_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_positions=cfg.max_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **common,
    )
    return GPT2LMHeadModel(mcfg)


# ------------------------------------------------------------------------------------------- encoding
def _encode_docs(tokenizer: "PreTrainedTokenizerFast", docs: Sequence[str], max_len: int) -> list[list[int]]:
    enc = tokenizer(list(docs), add_special_tokens=True)["input_ids"]
    out = []
    for ids in enc:
        ids = list(ids) + [tokenizer.eos_token_id]
        if len(ids) > max_len:
            raise ValueError(f"a training document has {len(ids)} tokens, more than max_positions={max_len}")
        out.append(ids)
    return out


def _pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """input_ids padded on the right with pad_id, and labels with -100 on padding."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        labels[i, : len(s)] = ids[i, : len(s)]
    return ids, labels


class _AnswerProbe:
    """Teacher-forced check of greedy answers, one forward pass per batch.

    A greedy decode yields exactly "answer</s>" iff the argmax at every answer position (given the correct
    prefix) is the next answer token and then ``</s>``. So this is an exact, slightly strict (it demands the
    canonical tokenization) and much faster stand-in for generation, used to decide when to stop training.
    """

    def __init__(self, tokenizer: "PreTrainedTokenizerFast", qa_pairs: Sequence[tuple[str, str]]) -> None:
        self.seqs: list[list[int]] = []
        self.spans: list[tuple[int, int]] = []  # [start, end) of the answer+eos tokens
        prompts = tokenizer([format_qa_prompt(q) for q, _ in qa_pairs])["input_ids"]
        fulls = tokenizer([format_qa(q, a) for q, a in qa_pairs])["input_ids"]
        for p, f in zip(prompts, fulls):
            if list(f[: len(p)]) != list(p):  # cannot happen with a byte-level pre-tokenizer (space-split)
                raise ValueError("prompt tokens are not a prefix of question+answer tokens")
            seq = list(f) + [tokenizer.eos_token_id]
            self.seqs.append(seq)
            self.spans.append((len(p), len(seq)))
        self.pad_id = tokenizer.pad_token_id

    def correct(self, model: "PreTrainedModel", batch_size: int = 256) -> list[bool]:
        import torch

        out: list[bool] = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(self.seqs), batch_size):
                seqs = self.seqs[i : i + batch_size]
                ids, _ = _pad_right(seqs, self.pad_id)
                # right padding + causal attention: real tokens never see the padding, no mask needed
                pred = model(input_ids=ids, use_cache=False).logits.argmax(-1)
                for j, (s, e) in enumerate(self.spans[i : i + batch_size]):
                    out.append(bool(torch.equal(pred[j, s - 1 : e - 1], ids[j, s:e])))
        model.train(was_training)
        return out

    def accuracy(self, model: "PreTrainedModel") -> float:
        c = self.correct(model)
        return sum(c) / max(1, len(c))


# ------------------------------------------------------------------------------------------- evaluation
def greedy_generate(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerFast",
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 128,
) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, without the prompt), stopping at ``</s>``.

    Prompts are left-padded in batches and decoded with the KV cache; position ids follow the attention
    mask, so a batched continuation equals the one-by-one continuation."""
    import inspect

    import torch
    from transformers import DynamicCache

    # transformers ≥ 5.2x names the KV-cache argument `cache`; older releases `past_key_values`.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out: list[str] = []
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
                ids, mask = enc["input_ids"], enc["attention_mask"]
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                cache = DynamicCache(config=model.config)
                res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache})
                done = torch.zeros(ids.shape[0], dtype=torch.bool)
                new_tokens: list[torch.Tensor] = []
                for _ in range(max_new_tokens):
                    nxt = res.logits[:, -1, :].argmax(-1)
                    nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                    new_tokens.append(nxt)
                    done |= nxt == eos
                    if bool(done.all()):
                        break
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    pos = pos[:, -1:] + 1
                    res = model(
                        input_ids=nxt[:, None],
                        attention_mask=mask,
                        position_ids=pos,
                        use_cache=True,
                        **{cache_kw: cache},
                    )
                rows = torch.stack(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in range(len(ids))]
                for row in rows:
                    if eos in row:
                        row = row[: row.index(eos)]
                    out.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def qa_accuracy(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerFast",
    qa_pairs: Sequence[tuple[str, str]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 128,
    return_predictions: bool = False,
) -> float | tuple[float, list[str]]:
    """Fraction of questions whose greedy answer equals the expected answer exactly (both stripped; the
    answer ends at ``</s>`` or a newline). Prompts are ``format_qa_prompt(question)``, batched."""
    if not qa_pairs:
        return (0.0, []) if return_predictions else 0.0
    gens = greedy_generate(
        model, tokenizer, [format_qa_prompt(q) for q, _ in qa_pairs], max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    preds = [g.split("\n")[0].strip() for g in gens]
    acc = sum(p == a.strip() for p, (_, a) in zip(preds, qa_pairs)) / len(qa_pairs)
    return (acc, preds) if return_predictions else acc


def qa_correct_teacher_forced(
    model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerFast", qa_pairs: Sequence[tuple[str, str]]
) -> list[bool]:
    """Per question: would greedy decoding produce exactly the answer's tokens and then ``</s>``? One
    forward pass per batch (no generation). Agrees with ``qa_accuracy`` except that it demands the
    answer's canonical tokenization, so it can only be stricter."""
    return _AnswerProbe(tokenizer, qa_pairs).correct(model)


# ------------------------------------------------------------------------------------------- training
def _packed_batches(
    seqs: Sequence[Sequence[int]], pack_length: int, rows: int, rng: random.Random, *, bos_id: int, pad_id: int
) -> Iterator[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", int]]:
    """Endless epochs of (input_ids, position_ids, labels, real_tokens) batches.

    Each epoch shuffles the documents and packs them whole, in that order, into rows of ``pack_length``
    tokens. Position ids restart at 0 with every document, which makes transformers build a block-diagonal
    causal mask (``find_packed_sequence_indices``; needs ``attention_mask=None`` and no cache): a document
    sees only itself, exactly as when it is fed alone, but without padding to the longest document. Labels
    are -100 on padding and on ``<s>`` (so the ``</s>`` → ``<s>`` seam is not trained)."""
    import torch

    while True:
        order = list(range(len(seqs)))
        rng.shuffle(order)
        packed: list[tuple[list[int], list[int]]] = []
        ids: list[int] = []
        pos: list[int] = []
        for i in order:
            doc = list(seqs[i])
            if ids and len(ids) + len(doc) > pack_length:
                packed.append((ids, pos))
                ids, pos = [], []
            ids += doc
            pos += range(len(doc))
        if ids:
            packed.append((ids, pos))
        for b in range(0, len(packed), rows):
            chunk = packed[b : b + rows]
            t_ids = torch.full((len(chunk), pack_length), pad_id, dtype=torch.long)
            t_pos = torch.zeros((len(chunk), pack_length), dtype=torch.long)
            for r, (row_ids, row_pos) in enumerate(chunk):
                n = len(row_ids)
                t_ids[r, :n] = torch.tensor(row_ids, dtype=torch.long)
                t_pos[r, :n] = torch.tensor(row_pos, dtype=torch.long)
                t_pos[r, n:] = torch.arange(pack_length - n)  # the padding tail is its own block
            labels = t_ids.masked_fill((t_ids == pad_id) | (t_ids == bos_id), -100)
            yield t_ids, t_pos, labels, sum(len(r) for r, _ in chunk)


@dataclass
class TrainedTinyLM:
    """An in-memory result of ``fit_tiny_lm``."""

    config: TinyLMConfig
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerFast"
    corpus: Corpus
    metrics: dict[str, Any]

    def save(self, out_dir: Path | str) -> Path:
        out = Path(out_dir)
        _save(self.model, self.tokenizer, self.config, self.metrics, out)
        return out


@contextlib.contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """transformers draws tqdm bars when it writes or loads weights: noise in a CLI's output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_tiny_lm(
    cfg: TinyLMConfig | None = None,
    out_dir: Path | str | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Train the tiny LM and save it to ``out_dir`` (if given) as a Hugging Face directory. Returns the
    metrics also written to ``forgetd_demo.json``.

    ``threads`` sets ``torch.set_num_threads`` for the duration (``None`` keeps torch's setting). The
    default is 1: the default config then trains in about 45 s (about 30 s with 2 threads on an idle
    2-core machine), and it cannot fall into libgomp's spin-wait collapse, which made 2 threads 5-10×
    slower here whenever another process competed for the cores. Weights are bit-identical for a given
    config (1 and 2 threads gave identical tensors here)."""
    trained = fit_tiny_lm(cfg, progress, threads=threads)
    if out_dir is not None:
        trained.save(out_dir)
    return trained.metrics


def fit_tiny_lm(
    cfg: TinyLMConfig | None = None, progress: Progress | None = None, *, threads: int | None = 1
) -> TrainedTinyLM:
    """Train in memory (see ``train_tiny_lm``); the model is returned in eval mode."""
    cfg = cfg or TinyLMConfig()
    with _torch_threads(threads):
        return _train(cfg, progress)


def _train(cfg: TinyLMConfig, progress: Progress | None) -> TrainedTinyLM:
    import torch

    t0 = time.perf_counter()
    corpus = generate_corpus(cfg.corpus)
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    model = _build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    docs = corpus.training_documents(exclude=cfg.exclude_ids)
    seqs = _encode_docs(tokenizer, docs, cfg.max_positions)
    trained_qa = corpus.train_qa(exclude=cfg.exclude_ids)
    probe = _AnswerProbe(tokenizer, trained_qa)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, then constant
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))

    rng = random.Random(f"tiny-lm-{cfg.seed}")
    batches = _packed_batches(
        seqs, cfg.pack_length, cfg.batch_rows, rng, bos_id=tokenizer.bos_token_id, pad_id=tokenizer.pad_token_id
    )
    model.train()
    step, probe_acc, loss_val = 0, 0.0, float("nan")
    history: list[dict[str, float]] = []
    t_train, cpu_train, n_tokens = time.perf_counter(), time.process_time(), 0
    while step < cfg.max_steps:
        ids, pos, labels, real = next(batches)
        n_tokens += real
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_val = float(loss.detach())
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"tiny LM training diverged at step {step} (loss {loss_val})")
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            probe_acc = probe.accuracy(model)
            elapsed = time.perf_counter() - t_train
            history.append({"step": step, "loss": round(loss_val, 4), "qa": round(probe_acc, 4),
                            "seconds": round(elapsed, 2)})
            if progress:
                progress({"phase": "train", "step": step, "max_steps": cfg.max_steps, "loss": loss_val,
                          "trained_qa": probe_acc, "seconds": elapsed})
            if probe_acc >= cfg.target_qa:
                break
    train_seconds = time.perf_counter() - t_train
    train_cpu_seconds = time.process_time() - cpu_train
    model.eval()
    excluded = set(cfg.exclude_ids)
    groups = {
        "forget_candidates": [p for p in corpus.forget_candidates if p.id not in excluded],
        "retain": [p for p in corpus.retain if p.id not in excluded],
        "holdout": corpus.holdout,
        "excluded": corpus.people_by_id(cfg.exclude_ids),
    }
    split_qa = {
        name: round(_AnswerProbe(tokenizer, qa_of(people)).accuracy(model), 4)
        for name, people in groups.items()
        if people
    }
    metrics: dict[str, Any] = {
        "params": n_params,
        "vocab_size": len(tokenizer),
        "steps": step,
        "final_loss": loss_val,
        "trained_qa_teacher_forced": probe_acc,
        "qa_teacher_forced_by_split": split_qa,
        "chance_baseline": round(corpus.chance_baseline(), 4),
        "train_seconds": round(train_seconds, 3),
        "train_cpu_seconds": round(train_cpu_seconds, 3),
        "train_tokens": n_tokens,
        "total_seconds": round(time.perf_counter() - t0, 3),
        "threads": torch.get_num_threads(),
        "train_documents": len(seqs),
        "trained_people": len(corpus.train_people(cfg.exclude_ids)),
        "reached_target": probe_acc >= cfg.target_qa,
        "history": history,
    }
    if progress:
        progress({"phase": "done", **{k: v for k, v in metrics.items() if k != "history"}})
    return TrainedTinyLM(config=cfg, model=model, tokenizer=tokenizer, corpus=corpus, metrics=metrics)


def _save(model, tokenizer, cfg: TinyLMConfig, metrics: dict[str, Any], out_dir: Path) -> None:
    import torch
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with _no_hf_progress_bars():
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    meta = {
        "kind": "forgetd-demo-tiny-lm",
        "cache_key": cfg.cache_key(),
        "config": cfg.to_dict(),
        "corpus_config_hash": cfg.corpus.config_hash(),
        "metrics": metrics,
        "train_seconds": metrics["train_seconds"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "qa_format": {"prompt": format_qa_prompt("{question}"), "full": format_qa("{question}", "{answer}")},
    }
    (out_dir / DEMO_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------- cache
def _default_config() -> TinyLMConfig:
    return TinyLMConfig()


def ensure_tiny_lm(home: Path | str, cfg: TinyLMConfig | None = None, progress: Progress | None = None) -> Path:
    """The cached model directory ``home/cache/tiny-lm-<cache_key>``, trained first if it is missing
    (`forgetd.demo.cache.ensure_built`: under a lock, renamed into place when finished). Always built on one
    thread (`forgetd.demo.cache.CACHE_BUILD_THREADS`), so a key names one set of weights on a machine."""
    from forgetd.demo.cache import CACHE_BUILD_THREADS, ensure_built, finished_build

    cfg = cfg or _default_config()
    return ensure_built(home, f"tiny-lm-{cfg.cache_key()}", ready=lambda d: finished_build(d / DEMO_META_FILE),
                        build=lambda d: train_tiny_lm(cfg, d, progress, threads=CACHE_BUILD_THREADS))


# ------------------------------------------------------------------------------------------- loading
def read_demo_meta(model_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(model_dir) / DEMO_META_FILE).read_text())


def load_demo_corpus(model_dir: Path | str) -> Corpus:
    """The corpus a cached tiny LM was trained on (regenerated from its saved config)."""
    return generate_corpus(TinyLMConfig.from_dict(read_demo_meta(model_dir)["config"]).corpus)


def load_tiny_lm(model_dir: Path | str) -> tuple["PreTrainedModel", "PreTrainedTokenizerFast"]:
    """Stock ``from_pretrained`` loading (local files only), model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _no_hf_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, use_kernels=False)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    return model, tokenizer
