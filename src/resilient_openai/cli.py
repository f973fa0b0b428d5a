"""The ``resilient-openai`` command: ``demo`` (a scripted outage, watched live) and ``check-config``.

typer, rich and matplotlib come with the ``cli`` extra and are imported only here, when a command
runs, so ``import resilient_openai`` never needs them. The demo's engine lives in
:mod:`resilient_openai._demo`; this module only turns its snapshots and results into a live view,
a summary table and a timeline PNG.
"""

# No ``from __future__ import annotations`` here: typer reads the commands' annotations at run
# time, and they name typer, which is imported inside build_app().

import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from ._demo import (
    DEFAULT_SCENARIO,
    LIVE_PHASE,
    DemoConfig,
    DemoResult,
    DemoRun,
    Phase,
    Snapshot,
    breaker_timeline,
    parse_scenario,
)

if TYPE_CHECKING:
    import typer
    from rich.console import Console, RenderableType

__all__ = ["build_app", "main", "policy_toml", "write_timeline"]

INSTALL_HINT: Final = "pip install 'resilient-openai[cli]'"
DEFAULT_PNG: Final = Path("demo-timeline.png")

#: Sources in the order a reader expects them: the primary first, the last resort last.
SOURCE_ORDER: Final = ("upstream", "fallback_model", "fallback_client", "cache", "canned", "function")
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
_PHASE_SHADES: Final = {
    "healthy": "#e8f5e9",
    "storm": "#ffebee",
    "slow": "#fff8e1",
    "recovery": "#e3f2fd",
    LIVE_PHASE: "#f5f5f5",
}
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def _missing_extra(exc: ImportError) -> str:
    """The one line shown when an optional CLI dependency is not installed."""
    name = exc.name or "a CLI dependency"
    return f"resilient-openai: this command needs {name}, from the 'cli' extra: {INSTALL_HINT}"


def _ordered_sources(counts: Mapping[str, int]) -> list[str]:
    """The sources present in ``counts``, known ones in :data:`SOURCE_ORDER`, others after."""
    return [s for s in SOURCE_ORDER if counts.get(s)] + sorted(s for s in counts if s not in SOURCE_ORDER)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


# --------------------------------------------------------------------------------------------
# check-config: the effective policy as TOML
# --------------------------------------------------------------------------------------------


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
            lines.append(f"{_toml_key(key)} = [")
            lines += [f"    {_toml_value(item)}," for item in value]
            lines.append("]")
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


# --------------------------------------------------------------------------------------------
# The demo's live view, progress lines and summary
# --------------------------------------------------------------------------------------------


def _render_live(snapshot: Snapshot, labels: Mapping[str, str]) -> "RenderableType":
    """The live panel: phase and progress, breakers, answers by source, errors, latency, upstream."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    phase = snapshot.phase
    header = Table.grid(padding=(0, 2))
    header.add_row(
        f"[bold]{phase.name}[/] (phase {snapshot.phase_index + 1})",
        ProgressBar(total=snapshot.total, completed=snapshot.elapsed, width=40),
        f"{snapshot.elapsed:5.1f} / {snapshot.total:.0f} s",
    )

    breakers = Table(title="breakers", title_justify="left", expand=False)
    breakers.add_column("breaker")
    breakers.add_column("state")
    breakers.add_column("retry in", justify="right")
    breakers.add_column("fails in a row", justify="right")
    for b in snapshot.breakers:
        state = str(b["state"])
        retry_after = b.get("retry_after")
        breakers.add_row(
            labels.get(str(b["name"]), str(b["name"])),
            f"[{_RICH_STATE.get(state, 'white')}]{state}[/]",
            "-" if retry_after is None else f"{retry_after:.1f} s",
            str(b.get("consecutive_failures", "")),
        )
    if not snapshot.breakers:
        breakers.add_row("(none yet)", "", "", "")

    answers = Table(title="answers by source", title_justify="left")
    answers.add_column("source")
    answers.add_column("calls", justify="right")
    answers.add_column("share", justify="right")
    done = max(snapshot.calls, 1)
    for source in _ordered_sources(snapshot.by_source):
        count = snapshot.by_source[source]
        answers.add_row(source, str(count), f"{count / done:.0%}")
    for error, count in sorted(snapshot.errors.items()):
        answers.add_row(f"[red]error: {error}[/]", str(count), f"{count / done:.0%}")

    stats = Table.grid(padding=(0, 1))
    stats.add_row("calls done", str(snapshot.calls))
    stats.add_row("in flight", str(snapshot.in_flight))
    stats.add_row("latency p50", _ms(snapshot.p50))
    stats.add_row("latency p95", _ms(snapshot.p95))
    stats.add_row("latency p99", _ms(snapshot.p99))
    stats.add_row(
        "upstream requests", "-" if snapshot.upstream_requests is None else str(snapshot.upstream_requests)
    )
    if snapshot.bugs:
        stats.add_row("[bold red]BUGS[/]", f"[bold red]{snapshot.bugs}[/]")

    body = Table.grid(padding=(0, 3))
    body.add_row(breakers, answers, stats)
    return Panel(Group(header, body), title="resilient-openai demo", subtitle="latency over the last 5 s")


def _progress_line(snapshot: Snapshot, labels: Mapping[str, str]) -> str:
    """One plain line per second for ``--no-live`` and non-terminal output."""
    sources = " ".join(f"{s}={snapshot.by_source[s]}" for s in _ordered_sources(snapshot.by_source))
    errors = sum(snapshot.errors.values())
    breakers = " ".join(f"{labels.get(str(b['name']), b['name'])}={b['state']}" for b in snapshot.breakers)
    upstream = "-" if snapshot.upstream_requests is None else snapshot.upstream_requests
    bugs = f" BUGS={snapshot.bugs}" if snapshot.bugs else ""
    parts = [f"[{snapshot.elapsed:5.1f}s] {snapshot.phase.name:<9} calls={snapshot.calls}"]
    parts += [sources] if sources else []
    parts.append(f"errors={errors}{bugs} p50={_ms(snapshot.p50)} p99={_ms(snapshot.p99)}")
    parts.append(f"upstream_requests={upstream} breakers: {breakers or '-'}")
    return " ".join(parts)


def _summary_table(result: DemoResult) -> "RenderableType":
    """Per phase: calls, answers by source, errors, p50/p99 latency, upstream requests."""
    from rich import box
    from rich.table import Table

    from ._demo import percentile

    totals = result.by_source()
    sources = _ordered_sources(totals)
    primary = result.config.model
    counted = result.upstream_requests is not None
    table = Table(title="summary by phase", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("phase")
    table.add_column("seconds")
    table.add_column("calls", justify="right")
    for source in sources:
        table.add_column(source, justify="right")
    table.add_column("errors", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    if counted:
        table.add_column("upstream reqs", justify="right")
        table.add_column("to primary", justify="right")

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.0f}"

    for summary in result.summaries:
        phase = summary.phase
        errors = sum(summary.errors.values())
        row = [
            phase.name,
            f"{phase.start:.3g}-{phase.end:.3g}",
            str(summary.calls),
            *(str(summary.by_source.get(source, 0)) for source in sources),
            f"[red]{errors}[/]" if errors else "0",
            ms(summary.p50),
            ms(summary.p99),
        ]
        if counted:
            row += [str(summary.upstream_requests), str((summary.upstream_by_model or {}).get(primary, 0))]
        table.add_row(*row)
    latencies = [r.latency for r in result.records]
    table.add_section()
    row = [
        "[bold]total[/]",
        f"{result.duration:.1f}",
        str(len(result.records)),
        *(str(totals[source]) for source in sources),
        str(sum(result.errors().values())),
        ms(percentile(latencies, 50)),
        ms(percentile(latencies, 99)),
    ]
    if counted:
        to_primary = sum((s.upstream_by_model or {}).get(primary, 0) for s in result.summaries)
        row += [str(result.upstream_requests), str(to_primary)]
    table.add_row(*row)
    return table


# --------------------------------------------------------------------------------------------
# The timeline PNG
# --------------------------------------------------------------------------------------------


def write_timeline(result: DemoResult, path: Path) -> Path:
    """Draw the run as a PNG at ``path``: breaker states, answers by source, latency, over time.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is safe
    in a headless process and from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    end = max(result.duration, result.phases[-1].end)
    figure = Figure(figsize=(12, 8.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    states_ax, sources_ax, latency_ax = figure.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, 2, 2]}
    )
    sources = result.by_source()
    errors = sum(result.errors().values())
    figure.suptitle(
        f"resilient-openai demo: {len(result.records)} calls in {result.duration:.1f} s, "
        + ", ".join(f"{s} {sources[s]}" for s in _ordered_sources(sources))
        + f", errors {errors}"
        + (f", upstream requests {result.upstream_requests}" if result.upstream_requests is not None else ""),
        fontsize=11,
    )
    for ax in (states_ax, sources_ax, latency_ax):
        _shade_phases(ax, result.phases)
        ax.set_xlim(0, end)
        ax.grid(axis="x", alpha=0.3)
    for phase in result.phases:
        states_ax.text(
            phase.start + phase.duration / 2, 1.02, phase.name, transform=states_ax.get_xaxis_transform(),
            ha="center", va="bottom", fontsize=9, color="#424242",
        )  # fmt: skip

    # 1. Breaker states, one row per breaker.
    timeline = list(breaker_timeline(result))
    seen = {"closed", "open"} | {state for _, spans in timeline for _, _, state in spans}
    for row, (_, spans) in enumerate(timeline):
        for state in STATE_COLORS:
            bars = [(start, stop - start) for start, stop, s in spans if s == state]
            if bars:
                states_ax.broken_barh(bars, (row - 0.35, 0.7), facecolors=STATE_COLORS[state])
    states_ax.set_yticks(range(len(timeline)), [result.breaker_label(name) for name, _ in timeline])
    states_ax.set_ylim(-0.6, max(len(timeline), 1) - 0.4)
    states_ax.invert_yaxis()
    states_ax.set_ylabel("breaker")
    states_ax.legend(
        handles=[Patch(color=color, label=state) for state, color in STATE_COLORS.items() if state in seen],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="state", title_fontsize=8,
    )  # fmt: skip

    # 2. Answers by source, stacked per time bucket.
    bucket = max(0.5, end / 60)
    buckets = max(math.ceil(end / bucket), 1)
    stacks = [*_ordered_sources(sources), "error"]
    counts = {source: [0] * buckets for source in stacks}
    for record in result.records:
        source = record.source if record.source is not None else "error"
        counts.setdefault(source, [0] * buckets)[min(int(record.start / bucket), buckets - 1)] += 1
    lefts = [i * bucket for i in range(buckets)]
    bottom = [0] * buckets
    for source in stacks:
        heights = counts[source]
        if any(heights):
            sources_ax.bar(
                lefts, heights, width=bucket * 0.95, bottom=bottom, align="edge", label=source,
                color=SOURCE_COLORS.get(source, "#9e9e9e"),
            )  # fmt: skip
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    sources_ax.set_ylabel(f"answers per {bucket:g} s")
    sources_ax.legend(
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="source", title_fontsize=8
    )

    # 3. Latency of every call, by source; errors as red crosses.
    for source in stacks:
        points = [
            (r.start, r.latency)
            for r in result.records
            if (r.source if r.source is not None else "error") == source
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            latency_ax.scatter(
                xs, ys, s=10 if source != "error" else 18, marker="x" if source == "error" else "o",
                color=SOURCE_COLORS.get(source, "#9e9e9e"), alpha=0.7, label=source, linewidths=0.8,
            )  # fmt: skip
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("latency (s, log)")
    latency_ax.set_xlabel("seconds since start (call start)")
    latency_ax.legend(
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="source", title_fontsize=8
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _shade_phases(ax: Any, phases: Sequence[Phase]) -> None:
    for phase in phases:
        ax.axvspan(phase.start, phase.end, color=_PHASE_SHADES.get(phase.name, "#fafafa"), zorder=0, lw=0)
        ax.axvline(phase.start, color="#bdbdbd", lw=0.6, zorder=0)


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------


def _run_demo(
    console: "Console",
    config: DemoConfig,
    *,
    live: bool,
    png: Path | None,
) -> int:
    """Run the demo, show it, summarise it, draw it; the exit code (1 when a call hit a bug)."""
    run = DemoRun(config)
    labels: dict[str, str] = {}

    def labelled(snapshot: Snapshot) -> Mapping[str, str]:
        for b in snapshot.breakers:
            name = str(b["name"])
            if name not in labels:
                labels[name] = run.breaker_label(name)
        return labels

    if live:
        from rich.live import Live

        with Live(console=console, refresh_per_second=8, transient=False) as view:
            result = run.run(lambda snap: view.update(_render_live(snap, labelled(snap))), tick=0.125)
    else:
        last = [-1]

        def line(snapshot: Snapshot) -> None:
            second = int(snapshot.elapsed)
            if second != last[0]:
                last[0] = second
                console.print(_progress_line(snapshot, labelled(snapshot)), highlight=False, soft_wrap=True)

        result = run.run(line, tick=0.1)

    console.print()
    console.print(_summary_table(result))
    errors = result.errors()
    if errors:
        listed = ", ".join(f"{name} x{count}" for name, count in errors.most_common())
        console.print(f"errors (documented, openai.OpenAIError): {listed}", highlight=False)
    changes = sum(1 for c in result.breaker_changes if c.new == "open")
    console.print(f"breakers opened {changes} time(s); final states: "
                  + ", ".join(f"{result.breaker_label(b['name'])}={b['state']}" for b in result.breakers),
                  highlight=False)  # fmt: skip
    if png is not None:
        written = write_timeline(result, png)
        console.print(f"timeline written to {written.resolve()}", highlight=False)
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
        concurrency: Annotated[
            int | None,
            typer.Option(min=1, help="Worker threads (or tasks). [default: 16; 4 on a real endpoint]"),
        ] = None,
        rate: Annotated[
            float | None,
            typer.Option(min=0.01, help="Calls per second to aim for. [default: 20; 1 on a real endpoint]"),
        ] = None,
        duration: Annotated[
            float | None,
            typer.Option(
                min=0.1,
                help="Stretch the scenario to last this many seconds (on a real endpoint: how long to run, "
                "default 20).",
            ),
        ] = None,
        scenario: Annotated[
            str, typer.Option(help="Phases as name:seconds; names: healthy, storm, slow, recovery.")
        ] = DEFAULT_SCENARIO,
        policy: Annotated[
            Path | None, typer.Option(help="A policy file (.toml/.yaml) instead of the demo's own.")
        ] = None,
        base_url: Annotated[
            str | None,
            typer.Option(help="A real OpenAI-compatible endpoint instead of the fake (key: OPENAI_API_KEY)."),
        ] = None,
        model: Annotated[
            str | None, typer.Option(help="The model to call. [default: gpt-demo on the fake]")
        ] = None,
        png: Annotated[Path, typer.Option(help="Where to write the timeline PNG.")] = DEFAULT_PNG,
        no_png: Annotated[bool, typer.Option("--no-png", help="Do not draw the timeline.")] = False,
        live: Annotated[
            bool,
            typer.Option(
                "--live/--no-live", help="Live view (off: one line per second; off when not a TTY)."
            ),
        ] = True,
    ) -> None:
        """Play a scripted outage against a fake upstream under load, and watch the chain absorb it."""
        from ._errors import ConfigError
        from ._policy import Policy

        console = Console(highlight=False)
        if not console.is_terminal:
            # Piped or captured: rich would assume 80 columns and squeeze the summary table.
            console = Console(highlight=False, width=max(console.width, 150))
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        if not no_png:
            try:
                import matplotlib  # noqa: F401
            except ImportError as exc:
                err.print(_missing_extra(exc), markup=False)
                raise typer.Exit(1) from exc
        real = base_url is not None
        if real and model is None:
            raise typer.BadParameter(
                "--base-url needs --model (the model to call there)", param_hint="--model"
            )
        api_key = os.environ.get("OPENAI_API_KEY", "") if real else None
        if real and not api_key:
            err.print("resilient-openai demo: --base-url needs the API key in OPENAI_API_KEY", markup=False)
            raise typer.Exit(2)
        try:
            phases = (
                (Phase(LIVE_PHASE, duration or 20.0),) if real else parse_scenario(scenario, total=duration)
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--scenario") from exc
        loaded: Policy | None = None
        if policy is not None:
            try:
                loaded = Policy.from_file(policy)
            except ConfigError as exc:
                for problem in exc.problems:
                    err.print(problem, markup=False)
                raise typer.Exit(2) from exc
        settings: dict[str, Any] = {
            "phases": phases,
            "concurrency": concurrency or (4 if real else 16),
            "rate": rate or (1.0 if real else 20.0),
            "use_async": use_async,
            "policy": loaded,
        }
        if real:
            settings.update(base_url=base_url, api_key=api_key)
        if model is not None:
            settings["model"] = model
        config = DemoConfig(**settings)
        if real:
            err.print(
                f"calling {base_url} ({config.model}) about {config.rate:g} times a second for "
                f"{config.total:g} s: this spends real tokens",
                markup=False,
            )
        code = _run_demo(console, config, live=live and console.is_terminal, png=None if no_png else png)
        raise typer.Exit(code)

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
            typer.echo(f"# effective policy from {file}; defaults filled in", nl=True)
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
