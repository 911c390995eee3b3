"""Small vocabularies shared by several layers (stored as strings in the database)."""

from __future__ import annotations

import enum


class RequestKind(str, enum.Enum):
    data = "data"  # forget a data subject's records
    concept = "concept"  # forget a concept (style, character, unsafe content)
    class_ = "class"  # forget one or more labels of a classifier

    @classmethod
    def parse(cls, value: str) -> "RequestKind":
        for member in cls:
            if member.value == value:
                return member
        raise ValueError(value)


class ModelFamily(str, enum.Enum):
    causal_lm = "causal_lm"
    text_to_image = "text_to_image"
    image_classifier = "image_classifier"
    tabular_classifier = "tabular_classifier"


KIND_VALUES = tuple(k.value for k in RequestKind)
FAMILY_VALUES = tuple(f.value for f in ModelFamily)
