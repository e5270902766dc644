"""DefenseMod answers a bad configuration with a Flower error reply, never an exception inside
the client and never the undefended update."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed; install the extra: pip install 'gradguard[flower]'")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402

from gradguard.flower import DefenseMod  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages built outside a running app need the identity a ServerApp process would set
    (test-only use of a Flower internal, as in test_flower.py)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _message(**config) -> Message:
    state = {"w": torch.ones(3, 4), "b": torch.zeros(4)}
    content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1, **config})})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context(node_config=None) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config or {}, state=RecordDict(), run_config={})


class _Client:
    """A ClientApp stand-in that records whether it trained."""

    def __init__(self):
        self.calls = 0

    def __call__(self, msg, context):
        self.calls += 1
        local = {"w": torch.full((3, 4), 0.5), "b": torch.full((4,), 0.1)}
        content = RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": 5})})
        return Message(content=content, reply_to=msg)


@pytest.mark.parametrize("config, node_config, reason", [
    ({"gradguard.defense": "nope"}, {}, "unknown name 'nope'"),
    ({"gradguard.defense": "dp-gaussian", "gradguard.dp-gaussian.sigma": "abc"}, {}, "sigma"),
    ({"gradguard.defense": "dp-gaussian", "gradguard.dp-gaussian.sigmaa": 1.0}, {}, "sigmaa"),
    ({"gradguard.scale": -1.0}, {}, "scale"),
    ({"gradguard.bogus": 1}, {}, "bogus"),
    ({"gradguard.seed": 3}, {}, "gradguard.seed"),
    ({}, {"gradguard.defense": "graddefense", "gradguard.graddefense.chosen": 20}, "chosen"),
])
def test_bad_configuration_yields_an_error_reply_before_training(config, node_config, reason):
    client = _Client()
    msg = _message(**config)
    reply = DefenseMod()(msg, _context(node_config), client)
    assert reply.has_error()
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert reason in reply.error.reason and "\n" not in reply.error.reason
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert client.calls == 0  # nothing trained, nothing to leak


def test_a_defense_that_fails_on_the_reply_yields_an_error_reply_not_the_update():
    client = _Client()
    reply = DefenseMod()(_message(**{"gradguard.defense": "soteria"}), _context(), client)
    assert client.calls == 1
    assert reply.has_error() and "soteria" in reply.error.reason


def test_a_defended_reply_is_logged_on_one_line(caplog):
    with caplog.at_level("INFO", logger="flwr"):
        reply = DefenseMod()(_message(**{"gradguard.defense": "dp-gaussian", "gradguard.dp-gaussian.sigma": 0.01}),
                             _context(), _Client())
    assert not reply.has_error()
    lines = [r.getMessage() for r in caplog.records if "DefenseMod" in r.getMessage()]
    assert len(lines) == 1 and "dp-gaussian(sigma=0.01)" in lines[0] and "\n" not in lines[0]
