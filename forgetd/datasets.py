"""A model's registered dataset: the records it was trained on, which of them are the retain set, and a
reference set of the same distribution that the model never saw (DESIGN 11).

File format (JSON):
    {"format": "forgetd-records/v1",
     "records": {"p0001": {"texts": ["…"], "qa": [["question", "answer"], …]}, …},
     "retain": ["p0002", …],          # trained records that must keep working
     "reference": ["p0100", …],       # never-trained records: what "forgotten" should look like
     "general": ["…"]}                # optional general text (perplexity)

For classifiers a record holds `samples` (indices or file refs) and `labels` instead of texts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgetd.errors import InputError

FORMAT = "forgetd-records/v1"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(default_factory=list)
    qa: list[tuple[str, str]] = Field(default_factory=list)
    labels: list[int | str] = Field(default_factory=list)
    samples: list[int | str] = Field(default_factory=list)


class Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    records: dict[str, Record]
    retain: list[str]
    reference: list[str] = Field(default_factory=list)
    general: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids_exist(self) -> "Dataset":
        if self.format != FORMAT:
            raise ValueError(f"format must be {FORMAT!r}")
        for group in ("retain", "reference"):
            unknown = [i for i in getattr(self, group) if i not in self.records]
            if unknown:
                raise ValueError(f"{group} names {len(unknown)} id(s) not in records, e.g. {unknown[0]!r}")
        if set(self.retain) & set(self.reference):
            raise ValueError("retain and reference must be disjoint (the reference set was never trained)")
        return self

    def texts_of(self, ids: list[str]) -> list[str]:
        return [t for i in ids for t in self.records[i].texts]

    def qa_of(self, ids: list[str]) -> list[tuple[str, str]]:
        return [pair for i in ids for pair in self.records[i].qa]


def parse_dataset(data: Any, *, source: str = "dataset") -> Dataset:
    try:
        return Dataset.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"{source}: {where}: {first['msg']}", field="--dataset") from None


def load_dataset_file(path: Path) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise InputError("file not found, unreadable or not UTF-8", field="--dataset") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno})", field="--dataset") from None
    return parse_dataset(data, source=path.name)
