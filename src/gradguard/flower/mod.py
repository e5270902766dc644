"""The client side: a Flower mod that defends the update a ClientApp sends back.

The reply carries the client's new weights, not a gradient. The mod turns the update into
gradient units, ``g = (global - local) / scale``, defends ``g`` with the configured gradguard
defense, and sends ``local - scale * (defend(g) - g)``: the same weights wherever the defense
left ``g`` unchanged, bit for bit, and the defended weights elsewhere.

A bad configuration (unknown defense, bad option, a message the mod cannot read) never raises
inside the client and never lets an undefended update out: the mod answers with an error reply
(``ErrorCode.MOD_FAILED_PRECONDITION`` and a one-line reason), as Flower's own mods do.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import ERROR, INFO

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from pydantic import ValidationError
from torch import Tensor, nn

from ..defenses import Defense, DefenseContext
from ..errors import ConfigError, GradguardError, describe_validation_error
from ..grads import param_names
from ..rng import make_generator
from .arrays import floating_names, only_array_record, replace, tensors
from .settings import DefenseSettings

ModelFn = Callable[[Context], nn.Module]
DataFn = Callable[[Context], tuple[Tensor, Tensor]]


class DefenseMod:
    """Apply a gradguard defense to every outgoing train reply: ``ClientApp(mods=[DefenseMod()])``.

    The defense is chosen at call time from the ``gradguard.*`` keys of the run config, then
    the server's train config, then the node config (the client's own, which wins: a client can
    pin its defense, and only it can set ``gradguard.seed``). Without a seed every round's noise
    comes from OS entropy.

    ``model_fn(context)`` builds the app's model: the mod loads the global weights into it for
    defenses that need it (``needs_batch``, e.g. graddefense's risk estimate), and defends only
    its parameters, leaving buffers alone; without it every floating-point array is defended.
    ``data_fn(context)`` returns the client's local samples ``(x, y)`` (the context's ``x``, ``y``
    and ``local_data``) for defenses that need data (root sets, per-sample clipping).
    """

    def __init__(self, model_fn: ModelFn | None = None, data_fn: DataFn | None = None):
        self.model_fn = model_fn
        self.data_fn = data_fn
        self._defenses: dict[tuple[int, str], Defense] = {}

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        train_config = {k: v for record in msg.content.config_records.values() for k, v in record.items()}
        try:  # a bad configuration: reply with an error before training, never raise in the client
            settings = DefenseSettings.from_configs({**context.run_config, **train_config}, context.node_config)
            defense = self._defense(context.node_id, settings)
            _, global_record = only_array_record(msg.content, "DefenseMod")
            round_ = _server_round(train_config)
        except (GradguardError, ValidationError, ValueError, TypeError) as exc:
            return _error_reply(msg, exc)

        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:  # an error reply, never the undefended update
            key, local_record = only_array_record(reply.content, "DefenseMod")
            reply.content[key] = self._defend(defense, settings, context, round_, global_record, local_record)
        except (GradguardError, ValidationError, ValueError, TypeError) as exc:
            return _error_reply(msg, exc)
        log(INFO, "DefenseMod: node %s, round %s: defended the reply with %s", context.node_id, round_,
            settings.describe(defense))
        return reply

    def _defend(self, defense: Defense, settings: DefenseSettings, context: Context, round_: int,
                global_record: ArrayRecord, local_record: ArrayRecord) -> ArrayRecord:
        """``local - scale * (defend(g) - g)`` with ``g = (global - local) / scale``, per defended array."""
        model = self._model(context, global_record)
        names = param_names(model) if model is not None else floating_names(local_record)
        local = tensors(local_record, names)
        grads = [(g - w) / settings.scale for g, w in zip(tensors(global_record, names), local)]
        data = self.data_fn(context) if self.data_fn else None  # a defense that needs it says so
        ctx = DefenseContext(model=model, x=data[0] if data else None, y=data[1] if data else None,
                             generator=_generator(settings.seed, context.node_id, round_), round=round_,
                             client=context.node_id, local_data=data)
        defended = defense.defend(grads, ctx)
        updates = {n: w - settings.scale * (d - g) for n, w, d, g in zip(names, local, defended, grads)}
        return replace(local_record, updates)

    def _defense(self, node_id: int, settings: DefenseSettings) -> Defense:
        """One defense object per (node, settings), so stateful defenses keep their state."""
        cache_key = (node_id, settings.model_dump_json(exclude={"seed"}))
        if cache_key not in self._defenses:
            self._defenses[cache_key] = settings.build()
        return self._defenses[cache_key]

    def _model(self, context: Context, global_record: ArrayRecord) -> nn.Module | None:
        if self.model_fn is None:
            return None
        model = self.model_fn(context)
        state = global_record.to_torch_state_dict()
        missing = [n for n, _ in model.named_parameters() if n not in state]
        if missing:
            raise ConfigError(f"DefenseMod: the global arrays lack the model parameters {missing}")
        model.load_state_dict(state, strict=False)
        return model


def _generator(seed: int | None, node_id: int, round_: int) -> torch.Generator:
    """OS entropy by default; with a client-private seed, a stream derived per (node, round)."""
    return make_generator(seed, "flower-noise", node_id, round_)


def _server_round(train_config: dict) -> int:
    """The round number the server put in the train config (0 when absent)."""
    value = train_config.get("server-round", 0)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"server-round: expected an integer in the train config, got {value!r}")
    return value


def _error_reply(msg: Message, exc: Exception) -> Message:
    """Log the reason on one line and answer ``msg`` with an error reply, as Flower's mods do."""
    text = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
    reason = "DefenseMod: " + " ".join(text.split())
    log(ERROR, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)
