"""L-BFGS for T independent problems at once, each with its own history, step and stopping.

A sum of independent losses cannot go to ``torch.optim.LBFGS``: its history, curvature
scaling and stopping tests would be shared by all targets. Here every target keeps its own
curvature pairs, and the search direction -H g comes from the compact representation of
the L-BFGS matrix (Byrd, Nocedal and Schnabel 1994; Nocedal and Wright eq. 7.24) with
H0 = gamma I, which equals the two-loop recursion but is a handful of batched matrix products
instead of a Python loop over the history.

Faithful to ``torch.optim.LBFGS`` without line search (what DLG uses): the first step is
min(1, 1/|g|_1) * lr along -g, later steps lr along -H g; a pair (s, y) enters the history
only when y.s > 1e-10; gamma = y.s / y.y of the newest pair; history of ``history`` pairs.
One ``step`` of torch's optimizer is ``max_iter`` updates; stopping tests (gradient, step,
loss change and directional derivative tolerances) are applied after every update.
Deviations: a target that meets a stopping test stops for good (torch would try again at the
next ``step`` call, which for these tests re-evaluates the same point and stops again unless
the tolerance was met only by the loss or step change); a skipped pair (y.s <= 1e-10) still
occupies a slot of the history window, so the window is the last ``history`` updates rather
than the last ``history`` accepted pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

TOLERANCE_GRAD = 1e-7  # torch.optim.LBFGS defaults
TOLERANCE_CHANGE = 1e-9
CURVATURE_EPS = 1e-10


def _dots(pairs: Tensor, v: Tensor) -> Tensor:
    """(T, m) dot products of each stored vector with v (T, n). Written as a row vector times
    the transposed stack: a batched GEMV as ``bmm(pairs, v)`` is about 50x slower on CPU."""
    return torch.bmm(v.unsqueeze(1), pairs.mT).squeeze(1)


class CompactHistory:
    """The last ``size`` curvature pairs of T targets, kept in circular slots."""

    def __init__(self, targets: int, dim: int, size: int, dtype: torch.dtype, device: torch.device):
        new: dict[str, Any] = {"dtype": dtype, "device": device}
        self.size = size
        self.s = torch.zeros(targets, size, dim, **new)
        self.y = torch.zeros(targets, size, dim, **new)
        self.sy = torch.zeros(targets, size, size, **new)  # sy[t, i, j] = s_i . y_j (slot order)
        self.yy = torch.zeros(targets, size, size, **new)
        self.count = torch.zeros(targets, dtype=torch.long, device=device)
        self.gamma = torch.ones(targets, **new)
        self._rows = torch.arange(targets, device=device)

    def push(self, s: Tensor, y: Tensor, accept: Tensor) -> None:
        """Store (s, y) for the targets where ``accept`` is true (skipped ones keep a zero slot)."""
        slot = self.count % self.size
        keep = accept.to(s.dtype)[:, None]
        self.s[self._rows, slot] = s * keep
        self.y[self._rows, slot] = y * keep
        s_dot_y = _dots(self.s, y) * keep  # s_i . y_new
        y_dot_s = _dots(self.y, s) * keep  # y_i . s_new
        y_dot_y = _dots(self.y, y) * keep
        self.sy[self._rows, :, slot] = s_dot_y
        self.sy[self._rows, slot, :] = y_dot_s
        self.yy[self._rows, :, slot] = y_dot_y
        self.yy[self._rows, slot, :] = y_dot_y
        newest = y_dot_y[self._rows, slot]
        self.gamma = torch.where(accept, s_dot_y[self._rows, slot] / newest.clamp_min(1e-30), self.gamma)
        self.count += 1

    def select(self, rows: Tensor) -> None:
        """Keep only the targets in ``rows`` (the others have stopped)."""
        for name in ("s", "y", "sy", "yy", "count", "gamma"):
            setattr(self, name, getattr(self, name)[rows])
        self._rows = torch.arange(len(rows), device=rows.device)

    def inverse_hessian_times(self, g: Tensor) -> Tensor:
        """H g for every target, H the L-BFGS inverse-Hessian approximation."""
        t, m = self.s.shape[:2]
        order = (self.count[:, None] + torch.arange(m, device=g.device)) % m  # oldest slot first
        a_slot = _dots(self.s, g)
        b = _dots(self.y, g).gather(1, order)
        a = a_slot.gather(1, order)
        rows, cols = order[:, :, None].expand(t, m, m), order[:, None, :].expand(t, m, m)
        sy = self.sy.gather(1, rows).gather(2, cols)
        yy = self.yy.gather(1, rows).gather(2, cols)
        diag = sy.diagonal(dim1=1, dim2=2)
        r = sy.triu() + torch.diag_embed((diag == 0).to(g.dtype))  # empty slots: identity rows
        gamma = self.gamma[:, None, None]
        w = torch.linalg.solve_triangular(r, a.unsqueeze(-1), upper=True)
        rhs = diag.unsqueeze(-1) * w + gamma * torch.bmm(yy, w) - gamma * b.unsqueeze(-1)
        top = torch.linalg.solve_triangular(r.mT, rhs, upper=False)
        top_slot = torch.zeros_like(a_slot).scatter(1, order, top.squeeze(-1))
        w_slot = torch.zeros_like(a_slot).scatter(1, order, w.squeeze(-1))
        return (gamma.squeeze(-1) * g + torch.bmm(top_slot.unsqueeze(1), self.s).squeeze(1)
                - gamma.squeeze(-1) * torch.bmm(w_slot.unsqueeze(1), self.y).squeeze(1))


# (z of the targets in rows, rows or None for all) -> (loss, gradient) of those targets
Evaluate = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]


def batched_lbfgs(evaluate: Evaluate, z: Tensor, *, lr: float, iterations: int, max_iter: int, history: int,
                  on_iteration: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Minimise T independent losses from ``z`` (T, n); ``iterations`` torch-style steps of
    ``max_iter`` updates each. Returns the final z. ``on_iteration(i, loss)`` after each step
    with every target's latest loss.

    A target that stops is retired: its final z is stored and it leaves every working tensor,
    so later updates cost only what the running targets need."""
    final, alive = z.clone(), torch.arange(z.shape[0], device=z.device)
    loss, g = evaluate(z, None)
    latest = loss.clone()
    active = g.abs().amax(1) > TOLERANCE_GRAD
    memory = CompactHistory(z.shape[0], z.shape[1], history, z.dtype, z.device)
    direction = -g
    step = (1.0 / g.abs().sum(1)).clamp(max=1.0) * lr
    for update in range(iterations * max_iter):
        if update:
            direction = -memory.inverse_hessian_times(g)
            step = torch.full_like(step, lr)
        active = active & ((g * direction).sum(1) <= -TOLERANCE_CHANGE)
        if not bool(active.all()):
            final[alive[~active]] = z[~active]
            keep = active.nonzero().squeeze(1)
            alive, z, g, loss, direction, step = alive[keep], z[keep], g[keep], loss[keep], direction[keep], step[keep]
            active = active[keep]
            memory.select(keep)
            if not len(alive):
                break
        move = direction * step[:, None]
        z = z + move
        g_previous, loss_previous = g, loss
        loss, g = evaluate(z, None if len(alive) == len(final) else alive)
        latest[alive] = loss
        y = g - g_previous
        memory.push(move, y, (y * move).sum(1) > CURVATURE_EPS)
        active = ((g.abs().amax(1) > TOLERANCE_GRAD) & (move.abs().amax(1) > TOLERANCE_CHANGE)
                  & ((loss - loss_previous).abs() >= TOLERANCE_CHANGE))
        if on_iteration is not None and (update + 1) % max_iter == 0:
            on_iteration((update + 1) // max_iter, latest)
    final[alive] = z
    return final
