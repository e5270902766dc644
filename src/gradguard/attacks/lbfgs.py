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

Step control (``line_search=True``, what the ``dlg`` preset uses; not in DLG's code): each
update's usual step is halved per target until the loss is finite and no larger than the
largest of the target's last 10 losses plus an Armijo margin, and the best iterate is kept.
Fixed-step L-BFGS diverges from some starts, and whether it does depends on the loss's scale;
docs/attacks.md (deviations) has the measurements.
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

    def reset(self, rows: Tensor) -> None:
        """Forget the history of the targets in ``rows`` (their next direction is -g)."""
        for name in ("s", "y", "sy", "yy", "count"):
            getattr(self, name)[rows] = 0
        self.gamma[rows] = 1.0

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


ARMIJO_C1 = 1e-4  # sufficient decrease: f(z + t d) <= reference + c1 t g.d (Nocedal and Wright's usual value)
MAX_BACKTRACKS = 10  # halvings of the step before a target is declared stuck (t down to 2^-10 of its first try)
NONMONOTONE = 10  # the reference is the largest loss of the last 10 iterates (Grippo, Lampariello, Lucidi 1986)


def batched_lbfgs(evaluate: Evaluate, z: Tensor, *, lr: float, iterations: int, max_iter: int, history: int,
                  on_iteration: Callable[[int, Tensor], None] | None = None, line_search: bool = False) -> Tensor:
    """Minimise T independent losses from ``z`` (T, n); ``iterations`` torch-style steps of
    ``max_iter`` updates each. Returns the final z (with ``line_search``, the best iterate).
    ``on_iteration(i, loss)`` after each step with every target's latest loss.

    A target that stops is retired: its final z is stored and it leaves every working tensor,
    so later updates cost only what the running targets need.

    ``line_search=True`` (step control; ``torch.optim.LBFGS``, which DLG used, has none by
    default) tries each update's usual step (min(1, 1/|g|_1) lr first, lr after) and halves it,
    per target, until the loss is finite and below the largest of the target's last 10 losses
    by the Armijo margin 1e-4 t g.d (a nonmonotone line search: L-BFGS keeps its unit steps,
    which may raise the loss for a while, but a step that throws the iterate into a saturated
    region, where fixed-step L-BFGS diverges, is never taken); only the targets still searching
    are evaluated again. A target that finds no such step in 10 halvings forgets its history and
    tries the steepest descent (with the first step's size); stuck even then, it stops. Since
    the loss may rise, each target's best iterate is kept and returned."""
    final, alive = z.clone(), torch.arange(z.shape[0], device=z.device)
    loss, g = evaluate(z, None)
    latest = loss.clone()
    best, best_loss = z.clone(), loss.clone()  # per target, over every iterate (line search only)
    window = loss[:, None].repeat(1, NONMONOTONE)  # the last losses, for the nonmonotone reference
    active = g.abs().amax(1) > TOLERANCE_GRAD
    memory = CompactHistory(z.shape[0], z.shape[1], history, z.dtype, z.device)
    direction = -g
    step = (1.0 / g.abs().sum(1)).clamp(max=1.0) * lr
    fresh = torch.ones_like(loss, dtype=torch.bool)  # history just (re)started: the first step's size
    for update in range(iterations * max_iter):
        if update:
            direction = -memory.inverse_hessian_times(g)
            step = torch.where(fresh, (1.0 / g.abs().sum(1)).clamp(max=1.0) * lr, torch.full_like(step, lr))
        slope = (g * direction).sum(1)
        active = active & (slope <= -TOLERANCE_CHANGE)
        if not bool(active.all()):
            final[alive[~active]] = (best if line_search else z)[~active]
            keep = active.nonzero().squeeze(1)
            alive, z, g, loss, direction, step = alive[keep], z[keep], g[keep], loss[keep], direction[keep], step[keep]
            slope, active, window, fresh = slope[keep], active[keep], window[keep], fresh[keep]
            best, best_loss = best[keep], best_loss[keep]
            memory.select(keep)
            if not len(alive):
                break
        g_previous, loss_previous = g, loss
        if line_search:
            reference = window.amax(1)
            move, loss, g, found = _backtrack(evaluate, z, loss, g, reference, direction, step, slope, alive,
                                              len(final))
            window = torch.cat([window[:, 1:], loss[:, None]], 1)
        else:
            move = direction * step[:, None]
            loss, g = evaluate(z + move, None if len(alive) == len(final) else alive)
        z = z + move
        if line_search:
            better = loss < best_loss
            best[better], best_loss[better] = z[better], loss[better]
        latest[alive] = loss
        y = g - g_previous
        memory.push(move, y, (y * move).sum(1) > CURVATURE_EPS)
        moved = (move.abs().amax(1) > TOLERANCE_CHANGE) & ((loss - loss_previous).abs() >= TOLERANCE_CHANGE)
        if line_search:
            # no acceptable step, or no progress, along the quasi-Newton direction: forget the
            # history and try the steepest descent once more; a target stuck even then stops
            stalled = ~(found & moved)
            active = active & ~(stalled & fresh)
            fresh = stalled & ~fresh
            if bool(fresh.any()):
                memory.reset(fresh.nonzero().squeeze(1))
        else:
            active, fresh = active & moved, torch.zeros_like(fresh)
        active = active & (g.abs().amax(1) > TOLERANCE_GRAD)
        if on_iteration is not None and (update + 1) % max_iter == 0:
            on_iteration((update + 1) // max_iter, latest)
    final[alive] = best if line_search else z
    return final


def _backtrack(evaluate: Evaluate, z: Tensor, loss: Tensor, g: Tensor, reference: Tensor, direction: Tensor,
               step: Tensor, slope: Tensor, alive: Tensor, total: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backtracking for every running target at once: (move, new loss, new gradient, found).
    A target that finds no acceptable step keeps its point, loss and gradient (zero move: its
    history pair is skipped and the caller retires it)."""
    move = torch.zeros_like(z)
    new_loss, new_g = loss.clone(), g.clone()
    found = torch.zeros_like(loss, dtype=torch.bool)
    trial = step.clone()
    searching = torch.arange(len(z), device=z.device)
    for _ in range(MAX_BACKTRACKS + 1):
        candidate = direction[searching] * trial[searching, None]
        rows = None if len(searching) == total else alive[searching]
        values, grads = evaluate(z[searching] + candidate, rows)
        margin = ARMIJO_C1 * trial[searching] * slope[searching]
        ok = torch.isfinite(values) & (values <= reference[searching] + margin)
        done = searching[ok]
        move[done], new_loss[done], new_g[done], found[done] = candidate[ok], values[ok], grads[ok], True
        searching = searching[~ok]
        if not len(searching):
            break
        trial[searching] = trial[searching] * 0.5
    return move, new_loss, new_g, found
