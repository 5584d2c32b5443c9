"""The benchmark's pure parts (bench/compare) are imported as the benchmark imports them."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # last: a bench module never hides a test package
