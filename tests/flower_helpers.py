"""Test-only pieces for tests/test_flower.py, in an importable module so that the simulation's
worker processes (which import it when they unpickle the ClientApp) register them too.

Recording goes to files in the folder named by GRADGUARD_TEST_RECORD_DIR: an out-of-band
channel for the test only, never a message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from gradguard_mnist import client_app as example_client
from gradguard_mnist import task
from pydantic import PositiveFloat

from gradguard.defenses import Compensator, Defense, DefenseConfig, register
from gradguard.flower import DefenseMod

RECORD_DIR = "GRADGUARD_TEST_RECORD_DIR"
FAIL_AT = "GRADGUARD_TEST_FAIL_AT"  # "partition:round" whose training raises


class HalvingCompensator(Compensator):
    """Halves the aggregate, so that its effect is easy to check exactly."""

    def compensate(self, aggregate, weights, *, scale=1.0):
        return [0.5 * a for a in aggregate]


class MaskNoiseConfig(DefenseConfig):
    sigma: PositiveFloat = 0.01
    fraction: float = 0.25


@register
class MaskNoise(Defense):
    """Gaussian noise on a random mask of elements drawn from the context's generator; the
    mask is written to the record folder (when set) so a test can check where noise went."""

    name = "test-mask"
    Config = MaskNoiseConfig

    def defend(self, grads, context):
        masks = [torch.rand(g.shape, generator=context.generator) < self.config.fraction for g in grads]
        out = [g + m * self.config.sigma * torch.randn(g.shape, generator=context.generator)
               for g, m in zip(grads, masks)]
        if os.environ.get(RECORD_DIR):
            torch.save(masks, Path(os.environ[RECORD_DIR]) / f"mask-{context.client}-{context.round}.pt")
        return out

    def compensator(self):
        return HalvingCompensator()


def _recorder(kind: str):
    """A mod that saves the reply's arrays (and the global arrays) per (node, round)."""

    def record(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        folder = os.environ.get(RECORD_DIR)
        if folder and not reply.has_error():
            tag = f"{context.node_id}-{int(msg.content['config']['server-round'])}"
            torch.save({"partition": int(context.node_config["partition-id"]),
                        "global": msg.content["arrays"].to_torch_state_dict(),
                        "reply": reply.content["arrays"].to_torch_state_dict()},
                       Path(folder) / f"{kind}-{tag}.pt")
        return reply

    return record


# Outermost mod sees the defended reply, innermost the plain one.
client_app = ClientApp(mods=[_recorder("defended"),
                             DefenseMod(model_fn=lambda context: task.build_model(), data_fn=task.local_data),
                             _recorder("plain")])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    fail = os.environ.get(FAIL_AT, "")
    if fail == f"{context.node_config['partition-id']}:{msg.content['config']['server-round']}":
        raise RuntimeError("this client fails on purpose")
    return example_client.train(msg, context)
