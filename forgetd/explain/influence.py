"""First-order (influence-function) effect of deleting training rows on a tabular model's outputs.

For a model trained to minimise  L(θ) = (1/n)·Σ_i ℓ(z_i; θ) + (λ/2)·‖θ‖², deleting row i moves the optimum
by about  Δθ_i = (1/n)·H⁻¹·∇θ ℓ(z_i)  (Koh & Liang's up-weighting with ε = −1/n), so any differentiable
output g(x; θ) moves by  Δg_i(x) = (1/n)·∇θ g(x)ᵀ H⁻¹ ∇θ ℓ(z_i)  and, additively, by Σ_{i∈S} Δg_i for a set S.

H is the generalised Gauss-Newton matrix of the mean cross-entropy (Jᵀ·(diag π − ππᵀ)·J averaged over
rows) plus (λ + damping)·I. Gauss-Newton rather than the exact Hessian because the exact Hessian of a
neural network is indefinite away from a perfect optimum and the inverse of an indefinite matrix makes
influence signs meaningless; the damping keeps it well-conditioned where the training data leave
directions flat. `scope="last_layer"` restricts θ to the output head (a convex logistic problem, cheap
for wide models); `scope="full"` uses every linear layer (what a retrain actually changes; fine for the
demo's ≈1.5k parameters, a p×p solve).

Models must be plain (merged) tabular_classifier modules, not peft-wrapped ones: explanations are
issued and re-checked on served checkpoints, which are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def margin_of(logits, target: int):
    """logit of `target` minus the largest other logit: > 0 iff the model decides `target`."""
    import torch

    others = torch.cat([logits[..., :target], logits[..., target + 1 :]], dim=-1)
    return logits[..., target] - others.max(dim=-1).values


class DeletionInfluence:
    """Precomputes M = G·H⁻¹ (one row per training row); effects at any x are then one matrix-vector
    product with ∇θ g(x)."""

    def __init__(
        self,
        model,
        X,
        y,
        *,
        l2: float = 0.0,
        damping: float = 1e-3,
        scope: str = "full",
        chunk: int = 512,
        n_total: int | None = None,
    ) -> None:
        """`n_total`: the size of the training set when X is a sample of it (deleting one row of n moves
        the optimum by 1/n of H⁻¹∇ℓ; H itself is a mean and is estimated from the sample)."""
        import numpy as np
        import torch
        from torch.func import functional_call, grad, jacrev, vmap

        from forgetd.families.tabular_classifier import base_of

        if scope not in ("full", "last_layer"):
            raise ValueError("scope must be 'full' or 'last_layer'")
        base = base_of(model)
        if base is not model:
            raise ValueError("influence needs a plain (merged) tabular model, not a peft-wrapped one")
        self.model = base
        self.scope = scope
        self.l2 = float(l2)
        self.damping = float(damping)
        head = f"layers.{len(base.layers) - 1}."
        self.names = [n for n, _ in base.named_parameters() if scope == "full" or n.startswith(head)]
        dtype = next(base.parameters()).dtype
        self._theta = {n: p.detach() for n, p in base.named_parameters() if n in self.names}
        self._fixed = {n: p.detach() for n, p in base.named_parameters() if n not in self.names}
        self._fixed.update({n: b for n, b in base.named_buffers()})
        self.shapes = [self._theta[n].shape for n in self.names]
        X = torch.as_tensor(np.asarray(X, dtype=np.float32), dtype=dtype)
        Y = torch.as_tensor(np.asarray(y, dtype=np.int64))
        self.n = int(n_total) if n_total is not None else len(X)
        self.rows = len(X)
        if self.rows == 0:
            raise ValueError("influence needs training rows")

        def logits_fn(theta, x):
            return functional_call(base, {**self._fixed, **theta}, (x.unsqueeze(0),)).squeeze(0)

        def loss_fn(theta, x, t):
            return torch.nn.functional.cross_entropy(logits_fn(theta, x).unsqueeze(0), t.unsqueeze(0))

        grads, gn_rows = [], []
        with torch.no_grad():
            for i in range(0, self.rows, chunk):
                xb, yb = X[i : i + chunk], Y[i : i + chunk]
                g = vmap(grad(loss_fn), in_dims=(None, 0, 0))(self._theta, xb, yb)
                grads.append(self._flat(g, len(xb)))
                jac = self._flat(vmap(jacrev(logits_fn), in_dims=(None, 0))(self._theta, xb), len(xb), extra=1)
                probs = torch.softmax(functional_call(base, {**self._fixed, **self._theta}, (xb,)), dim=-1)
                lam = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
                evals, evecs = torch.linalg.eigh(lam.double())
                root = evecs * evals.clamp(min=0).sqrt().unsqueeze(-2)  # Λ = root·rootᵀ
                gn_rows.append((root.transpose(-1, -2) @ jac.double()).reshape(-1, jac.shape[-1]))
        G = torch.cat(grads).double()
        B = torch.cat(gn_rows)
        p = G.shape[1]
        H = B.T @ B / self.rows + (self.l2 + self.damping) * torch.eye(p, dtype=torch.float64)
        L = torch.linalg.cholesky(H)
        self.p = p
        self.H_chol = L
        self.train_grads = G  # (n, p): ∇θ ℓ(z_i)
        self.M = torch.cholesky_solve(G.T, L).T.contiguous()  # (n, p): H⁻¹∇ℓ_i, row-wise

    def _flat(self, tree: dict[str, Any], batch: int, extra: int = 0):
        import torch

        return torch.cat([tree[n].reshape(*tree[n].shape[: 1 + extra], -1) for n in self.names], dim=-1)

    def _params(self, requires_grad: bool):
        return {n: t.clone().requires_grad_(requires_grad) for n, t in self._theta.items()}

    def output_grad(self, x, target: int, *, create_graph: bool = False):
        """∇θ of the target margin at one row x (raw units); differentiable w.r.t. x with create_graph."""
        import torch
        from torch.func import functional_call

        theta = self._params(True)
        logits = functional_call(self.model, {**self._fixed, **theta}, (x.reshape(1, -1),)).squeeze(0)
        g = margin_of(logits, target)
        grads = torch.autograd.grad(g, [theta[n] for n in self.names], create_graph=create_graph)
        return torch.cat([t.reshape(-1) for t in grads]), g

    def removal_effects(self, x, target: int, *, create_graph: bool = False):
        """Δ target-margin at x from deleting each training row alone: (1/n)·M·∇θ g(x), shape (n,).
        Also returns the margin itself (same graph)."""
        flat, g = self.output_grad(x, target, create_graph=create_graph)
        return (self.M.to(flat.dtype) @ flat) / self.n, g

    def worst_case_shift(self, x, target: int, k: int, *, create_graph: bool = False):
        """The most the margin at x can drop when any k rows are deleted, under the additive first-order
        model: the sum of the k most negative single-row effects (greedy = exact for an additive model).
        Returns (shift ≤ 0, margin)."""
        import torch

        effects, g = self.removal_effects(x, target, create_graph=create_graph)
        if k <= 0:
            return torch.zeros((), dtype=effects.dtype), g
        smallest = torch.topk(effects, min(k, self.rows), largest=False).values
        return smallest.clamp(max=0).sum(), g

    def parameter_shift(self, rows: Sequence[int]) -> dict[str, Any]:
        """Δθ for deleting `rows` together: (1/n)·H⁻¹·Σ∇ℓ_i (one Newton step from the trained optimum)."""
        import torch

        idx = torch.as_tensor(list(rows), dtype=torch.long)
        delta = self.M[idx].sum(0) / self.n
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(torch.Size(shape).numel())
            out[name] = delta[start : start + size].reshape(shape)
            start += size
        return out

    def removed_model(self, rows: Sequence[int]):
        """A copy of the model with the Newton-step deletion of `rows` applied (an estimate of the model
        retrained without them)."""
        import copy

        import torch

        shift = self.parameter_shift(rows)
        clone = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, param in clone.named_parameters():
                if name in shift:
                    param.add_(shift[name].to(param.dtype))
        clone.eval()
        return clone
