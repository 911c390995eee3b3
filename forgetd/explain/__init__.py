"""Explanation records and their robustness to model updates (DESIGN 11).

- `counterfactual`: recourse (plain minimal-change, and deletion-robust after Krishna et al. 2023);
- `attribution`: integrated gradients with the explainer's own noise floor;
- `revalidate`: re-check one record on a new model → VALID / AT_RISK / INVALIDATED;
- `influence`: first-order effect of deleting training rows (shared by the robust search and the
  tabular forgetting recipe's bound).

Records are plain JSON-serializable dicts (schema "forgetd-explanation/v1"); storage, encryption and
the ERASED / REISSUED statuses belong to the record store. Only tabular_classifier models are supported.
torch is imported inside functions.
"""

from __future__ import annotations

from forgetd.explain.revalidate import AT_RISK, INVALIDATED, VALID

__all__ = ["AT_RISK", "INVALIDATED", "VALID"]
