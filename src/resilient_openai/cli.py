"""The ``resilient-openai`` command: ``demo`` (a scripted outage, watched live) and ``check-config``.

typer, rich and matplotlib come with the ``cli`` extra and are imported only here, when a command
runs, so ``import resilient_openai`` never needs them. The demo's engine lives in
:mod:`resilient_openai._demo`; this module only renders its results: a live view and the final
summary (both the same per-phase table), and a timeline PNG.
"""

# No ``from __future__ import annotations`` here: typer reads the commands' annotations at run
# time, and they name typer, which is imported inside build_app().

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from ._demo import (
    DEFAULT_SCENARIO,
    DEMO_MODEL,
    FAILING_PHASES,
    DemoConfig,
    DemoResult,
    DemoRun,
    breaker_timeline,
    parse_scenario,
)
from ._demo_workers import WorkersRun

if TYPE_CHECKING:
    import typer
    from rich.console import Console, RenderableType

__all__ = ["build_app", "main", "policy_toml", "write_timeline"]

#: Sources in the order a reader expects them, the primary first, and their colours.
SOURCE_COLORS: Final = {
    "upstream": "#2e7d32",
    "fallback_model": "#1565c0",
    "fallback_client": "#6a1b9a",
    "cache": "#f9a825",
    "canned": "#ef6c00",
    "function": "#8d6e63",
    "error": "#c62828",
}
STATE_COLORS: Final = {"closed": "#2e7d32", "half-open": "#f9a825", "open": "#c62828", "isolated": "#616161"}
_RICH_STATE: Final = {"closed": "green", "half-open": "yellow", "open": "bold red", "isolated": "dim"}
_PHASE_SHADES: Final = {"healthy": "#e8f5e9", "storm": "#ffebee", "slow": "#fff8e1", "recovery": "#e3f2fd"}
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
INSTALL_HINT: Final = "pip install 'resilient-openai[cli]'"


def _missing_extra(exc: ImportError) -> str:
    """The one line shown when an optional CLI dependency is not installed."""
    name = exc.name or "a CLI dependency"
    return f"resilient-openai: this command needs {name}, from the 'cli' extra: " + INSTALL_HINT


def _ordered_sources(counts: Mapping[str, int]) -> list[str]:
    """The sources present in ``counts``, known ones in :data:`SOURCE_COLORS` order, others after."""
    return [s for s in SOURCE_COLORS if counts.get(s)] + sorted(s for s in counts if s not in SOURCE_COLORS)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """One TOML value. JSON strings are valid TOML basic strings; None has no TOML form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_table(data: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    # Keys first, sub-tables after: TOML gives every key after a [header] to that header.
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping) and v}
    keys = {k: v for k, v in data.items() if k not in tables}
    if path and (keys or not tables):
        lines += ["", f"[{'.'.join(_toml_key(p) for p in path)}]"]
    for key, value in keys.items():
        if value is None:
            lines.append(f"# {_toml_key(key)}: unset")
        elif isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
            # An array of inline tables (fallback steps) reads best one table per line.
            lines += [f"{_toml_key(key)} = [", *(f"    {_toml_value(item)}," for item in value), "]"]
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _toml_table(value, (*path, key), lines)


def policy_toml(description: Mapping[str, Any]) -> str:
    """A policy's ``model_dump(mode="json")`` as TOML; unset (None) values show as comments.

    Loading the text back with ``Policy.from_dict(tomllib.loads(text))`` gives the same policy.
    """
    lines: list[str] = []
    _toml_table(description, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _summary_table(result: DemoResult) -> "RenderableType":
    """Per phase, then in total: calls, answers by source, errors, p50/p99 latency, upstream requests."""
    from rich import box
    from rich.table import Table

    total = result.total
    sources = _ordered_sources(total.by_source)
    table = Table(title="summary by phase", title_justify="left", box=box.SIMPLE_HEAD)
    columns = ("calls", *sources, "errors", "p50 ms", "p99 ms", "upstream reqs", "to primary")
    for name in ("phase", "seconds", *columns):
        table.add_column(name, justify="right" if name in columns else "left")
    for summary in (*result.summaries, total):
        if summary is total:
            table.add_section()
        table.add_row(
            summary.phase.name,
            f"{summary.phase.start:.3g}-{summary.phase.end:.3g}",
            str(summary.calls),
            *(str(summary.by_source[source]) for source in sources),
            f"[red]{summary.errors}[/]" if summary.errors else "0",
            _ms(summary.p50),
            _ms(summary.p99),
            str(summary.upstream_requests),
            str(summary.to_primary),
        )
    return table


def _breaker_states(result: DemoResult) -> str:
    """Every breaker's state; in a workers run, the primary's breaker as each worker sees it."""
    if result.workers:
        states = [
            f"{w.index}={b['state']}"
            for w in result.workers
            for b in w.breakers
            if result.breaker_label(str(b["name"])) == DEMO_MODEL
        ]
        return f"{DEMO_MODEL} by worker: {' '.join(states) or '-'}"
    return ", ".join(f"{result.breaker_label(str(b['name']))}={b['state']}" for b in result.breakers) or "-"


def _outage_line(result: DemoResult) -> str:
    """How many requests reached the failing upstream, in total and per worker."""
    hits = result.outage_requests()
    per_worker = ", ".join(f"worker {w.index}: {hits[w.index]}" for w in result.workers)
    return (
        f"requests to the failing upstream ({DEMO_MODEL} during {' and '.join(FAILING_PHASES)}): "
        f"{hits.total()} in total ({per_worker})"
    )


def _workers_table(result: DemoResult) -> "RenderableType":
    """One row per worker: its pid, each of its breakers' states, its calls, its requests in the outage."""
    from rich.table import Table

    hits = result.outage_requests()
    calls = Counter(record.worker for record in result.records)
    labels = sorted(
        {result.breaker_label(str(b["name"])) for w in result.workers for b in w.breakers},
        key=lambda label: (label != DEMO_MODEL, label),
    )
    table = Table(
        title="workers: " + ("one shared breaker per target" if result.shared else "breakers per process")
    )
    for name in ("worker", "pid", *labels, "calls", "to failing upstream"):
        table.add_column(name, justify="right" if name in ("calls", "to failing upstream") else "left")
    for worker in result.workers:
        states = {result.breaker_label(str(b["name"])): str(b["state"]) for b in worker.breakers}
        shown = [states.get(label, "-") for label in labels]
        table.add_row(
            str(worker.index), str(worker.pid), *(f"[{_RICH_STATE.get(s, 'white')}]{s}[/]" for s in shown),
            str(calls[worker.index]), str(hits[worker.index]),
        )  # fmt: skip
    table.add_section()
    table.add_row("total", "", *([""] * len(labels)), str(len(result.records)), str(hits.total()))
    return table


def _render_live(result: DemoResult) -> "RenderableType":
    """The live panel: phase and progress, breakers, and the summary table so far."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    end = result.phases[-1].end
    header = Table.grid(padding=(0, 2))
    header.add_row(
        f"[bold]{result.phase.name}[/]",
        ProgressBar(total=end, completed=result.elapsed, width=40),
        f"{result.elapsed:5.1f} / {end:.0f} s",
        f"in flight {result.in_flight}",
        f"[bold red]BUGS {result.bugs}[/]" if result.bugs else "",
    )
    if result.workers:
        parts = (header, result.sharing, _workers_table(result), _summary_table(result))
        return Panel(Group(*parts), title=f"resilient-openai demo, {len(result.workers)} workers")
    breakers = Table(title="breakers", title_justify="left")
    for name in ("breaker", "state", "retry in", "fails in a row"):
        breakers.add_column(name)
    for b in result.breakers:
        state, retry_after = str(b["state"]), b.get("retry_after")
        breakers.add_row(
            result.breaker_label(str(b["name"])),
            f"[{_RICH_STATE.get(state, 'white')}]{state}[/]",
            "-" if retry_after is None else f"{retry_after:.1f} s",
            str(b.get("consecutive_failures", "")),
        )
    return Panel(Group(header, breakers, _summary_table(result)), title="resilient-openai demo")


def _progress_line(result: DemoResult) -> str:
    """One plain line per second for ``--no-live`` and non-terminal output."""
    total = result.total
    sources = "".join(f" {s}={total.by_source[s]}" for s in _ordered_sources(total.by_source))
    bugs = f" BUGS={result.bugs}" if result.bugs else ""
    return (
        f"[{result.elapsed:5.1f}s] {result.phase.name:<9} calls={total.calls}{sources}"
        f" errors={total.errors}{bugs} p50={_ms(total.p50)} ms p99={_ms(total.p99)} ms"
        f" upstream_requests={total.upstream_requests} breakers: {_breaker_states(result)}"
    )


def write_timeline(result: DemoResult, path: Path) -> Path:
    """Draw the run as a PNG at ``path``: breaker states, answers by source, latency, over time.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is safe
    in a headless process and from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    total = result.total
    end = max(result.duration, result.phases[-1].end)
    figure = Figure(figsize=(12, 8.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    states_ax, sources_ax, latency_ax = figure.subplots(3, 1, sharex=True, height_ratios=[1.2, 2, 2])
    title = (
        f"resilient-openai demo: {total.calls} calls in {result.duration:.1f} s, "
        + "".join(f"{s} {total.by_source[s]}, " for s in _ordered_sources(total.by_source))
        + f"errors {total.errors}, upstream requests {total.upstream_requests}"
    )
    if result.workers:
        kept = "one breaker shared on Redis" if result.shared else "each its own breakers (no Redis)"
        hits = result.outage_requests()
        title += (
            f"\n{len(result.workers)} worker processes, {kept}; requests to {DEMO_MODEL} while it failed: "
            f"{hits.total()} ({', '.join(f'worker {w.index}: {hits[w.index]}' for w in result.workers)})"
        )
    figure.suptitle(title, fontsize=11)
    for ax in (states_ax, sources_ax, latency_ax):
        for phase in result.phases:
            ax.axvspan(phase.start, phase.end, color=_PHASE_SHADES.get(phase.name, "#fafafa"), zorder=0, lw=0)
            ax.axvline(phase.start, color="#bdbdbd", lw=0.6, zorder=0)
        ax.set_xlim(0, end)
        ax.grid(axis="x", alpha=0.3)
    for phase in result.phases:
        states_ax.text(
            (phase.start + phase.end) / 2, 1.02, phase.name, transform=states_ax.get_xaxis_transform(),
            ha="center", va="bottom", fontsize=9, color="#424242",
        )  # fmt: skip
    legend = {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0), "fontsize": 8, "title_fontsize": 8}

    timeline = list(breaker_timeline(result))
    seen = {"closed", "open"} | {state for _, spans in timeline for _, _, state in spans}
    for row, (_, spans) in enumerate(timeline):
        for state, color in STATE_COLORS.items():
            bars = [(start, stop - start) for start, stop, s in spans if s == state]
            if bars:
                states_ax.broken_barh(bars, (row - 0.35, 0.7), facecolors=color)
    states_ax.set_yticks(range(len(timeline)), [label for label, _ in timeline])
    states_ax.set_ylim(max(len(timeline), 1) - 0.4, -0.6)
    states_ax.set_ylabel(f"{DEMO_MODEL} breaker" if result.workers else "breaker")
    patches = [Patch(color=color, label=state) for state, color in STATE_COLORS.items() if state in seen]
    states_ax.legend(handles=patches, title="state", **legend)

    bucket = max(0.5, end / 60)
    buckets = max(math.ceil(end / bucket), 1)
    bottom = [0] * buckets
    for source in [*_ordered_sources(total.by_source), "error"]:
        mine = [r for r in result.records if (r.source or "error") == source]
        if not mine:
            continue
        color = SOURCE_COLORS.get(source, "#9e9e9e")
        heights = [0] * buckets
        for r in mine:
            heights[min(int(r.start / bucket), buckets - 1)] += 1
        sources_ax.bar(
            [i * bucket for i in range(buckets)], heights, width=bucket * 0.95, bottom=bottom, align="edge",
            label=source, color=color,
        )  # fmt: skip
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        error = source == "error"
        latency_ax.scatter(
            [r.start for r in mine], [r.latency for r in mine], s=18 if error else 10, color=color,
            marker="x" if error else "o", alpha=0.7, label=source, linewidths=0.8,
        )  # fmt: skip
    sources_ax.set_ylabel(f"answers per {bucket:g} s")
    sources_ax.legend(title="source", **legend)
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("latency (s, log)")
    latency_ax.set_xlabel("seconds since start (call start)")
    latency_ax.legend(title="source", **legend)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _run_demo(
    console: "Console", config: DemoConfig, *, live: bool, png: Path | None, workers: int = 0
) -> int:
    """Run the demo, show it, summarise it, draw it; the exit code (1 when a call hit a bug).

    ``workers`` > 0: that many worker processes against one upstream (:mod:`._demo_workers`).
    """
    run: DemoRun | WorkersRun = DemoRun(config) if workers == 0 else WorkersRun(config, workers)
    if isinstance(run, WorkersRun):
        console.print(f"{workers} worker processes; {run.sharing}", highlight=False)
    if live:
        from rich.live import Live

        with Live(console=console, refresh_per_second=8) as view:
            result = run.run(lambda now: view.update(_render_live(now)))
    else:
        printed = [-1]

        def line(now: DemoResult) -> None:
            if int(now.elapsed) != printed[0]:
                printed[0] = int(now.elapsed)
                console.print(_progress_line(now), highlight=False, soft_wrap=True)

        result = run.run(line)

    console.print()
    console.print(_summary_table(result))
    if result.workers:
        console.print(_workers_table(result))
        console.print(_outage_line(result), highlight=False)
        console.print(result.sharing, highlight=False)
    errors = result.errors()
    if errors:
        listed = ", ".join(f"{name} x{count}" for name, count in errors.most_common())
        console.print(f"errors (documented, openai.OpenAIError): {listed}", highlight=False)
    if result.workers:  # every worker records the transitions it sees, a shared one's included
        opens = Counter(c.worker for c in result.breaker_changes if c.new == "open")
        opened = "; ".join(f"worker {w.index}: {opens[w.index]}" for w in result.workers)
    else:
        opened = str(sum(1 for c in result.breaker_changes if c.new == "open"))
    console.print(
        f"breakers opened (times): {opened}; final states: {_breaker_states(result)}", highlight=False
    )
    if png is not None:
        console.print(f"timeline written to {write_timeline(result, png).resolve()}", highlight=False)
    if not result.ok:
        console.print(f"[bold red]{result.bugs} call(s) ended in an unexpected exception (a bug):[/]")
        for report in result.bug_reports:
            console.print(report, highlight=False, markup=False)
        return 1
    return 0


def build_app() -> "typer.Typer":
    """The typer application (imports typer and rich; raises ImportError when they are missing)."""
    import typer
    from rich.console import Console

    app = typer.Typer(
        name="resilient-openai",
        help="Retries, circuit breaking and honest fallbacks in front of the OpenAI client.",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )

    @app.command()
    def demo(
        use_async: Annotated[
            bool, typer.Option("--async", help="Drive the load from asyncio tasks.")
        ] = False,
        rate: Annotated[float, typer.Option(min=0.01, help="Calls per second to aim for.")] = 20.0,
        duration: Annotated[
            float | None, typer.Option(min=0.1, help="Stretch the scenario to last this many seconds.")
        ] = None,
        scenario: Annotated[
            str, typer.Option(help="Phases as name:seconds; names: healthy, storm, slow, recovery.")
        ] = DEFAULT_SCENARIO,
        png: Annotated[Path, typer.Option(help="Where to write the timeline PNG.")] = Path(
            "demo-timeline.png"
        ),
        no_png: Annotated[bool, typer.Option("--no-png", help="Do not draw the timeline.")] = False,
        live: Annotated[
            bool,
            typer.Option(
                "--live/--no-live", help="Live view (off: one line per second; off when not a TTY)."
            ),
        ] = True,
        workers: Annotated[
            int,
            typer.Option(
                min=0,
                help="Run N worker processes against one upstream, their breakers shared on Redis "
                "(REDIS_URL, else redis://127.0.0.1:6379) when it answers, else each its own "
                "(0: one process).",
            ),
        ] = 0,
    ) -> None:
        """Play a scripted outage against a fake upstream under load, and watch the chain absorb it."""
        console = Console(highlight=False)
        if not console.is_terminal:
            # Piped or captured: rich would assume 80 columns and squeeze the summary table.
            console = Console(highlight=False, width=max(console.width, 150))
        if not no_png:
            try:
                import matplotlib  # noqa: F401
            except ImportError as exc:
                print(_missing_extra(exc), file=sys.stderr)
                raise typer.Exit(1) from exc
        try:
            phases = parse_scenario(scenario, total=duration)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--scenario") from exc
        config = DemoConfig(phases=phases, rate=rate, use_async=use_async)
        raise typer.Exit(
            _run_demo(
                console,
                config,
                live=live and console.is_terminal,
                png=None if no_png else png,
                workers=workers,
            )
        )

    @app.command("check-config")
    def check_config(
        file: Annotated[Path, typer.Argument(help="The policy file (.toml, or .yaml with the yaml extra).")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
    ) -> None:
        """Validate a policy file: print the effective policy, or every problem (exit code 2)."""
        from ._errors import ConfigError
        from ._policy import Policy

        try:
            description = Policy.from_file(file).model_dump(mode="json")
        except ConfigError as exc:
            for problem in exc.problems:
                typer.echo(problem)
            typer.echo(f"{file}: {len(exc.problems)} problem(s)", err=True)
            raise typer.Exit(2) from exc
        if as_json:
            typer.echo(json.dumps(description, indent=2))
        else:
            typer.echo(f"# effective policy from {file}; defaults filled in")
            typer.echo(policy_toml(description), nl=False)

    return app


def main() -> None:
    """Entry point of the ``resilient-openai`` script."""
    try:
        app = build_app()
    except ImportError as exc:
        print(_missing_extra(exc), file=sys.stderr)
        raise SystemExit(1) from None
    app()
