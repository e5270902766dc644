"""The gradguard defenses as Flower components: a client mod and a strategy wrapper.

Add the defense to an existing Flower app with two lines::

    app = ClientApp(mods=[DefenseMod()])                           # client: defend the update
    strategy = DefendedStrategy(FedAvg(), "graddefense", sigma=0.1)  # server: compensate

The strategy puts the defense's public configuration (name, options, scale) into every train
message; the mod reads it there at call time. Nothing secret (chosen slices, noise seeds) is
ever put into a message. Needs the ``flower`` extra: ``pip install "gradguard[flower]"``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gradguard.flower needs Flower (flwr>=1.42,<1.43); install it with: pip install \"gradguard[flower]\""
    ) from exc

from .mod import DefenseMod
from .settings import DefenseSettings
from .strategy import DefendedStrategy

__all__ = ["DefendedStrategy", "DefenseMod", "DefenseSettings"]
