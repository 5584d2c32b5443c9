"""The start rate limit both backends share: a pool never starts workers faster than its
`workers.maxStartsPerSecond`, whether they are local processes or pods."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class StartLimiter:
    """A token bucket: at most `rate` starts per second, bursts up to `max(1, rate)`."""

    rate: float
    tokens: float = 1.0
    last: float = field(default_factory=time.monotonic)

    def budget(self) -> int:
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.last) * self.rate)
        self.last = now
        return math.floor(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n
