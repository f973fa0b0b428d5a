"""``python -m benchmarks``: run every benchmark and rewrite ``benchmarks/RESULTS.md``.

``--quick`` shrinks every benchmark (seconds instead of minutes; the numbers are then only a
sanity check) and ``--output DIR`` writes RESULTS.md and the outage picture elsewhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import chaos, concurrency, fleet, memory, outage, rejection, scenarios, success_path
from ._common import load_average, machine, markdown_table

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
IMAGE = "outage-timeline.png"


def _timed(label: str, work: Callable[[], T]) -> T:
    print(f"[benchmarks] {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = work()
    print(f"[benchmarks] {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run everything, then write RESULTS.md and the outage picture."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--output", type=Path, default=HERE, help="where RESULTS.md and the picture go")
    args = parser.parse_args(argv)
    quick: bool = args.quick
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    info = machine()
    if quick:
        success = _timed("success path", lambda: success_path.run(rounds=4, batch=10, warmup=10))
        concurrent = _timed("concurrency", lambda: concurrency.run(seconds=0.3, rounds=2))
        rejected = _timed("rejection", lambda: rejection.run(calls=1_000))
        config = outage.OutageConfig(
            calls=20, rate=10.0, outage_start=0.5, outage_end=1.2, break_duration=0.3
        )
        down = _timed("outage", lambda: outage.run(config))
        memo = _timed("memory", lambda: memory.run(offered=1_000, calls=2_000, every=500, traced_calls=1_200))
        mayhem = _timed("chaos", lambda: chaos.run(seconds=2.0, threads=6, tasks=40, think_tasks=0.3))
        played = _timed("scenarios", lambda: scenarios.run(timeout=0.1, sequence=2))
        fleet_config = fleet.FleetConfig(
            rate=10.0, outage_start=0.5, outage_end=2.0, duration=2.5, break_duration=0.5, rounds=6, batch=10
        )
        workers = _timed("fleet", lambda: fleet.run(fleet_config))
    else:
        success = _timed("success path", success_path.run)
        concurrent = _timed("concurrency", concurrency.run)
        rejected = _timed("rejection", rejection.run)
        down = _timed("outage", outage.run)
        memo = _timed("memory", memory.run)
        mayhem = _timed("chaos", chaos.run)
        played = _timed("scenarios", scenarios.run)
        workers = _timed("fleet", fleet.run)
    outage.plot(down, output / IMAGE)
    elapsed = time.perf_counter() - started
    info["load average at end (1/5/15 min)"] = load_average()

    goals = (
        success_path.headline(success)
        + concurrency.headline(concurrent)
        + rejection.headline(rejected)
        + fleet.headline(workers)
    )
    machine_rows = [[key, value] for key, value in info.items()]
    parts = [
        "# Benchmarks",
        "",
        "How much resilient-openai costs next to the raw `openai` SDK, measured side by side in one "
        "run against the library's own fake upstream (`resilient_openai.testing.FakeUpstream`), in "
        "process and over loopback HTTP. Variants are interleaved, and every number below is a ratio "
        "to the raw SDK measured in the same run, or a distribution; these are measurements, not "
        "tests: nothing asserts a timing.",
        "",
        "Re-run from the repository root (rewrites this file and `outage-timeline.png`; about 4 minutes):",
        "",
        "```",
        "python -m benchmarks            # the published sizes",
        "python -m benchmarks --quick    # a smoke run of seconds; numbers not meaningful",
        "```",
        "",
        f"This run {'(**quick**: sizes shrunk, numbers not meaningful) ' if quick else ''}took "
        f"{elapsed:.0f} s. The machine may be shared (see the load averages below): tails (p99) and "
        "the loopback and concurrency ratios are the noisiest numbers, and each ratio comes with its "
        "interquartile range over rounds so the noise is visible.",
        "",
        "## Machine",
        "",
        markdown_table(["", "value"], machine_rows),
        "",
        "## Goals",
        "",
        markdown_table(["question", "measured", "goal", "verdict"], goals),
        "",
        success_path.report(success),
        concurrency.report(concurrent),
        rejection.report(rejected),
        outage.report(down, IMAGE),
        memory.report(memo),
        chaos.report(mayhem),
        scenarios.report(played),
        fleet.report(workers),
        "",
    ]
    (output / "RESULTS.md").write_text("\n".join(parts))
    print(f"[benchmarks] wrote {output / 'RESULTS.md'} in {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
