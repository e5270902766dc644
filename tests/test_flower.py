"""The Flower integration: the client mod, the strategy wrapper, an in-process simulation and a
real SuperLink/SuperNode deployment on loopback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed; install the extra: pip install 'gradguard[flower]'")

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
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
        content = RecordDict({"arrays": ArrayRecord(local_state),
                              "metrics": MetricRecord({"num-examples": num_examples})})
        return Message(content=content, reply_to=msg)
    return call_next


def _arrays(msg: Message) -> dict[str, torch.Tensor]:
    return msg.content["arrays"].to_torch_state_dict()


pytestmark = pytest.mark.usefixtures("flower_task_identity")  # messages built outside a running app


class _Grid:
    """Just enough of a Grid for configure_train: the connected node ids."""

    def get_node_ids(self):
        return [1, 2, 3]


# ---------------------------------------------------------------- settings

def test_settings_travel_as_flat_keys_and_are_validated():
    settings = DefenseSettings(defense="test-mask", options={"sigma": 0.5, "fraction": 0.1}, scale=2.0)
    flat = settings.to_config()
    assert flat == {"gradguard.defense": "test-mask", "gradguard.scale": 2.0,
                    "gradguard.test-mask.sigma": 0.5, "gradguard.test-mask.fraction": 0.1}
    # other keys, and the options of defenses not chosen, are ignored
    assert DefenseSettings.from_configs({**flat, "lr": 0.1, "gradguard.graddefense.sigma": 9.0}, {}) == settings
    # the client's node config wins over what the server sent
    assert DefenseSettings.from_configs(flat, {"gradguard.defense": "none"}) == DefenseSettings(scale=2.0)
    with pytest.raises(ConfigError, match="gradguard.seed"):
        DefenseSettings.from_configs({"gradguard.seed": 3}, {})
    with pytest.raises(ValueError, match="scale"):
        DefenseSettings(scale=0.0)
    with pytest.raises(ValueError, match="sigmaa"):
        DefenseSettings.from_configs({"gradguard.defense": "test-mask", "gradguard.test-mask.sigmaa": 1}, {}).build()
    with pytest.raises(ConfigError, match="unknown name"):
        DefenseSettings(defense="nope").build()


# ---------------------------------------------------------------- the mod

def test_mod_without_defense_returns_the_local_weights_bit_for_bit():
    global_, local = _state(0), _state(1)
    mod = DefenseMod()
    reply = mod(_train_message(global_, **{"gradguard.defense": "none", "gradguard.scale": 0.3}), _context(),
                _replying(local))
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
    noisy = {"gradguard.defense": "test-mask", "gradguard.test-mask.sigma": 1.0}
    first = mod(_train_message(global_, **{"gradguard.defense": "none"}), _context(), _replying(local))
    second = mod(_train_message(global_, **noisy), _context({"gradguard.seed": 1}), _replying(local))
    pinned = mod(_train_message(global_, **noisy), _context(node_config={"gradguard.defense": "none"}),
                 _replying(local))
    assert torch.equal(_arrays(first)["w"], local["w"]) and torch.equal(_arrays(pinned)["w"], local["w"])
    assert not torch.equal(_arrays(second)["w"], local["w"])
    evaluate = Message(content=RecordDict({"arrays": ArrayRecord(global_), "config": ConfigRecord(noisy)}),
                       dst_node_id=7, message_type=MessageType.EVALUATE)
    assert torch.equal(_arrays(mod(evaluate, _context(), _replying(local)))["w"], local["w"])


def test_mod_noise_is_reproducible_only_with_a_client_seed():
    global_, local = _state(0), _state(1)
    # fraction 1: every element gets noise, so two unseeded draws cannot agree by leaving w clean
    config = {"gradguard.defense": "test-mask", "gradguard.test-mask.sigma": 1.0, "gradguard.test-mask.fraction": 1.0}
    def defended(context):
        return _arrays(DefenseMod()(_train_message(global_, **config), context, _replying(local)))["w"]

    seeded = [defended(_context({"gradguard.seed": 5})) for _ in range(2)]
    fresh = [defended(_context()) for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    assert not torch.equal(fresh[0], fresh[1])


def test_mod_with_model_fn_defends_parameters_and_leaves_buffers(tmp_path, monkeypatch):
    monkeypatch.setenv(flower_helpers.RECORD_DIR, str(tmp_path))
    model = task.build_model()
    global_ = {k: v.clone() for k, v in model.state_dict().items()}
    local = {k: v + 0.01 for k, v in global_.items()}
    # Seeded, and sigma 1: with OS-entropy noise at sigma 0.01, about 1 run in 150 drew a value
    # below half a float32 ulp of some weight, so that element came back unchanged.
    msg = _train_message(global_, **{"gradguard.defense": "test-mask", "gradguard.test-mask.fraction": 1.0,
                                     "gradguard.test-mask.sigma": 1.0})
    reply = _arrays(DefenseMod(model_fn=lambda context: task.build_model())(msg, _context({"gradguard.seed": 3}),
                                                                            _replying(local)))
    assert torch.equal(reply["normalize.mean"], local["normalize.mean"])  # buffers: not defended
    assert torch.equal(reply["normalize.std"], local["normalize.std"])
    masks = torch.load(tmp_path / "mask-7-1.pt")  # what the defense was given: the parameters, in order
    assert [m.shape for m in masks] == [p.shape for p in model.parameters()] and all(m.all() for m in masks)
    assert (reply["fc.weight"] != local["fc.weight"]).all()  # every parameter element perturbed


def _changed_runs(changed: torch.Tensor) -> list[tuple[int, int]]:
    """The maximal runs [start, end) of True in a flat boolean vector."""
    edges = torch.diff(torch.cat([torch.tensor([0]), changed.int(), torch.tensor([0])]))
    return list(zip(torch.nonzero(edges == 1).flatten().tolist(), torch.nonzero(edges == -1).flatten().tolist()))


def _whole_slices(changed: torch.Tensor, bounds: torch.Tensor) -> int:
    """How many slices are changed; fails if a slice is changed only in part.

    An element of a noisy slice can come back unchanged when its noise is below half a float32
    ulp of the weight (weight - (noise) rounds to the weight): at sigma 0.01 on LeNet's weights
    about 1e-6 of the noisy elements, which over the simulation's 5 replies failed a strict
    all-elements check in about 1 run in 40. A chosen slice must therefore have at least 99%
    of its elements changed; an unchosen one gets exactly zero noise and must be unchanged."""
    parts = [changed[start:end] for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    noisy = [part.float().mean() >= 0.99 for part in parts]
    assert all(n or not part.any() for n, part in zip(noisy, parts)), \
        f"a slice is perturbed only in part: changed fractions {[round(float(p.float().mean()), 4) for p in parts]}"
    return sum(bool(n) for n in noisy)


def test_mod_with_graddefense_changes_exactly_k_whole_slices():
    from gradguard.defenses.slicing import equal_bounds

    global_, local = _state(0), _state(1)
    settings = DefenseSettings(defense="graddefense", scale=0.5,
                               options={"sigma": 0.5, "slices": 6, "chosen": 2, "sensitivity": "uniform"})
    for seed in range(3):
        reply = _arrays(DefenseMod()(_train_message(global_, **settings.to_config()),
                                     _context({"gradguard.seed": seed}), _replying(local)))
        changed = torch.cat([(reply[n] != local[n]).flatten() for n in ("w", "b")])
        # uniform sensitivity: equal-size slices over w and b (20 + 5 elements), as the defense cuts them
        assert _whole_slices(changed, equal_bounds(20 + 5, 6)) == 2


def test_mod_with_graddefense_uses_the_model_and_the_local_data():
    """Risk-balanced slices need the model (at the global weights) and a root set from the data."""
    model = task.build_model()
    global_ = {k: v.clone() for k, v in model.state_dict().items()}
    local = {k: v - 0.01 if k.startswith(("body", "fc")) else v for k, v in global_.items()}
    x, y = task.partition(0, 10)
    settings = DefenseSettings(defense="graddefense", scale=0.1, options={"sigma": 0.1, "slices": 10, "chosen": 3,
                                                                          "sensitivity": "hutchinson"})
    mod = DefenseMod(model_fn=lambda context: task.build_model(), data_fn=lambda context: (x, y))
    reply = _arrays(mod(_train_message(global_, **settings.to_config()), _context({"gradguard.seed": 0}),
                        _replying(local)))
    names = [n for n, _ in model.named_parameters()]
    changed = torch.cat([(reply[n] != local[n]).flatten() for n in names])
    assert 0 < len(_changed_runs(changed)) <= 3  # k chosen contiguous slices (neighbours merge)
    assert 0 < changed.float().mean() < 1
    # without the model the defense cannot run: an error reply, never the undefended weights
    failed = DefenseMod()(_train_message(global_, **settings.to_config()), _context(), _replying(local))
    assert failed.has_error() and "needs context.model" in failed.error.reason


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
    strategy = DefendedStrategy(FedAvg(min_available_nodes=1), "test-mask", scale=0.5, sigma=0.2, keys=["w", "b"])
    global_ = _state(0)
    locals_ = [_state(i) for i in (1, 2, 3)]
    train_msg, replies = _replies(strategy, global_, locals_, [10, 30, 99], fail_index=2)
    config = train_msg.content["config"]
    assert config["gradguard.defense"] == "test-mask" and config["gradguard.test-mask.sigma"] == 0.2
    assert not any("seed" in key for key in config)

    arrays, _ = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(strategy.compensated_weights[1], torch.tensor([0.25, 0.75]))  # 2 arrived
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


def test_strategy_applies_graddefense_compensation_and_survives_zero_updates():
    strategy = DefendedStrategy(FedAvg(min_available_nodes=1), "graddefense", scale=0.5, keys=["w", "b"],
                                sigma=0.5, slices=5, chosen=2, sensitivity="uniform", compensation="shrink")
    global_ = _state(0)
    locals_ = [_state(1), _state(2)]
    _, replies = _replies(strategy, global_, locals_, [10, 30])
    arrays = strategy.aggregate_train(1, replies)[0].to_torch_state_dict()
    weights = torch.tensor([0.25, 0.75])
    pseudo = [(0.25 * (global_[k] - locals_[0][k]) + 0.75 * (global_[k] - locals_[1][k])) / 0.5 for k in ("w", "b")]
    compensated = strategy.compensator.compensate(pseudo, weights)
    assert not torch.allclose(compensated[0], pseudo[0])  # compensation did something
    for k, c in zip(("w", "b"), compensated):
        torch.testing.assert_close(arrays[k], global_[k] - 0.5 * c)
    _, zero = _replies(strategy, global_, [global_, global_], [10, 30])
    arrays = strategy.aggregate_train(2, zero)[0].to_torch_state_dict()
    assert all(torch.equal(arrays[k], global_[k]) for k in ("w", "b"))


def test_strategy_delegates_to_the_wrapped_strategy():
    inner = FedAvg(fraction_evaluate=0.0, weighted_by_key="n")
    strategy = DefendedStrategy(inner)
    assert strategy.weighted_by_key == "n" and strategy.compensator is None
    assert list(strategy.configure_evaluate(1, ArrayRecord(_state(0)), ConfigRecord(), _Grid())) == []


# ---------------------------------------------------------------- the simulation engine

SIMULATION_SLICES, SIMULATION_CHOSEN = 10, 4


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """3 clients, 2 rounds of the example app with graddefense (uniform risk, so a test can
    recompute the slice bounds) in Flower's simulation engine; partition 2 fails in round 2.
    Replies are recorded before and after the mod by test-only mods, into files."""
    from flwr.simulation import run_simulation

    record = tmp_path_factory.mktemp("flower-sim")
    config = {**task.defaults(), "num-server-rounds": 2, "gradguard.defense": "graddefense",
              "gradguard.graddefense.sensitivity": "uniform", "gradguard.graddefense.slices": SIMULATION_SLICES,
              "gradguard.graddefense.chosen": SIMULATION_CHOSEN, "gradguard.graddefense.sigma": 0.01,
              "gradguard.graddefense.compensation": "shrink"}
    strategy = example_server.make_strategy(config)
    results = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        results["result"] = example_server.federate(grid, config, strategy)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(flower_helpers.RECORD_DIR, str(record))
        patch.setenv(flower_helpers.FAIL_AT, "2:2")
        patch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
        # Ray gives a new worker process 60 s to start and register, then fails its actor: on a
        # loaded machine importing Ray, Flower and torch can take that long.
        patch.setenv("RAY_worker_register_timeout_seconds", "600")
        patch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(EXAMPLE), str(Path(__file__).parent),
                                                    os.environ.get("PYTHONPATH", "")]))
        run_simulation(server_app=server, client_app=flower_helpers.client_app, num_supernodes=3,
                       backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}})
    return results["result"], record, strategy


def test_simulation_finishes_and_improves_held_out_accuracy(simulation):
    result, _, _ = simulation
    accuracy = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    assert sorted(accuracy) == [0, 1, 2]
    assert accuracy[2] > accuracy[0] + 0.05


def test_simulation_defended_updates_differ_only_in_the_chosen_slices(simulation):
    from gradguard.defenses.slicing import equal_bounds

    _, record, _ = simulation
    model = task.build_model()
    names = [n for n, _ in model.named_parameters()]  # what the mod defends, in order
    sizes = torch.tensor([p.numel() for p in model.parameters()])
    bounds = equal_bounds(int(sizes.sum()), SIMULATION_SLICES)  # uniform sensitivity: equal-size slices
    defended = sorted(record.glob("defended-*.pt"))
    assert len(defended) == 5  # 3 replies in round 1, 2 in round 2 (one client failed)
    for path in defended:
        after, before = torch.load(path), torch.load(record / path.name.replace("defended-", "plain-"))
        changed = torch.cat([(after["reply"][n] != before["reply"][n]).flatten() for n in names])
        assert _whole_slices(changed, bounds) == SIMULATION_CHOSEN
        assert torch.equal(after["reply"]["normalize.std"], before["reply"]["normalize.std"])


def test_simulation_compensates_with_the_replies_that_arrived(simulation):
    _, _, strategy = simulation
    assert {r: len(w) for r, w in strategy.compensated_weights.items()} == {1: 3, 2: 2}
    assert all(torch.isclose(w.sum(), torch.tensor(1.0)) for w in strategy.compensated_weights.values())


# ---------------------------------------------------------------- a real deployment on loopback

# Every wait below polls a readiness condition under a generous, bounded deadline: on a loaded
# 2-core machine a Flower process takes tens of seconds just to import.
STARTUP_DEADLINE_S = 300
RUN_DEADLINE_S = 900
PORT_ATTEMPTS = 3


def _reserve_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel reports free: bound all at once (so no two are the
    same), then released for the Flower processes to bind. Another program may still take one
    in between: :func:`_start_ready` notices (our process exits, or someone else listens there)
    and the caller starts again on fresh ports."""
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on 127.0.0.1:``port``; None where /proc/net/tcp is absent."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    local = f"0100007F:{port:04X}"  # 127.0.0.1, as the kernel writes it (little-endian hex)
    return {fields[9] for fields in map(str.split, table) if fields[1] == local and fields[3] == "0A"}


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]") in inodes:
                return True
        except OSError:
            continue
    return False


def _ready(process: subprocess.Popen, port: int) -> bool:
    """``process`` itself listens on 127.0.0.1:``port`` (not another program that took the port)
    and its HTTP server answers /health (SuperLink and SuperNode both serve it)."""
    inodes = _listening_inodes(port)
    if inodes is not None and not _holds_socket(process.pid, inodes):
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def _start_ready(process: subprocess.Popen, port: int, log: Path) -> bool:
    """Wait until ``process`` is ready on ``port`` (True) or has exited (False: most likely the
    port was taken after :func:`_reserve_ports` released it); fail after the deadline."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if _ready(process, port):
            return True
        time.sleep(0.5)
    pytest.fail(f"{process.args[0]} not ready on 127.0.0.1:{port} after {STARTUP_DEADLINE_S} s:\n"
                f"{log.read_text()[-3000:]}")


def _run_flwr(args: list[str], env: dict[str, str], cwd: Path, watched: list[subprocess.Popen],
              logs: Path) -> subprocess.CompletedProcess:
    """Run ``flwr`` to the end while the processes it needs stay alive: if one dies, fail at once
    with the logs instead of waiting for a run that can no longer finish."""
    run = subprocess.Popen([str(FLWR_BIN / "flwr"), *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + RUN_DEADLINE_S
    while True:
        try:
            output, _ = run.communicate(timeout=1)
            return subprocess.CompletedProcess(run.args, run.returncode, output, "")
        except subprocess.TimeoutExpired:
            dead = [p.args[0] for p in watched if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                run.kill()
                output, _ = run.communicate()
                tails = "".join(f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(logs.glob("*.log")))
                pytest.fail(f"flwr run: {dead or 'deadline'}; its output:\n{output[-3000:]}{tails}")


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


def _flower_env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{FLWR_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), **extra}


def _deploy(tmp_path: Path, env: dict[str, str], nodes: int, superlink_args: list[str],
            node_config: str = "") -> tuple[list[subprocess.Popen], Path, int]:
    """Start a SuperLink and ``nodes`` SuperNodes on 127.0.0.1, each ready (listening itself and
    answering /health) before the next starts, and name the SuperLink as the default connection
    in FLWR_HOME/config.toml. A process that exits while starting (its port was taken) makes
    the whole deployment start again on fresh ports, at most PORT_ATTEMPTS times."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    for _attempt in range(PORT_ATTEMPTS):
        processes: list[subprocess.Popen] = []

        def start(name: str, port: int, *args: str, processes: list[subprocess.Popen] = processes) -> bool:
            with open(logs / f"{name}.log", "w") as log:
                processes.append(subprocess.Popen([str(FLWR_BIN / args[0]), *args[1:]], env=env, cwd=tmp_path,
                                                  stdout=log, stderr=subprocess.STDOUT))
            return _start_ready(processes[-1], port, logs / f"{name}.log")

        link, *ports = _reserve_ports(1 + nodes)
        try:
            started = start("superlink", link, "flower-superlink", "--insecure", "--host", "127.0.0.1",
                            "--port", str(link), *superlink_args)
            for i, port in enumerate(ports):
                config = f"partition-id={i} num-partitions={nodes} {node_config}".strip()
                started = started and start(f"supernode-{i}", port, "flower-supernode", "--insecure", "--superlink",
                                            f"127.0.0.1:{link}", "--host", "127.0.0.1", "--port", str(port),
                                            "--node-config", config)
        except BaseException:
            _stop(processes)
            raise
        if started:
            (Path(env["FLWR_HOME"]) / "config.toml").write_text(
                f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
            return processes, logs, link
        _stop(processes)
    pytest.fail(f"the deployment did not start in {PORT_ATTEMPTS} attempts:\n"
                + "".join(f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(logs.glob("*.log"))))


@pytest.mark.slow
def test_flwr_run_runs_the_example_app_in_the_local_simulation(tmp_path):
    """`flwr run <example>` in Flower's simulation runtime (1 round). The test starts the
    simulation SuperLink itself and waits until it is ready: `flwr run` would start one too,
    but gives it a fixed 15 s (flwr.cli.constant.LOCAL_SUPERLINK_STARTUP_TIMEOUT, probed with
    0.4 s requests), which a loaded machine exceeds. sigma 0.01 (noise from OS entropy, as
    deployed): one round gains 0.043 +- 0.006 accuracy over 15 seeds, so the check cannot fail
    by chance (at sigma 0.1 it gained 0.053 +- 0.026 and could)."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = _flower_env(home)
    processes, logs, _ = _deploy(tmp_path, env, nodes=0, superlink_args=["--simulation"])
    result_file = tmp_path / "result.json"
    try:
        run = _run_flwr(["run", str(EXAMPLE), "--stream", "--run-config",
                         f'num-server-rounds=1 gradguard.graddefense.sigma=0.01 result-file="{result_file}"'],
                        env, tmp_path, processes, logs)
        assert run.returncode == 0, run.stdout[-3000:]
        accuracy = json.loads(result_file.read_text())["accuracy"]
        assert accuracy["1"] > accuracy["0"]
    finally:
        _stop(processes)
    assert all(p.poll() is not None for p in processes)


@pytest.mark.slow
def test_loopback_deployment_runs_the_example_app(tmp_path):
    """One SuperLink and two SuperNodes as processes on 127.0.0.1, the example app run on them
    with `flwr run` for 2 rounds with graddefense on (sigma 0.01: 2 rounds gain 0.071 +- 0.009
    accuracy over 10 seeds, so the check cannot fail by chance); every process is stopped by pid."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = _flower_env(home)
    processes, logs, _ = _deploy(tmp_path, env, nodes=2, superlink_args=[])
    result_file = tmp_path / "result.json"
    try:
        overrides = f'num-server-rounds=2 local-steps=5 gradguard.graddefense.sigma=0.01 result-file="{result_file}"'
        run = _run_flwr(["run", str(EXAMPLE), "test", "--stream", "--run-config", overrides],
                        env, tmp_path, processes, logs)
        assert run.returncode == 0, run.stdout[-3000:]
        accuracy = json.loads(result_file.read_text())["accuracy"]
        assert sorted(accuracy) == ["0", "1", "2"]
        assert accuracy["2"] > accuracy["0"]
    finally:
        _stop(processes)
    assert all(p.poll() is not None for p in processes)
