"""Fault injection: the local plane answering like a busy Neon (423, 429, 500, latency), and
named kill points where a crash test ends the process mid-job."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentdb import _kill

_KEYS = {"423", "429", "500", "503", "latency_ms"}


@dataclass(frozen=True)
class Faults:
    """Probabilities per status and a fixed added latency; parsed from
    `AGENTDB_LOCALPLANE_FAULTS`, e.g. `423=0.2,429=0.1,500=0.05,latency_ms=50`."""

    locked: float = 0.0
    rate_limited: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    latency_ms: int = 0

    @classmethod
    def parse(cls, text: str) -> Faults:
        values: dict[str, float] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in _KEYS:
                raise ValueError(
                    f"AGENTDB_LOCALPLANE_FAULTS: {item!r} is not key=value "
                    f"with a key among {sorted(_KEYS)}"
                )
            try:
                number = float(value)
            except ValueError:
                raise ValueError(
                    f"AGENTDB_LOCALPLANE_FAULTS: {key} needs a number, got {value!r}"
                ) from None
            if key != "latency_ms" and not 0 <= number <= 1:
                raise ValueError(f"AGENTDB_LOCALPLANE_FAULTS: {key} is a probability in [0, 1]")
            if key == "latency_ms" and number < 0:
                raise ValueError("AGENTDB_LOCALPLANE_FAULTS: latency_ms must be >= 0")
            values[key] = number
        return cls(
            locked=values.get("423", 0.0),
            rate_limited=values.get("429", 0.0),
            server_error=values.get("500", 0.0),
            unavailable=values.get("503", 0.0),
            latency_ms=int(values.get("latency_ms", 0)),
        )

    def pick(self, method: str, rng: random.Random) -> int | None:
        """The status to answer instead of handling the request, or None to handle it."""
        # 423 only concerns mutations on Neon; the others can hit any call.
        if method in {"POST", "PATCH", "PUT", "DELETE"} and rng.random() < self.locked:
            return 423
        if rng.random() < self.rate_limited:
            return 429
        if rng.random() < self.unavailable:
            return 503
        if rng.random() < self.server_error:
            return 500
        return None


# Where a crash test may kill the process running the plane: between making a new database and
# opening it, inside the engine's copy and swap steps, after each job step and before a job's
# operations are marked finished.
KILL_POINTS = frozenset(
    {
        "create.made",
        "copy.source_closed",
        "copy.created",
        "swap.live_closed",
        "swap.renamed",
        "job.step_done",
        "job.before_finish",
    }
)


class KillSwitch(_kill.KillSwitch):
    """The local plane's kill points, armed by `AGENTDB_LOCALPLANE_KILL_AT`, e.g.
    `swap.renamed` or `job.step_done:2`."""

    POINTS = KILL_POINTS
    SETTING = "AGENTDB_LOCALPLANE_KILL_AT"
