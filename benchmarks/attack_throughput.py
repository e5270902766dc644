"""Attack throughput: reconstructions per second for DLG and GIA on LeNet and ResNet-18, on the
CPU and, when one is present, on the GPU.

One reconstruction is one image attacked from its own gradient (batch 1, no defense) with the
preset's optimiser (DLG: L-BFGS; GIA: Adam on the cosine distance with total variation), one
restart, for the preset's full count of iterations; ``--targets`` images are attacked together in
one vectorised optimisation (``Attack.reconstruct_many``), as a reproduction's attack cell does.
LeNet (28x28x1) and ResNet-18 (32x32x3), random pixels (throughput does not depend on the content).
Each case is timed over ``--iterations`` iterations (``--cpu-iterations`` on the CPU, where DLG on
ResNet-18 takes about 10 s per iteration on one core) and reported as target-iterations per second
and as reconstructions per second at the preset's iteration count (linear in the iterations: every
iteration costs the same). On a GPU each case first runs once to warm up (kernels, allocator).

Usage: OMP_NUM_THREADS=1 python benchmarks/attack_throughput.py [--devices cpu cuda] [--iterations 20]
           [--cpu-iterations 2] [--targets 2]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gradguard.attacks import Attack  # noqa: E402
from gradguard.device import resolve_device  # noqa: E402
from gradguard.grads import batch_gradient  # noqa: E402
from gradguard.models import build_model  # noqa: E402
from gradguard.rng import make_generator, seeded_global_rng  # noqa: E402

MODELS = {"lenet": ((1, 28, 28), {"dlg_init": True}), "resnet18": ((3, 32, 32), {})}


def case(model_name: str, attack_name: str, device: torch.device, targets: int, iterations: int) -> dict:
    shape, options = MODELS[model_name]
    with seeded_global_rng(0, "throughput-model"):
        model = build_model(model_name, shape, 10, **options).to(device)
    generator = make_generator(0, "throughput-data", device=device)
    x = torch.rand(targets, *shape, generator=generator, device=device)
    y = torch.randint(0, 10, (targets,), generator=generator, device=device)
    observed = [batch_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(targets)]
    attack = Attack.from_config(attack_name, iterations=iterations, restarts=1)

    def once() -> None:
        attack.reconstruct_many(model, observed, shape, 1, labels=[y[i:i + 1] for i in range(targets)],
                                generator=make_generator(0, "throughput-attack", device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        once()  # warm-up
    start = time.perf_counter()
    once()
    seconds = time.perf_counter() - start
    rate = targets * iterations / seconds
    preset = Attack.from_config(attack_name).config.iterations
    return {"model": model_name, "attack": attack_name, "device": str(device), "targets": targets,
            "iterations": iterations, "seconds": round(seconds, 3), "target_iterations_per_s": round(rate, 3),
            "preset_iterations": preset, "reconstructions_per_s": round(rate / preset, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="devices to measure; cuda is skipped "
                        "when absent")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--attacks", nargs="+", default=["dlg", "gia"])
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20, help="iterations timed on a GPU")
    parser.add_argument("--cpu-iterations", type=int, default=2, help="iterations timed on the CPU")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    devices, skipped = [], []
    for name in args.devices:
        if name.startswith("cuda") and not torch.cuda.is_available():
            skipped.append(name)
            continue
        devices.append(resolve_device(name))
    results = [case(m, a, d, args.targets, args.cpu_iterations if d.type == "cpu" else args.iterations)
               for d in devices for m in args.models for a in args.attacks]
    speedup = {}
    for r in results:
        if r["device"] != "cpu":
            cpu = next((c for c in results if c["device"] == "cpu" and c["model"] == r["model"]
                        and c["attack"] == r["attack"]), None)
            if cpu:
                speedup[f"{r['model']}/{r['attack']}"] = round(r["target_iterations_per_s"]
                                                               / cpu["target_iterations_per_s"], 1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(json.dumps({"benchmark": "attack_throughput", "cpus": os.cpu_count(),
                      "torch_threads": torch.get_num_threads(), "gpu": gpu, "skipped_devices": skipped,
                      "results": results, "gpu_over_cpu": speedup}))


if __name__ == "__main__":
    main()
