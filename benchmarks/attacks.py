"""Attack benchmark: fidelity (PSNR) of DLG and GIA on undefended LeNet, batched vs one-by-one
wall time, and the engine's per-iteration cost against minimal hand-written loops.

Prints one JSON line. Targets (docs/design.md section 4; results in docs/attacks.md): DLG
mean PSNR >= 30 dB on MNIST and >= 25 dB on CIFAR-10, GIA >= 18 dB on CIFAR-10 (8 images,
batch size 1), batched >= 2.5x faster than one-by-one, engine per-iteration cost <= 1.1x a
minimal loop. Scale down with --images and the --*-iterations flags. Run:

    PYTHONPATH=src python benchmarks/attacks.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gradguard.attacks import Attack, matching
from gradguard.attacks import attack as attack_module
from gradguard.attacks.matching import soft_cross_entropy, total_variation
from gradguard.data import DATASETS, load_dataset, load_npz
from gradguard.grads import batch_gradient
from gradguard.metrics import score_reconstruction
from gradguard.models import build_model, model_for


def lenet(data, seed: int, *, normalise: bool):
    """DLG's LeNet (uniform(-0.5, 0.5) init). DLG fed it unnormalised pixels; with
    ``normalise=True`` the dataset's normalisation is its first layer (gradguard's default)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if normalise:
            return model_for(data, "lenet", dlg_init=True)
        return build_model("lenet", data.image_shape, data.num_classes, dlg_init=True)


def targets(model, data, count: int):
    x, y = data.x_train[:count], data.y_train[:count]
    return x, y, [batch_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(count)]


def attack_psnr(model, data, name: str, count: int, seed: int, **overrides) -> dict:
    """Mean PSNR of ``count`` images at batch size 1, all attacked in one batched run."""
    x, _, observed = targets(model, data, count)
    start = time.perf_counter()
    results = Attack.from_config(name, **overrides).reconstruct_many(
        model, observed, data.image_shape, 1, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    psnr = score_reconstruction(torch.cat([r.images for r in results]), x, matched=False).psnr
    return {"psnr_mean": round(float(psnr.mean()), 2), "psnr": [round(float(p), 1) for p in psnr],
            "seconds": round(seconds, 1), **overrides}


def batched_speedup(model, data, count: int, iterations: int, seed: int) -> dict:
    """Wall time of ``count`` DLG targets one by one over the same targets in one batched run."""
    _, _, observed = targets(model, data, count)
    attack = Attack.from_config("dlg", iterations=iterations)
    shape = data.image_shape
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    for o in observed:
        attack.reconstruct(model, o, shape, 1, generator=gen)
    alone = time.perf_counter() - start
    start = time.perf_counter()
    attack.reconstruct_many(model, observed, shape, 1, generator=torch.Generator().manual_seed(seed))
    together = time.perf_counter() - start
    return {"one_by_one_s": round(alone, 2), "batched_s": round(together, 2), "speedup": round(alone / together, 2),
            "targets": count, "iterations": iterations}


def minimal_dlg(model, observed, shape, iterations: int, seed: int) -> int:
    """DLG as its paper's code writes it: torch.optim.LBFGS on images and soft labels.
    Returns the number of gradient evaluations."""
    gen = torch.Generator().manual_seed(seed)
    dummy = torch.randn(1, *shape, generator=gen).requires_grad_()
    label = torch.randn(1, 10, generator=gen).requires_grad_()
    params = list(model.parameters())
    optimizer = torch.optim.LBFGS([dummy, label], lr=1.0)
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        grads = torch.autograd.grad(soft_cross_entropy(model(dummy), label), params, create_graph=True)
        loss = sum(((g - o) ** 2).sum() for g, o in zip(grads, observed))
        loss.backward()
        return loss

    for _ in range(iterations):
        optimizer.step(closure)
    return evaluations


class CountingMatcher(matching.GradientMatcher):
    """The engine's matcher, counting objective evaluations (L-BFGS stops targets early)."""

    evaluations = 0

    def objective(self, images, labels, rows=None):
        CountingMatcher.evaluations += 1
        return super().objective(images, labels, rows)


def engine_dlg(model, observed, shape, iterations: int, seed: int) -> int:
    CountingMatcher.evaluations = 0
    Attack.from_config("dlg", iterations=iterations).reconstruct(model, observed, shape, 1,
                                                                 generator=torch.Generator().manual_seed(seed))
    return CountingMatcher.evaluations


def minimal_gia(model, observed, label, shape, iterations: int, seed: int, tv: float) -> None:
    """Inverting Gradients as a plain loop: cosine distance + TV, signed Adam, step schedule, box."""
    dummy = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    params = list(model.parameters())
    optimizer = torch.optim.Adam([dummy], lr=0.1)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(f * iterations) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
    observed_norm = sum(o.square().sum() for o in observed).sqrt()
    for _ in range(iterations):
        grads = torch.autograd.grad(F.cross_entropy(model(dummy), label), params, create_graph=True)
        dot = sum((g * o).sum() for g, o in zip(grads, observed))
        norm = sum(g.square().sum() for g in grads).sqrt()
        loss = 1 - dot / (norm * observed_norm) + tv * total_variation(dummy[None])[0]
        (dummy.grad,) = torch.autograd.grad(loss, dummy)
        dummy.grad.sign_()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            dummy.clamp_(0, 1)


def per_iteration_ratio(model, data, iterations: int, repeats: int, seed: int) -> dict:
    """Engine vs minimal loop, same single target and settings, timed alternately: median time
    per gradient evaluation (L-BFGS may stop early, torch's and ours alike, so evaluations are
    counted) and per Adam iteration."""
    x, y, observed = targets(model, data, 1)
    shape = data.image_shape
    gia = Attack.from_config("gia", iterations=iterations * 20, restarts=1)
    adam_iterations = iterations * 20
    runs = {
        "dlg_engine": lambda: engine_dlg(model, observed[0], shape, iterations, seed),
        "dlg_minimal": lambda: minimal_dlg(model, observed[0], shape, iterations, seed),
        "gia_engine": lambda: gia.reconstruct(model, observed[0], shape, 1, y[:1],
                                              generator=torch.Generator().manual_seed(seed)),
        "gia_minimal": lambda: minimal_gia(model, observed[0], y[:1], shape, adam_iterations, seed,
                                           gia.config.tv_weight),
    }
    per_step = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            evaluations = run()
            steps = evaluations if name.startswith("dlg") else adam_iterations
            per_step[name].append((time.perf_counter() - start) / steps)
    med = {name: statistics.median(t) for name, t in per_step.items()}
    return {"dlg_ratio": round(med["dlg_engine"] / med["dlg_minimal"], 3),
            "gia_ratio": round(med["gia_engine"] / med["gia_minimal"], 3),
            "ms_per_evaluation": {k: round(1000 * v, 3) for k, v in med.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("GRADGUARD_DATA", "/work/shared/data")))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--dlg-iterations", type=int, default=300)
    p.add_argument("--dlg-restarts", type=int, default=2)
    p.add_argument("--gia-iterations", type=int, default=4800)
    p.add_argument("--gia-restarts", type=int, default=2)
    p.add_argument("--speedup-iterations", type=int, default=10,
                   help="DLG iterations for the batched/one-by-one timing")
    p.add_argument("--ratio-iterations", type=int, default=5, help="DLG iterations (x20 updates) per timing run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", nargs="+", default=["dlg-mnist", "dlg-cifar", "gia-cifar", "speedup", "ratio"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    attack_module.GradientMatcher = CountingMatcher  # counts evaluations; the engine is otherwise unchanged

    mnist = load_dataset("mnist", args.data_root)
    cifar = load_npz(args.data_root / "cifar10_exact.npz", name="cifar10-exact", num_classes=10,
                     stats=DATASETS["cifar10"].info.stats)
    # DLG as DLG ran it (no normalisation: with CIFAR-10's std of 0.25 inside the model, L-BFGS
    # at lr 1 diverges from most starts); GIA on gradguard's default normalised LeNet.
    models = {"mnist": lenet(mnist, args.seed, normalise=False), "cifar": lenet(cifar, args.seed, normalise=False),
              "cifar-normalised": lenet(cifar, args.seed, normalise=True)}
    parts = {
        "dlg-mnist": lambda: attack_psnr(models["mnist"], mnist, "dlg", args.images, args.seed,
                                         iterations=args.dlg_iterations, restarts=args.dlg_restarts),
        "dlg-cifar": lambda: attack_psnr(models["cifar"], cifar, "dlg", args.images, args.seed,
                                         iterations=args.dlg_iterations, restarts=args.dlg_restarts),
        "gia-cifar": lambda: attack_psnr(models["cifar-normalised"], cifar, "gia", args.images, args.seed,
                                         iterations=args.gia_iterations, restarts=args.gia_restarts),
        "speedup": lambda: batched_speedup(models["mnist"], mnist, args.images, args.speedup_iterations, args.seed),
        "ratio": lambda: per_iteration_ratio(models["mnist"], mnist, args.ratio_iterations, args.repeats, args.seed),
    }
    record = {"threads": args.threads, "images": args.images}
    for name in args.parts:
        record[name] = parts[name]()
    print(json.dumps(record))


if __name__ == "__main__":
    main()
