"""The demo people corpus as a model dataset (forgetd-records/v1): every trained person is retain data
until a request forgets them; the holdout people (never trained) are the reference set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgetd.datasets import FORMAT


def corpus_dataset(corpus) -> dict[str, Any]:
    records = {p.id: {"texts": list(p.texts), "qa": [list(pair) for pair in p.qa]} for p in corpus.people}
    return {
        "format": FORMAT,
        "records": records,
        "retain": [p.id for p in corpus.trained],
        "reference": [p.id for p in corpus.holdout],
        "general": corpus.general_texts(),
    }


def write_corpus_dataset(corpus, path: Path) -> Path:
    path.write_text(json.dumps(corpus_dataset(corpus), sort_keys=True))
    return path
