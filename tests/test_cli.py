"""The ``resilient-openai`` CLI: the demo engine run headless, its rendering, and ``check-config``."""

from __future__ import annotations

import io
import itertools
import json
import sys
import tomllib
from pathlib import Path

import httpx2
import pytest
from rich.console import Console
from typer.testing import CliRunner

from resilient_openai import FallbackPolicy, FallbackStep, Policy, Route, Target, Timeouts
from resilient_openai._demo import (
    DEMO_FALLBACK_MODEL,
    DEMO_MODEL,
    DemoConfig,
    DemoResult,
    DemoRun,
    breaker_timeline,
    demo_policy,
    parse_scenario,
    percentile,
    phase_at,
    phase_faults,
)
from resilient_openai.cli import _run_demo, build_app, main, policy_toml, write_timeline
from resilient_openai.testing import Delay, Ok, Status

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resilience.toml"
TINY_SCENARIO = "healthy:0.3,storm:0.6,recovery:0.6"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=["sync", "async"])
def tiny_run(request: pytest.FixtureRequest) -> DemoResult:
    """A tiny scenario with a short breaker, run once per shell (threads, asyncio tasks)."""
    config = DemoConfig(
        phases=parse_scenario(TINY_SCENARIO),
        concurrency=8,
        rate=40.0,
        use_async=request.param == "async",
        policy=demo_policy(DEMO_MODEL, DEMO_FALLBACK_MODEL, break_duration=0.25),
    )
    return DemoRun(config).run()


def _primary(result: DemoResult) -> str:
    return next(str(b["name"]) for b in result.breakers if result.breaker_label(str(b["name"])) == DEMO_MODEL)


# -- the demo engine --------------------------------------------------------------------------


def test_demo_every_call_ends_documented(tiny_run: DemoResult) -> None:
    """Every call ends with an answer or an openai.OpenAIError, so the run counts as a success."""
    assert tiny_run.records
    assert tiny_run.ok, tiny_run.bug_reports


def test_demo_answers_come_from_several_sources(tiny_run: DemoResult) -> None:
    """The storm sends answers to the fallback model and the cache, not only the upstream."""
    sources = tiny_run.by_source()
    assert sources["upstream"] > 0
    assert len(sources) >= 3, sources


def test_demo_breaker_opens_during_the_storm(tiny_run: DemoResult) -> None:
    """The primary's breaker opens while the storm phase is playing."""
    storm = next(p for p in tiny_run.phases if p.name == "storm")
    primary = _primary(tiny_run)
    assert any(
        c.breaker == primary and c.new == "open" and storm.start <= c.at <= storm.end
        for c in tiny_run.breaker_changes
    ), tiny_run.breaker_changes


def test_demo_recovers_to_the_upstream(tiny_run: DemoResult) -> None:
    """After the storm the short breaker closes again and the upstream answers once more."""
    recovery = tiny_run.summaries[-1]
    assert recovery.phase.name == "recovery"
    assert recovery.by_source.get("upstream", 0) > 0
    assert _primary(tiny_run) in {b["name"] for b in tiny_run.breakers if b["state"] == "closed"}


def test_demo_summary_accounts_for_every_call(tiny_run: DemoResult) -> None:
    """Per-phase summaries add up to the records, and the healthy phase is all upstream."""
    assert sum(s.calls for s in tiny_run.summaries) == len(tiny_run.records)
    healthy = tiny_run.summaries[0]
    assert healthy.calls > 0
    assert healthy.by_source == {"upstream": healthy.calls}
    assert tiny_run.upstream_requests == sum(s.upstream_requests or 0 for s in tiny_run.summaries)


def test_demo_timeline_png(tiny_run: DemoResult, tmp_path: Path) -> None:
    """The timeline is written as a PNG file."""
    path = write_timeline(tiny_run, tmp_path / "timeline.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_breaker_timeline_spans_cover_the_run(tiny_run: DemoResult) -> None:
    """Each breaker's spans start at 0, follow one another, and include an open span for the primary."""
    spans = dict(breaker_timeline(tiny_run))
    for name, parts in spans.items():
        assert parts[0][0] == 0.0, name
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts)), name
    assert "open" in {state for _, _, state in spans[DEMO_MODEL]}


def test_demo_counts_a_foreign_exception_as_a_bug() -> None:
    """An exception that is not an openai.OpenAIError is counted, reported, and makes the exit code 1."""

    def explode(request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError("custom transport exploded")

    policy = Policy(
        timeouts=Timeouts(total=1.0, attempt=0.5, connect=0.5, first_token=0.5, stream_idle=0.5),
        fallback=FallbackPolicy(
            routes={DEMO_MODEL: Route(steps=(FallbackStep(kind="target", target="broken"),))},
            targets={"broken": Target(name="broken", base_url="http://broken.test/v1")},
        ),
    )
    config = DemoConfig(
        phases=parse_scenario("storm:0.3"), rate=20.0, concurrency=2, policy=policy,
        http_client=lambda target: httpx2.Client(transport=httpx2.MockTransport(explode)),
    )  # fmt: skip
    out = io.StringIO()
    code = _run_demo(Console(file=out, width=150), config, live=False, png=None)
    assert code == 1
    assert "RuntimeError" in out.getvalue()
    assert "custom transport exploded" in out.getvalue()


# -- pure parts ---------------------------------------------------------------------------------


def test_parse_scenario_lays_phases_end_to_end() -> None:
    """Phases follow one another; ``total`` scales them in proportion."""
    phases = parse_scenario("healthy:5, storm:8,slow:4,recovery:6")
    assert [(p.name, p.start, p.end) for p in phases] == [
        ("healthy", 0, 5),
        ("storm", 5, 13),
        ("slow", 13, 17),
        ("recovery", 17, 23),
    ]
    assert parse_scenario("healthy:1,storm:3", total=8)[-1].end == pytest.approx(8)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("meltdown:3", "unknown phase 'meltdown'"),
        ("storm", "needs a duration"),
        ("storm:-1", "> 0"),
        ("", "no phase"),
    ],
)
def test_parse_scenario_names_the_mistake(text: str, needle: str) -> None:
    """A bad scenario raises ValueError naming the faulty part."""
    with pytest.raises(ValueError, match=needle):
        parse_scenario(text)


def test_phase_at_stays_in_the_last_phase() -> None:
    """Past the end, calls still in flight belong to the last phase."""
    phases = parse_scenario("healthy:1,storm:1")
    assert phase_at(phases, 0.5) == (0, 0.5)
    assert phase_at(phases, 1.5) == (1, 0.5)
    assert phase_at(phases, 9.0) == (1, 1.0)


def test_phase_faults_storm_takes_the_fallback_down_halfway() -> None:
    """In a storm the primary fails throughout; the fallback model only in the second half."""
    import random

    rng = random.Random(1)
    early = phase_faults("storm", 0.2, slow_delay=2, rng=rng)
    late = phase_faults("storm", 0.8, slow_delay=2, rng=rng)
    assert isinstance(early[0], Status)
    assert isinstance(late[0], Status)
    assert early[0].code == 503
    assert isinstance(early[1], Ok)
    assert isinstance(late[1], Status)
    slow = phase_faults("slow", 0.5, slow_delay=2, rng=rng)
    assert isinstance(slow[0], Delay)
    assert slow[0].seconds == 2
    assert isinstance(slow[1], Ok)


def test_percentile_nearest_rank() -> None:
    """Nearest-rank percentiles; None for no data."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_policy_toml_round_trips() -> None:
    """The TOML that check-config prints loads back into the same policy."""
    policy = demo_policy(DEMO_MODEL, DEMO_FALLBACK_MODEL)
    text = policy_toml(policy.model_dump(mode="json"))
    assert Policy.from_dict(tomllib.loads(text)) == policy


# -- the commands ---------------------------------------------------------------------------------


def test_cli_demo_headless(tmp_path: Path) -> None:
    """``demo --no-live`` plays a tiny scenario, exits 0, prints a summary and writes the PNG."""
    png = tmp_path / "out" / "timeline.png"
    result = CliRunner().invoke(
        build_app(),
        [
            "demo",
            "--scenario",
            "healthy:0.2,storm:0.4,recovery:0.3",
            "--rate",
            "30",
            "--no-live",
            "--png",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "summary by phase" in result.output
    assert f"timeline written to {png.resolve()}" in result.output
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_demo_rejects_a_bad_scenario() -> None:
    """A bad --scenario is a usage error (exit code 2) naming the phase."""
    result = CliRunner().invoke(build_app(), ["demo", "--scenario", "healthy:1,meltdown:2", "--no-png"])
    assert result.exit_code == 2
    assert "meltdown" in result.output


def test_check_config_prints_the_effective_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config on the example prints TOML that loads back into the same policy."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-test-azure")
    result = CliRunner().invoke(build_app(), ["check-config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert Policy.from_dict(tomllib.loads(result.stdout)) == Policy.from_file(EXAMPLE)
    assert "sk-test-azure" not in result.output


def test_check_config_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """--json prints the policy's model_dump as JSON."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-test-azure")
    result = CliRunner().invoke(build_app(), ["check-config", "--json", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == Policy.from_file(EXAMPLE).model_dump(mode="json")


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    """A broken file: exit code 2, one line per problem, each naming its key."""
    broken = tmp_path / "broken.toml"
    broken.write_text('[timeouts]\ntotal = -1\n\n[breaker]\nmode = "sometimes"\nfali_max = 3\n')
    result = CliRunner().invoke(build_app(), ["check-config", str(broken)])
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("timeouts.total:")
    assert lines[1].startswith("breaker.mode:")
    assert lines[2].startswith("breaker.fali_max:")
    assert "sometimes" in lines[1]
    assert "fail_max" in lines[2]


def test_check_config_names_a_missing_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example without AZURE_OPENAI_API_KEY: exit code 2, naming the target's api_key_env."""
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(build_app(), ["check-config", str(EXAMPLE)])
    assert result.exit_code == 2
    assert "fallback.targets.azure.api_key_env" in result.stdout


def test_check_config_never_echoes_a_key_pasted_as_the_variable_name(tmp_path: Path) -> None:
    """A key pasted into api_key_env (it looks like a variable name, none is set) is never printed."""
    pasted = "a3f9c2e4b7d1806f5e2c9a4b3d7f1e08"
    path = tmp_path / "pasted.toml"
    path.write_text(
        f'[fallback.targets.azure]\nbase_url = "https://azure.test/v1"\napi_key_env = "{pasted}"\n'
    )
    result = CliRunner().invoke(build_app(), ["check-config", str(path)])
    assert result.exit_code == 2
    assert result.stdout.startswith("fallback.targets.azure.api_key_env: ")
    assert pasted not in result.output


def test_main_without_the_cli_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without typer installed, the script says in one line which extra to install."""
    monkeypatch.setitem(sys.modules, "typer", None)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'resilient-openai[cli]'" in err
    assert "typer" in err
