"""`--device` and the device of stored cells: the CPU path gives the same numbers bit for bit
whichever way it is asked for, a GPU this machine lacks is one line and exit 2, the store
records each cell's device (old stores read as CPU, keys unchanged), and cells of another kind
of device are reused only when the user asks. Tests marked ``gpu`` run only where CUDA is
present (benchmarks/gpu_check.sh runs them on a lent GPU)."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from gradguard.cli import run
from gradguard.device import resolve_device
from gradguard.errors import ConfigError
from gradguard.experiments.cells import STORE_VERSION, AttackCell, TrainCell, TrainSettings, compute
from gradguard.experiments.plan import build_plan
from gradguard.experiments.profiles import PROFILES
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.store import ResultStore
from gradguard.fl import SimulationConfig, simulate
from gradguard.rng import make_generator

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def _cell(**changes) -> AttackCell:
    config = dict(dataset="mnist-sample", model="lenet", model_options={"dlg_init": True}, attack="dlg",
                  attack_overrides={"iterations": 4, "restarts": 1}, defense="dp-gaussian",
                  defense_options={"sigma": 0.01}, images=2, batch_size=1, seed=3, target_pool=200, aux_images=16)
    return AttackCell(**{**config, **changes})


def test_resolve_device_choices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda:0") if HAS_CUDA else torch.device("cpu"))
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu"), "auto falls back to the CPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda:0"), "auto is the first GPU"
    assert resolve_device("CUDA:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="has 2 GPU.*cuda:0, cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("command", [
    ["attack", "--images", "1"],
    ["train", "--rounds", "1"],
    ["reproduce", "--profile", "tiny"],
    ["sweep", "--profile", "tiny", "--defense", "gc"],
    ["audit", "--model", "lenet", "--dataset", "mnist-sample", "--budget", "tiny"],
])
def test_cuda_without_a_gpu_is_one_line_and_touches_nothing(command, tmp_path, capsys):
    out = tmp_path / "out"
    assert run([*command, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradguard: error: --device cuda: this machine has no CUDA GPU") and err.count("\n") == 1
    assert not out.exists(), "refused before the output folder was made"


def test_attack_default_and_device_cpu_give_the_same_numbers(tmp_path, capsys):
    argv = ["attack", "--attack", "dlg", "--images", "2", "--iterations", "4", "--restarts", "1",
            "--defense", "dp-gaussian", "--defense-opt", "sigma=0.01", "--seed", "3"]
    scores = []
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        assert run([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        record = json.loads((tmp_path / name / "scores.json").read_text())
        assert record["summary"]["device"] == "cpu"
        scores.append([(row["psnr"], row["ssim"]) for row in record["images"]])
    capsys.readouterr()
    assert scores[0] == scores[1], "the default device is the CPU here and changes nothing"


def test_library_attack_without_a_device_equals_device_cpu():
    cell = _cell()
    before = compute(cell, None)  # the call as it was before devices existed
    on_cpu = compute(cell, None, torch.device("cpu"))
    for field in ("psnr", "ssim", "psnr_each", "label_accuracy", "reconstruction"):
        assert before[field] == on_cpu[field], field


def test_training_on_the_cpu_device_is_the_same_run(tiny_mnist):
    config = SimulationConfig(dataset=tiny_mnist, clients=3, rounds=2, batch_size=8, defense="graddefense",
                              reproducible_noise=True)
    plain = simulate(config)
    on_cpu = simulate(config, device=torch.device("cpu"))
    assert [r.accuracy for r in plain.rounds] == [r.accuracy for r in on_cpu.rounds]
    assert all(torch.equal(plain.final_state[k], on_cpu.final_state[k]) for k in plain.final_state)


def test_train_command_default_and_device_cpu_agree(tiny_mnist, tmp_path, capsys):
    argv = ["train", "--dataset", tiny_mnist, "--clients", "3", "--rounds", "2", "--defense", "dp-gaussian",
            "--reproducible-noise"]
    curves = []
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        assert run([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        history = json.loads((tmp_path / name / "history.json").read_text())
        curves.append([(r["accuracy"], r["loss"]) for r in history["rounds"]])
    capsys.readouterr()
    assert curves[0] == curves[1]


def test_store_records_the_device_and_reads_old_stores_as_cpu(tmp_path):
    store = ResultStore(tmp_path / "new")
    key = store.put("attack", {"a": 1}, {"psnr": 1.0}, 0.5, device="cuda:0")
    store.put("attack", {"a": 2}, {"psnr": 2.0}, 0.5)
    assert store.get(key).device == "cuda:0" and store.devices() == {"cpu": 1, "cuda:0": 1}

    old = tmp_path / "old"  # a store written before devices were recorded: no device column
    old.mkdir()
    db = sqlite3.connect(old / ResultStore.FILENAME)
    db.executescript("CREATE TABLE cells (key TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL, "
                     "result TEXT NOT NULL, seconds REAL NOT NULL, finished_at REAL NOT NULL);"
                     "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);")
    cell = _cell()
    db.execute("INSERT INTO cells VALUES (?, 'attack', ?, '{\"psnr\": 3.0}', 1.0, 0.0)",
               (cell.key(), json.dumps(cell.config())))
    db.execute("INSERT INTO meta VALUES ('store_version', ?)", (str(STORE_VERSION),))  # only the column is old
    db.commit()
    db.close()
    reopened = ResultStore(old)
    stored = reopened.get(cell.key())
    assert stored is not None and stored.device == "cpu" and stored.result == {"psnr": 3.0}
    assert reopened.devices() == {"cpu": 1}


def _store_with(tmp_path, device: str) -> ResultStore:
    store = ResultStore(tmp_path)
    cell = TrainCell(dataset="mnist-sample", model="lenet", defense="none", train=TrainSettings(rounds=1), seed=0)
    store.put(cell.kind, cell.config(), {"accuracy": 0.5}, 1.0, device=device)
    return store


def test_cells_of_another_device_are_reused_only_when_asked(tmp_path):
    with pytest.raises(ConfigError, match=r"1 on cuda:0.*computes on cpu.*--reuse-other-device"):
        with CellRunner(_store_with(tmp_path / "a", "cuda:0"), device="cpu"):
            pass
    unentered = CellRunner(_store_with(tmp_path / "b", "cuda:0"))
    with pytest.raises(ConfigError, match="another device"):
        unentered.run(build_plan(PROFILES["tiny"]))  # run() checks too
    with CellRunner(_store_with(tmp_path / "c", "cuda:0"), device="cpu", reuse_other_device=True):
        pass  # no error: the user asked
    with CellRunner(_store_with(tmp_path / "d", "cpu"), device="cpu"):
        pass


def test_reproduce_into_a_folder_of_gpu_cells_is_one_line(tmp_path, capsys):
    _store_with(tmp_path, "cuda:0").close()
    assert run(["reproduce", "--profile", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "computed on another device (1 on cuda:0)" in err and "--reuse-other-device" in err
    assert err.count("\n") == 1


@gpu
def test_attack_cell_runs_on_the_gpu_and_scores_on_the_cpu():
    cell = _cell(defense="graddefense", defense_options={})
    device = resolve_device("cuda")
    result = compute(cell, None, device)
    assert len(result["psnr_each"]) == 2 and all(value == value for value in result["psnr_each"])
    again = compute(cell, None, device)
    assert again["reconstruction"] == result["reconstruction"], "a GPU cell is reproducible on its GPU"


@gpu
def test_training_runs_on_the_gpu(tiny_mnist):
    config = SimulationConfig(dataset=tiny_mnist, clients=3, rounds=2, batch_size=8, defense="graddefense",
                              reproducible_noise=True)
    history = simulate(config, device=resolve_device("cuda"))
    assert history.final_accuracy is not None and history.final_accuracy > 0
    assert next(iter(history.final_state.values())).device.type == "cuda"


@gpu
def test_generators_are_made_on_the_gpu():
    generator = make_generator(0, "noise", device="cuda")
    assert generator.device.type == "cuda"
    assert torch.randn(3, generator=generator, device=generator.device).device.type == "cuda"
