"""The ClientApp: local SGD on this node's share; the gradguard mod defends the reply."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from gradguard.flower import DefenseMod

from . import task

torch.set_num_threads(1)

app = ClientApp(mods=[DefenseMod(model_fn=lambda context: task.build_model(), data_fn=task.local_data)])


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = task.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = task.local_data(context)
    config = msg.content["config"]  # the server sends the round's hyperparameters
    loss = task.train(model, x, y, lr=float(config["lr"]), steps=int(config["local-steps"]),
                      batch_size=int(config["batch-size"]),
                      generator=task.batch_generator(context, int(config["server-round"])))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train-loss": loss, "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)
