"""Named attacks that follow their papers; docs/attacks.md gives each default's source.

- ``dlg``: Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019, and its code: squared
  L2 gradient distance, ``torch.optim.LBFGS(lr=1)`` (default max_iter 20, history 100)
  stepped 300 times, soft labels learned with the images, randn start, no TV. One deviation:
  step control (``lbfgs_line_search=True``, a nonmonotone backtracking line search keeping the
  best iterate) where DLG's L-BFGS takes every step as it is: with the fixed step, L-BFGS
  diverges from some starts (4 of 8 exact CIFAR-10 images in benchmarks/breaching_compare.py);
  with step control all 8 are recovered. ``lbfgs_line_search=False`` is DLG's optimiser exactly.
- ``gia``: Geiping, Bauermeister, Droege, Moeller, "Inverting Gradients", NeurIPS 2020, and
  its inversefed code: 1 - cosine similarity over all gradient tensors, Adam lr 0.1 on signed
  gradients, lr x0.1 at 3/8, 5/8, 7/8 of 4,800 iterations, images boxed to [0, 1], randn
  start, total variation 0.1 (inversefed's DEFAULT_CONFIG; pixel space here), restarts scored
  by the matching loss, labels recovered as in iDLG at batch size 1 and given otherwise.

Attacks that know the defense (the muted attack that breaks Soteria among them) are adaptive
attacks: ``gradguard.attacks.adaptive``.
"""

from __future__ import annotations

from .config import AttackConfig

DLG = AttackConfig(distance="l2", optimizer="lbfgs", lr=1.0, iterations=300, lbfgs_max_iter=20, lbfgs_history=100,
                   lbfgs_line_search=True, labels="learned", init="randn", tv_weight=0.0)

GIA = AttackConfig(distance="cosine", optimizer="adam", lr=0.1, signed=True, iterations=4800,
                   milestones=[3 / 8, 5 / 8, 7 / 8], gamma=0.1, boxed=True, init="randn", tv_weight=0.1,
                   restarts=2, labels="idlg-or-given")

ATTACKS: dict[str, AttackConfig] = {
    "dlg": DLG,
    "gia": GIA,
}
