"""The defense configuration that travels in Flower configs, as flat ``gradguard.*`` keys.

Flower configs are flat mappings of scalars (and lists of scalars), so the settings are
flattened to ``gradguard.defense`` (the name), ``gradguard.scale`` and one
``gradguard.<defense>.<option>`` key per option of that defense. Options are namespaced by
defense so that one config can hold several defenses' options and switching the defense is one
override (options of the defenses not chosen are ignored). ``gradguard.seed`` is the one key
that must never travel: a seed the server knows lets it replay the noise, so it is read only
from the client's own node config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveFloat

from ..defenses import Defense
from ..errors import ConfigError, config_errors

PREFIX = "gradguard."
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

    def __init__(self, **data: Any):
        with config_errors("DefenseSettings"):  # one line naming the gradguard.* key, not pydantic's report
            super().__init__(**data)

    def build(self) -> Defense:
        """The configured defense; unknown names and bad options fail here with a clear message."""
        with config_errors(f"defense {self.defense!r}"):
            return Defense.from_config(self.defense, **self.options)

    def describe(self, defense: Defense | None = None) -> str:
        """One line for logs, as Flower's DP mods log their clipping and noise: the defense with
        the options set (``defaults`` when none), the public noise it adds and the scale; never
        the seed, which stays private."""
        defense = defense if defense is not None else self.build()
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items())) or "defaults"
        text = f"{self.defense}({options})"
        noise = defense.noise_model()
        if noise is not None:
            text += (f", {noise.distribution} noise of std {noise.std:g} on {100 * noise.fraction:.0f}% of the "
                     f"elements" + ("" if noise.fresh else " (memoised: the same update gets the same noise)"))
        return text + f", scale {self.scale:g}"

    def to_config(self) -> dict[str, Any]:
        """Flat ``gradguard.*`` keys for a Flower ConfigRecord (never the seed)."""
        flat: dict[str, Any] = {PREFIX + "defense": self.defense, PREFIX + "scale": float(self.scale)}
        flat.update({f"{PREFIX}{self.defense}.{k}": _config_value(k, v) for k, v in self.options.items()})
        return flat

    @classmethod
    def from_configs(cls, shared: Mapping[str, Any], private: Mapping[str, Any]) -> DefenseSettings:
        """Settings from the ``gradguard.*`` keys of ``shared`` configs (run or train config,
        known to the server) overridden by the client's ``private`` node config."""
        if SEED_KEY in shared:
            raise ConfigError(f"{SEED_KEY}: a noise seed the server knows defeats the defense; "
                              "set it per client in the node config (flower-supernode --node-config)")
        merged = {k.removeprefix(PREFIX): v for k, v in {**shared, **private}.items() if k.startswith(PREFIX)}
        options_of = f"{merged.get('defense', 'none')}."
        fields: dict[str, Any] = {"options": {}}
        for key, value in merged.items():
            if key.startswith(options_of):
                fields["options"][key.removeprefix(options_of)] = value
            elif "." not in key:  # defense, scale, seed; an unknown one fails validation
                fields[key] = value
        return cls(**fields)


def _config_value(name: str, value: Any) -> Any:
    """Flower configs hold scalars and lists of scalars; tuples become lists."""
    if isinstance(value, tuple):
        value = list(value)
    if value is None or isinstance(value, dict):
        raise ConfigError(f"{name}: {value!r} cannot travel in a Flower config; use a scalar or a list of scalars")
    return value
