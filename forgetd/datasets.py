"""A model's registered dataset: the records it was trained on, which of them are the retain set, and a
reference set of the same distribution that the model never saw (DESIGN 11).

File format (JSON):
    {"format": "forgetd-records/v1",
     "records": {"p0001": {"texts": ["…"], "qa": [["question", "answer"], …]}, …},
     "retain": ["p0002", …],          # trained records that must keep working
     "reference": ["p0100", …],       # never-trained records: what "forgotten" should look like
     "general": ["…"],                # optional general text (perplexity)
     "reference_split": [0, 1, 1, 0, …]}  # optional: one per reference text, in order (see below)

The reference texts are halved: half 0 is what stopping rules may look at (calibration), half 1 what
verification judges with. Without `reference_split` the halves alternate (even/odd). A causal LM's
registration fills it in when absent, with halves matched on the registered model's own Min-K% scores
(forgetd.families.causal_lm.matched_reference_split): alternating halves of a small reference set can
differ by enough that a request stopped on one half fails on the other.

For classifiers a record holds `samples` (indices or file refs) and `labels` instead of texts; for
tabular classifiers `rows` (one list of raw feature values per row, in the model's feature order) and one
label (class index) per row. Image classifiers carry their pixels in the file (so the stored dataset is
self-contained) and name the held-out splits: `validation` (what stopping rules may look at) and `test`
(what verification judges with; never used for a choice):
    {"format": "forgetd-records/v1",
     "records": {"d0000": {"samples": [0], "labels": [3]}, …},   # samples index inputs.rows
     "retain": ["d0000", …], "validation": ["d0007", …], "test": ["d0011", …],
     "inputs": {"shape": [1, 8, 8], "scale": 16, "rows": [[0, 3, 16, …], …]}}
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
    rows: list[list[float]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_label_per_row(self) -> "Record":
        if self.rows:
            if len(self.labels) != len(self.rows):
                raise ValueError("a record with rows needs exactly one label per row")
            if len({len(r) for r in self.rows}) != 1:
                raise ValueError("all rows of a record must have the same number of features")
        return self


class Inputs(BaseModel):
    """Raw classifier inputs, one flat row per sample index (a record's `samples` index these rows)."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(min_length=1)  # of one sample, e.g. [channels, height, width]
    scale: float = Field(default=1.0, gt=0)  # the raw value that means full intensity
    rows: list[list[float]]

    @model_validator(mode="after")
    def _row_sizes(self) -> "Inputs":
        size = 1
        for dim in self.shape:
            if dim < 1:
                raise ValueError("shape dimensions must be positive")
            size *= dim
        bad = next((i for i, row in enumerate(self.rows) if len(row) != size), None)
        if bad is not None:
            raise ValueError(f"row {bad} has {len(self.rows[bad])} values, shape {self.shape} needs {size}")
        return self


class Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    records: dict[str, Record]
    retain: list[str]
    reference: list[str] = Field(default_factory=list)
    general: list[str] = Field(default_factory=list)
    # Held-out splits of classifier datasets (never trained): validation for choices, test for verdicts.
    validation: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    inputs: Inputs | None = None
    # Which half each reference text belongs to (0 calibration, 1 verification), in texts_of(reference) order.
    reference_split: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids_exist(self) -> "Dataset":
        if self.format != FORMAT:
            raise ValueError(f"format must be {FORMAT!r}")
        for group in ("retain", "reference", "validation", "test"):
            unknown = [i for i in getattr(self, group) if i not in self.records]
            if unknown:
                raise ValueError(f"{group} names {len(unknown)} id(s) not in records, e.g. {unknown[0]!r}")
        if self.reference_split:
            self._check_reference_split()
        trained = set(self.retain)
        for group in ("reference", "validation", "test"):
            if trained & set(getattr(self, group)):
                raise ValueError(f"retain and {group} must be disjoint (the {group} set was never trained)")
        if set(self.validation) & set(self.test):
            raise ValueError("validation and test must be disjoint (test data is never used for a choice)")
        if self.inputs is not None:
            self._check_samples(len(self.inputs.rows))
        return self

    def _check_reference_split(self) -> None:
        n_texts = len(self.texts_of(self.reference))
        if len(self.reference_split) != n_texts:
            raise ValueError(
                f"reference_split has {len(self.reference_split)} entries but the reference records have {n_texts} "
                "texts: give one 0 (calibration) or 1 (verification) per reference text, in order, or leave it out"
            )
        if set(self.reference_split) - {0, 1}:
            raise ValueError("reference_split entries must be 0 (calibration) or 1 (verification)")
        if len(set(self.reference_split)) < 2:
            raise ValueError("reference_split must put at least one reference text in each half (0 and 1)")

    def _check_samples(self, n_rows: int) -> None:
        for record_id, record in self.records.items():
            if len(record.samples) != len(record.labels):
                raise ValueError(f"record {record_id!r}: one label per sample is needed")
            for sample in record.samples:
                if not isinstance(sample, int) or not 0 <= sample < n_rows:
                    raise ValueError(f"record {record_id!r}: sample {sample!r} is not a row of inputs")

    def texts_of(self, ids: list[str]) -> list[str]:
        return [t for i in ids for t in self.records[i].texts]

    def qa_of(self, ids: list[str]) -> list[tuple[str, str]]:
        return [pair for i in ids for pair in self.records[i].qa]

    def rows_of(self, ids: list[str]) -> tuple[list[list[float]], list[int | str]]:
        return [r for i in ids for r in self.records[i].rows], [y for i in ids for y in self.records[i].labels]


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
