"""Metrics for causal LMs (DESIGN 11).

- QA accuracy: a question counts as answered when greedy decoding after "Question: … Answer:" yields
  exactly the answer and then end-of-sequence. Checked teacher-forced in one forward pass (greedy
  decoding emits a sequence iff every one of its tokens is the argmax given the previous ones), which
  is exact and far cheaper than generate().
- Min-K% MIA: a text's score is the mean of its k% lowest token log-probs; AUC of forget texts against
  reference texts (never trained). A model that never saw the forget set gives it what
  verify.unseen_estimate estimates (0.5 on average over people, not for each one); far below that is
  over-forgetting, which itself reveals that the data was there.
- VerbMem: ROUGE-L F1 (token LCS) of the greedy continuation of each forget text's first half against
  its true second half.
- Perplexity on reference text (data of the same distribution the model never saw).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from forgetd.families.causal_lm import format_prompt, format_qa


def _device(model):
    return next(model.parameters()).device


def _pad(seqs: Sequence[Sequence[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _by_length(seqs: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of `seqs` in batches of similar length, shortest first. A batch is padded to its longest
    row: in text order two thirds of the positions of the demo's reference texts were padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# Model types whose logits are the output embedding applied to the last hidden state and nothing more (no
# soft-capping, no logit scale): for these the projection runs only where a prediction is read. Over the
# whole vocabulary at every position, padding included, it was a quarter of a metric pass on the demo model.
_PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "gpt2"})


def _logits_at(model, ids, mask, rows, cols):
    """The model's logits at positions (rows[i], cols[i]) of the batch: those of a full forward pass (bit for
    bit on the demo model with AMD's AVX-512 and AVX2 kernels; tests/unit/test_tiny_lm.py compares them with
    each text's full logits, allowing rounding)."""
    head = model.get_output_embeddings() if getattr(model.config, "model_type", None) in _PLAIN_HEAD else None
    if head is not None:
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        return head(out.hidden_states[-1][rows, cols])
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, cols]


def cached_per_tokenizer(store: weakref.WeakKeyDictionary, tokenizer, key, limit: int, build: Callable[[], Any]):
    """`build()`, kept in `store` under (tokenizer, key) with at most `limit` entries per tokenizer (oldest
    dropped first). Keyed weakly by tokenizer: a dropped tokenizer takes its entries along; one that cannot
    be weakly referenced is built every time."""
    try:
        cache = store.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if key not in cache:
        if len(cache) >= limit:
            cache.pop(next(iter(cache)))
        cache[key] = build()
    return cache[key]


# Stopping rules measure the same texts at every evaluation; tokenizing them again each time cost about a
# fifth of a short unlearning run.
_ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENCODED_PER_TOKENIZER = 64


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return cached_per_tokenizer(_ENCODED, tokenizer, tuple(texts), _ENCODED_PER_TOKENIZER,
                                lambda: [list(ids) for ids in tokenizer(list(texts))["input_ids"]])


def qa_correct(model, tokenizer, qa: Sequence[tuple[str, str]], *, batch_size: int = 128) -> list[bool]:
    import torch

    if not qa:
        return []
    prompts = _encode(tokenizer, [format_prompt(q) for q, _ in qa])
    fulls = _encode(tokenizer, [format_qa(q, a) for q, a in qa])
    seqs, spans = [], []
    for p, f in zip(prompts, fulls):
        # the first token is given, never predicted: an answer is judged from the second token on at the earliest
        start = max(1, len(p) if f[: len(p)] == p else _common_prefix(p, f))
        seq = f + [tokenizer.eos_token_id]
        seqs.append(seq)
        spans.append((start, len(seq)))
    out: list[bool] = [False] * len(seqs)
    with torch.no_grad():
        for batch in _by_length(seqs, batch_size):
            ids, mask = _pad([seqs[j] for j in batch], tokenizer.pad_token_id)
            ids, mask = ids.to(_device(model)), mask.to(_device(model))
            # predictions only where an answer token is predicted: the rows are the same, so is every argmax
            batch_spans = [spans[j] for j in batch]
            rows = torch.tensor([r for r, (start, end) in enumerate(batch_spans) for _ in range(start, end)],
                                device=ids.device)
            cols = torch.tensor([c for start, end in batch_spans for c in range(start, end)], device=ids.device)
            hits = (_logits_at(model, ids, mask, rows, cols - 1).argmax(-1) == ids[rows, cols]).tolist()
            at = 0
            for j, (start, end) in zip(batch, batch_spans):
                out[j] = all(hits[at : at + end - start])
                at += end - start
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def qa_accuracy(model, tokenizer, qa: Sequence[tuple[str, str]]) -> float:
    correct = qa_correct(model, tokenizer, qa)
    return sum(correct) / len(correct) if correct else float("nan")


def token_logprobs(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64) -> list[list[float]]:
    """Log-probability of every token after the first, per text."""
    import torch

    seqs = _encode(tokenizer, texts)
    out: list[list[float]] = [[] for _ in seqs]
    with torch.no_grad():
        for batch in _by_length(seqs, batch_size):
            ids, mask = _pad([seqs[j] for j in batch], tokenizer.pad_token_id)
            ids, mask = ids.to(_device(model)), mask.to(_device(model))
            # scored only where a token of the text is predicted: each row is normalised on its own, so every
            # log-probability is the one the whole row's logits gave
            scored = mask[:, 1:].bool()
            rows, cols = scored.nonzero(as_tuple=True)
            logp = torch.log_softmax(_logits_at(model, ids, mask, rows, cols).float(), dim=-1)
            picked = logp.gather(-1, ids[:, 1:][scored].unsqueeze(-1)).squeeze(-1)
            for j, row in zip(batch, picked.split(scored.sum(-1).tolist())):
                out[j] = row.tolist()
    return out


def min_k_score(logprobs: Sequence[float], *, k: float = 0.4) -> float:
    """Mean of the lowest fraction `k` of a text's token log-probabilities (at least one)."""
    lowest = sorted(logprobs)[: max(1, int(len(logprobs) * k))]
    return sum(lowest) / len(lowest)


def min_k_scores(model, tokenizer, texts: Sequence[str], *, k: float = 0.4) -> list[float]:
    return [min_k_score(lps, k=k) for lps in token_logprobs(model, tokenizer, texts)]


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    if not positives or not negatives or any(math.isnan(v) for v in (*positives, *negatives)):
        return float("nan")  # NaN never equals itself: the tie loop below would not advance
    ranked = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(1 for _, label in ranked[i:j] if label)
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def mia_auc(model, tokenizer, forget_texts: Sequence[str], reference_texts: Sequence[str], *, k: float = 0.4) -> float:
    return auc(min_k_scores(model, tokenizer, forget_texts, k=k), min_k_scores(model, tokenizer, reference_texts, k=k))


def perplexity(model, tokenizer, texts: Sequence[str]) -> float:
    lps = [lp for row in token_logprobs(model, tokenizer, texts) for lp in row]
    return math.exp(-sum(lps) / len(lps)) if lps else float("nan")


def _lcs(a: Sequence[int], b: Sequence[int]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[int], reference: Sequence[int]) -> float:
    if not candidate or not reference:
        return 0.0
    lcs = _lcs(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def verbmem(model, tokenizer, texts: Sequence[str], *, batch_size: int = 32) -> float:
    """Mean ROUGE-L of greedy continuations of each text's first half against its second half."""
    import torch

    if not texts:
        return float("nan")
    seqs = _encode(tokenizer, texts)
    scores = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                batch = seqs[i : i + batch_size]
                halves = [max(1, len(s) // 2) for s in batch]
                prefixes = [s[:h] for s, h in zip(batch, halves)]
                width = max(len(p) for p in prefixes)
                ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for j, p in enumerate(prefixes):
                    ids[j, width - len(p) :] = torch.tensor(p)
                    mask[j, width - len(p) :] = 1
                max_new = max(len(s) - h for s, h in zip(batch, halves))
                generated = model.generate(
                    input_ids=ids.to(_device(model)),
                    attention_mask=mask.to(_device(model)),
                    max_new_tokens=max(1, max_new),
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )[:, width:].tolist()
                for j, (s, h) in enumerate(zip(batch, halves)):
                    truth = s[h:]
                    out = [t for t in generated[j][: len(truth)] if t not in (tokenizer.pad_token_id,)]
                    scores.append(rouge_l(out, truth))
    finally:
        tokenizer.padding_side = old_side
    return sum(scores) / len(scores)


def evaluate(model, tokenizer, data, *, include_verbmem: bool = False) -> dict[str, Any]:
    """All metrics the policy thresholds and the benchmark need, for one model state (`data`: a
    families.causal_lm.ForgetData)."""
    metrics = {
        "forget_qa_acc": qa_accuracy(model, tokenizer, data.forget_qa),
        "retain_qa_acc": qa_accuracy(model, tokenizer, data.retain_qa),
        "reference_qa_acc": qa_accuracy(model, tokenizer, data.reference_qa),
        "mia_auc": mia_auc(model, tokenizer, data.forget_texts, data.reference_texts),
        # where verification centres the MIA band: what a model retrained without the forget set would give
        "mia_auc_unseen": data.unseen_mia_auc(tokenizer),
        "reference_ppl": perplexity(model, tokenizer, data.reference_texts),
    }
    if include_verbmem:
        metrics["verbmem"] = verbmem(model, tokenizer, data.forget_texts)
    return metrics
