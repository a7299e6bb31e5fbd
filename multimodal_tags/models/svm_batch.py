"""Every tag's linear SVM at once: the problem LinearSVC solves per tag, solved for all tags together.

LinearSVC (liblinear, its defaults) minimises, for each tag j separately,

    0.5 * (|w_j|^2 + b_j^2) + C * sum_i max(0, 1 - y_ij * (x_i . w_j + b_j))^2

(squared hinge; the intercept is a constant feature of value 1, regularised like the rest). The tags
share the matrix X, so here all of them take their Newton steps together: the generalised Hessian
I + 2C X^T D_j X of every tag is applied to its own direction in two sparse x dense products for all
tags at once, and conjugate gradients run column by column in the same tensors. A step's length is found
by backtracking on the exact objective, which needs no further product with X. Columns whose gradient has
fallen to `tol` times its value at w = 0 stop changing. The problem is strictly convex, so the answer is the
one liblinear converges to; `tests/test_word_scores.py` holds the two to the same scores.
"""
from __future__ import annotations

import numpy as np
import torch


def _objective(w: torch.Tensor, z: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Per-column objective [T] for weights w [d+1, T] (last row: intercept) and scores z = Xw [n, T]."""
    return 0.5 * (w * w).sum(0) + c * (torch.clamp(1 - y * z, min=0) ** 2).sum(0)


def _gradient(w, z, y, x, c):
    loss_part = torch.clamp(1 - y * z, min=0) * y  # [n, T], zero outside the active set
    return w - 2 * c * _xt(x, loss_part), (1 - y * z) > 0


def _xt(x, v: torch.Tensor) -> torch.Tensor:
    """[X 1]^T v for v [n, T]: the sparse product and the intercept row."""
    return torch.cat([x.t() @ v, v.sum(0, keepdim=True)])


def _xw(x, w: torch.Tensor) -> torch.Tensor:
    """[X 1] w for w [d+1, T]."""
    return x @ w[:-1] + w[-1:]


def _hessian_product(x, active: torch.Tensor, c: float, s: torch.Tensor) -> torch.Tensor:
    return s + 2 * c * _xt(x, active * _xw(x, s))


def _newton_direction(x, g, active, c, iters: int = 30, rel: float = 0.1) -> torch.Tensor:
    """Conjugate gradients on H s = -g, every column its own system (stops when all residuals fall to
    `rel` times their start)."""
    s = torch.zeros_like(g)
    r, p = -g, -g.clone()
    rr = (r * r).sum(0)
    goal = (rel ** 2) * rr
    for _ in range(iters):
        going = rr > goal
        if not going.any():
            break
        hp = _hessian_product(x, active, c, p)
        alpha = torch.where(going, rr / (p * hp).sum(0).clamp(min=1e-30), torch.zeros_like(rr))
        s += alpha * p
        r -= alpha * hp
        rr_new = (r * r).sum(0)
        p = r + (rr_new / rr.clamp(min=1e-30)) * p
        rr = rr_new
    return s


def fit_svms_batched(x, y: np.ndarray, c: float = 1.0, tol: float = 1e-5, max_newton: int = 50,
                     start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One linear SVM per column of the multi-hot `y` [n, T] on the scipy CSR matrix `x` [n, d]: weights
    [T, d] and intercepts [T], as `word_scores.fit_svms` (a constant column gets a zero weight and an
    intercept of +-1). `start`: weights and intercepts to start from (a nearby problem's answer)."""
    n, d = x.shape
    coo = x.tocoo()
    used = np.unique(coo.col)  # columns no product has stay exactly 0: solve in the used ones only
    xs = torch.sparse_coo_tensor(np.vstack([coo.row, np.searchsorted(used, coo.col)]), coo.data.astype(np.float32),
                                 (n, len(used))).to_sparse_csr()
    ys = torch.from_numpy(np.where(y > 0, 1.0, -1.0).astype(np.float32))
    w = torch.zeros(len(used) + 1, y.shape[1])
    if start is not None:
        w[:-1] = torch.from_numpy(np.ascontiguousarray(start[0][:, used].T))
        w[-1] = torch.from_numpy(start[1])
    _newton(xs, ys, w, c, tol, max_newton)
    weights = np.zeros((y.shape[1], d), dtype=np.float32)
    weights[:, used] = w[:-1].T.numpy()
    intercepts = w[-1].numpy().copy()
    constant = y.min(0) == y.max(0)
    weights[constant], intercepts[constant] = 0.0, np.where(y[0, constant] > 0, 1.0, -1.0)
    return weights, intercepts.astype(np.float32)


def _newton(x, y: torch.Tensor, w: torch.Tensor, c: float, tol: float, max_newton: int) -> None:
    """Minimise every column's objective in place."""
    # the stopping rule is relative to the gradient at w = 0 (as liblinear's), not at the start: a warm start
    # near the answer must not be asked for more precision than a cold one
    g0 = (2 * c * _xt(x, y)).norm(dim=0)
    z = _xw(x, w)
    g, active = _gradient(w, z, y, x, c)
    for _ in range(max_newton):
        going = g.norm(dim=0) > tol * g0
        if not going.any():
            break
        s = _newton_direction(x, g, active.float(), c) * going
        xs, f = _xw(x, s), _objective(w, z, y, c)
        t = torch.ones(w.shape[1])
        for _ in range(20):  # backtracking on the exact objective, per column (Xs is already known)
            worse = _objective(w + t * s, z + t * xs, y, c) > f + 0.01 * t * (g * s).sum(0)
            if not worse.any():
                break
            t = torch.where(worse, t / 2, t)
        w += t * s
        z = z + t * xs
        g, active = _gradient(w, z, y, x, c)
