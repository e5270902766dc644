"""The Flower integration: the client mod, the strategy wrapper, an in-process simulation and a
real SuperLink/SuperNode deployment on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed; install the extra: pip install 'gradguard[flower]'")

from flwr.app import (ArrayRecord, ConfigRecord, Context, Error, Message, MessageType,  # noqa: E402
                      MetricRecord, RecordDict)
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from gradguard.errors import ConfigError  # noqa: E402
from gradguard.flower import DefendedStrategy, DefenseMod, DefenseSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"
for path in (EXAMPLE, Path(__file__).parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import flower_helpers  # noqa: E402
from gradguard_mnist import server_app as example_server  # noqa: E402
from gradguard_mnist import task  # noqa: E402

FLWR_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- helpers: messages by hand

def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 5, generator=generator), "b": torch.randn(5, generator=generator),
            "count": torch.tensor([3], dtype=torch.int64)}


def _train_message(state, **config) -> Message:
    content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1, **config})})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context(node_config=None, run_config=None) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config or {}, state=RecordDict(), run_config=run_config or {})


def _replying(local_state, num_examples=10):
    def call_next(msg, context):
        content = RecordDict({"arrays": ArrayRecord(local_state), "metrics": MetricRecord({"num-examples": num_examples})})
        return Message(content=content, reply_to=msg)
    return call_next


def _arrays(msg: Message) -> dict[str, torch.Tensor]:
    return msg.content["arrays"].to_torch_state_dict()


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages built outside a running app need the identity a ServerApp process would set.
    (Test-only use of a Flower internal; the library itself only builds replies.)"""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class _Grid:
    """Just enough of a Grid for configure_train: the connected node ids."""

    def get_node_ids(self):
        return [1, 2, 3]


# ---------------------------------------------------------------- settings

def test_settings_travel_as_flat_keys_and_are_validated():
    settings = DefenseSettings(defense="test-mask", options={"sigma": 0.5, "fraction": 0.1}, scale=2.0)
    flat = settings.to_config()
    assert flat == {"gradguard.defense": "test-mask", "gradguard.scale": 2.0,
                    "gradguard.options.sigma": 0.5, "gradguard.options.fraction": 0.1}
    assert DefenseSettings.from_configs({**flat, "lr": 0.1}, {}) == settings
    # the client's node config wins over what the server sent
    assert DefenseSettings.from_configs(flat, {"gradguard.defense": "none"}).defense == "none"
    with pytest.raises(ConfigError, match="gradguard.seed"):
        DefenseSettings.from_configs({"gradguard.seed": 3}, {})
    with pytest.raises(ValueError, match="scale"):
        DefenseSettings(scale=0.0)
    with pytest.raises(ConfigError, match="unknown name"):
        DefenseSettings(defense="nope").build()


# ---------------------------------------------------------------- the mod

def test_mod_without_defense_returns_the_local_weights_bit_for_bit():
    global_, local = _state(0), _state(1)
    mod = DefenseMod()
    reply = mod(_train_message(global_, **{"gradguard.defense": "none", "gradguard.scale": 0.3}), _context(), _replying(local))
    assert all(torch.equal(_arrays(reply)[k], local[k]) for k in local)


def test_mod_changes_only_the_elements_the_defense_perturbs(tmp_path, monkeypatch):
    monkeypatch.setenv(flower_helpers.RECORD_DIR, str(tmp_path))
    global_, local = _state(0), _state(1)
    msg = _train_message(global_, **DefenseSettings(defense="test-mask", options={"sigma": 1.0}, scale=0.5).to_config())
    reply = DefenseMod()(msg, _context({"gradguard.seed": 1}), _replying(local))
    masks = torch.load(tmp_path / "mask-7-1.pt")  # floating arrays in record order: w, b
    assert any(mask.any() for mask in masks)
    for name, mask in zip(["w", "b"], masks, strict=True):
        assert torch.equal(_arrays(reply)[name] != local[name], mask)
    assert torch.equal(_arrays(reply)["count"], local["count"])  # integer arrays are never defended


def test_mod_reads_its_configuration_at_call_time_and_leaves_evaluation_alone():
    global_, local = _state(0), _state(1)
    mod = DefenseMod()
    noisy = {"gradguard.defense": "test-mask", "gradguard.options.sigma": 1.0}
    first = mod(_train_message(global_, **{"gradguard.defense": "none"}), _context(), _replying(local))
    second = mod(_train_message(global_, **noisy), _context({"gradguard.seed": 1}), _replying(local))
    pinned = mod(_train_message(global_, **noisy), _context(node_config={"gradguard.defense": "none"}), _replying(local))
    assert torch.equal(_arrays(first)["w"], local["w"]) and torch.equal(_arrays(pinned)["w"], local["w"])
    assert not torch.equal(_arrays(second)["w"], local["w"])
    evaluate = Message(content=RecordDict({"arrays": ArrayRecord(global_), "config": ConfigRecord(noisy)}),
                       dst_node_id=7, message_type=MessageType.EVALUATE)
    assert torch.equal(_arrays(mod(evaluate, _context(), _replying(local)))["w"], local["w"])


def test_mod_noise_is_reproducible_only_with_a_client_seed():
    global_, local = _state(0), _state(1)
    config = {"gradguard.defense": "test-mask", "gradguard.options.sigma": 1.0}
    seeded = [_arrays(DefenseMod()(_train_message(global_, **config), _context({"gradguard.seed": 5}), _replying(local)))["w"]
              for _ in range(2)]
    fresh = [_arrays(DefenseMod()(_train_message(global_, **config), _context(), _replying(local)))["w"] for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    assert not torch.equal(fresh[0], fresh[1])


def test_mod_with_model_fn_defends_parameters_and_leaves_buffers(tmp_path, monkeypatch):
    monkeypatch.setenv(flower_helpers.RECORD_DIR, str(tmp_path))
    model = task.build_model()
    global_ = {k: v.clone() for k, v in model.state_dict().items()}
    local = {k: v + 0.01 for k, v in global_.items()}
    msg = _train_message(global_, **{"gradguard.defense": "test-mask", "gradguard.options.fraction": 1.0})
    reply = _arrays(DefenseMod(model_fn=lambda context: task.build_model())(msg, _context(), _replying(local)))
    assert torch.equal(reply["normalize.mean"], local["normalize.mean"])  # buffers: not defended
    assert torch.equal(reply["normalize.std"], local["normalize.std"])
    assert (reply["fc.weight"] != local["fc.weight"]).all()  # every parameter element perturbed


# ---------------------------------------------------------------- the strategy

def _replies(strategy, global_, locals_, num_examples, fail_index=None):
    (train_msg,) = list(strategy.configure_train(1, ArrayRecord(global_), ConfigRecord(), _Grid()))[:1]
    replies = []
    for i, (local, n) in enumerate(zip(locals_, num_examples)):
        if i == fail_index:
            replies.append(Message(Error(code=0, reason="client failed"), reply_to=train_msg))
        else:
            replies.append(_replying(local, n)(train_msg, None))
    return train_msg, replies


def test_strategy_sends_public_settings_and_compensates_over_the_replies_that_arrived():
    flower_helpers.COMPENSATED_WEIGHTS.clear()
    strategy = DefendedStrategy(FedAvg(min_available_nodes=1), "test-mask", scale=0.5, sigma=0.2, keys=["w", "b"])
    global_ = _state(0)
    locals_ = [_state(i) for i in (1, 2, 3)]
    train_msg, replies = _replies(strategy, global_, locals_, [10, 30, 99], fail_index=2)
    config = train_msg.content["config"]
    assert config["gradguard.defense"] == "test-mask" and config["gradguard.options.sigma"] == 0.2
    assert not any("seed" in key for key in config)

    arrays, _ = strategy.aggregate_train(1, replies)
    (weights,) = flower_helpers.COMPENSATED_WEIGHTS
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75]))  # 2 arrived, by num-examples
    for k in ("w", "b"):  # global - scale * compensate(G), G = sum w_i (global - local_i) / scale
        pseudo = (0.25 * (global_[k] - locals_[0][k]) + 0.75 * (global_[k] - locals_[1][k])) / 0.5
        torch.testing.assert_close(arrays.to_torch_state_dict()[k], global_[k] - 0.5 * (0.5 * pseudo))
    assert torch.equal(arrays.to_torch_state_dict()["count"], global_["count"])  # not in keys


def test_strategy_survives_an_all_zero_update_and_a_round_without_replies():
    strategy = DefendedStrategy(FedAvg(min_available_nodes=1), "test-mask", keys=["w", "b"])
    global_ = _state(0)
    _, replies = _replies(strategy, global_, [global_, global_], [5, 5])
    arrays, _ = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], global_["w"])
    _, failed = _replies(strategy, global_, [global_], [5], fail_index=0)
    assert strategy.aggregate_train(1, failed) == (None, None)


def test_strategy_delegates_to_the_wrapped_strategy():
    inner = FedAvg(fraction_evaluate=0.0, weighted_by_key="n")
    strategy = DefendedStrategy(inner)
    assert strategy.weighted_by_key == "n" and strategy.compensator is None
    assert list(strategy.configure_evaluate(1, ArrayRecord(_state(0)), ConfigRecord(), _Grid())) == []


# ---------------------------------------------------------------- the simulation engine

@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """3 clients, 2 rounds of the example app with the test-mask defense in Flower's simulation
    engine; partition 2 fails in round 2. Replies are recorded before and after the mod."""
    from flwr.simulation import run_simulation

    record = tmp_path_factory.mktemp("flower-sim")
    results = {}
    config = {**task.defaults(), "num-server-rounds": 2, "gradguard.defense": "test-mask",
              "gradguard.options.sigma": 0.01}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        results["result"] = example_server.federate(grid, config)

    flower_helpers.COMPENSATED_WEIGHTS.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(flower_helpers.RECORD_DIR, str(record))
        patch.setenv(flower_helpers.FAIL_AT, "2:2")
        patch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
        patch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(EXAMPLE), str(Path(__file__).parent),
                                                    os.environ.get("PYTHONPATH", "")]))
        run_simulation(server_app=server, client_app=flower_helpers.client_app, num_supernodes=3,
                       backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}})
    return results["result"], record, list(flower_helpers.COMPENSATED_WEIGHTS)


def test_simulation_finishes_and_improves_held_out_accuracy(simulation):
    result, _, _ = simulation
    accuracy = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    assert sorted(accuracy) == [0, 1, 2]
    assert accuracy[2] > accuracy[0] + 0.05


def test_simulation_defended_updates_differ_only_where_the_defense_perturbed(simulation):
    _, record, _ = simulation
    defended = sorted(record.glob("defended-*.pt"))
    assert len(defended) == 5  # 3 replies in round 1, 2 in round 2 (one client failed)
    for path in defended:
        tag = path.name.removeprefix("defended-")
        after, before = torch.load(path), torch.load(record / f"plain-{tag}")
        masks = torch.load(record / f"mask-{tag}")
        names = [n for n, _ in task.build_model().named_parameters()]  # what the mod defends, in order
        for name, mask in zip(names, masks, strict=True):
            assert torch.equal(after["reply"][name] != before["reply"][name], mask)
        assert torch.equal(after["reply"]["normalize.std"], before["reply"]["normalize.std"])


def test_simulation_compensates_with_the_replies_that_arrived(simulation):
    _, _, weights = simulation
    assert [len(w) for w in weights] == [3, 2]
    assert all(torch.isclose(w.sum(), torch.tensor(1.0)) for w in weights)


# ---------------------------------------------------------------- a real deployment on loopback

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Flower detaches its SuperExec and app processes into new sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(processes: list[subprocess.Popen]) -> None:
    """Stop the processes we started and everything they started, by pid."""
    below = [d for p in processes for d in _descendants(p.pid)]
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in below:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _started_with(argument: str) -> list[int]:
    """Pids of processes whose command line contains ``argument`` (a path unique to one test)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _kill_tree(pid: int) -> None:
    for target in [*_descendants(pid), pid]:
        try:
            os.kill(target, 9)
        except ProcessLookupError:
            pass


def _flower_env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{FLWR_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), **extra}


@pytest.mark.slow
def test_flwr_run_runs_the_example_app_in_the_local_simulation(tmp_path):
    """`flwr run <example>` as the README says: Flower starts a background SuperLink in simulation
    mode (on free ports here), which the test stops by pid afterwards."""
    home = tmp_path / "flwr-home"
    env = _flower_env(home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
                      FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()))
    result_file = tmp_path / "result.json"
    try:
        run = subprocess.run([str(FLWR_BIN / "flwr"), "run", str(EXAMPLE), "--stream", "--run-config",
                              f'num-server-rounds=1 result-file="{result_file}"'],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        accuracy = json.loads(result_file.read_text())["accuracy"]
        assert accuracy["1"] > accuracy["0"]
    finally:
        for pid in _started_with(str(home)):  # the background SuperLink logs into our FLWR_HOME
            _kill_tree(pid)


@pytest.mark.slow
def test_loopback_deployment_runs_the_example_app(tmp_path):
    """One SuperLink and two SuperNodes as processes on 127.0.0.1, the example app run on them
    with `flwr run` for 2 rounds with the defense on; every process is stopped by pid."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    link, nodes = _free_port(), [_free_port(), _free_port()]
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    env = _flower_env(home)
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as log:
            processes.append(subprocess.Popen([str(FLWR_BIN / args[0]), *args[1:]], env=env, cwd=tmp_path,
                                              stdout=log, stderr=subprocess.STDOUT))
        return processes[-1]

    try:
        superlink = start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link))
        _wait_for_port(link, superlink)
        for i, port in enumerate(nodes):
            supernode = start(f"supernode-{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                              "--host", "127.0.0.1", "--port", str(port),
                              "--node-config", f"partition-id={i} num-partitions=2")
            _wait_for_port(port, supernode)
        result_file = tmp_path / "result.json"
        run = subprocess.run(
            [str(FLWR_BIN / "flwr"), "run", str(EXAMPLE), "loopback", "--stream", "--run-config",
             f'num-server-rounds=2 local-steps=5 gradguard.defense="none" result-file="{result_file}"'],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        accuracy = json.loads(result_file.read_text())["accuracy"]
        assert sorted(accuracy) == ["0", "1", "2"]
        assert accuracy["2"] > accuracy["0"]
    finally:
        _stop(processes)
    assert all(p.poll() is not None for p in processes)
