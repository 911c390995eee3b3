"""One module per model family: how to load it, what its forget data is, how to measure forgetting."""

from __future__ import annotations

import importlib
from types import ModuleType

from forgetd.errors import DomainError

_FAMILY_MODULES = {
    "causal_lm": "forgetd.families.causal_lm",
    "tabular_classifier": "forgetd.families.tabular_classifier",
    "image_classifier": "forgetd.families.image_classifier",
    "text_to_image": "forgetd.families.text_to_image",
}


def family_module(family: str) -> ModuleType:
    try:
        return importlib.import_module(_FAMILY_MODULES[family])
    except KeyError:
        raise DomainError(
            f"the forgetting pipeline does not support family {family} yet (supported: {', '.join(_FAMILY_MODULES)})",
            field="family",
        ) from None
