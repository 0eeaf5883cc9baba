"""How long and how hard a run measures: the full plan (`make bench`) and the quick one (tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Durations, concurrencies and request counts of one run."""

    quick: bool
    compute_seconds: float  # per image, in each of the compute processes
    stage_repeats: int  # single-process timings of prepare and inference
    levels: tuple[int, ...]  # concurrencies of the latency runs
    service_seconds: float  # per level and image (wrk); quick: requests = 2 × concurrency
    original_levels: tuple[int, ...]
    original_workers: int  # quick: one, to spare a second TensorFlow import
    original_seconds: float
    soak_requests: int  # the RSS run
    soak_concurrency: int


FULL = Plan(
    quick=False,
    compute_seconds=5.0,
    stage_repeats=30,
    levels=(1, 4, 16),
    service_seconds=6.0,
    original_levels=(1, 4, 16),
    original_workers=2,
    original_seconds=15.0,
    soak_requests=10_000,
    soak_concurrency=16,
)
QUICK = Plan(
    quick=True,
    compute_seconds=0.3,
    stage_repeats=3,
    levels=(1, 4, 16),
    service_seconds=0.0,
    original_levels=(1,),
    original_workers=1,
    original_seconds=0.0,
    soak_requests=24,
    soak_concurrency=4,
)
