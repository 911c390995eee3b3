"""The Min-K% MIA AUC a model that never saw a forget set would give it, estimated without retraining.

A retrained model does not give every unseen person 0.5: how predictable a person's texts are from
everything else it trains on (common cities, employers, phrasings) sets their AUC against the reference
people. On the demo model three retrainings without the forget candidates gave individual people 0.21 to
0.83, the first five people's mean 0.63-0.71, and a person's AUC repeated across retrainings (person effect
s.d. 0.11; bench/results/amd-epyc-avx2/llm_retrain_noise.md). Forgetting aimed at 0.5 therefore lands
where a retraining does not, by as much as that person effect.

The estimate counts instead of training: a token bigram model on the documents a retraining honouring the
requests would train on (the model's retain documents, without every record a request forgets, and its
general texts), smoothed towards the unigram distribution, scores the forget texts and the reference texts
with Min-K% exactly as verification scores them under the model, and their AUC is the estimate. It
correlated 0.63 with three retrainings' per-person mean there (a retraining with another one: 0.45-0.61),
and takes about a tenth of a second on the demo dataset. Counts are kept per tokenizer and document list,
so verifying many requests against one dataset counts once.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import Counter
from collections.abc import Sequence

# Smoothing weight per vocabulary entry. Of 0.01, 0.1 and 1 (AMD EPYC, 2026-12-07) the correlations with three
# retrainings' mean were 0.59, 0.66 and 0.62 (bench/llm_retrain_noise.py).
ALPHA = 0.1

_COUNTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COUNTS_PER_TOKENIZER = 4


class BigramCounts:
    def __init__(self, tokenizer, documents: Sequence[str], alpha: float = ALPHA) -> None:
        self.unigrams: Counter = Counter()
        self.bigrams: Counter = Counter()
        for ids in tokenizer(list(documents))["input_ids"] if documents else []:
            self.unigrams.update(ids)
            self.bigrams.update(zip(ids, ids[1:]))
        self.total = sum(self.unigrams.values())
        self.vocab = len(tokenizer)
        self.alpha = alpha

    def logprobs(self, ids: Sequence[int]) -> list[float]:
        """log p(b | a) for every token b after the first, p smoothed towards the unigram distribution."""
        a_v = self.alpha * self.vocab
        return [
            math.log((self.bigrams[(a, b)] + a_v * (self.unigrams[b] + self.alpha) / (self.total + a_v))
                     / (self.unigrams[a] + a_v))
            for a, b in zip(ids, ids[1:])
        ]


def counts_for(tokenizer, documents: Sequence[str]) -> BigramCounts:
    """Bigram counts of `documents`, reused for the same tokenizer and the same documents."""
    from forgetd.verify.causal_lm import cached_per_tokenizer

    key = hashlib.sha256("\x00".join(documents).encode()).hexdigest()
    return cached_per_tokenizer(_COUNTS, tokenizer, key, _COUNTS_PER_TOKENIZER, lambda: BigramCounts(tokenizer, documents))


def unseen_auc(tokenizer, documents: Sequence[str], forget_texts: Sequence[str], reference_texts: Sequence[str]) -> float:
    """Estimated AUC of `forget_texts` against `reference_texts` under a model trained on `documents` only.
    0.5 (the reference behaviour DESIGN 11 started from) when there is nothing to count or to compare."""
    from forgetd.verify.causal_lm import _encode, auc, min_k_score

    if not documents or not forget_texts or not reference_texts:
        return 0.5
    counts = counts_for(tokenizer, documents)

    def scores(texts: Sequence[str]) -> list[float]:
        return [min_k_score(counts.logprobs(ids)) if len(ids) > 1 else 0.0 for ids in _encode(tokenizer, texts)]

    return auc(scores(forget_texts), scores(reference_texts))
