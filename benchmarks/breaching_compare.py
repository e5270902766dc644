"""gradguard's DLG and Inverting Gradients against breaching 0.1.2's, on the same problem.

Same 8 exact CIFAR-10 training images (``cifar10_exact.npz``: images 0..7), same DLG-initialised
LeNet weights, same observed gradients (batch size 1), same starting images (and, for DLG, the
same starting soft labels), same iteration counts, one torch thread, the tools interleaved image
by image. Each tool runs its own preset: DLG is L-BFGS (gradguard's ``dlg``; breaching's
``deepleakage``, 300 ``torch.optim.LBFGS`` steps), Inverting Gradients is signed Adam with a
step schedule, a box and TV (gradguard's ``gia``; breaching's ``invertinggradients``) with the
true label (gradguard recovers it exactly at batch size 1). Both are scored by the same PSNR.

DLG runs on DLG's own setting, the LeNet fed unnormalised pixels; Inverting Gradients on the
LeNet whose first layer normalises them. Breaching is given the whole model and no data
statistics, so it optimises the same pixel-space images gradguard does.

    PYTHONPATH=src python benchmarks/breaching_compare.py --data-root ../shared/data

prints one JSON line: per attack and tool, seconds per reconstruction and per-image PSNR
(gradguard batched, all 8 images in one run, and one by one; breaching one by one), how many
images each recovered (PSNR >= 20 dB) and the speed ratios. Breaching is an optional benchmark
dependency (``pip install 'gradguard[bench]'``); without it the benchmark prints one line and
exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from gradguard.attacks import Attack
from gradguard.data import DATASETS, load_npz
from gradguard.grads import batch_gradient
from gradguard.metrics import score_reconstruction
from gradguard.models import build_model, model_for

SUCCESS_DB = 20.0  # a recovered image; a diverged run ends near 5 dB


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("GRADGUARD_DATA", "../shared/data")))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--attacks", nargs="+", default=["dlg", "ig"], choices=["dlg", "ig"])
    p.add_argument("--dlg-iterations", type=int, default=300, help="L-BFGS steps (each up to 20 updates)")
    p.add_argument("--ig-iterations", type=int, default=1200, help="Adam iterations")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats (seconds: the median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-one-by-one", action="store_true", help="skip gradguard one image at a time")
    return p.parse_args()


def lenet(data, seed: int, *, normalise: bool):
    """DLG's LeNet (uniform(-0.5, 0.5) init), with or without the normalising first layer."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if normalise:
            return model_for(data, "lenet", dlg_init=True)
        return build_model("lenet", data.image_shape, data.num_classes, dlg_init=True)


def starts(count: int, seed: int, shape, classes: int, learned: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each image's starting point as gradguard's engine draws it: image, then (when labels are
    learned, DLG) soft-label logits, target after target, from one generator."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        image = torch.randn(1, *shape, generator=generator)
        out.append((image, torch.randn(1, classes, generator=generator) if learned else torch.zeros(1, classes)))
    return out


class Breaching:
    """breaching's optimisation attacker on our model, observed gradient and starting point."""

    def __init__(self, model, attack: str, iterations: int, shape, classes: int):
        import breaching  # noqa: F401  (checked by the caller)
        from omegaconf import OmegaConf

        overrides = [f"optim.max_iterations={iterations}", f"optim.callback={iterations + 1}"]
        with contextlib.redirect_stdout(sys.stderr):  # breaching prints what it loads
            config = breaching.get_attack_config(attack, overrides=overrides)
        self.attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), config,
                                                         dict(dtype=torch.float, device=torch.device("cpu")))
        # no mean/std: breaching optimises pixels, as gradguard does (normalisation is in the model)
        self.metadata = OmegaConf.create(dict(shape=list(shape), modality="vision", classes=classes,
                                              task="classification"))
        self.parameters = [p.detach() for p in model.parameters()]
        self.joint = config.attack_type == "joint-optimization"

    def reconstruct(self, gradient, label, start: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        payload = [dict(parameters=self.parameters, buffers=None, metadata=self.metadata)]
        shared = [dict(gradients=[g.detach() for g in gradient], buffers=None,
                       metadata=dict(num_data_points=1, labels=None if self.joint else label,
                                     local_hyperparams=None))]
        def initialise(shape):  # breaching's draws: a label template, the image, the label logits
            value = (start[0] if len(shape) > 2 else start[1]).clone().reshape(shape)
            value.requires_grad = True
            value.grad = torch.zeros_like(value)
            return value

        self.attacker._initialize_data = initialise
        result, _ = self.attacker.reconstruct(payload, shared, {}, dryrun=False)
        return result["data"].detach()


def psnr(images: torch.Tensor, truth: torch.Tensor) -> list[float]:
    return [round(float(p), 1) for p in score_reconstruction(images, truth, matched=False).psnr]


def main() -> None:
    args = parse()
    try:
        import breaching  # noqa: F401
    except ImportError:
        print("breaching_compare: breaching is not installed (pip install 'gradguard[bench]', breaching==0.1.2); "
              "skipped")
        return
    torch.set_num_threads(1)
    cifar = load_npz(args.data_root / "cifar10_exact.npz", name="cifar10-exact", num_classes=10,
                     stats=DATASETS["cifar10"].info.stats)
    count = args.images
    x, y = cifar.x_train[:count], cifar.y_train[:count]
    shape, classes = tuple(cifar.image_shape), cifar.num_classes
    setups = {
        "dlg": dict(model=lenet(cifar, args.seed, normalise=False), preset="dlg", breaching="deepleakage",
                    overrides={"iterations": args.dlg_iterations}, iterations=args.dlg_iterations),
        "ig": dict(model=lenet(cifar, args.seed, normalise=True), preset="gia", breaching="invertinggradients",
                   overrides={"iterations": args.ig_iterations, "restarts": 1}, iterations=args.ig_iterations),
    }
    result: dict = {"images": count, "threads": torch.get_num_threads(), "success_db": SUCCESS_DB}
    for name in args.attacks:
        setup = setups[name]
        model = setup["model"]
        observed = [batch_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(count)]
        attack = Attack.from_config(setup["preset"], **setup["overrides"])
        tool = Breaching(model, setup["breaching"], setup["iterations"], shape, classes)
        learned = attack.config.labels == "learned"
        begin = starts(count, args.seed, shape, classes, learned)
        seconds: dict[str, list[float]] = {"gradguard_batched": [], "gradguard_one_by_one": [], "breaching": []}
        images: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            runs = _runs(attack, tool, model, observed, y, begin, learned, shape, classes, args.seed)
            if args.no_one_by_one:
                del runs["gradguard_one_by_one"]
            for key, run in runs.items():
                images[key], per_image = run()
                seconds[key].append(per_image)
        entry: dict = {"iterations": setup["iterations"]}
        for key, values in seconds.items():
            if not values:
                continue
            scores = psnr(images[key], x)
            entry[key] = {"s_per_image": round(statistics.median(values), 2), "psnr": scores,
                          "psnr_mean": round(sum(scores) / len(scores), 1),
                          "recovered": sum(s >= SUCCESS_DB for s in scores)}
        entry["breaching_vs_batched"] = round(entry["breaching"]["s_per_image"]
                                              / entry["gradguard_batched"]["s_per_image"], 2)
        if "gradguard_one_by_one" in entry:
            entry["breaching_vs_one_by_one"] = round(entry["breaching"]["s_per_image"]
                                                     / entry["gradguard_one_by_one"]["s_per_image"], 2)
        result[name] = entry
    print(json.dumps(result))


def _runs(attack, tool, model, observed, y, begin, learned: bool, shape, classes: int, seed: int) -> dict:
    """A reconstruction of every image per tool, each returning (images, seconds per image)."""
    count = len(observed)
    return {
        "gradguard_batched": lambda: _timed(lambda: torch.cat([r.images for r in attack.reconstruct_many(
            model, observed, shape, 1, generator=torch.Generator().manual_seed(seed))]), count),
        "gradguard_one_by_one": lambda: _one_by_one(lambda i: attack.reconstruct(
            model, observed[i], shape, 1, generator=_generator_at(seed, i, shape, classes, learned)).images, count),
        "breaching": lambda: _one_by_one(lambda i: tool.reconstruct(observed[i], y[i:i + 1], begin[i]), count),
    }


def _timed(run, count: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = run()
    return out, (time.perf_counter() - start) / count


def _one_by_one(run, count: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = torch.cat([run(i) for i in range(count)])
    return out, (time.perf_counter() - start) / count


def _generator_at(seed: int, index: int, shape, classes: int, learned: bool) -> torch.Generator:
    """A generator whose next draws are image ``index``'s start in the batched run (the draws of
    the images before it skipped), so one-by-one and batched runs start from the same points."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(index):
        torch.randn(1, *shape, generator=generator)
        if learned:
            torch.randn(1, classes, generator=generator)
    return generator


if __name__ == "__main__":
    main()
