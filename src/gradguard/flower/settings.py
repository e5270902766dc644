"""The defense configuration that travels in Flower configs, as flat ``gradguard.*`` keys.

Flower configs are flat mappings of scalars (and lists of scalars), so the settings are
flattened to ``gradguard.defense``, ``gradguard.scale`` and one ``gradguard.options.<name>``
key per defense option. ``gradguard.seed`` is the one key that must never travel: a seed the
server knows lets it replay the noise, so it is read only from the client's own node config.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, PositiveFloat

from ..defenses import Defense
from ..errors import ConfigError

PREFIX = "gradguard."
OPTIONS_PREFIX = PREFIX + "options."
SEED_KEY = PREFIX + "seed"


class DefenseSettings(BaseModel):
    """Which defense a client applies and how the server compensates for it.

    ``scale`` maps a reply's update to gradient units: the mod defends
    ``(global - local) / scale`` (for FedAvg, ``scale`` = learning rate x local steps, so the
    defended quantity is the mean local gradient the defense's ``sigma`` is calibrated for).
    ``seed`` (client side only) makes the noise reproducible per (client, round).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    defense: str = "none"
    options: dict[str, Any] = {}
    scale: PositiveFloat = 1.0
    seed: int | None = None

    def build(self) -> Defense:
        """The configured defense; unknown names and bad options fail here with a clear message."""
        return Defense.from_config(self.defense, **self.options)

    def to_config(self) -> dict[str, Any]:
        """Flat ``gradguard.*`` keys for a Flower ConfigRecord (never the seed)."""
        flat: dict[str, Any] = {PREFIX + "defense": self.defense, PREFIX + "scale": float(self.scale)}
        flat.update({OPTIONS_PREFIX + k: _config_value(k, v) for k, v in self.options.items()})
        return flat

    @classmethod
    def from_configs(cls, shared: Mapping[str, Any], private: Mapping[str, Any]) -> "DefenseSettings":
        """Settings from the ``gradguard.*`` keys of ``shared`` configs (run or train config,
        known to the server) overridden by the client's ``private`` node config."""
        if SEED_KEY in shared:
            raise ConfigError(f"{SEED_KEY}: a noise seed the server knows defeats the defense; "
                              "set it per client in the node config (flower-supernode --node-config)")
        shared = {k: v for k, v in shared.items() if k.startswith(PREFIX)}
        if private.get(PREFIX + "defense", shared.get(PREFIX + "defense")) != shared.get(PREFIX + "defense"):
            # The client pinned another defense: the server's options were meant for its own.
            shared = {k: v for k, v in shared.items() if not k.startswith(OPTIONS_PREFIX)}
        merged = {k: v for k, v in {**shared, **private}.items() if k.startswith(PREFIX)}
        fields: dict[str, Any] = {"options": {}}
        for key, value in merged.items():
            if key.startswith(OPTIONS_PREFIX):
                fields["options"][key.removeprefix(OPTIONS_PREFIX)] = value
            else:
                fields[key.removeprefix(PREFIX)] = value
        return cls(**fields)


def _config_value(name: str, value: Any) -> Any:
    """Flower configs hold scalars and lists of scalars; tuples become lists."""
    if isinstance(value, tuple):
        value = list(value)
    if value is None or isinstance(value, dict):
        raise ConfigError(f"options.{name}: {value!r} cannot travel in a Flower config; use a scalar or a list of scalars")
    return value
