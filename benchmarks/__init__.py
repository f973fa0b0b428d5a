"""Benchmarks for resilient-openai, each measured side by side with the raw ``openai`` SDK.

One module per question, each with a ``run(...)`` that measures and a ``report(...)`` that
renders a Markdown section:

- :mod:`benchmarks.success_path` - what one successful chat completion costs through each stack;
- :mod:`benchmarks.concurrency` - whether threads and asyncio tasks serialize on a shared breaker;
- :mod:`benchmarks.rejection` - how fast an open circuit answers;
- :mod:`benchmarks.outage` - what callers see during a 10 s upstream outage;
- :mod:`benchmarks.memory` - whether the cache and a long run stay within bounds;
- :mod:`benchmarks.fleet` - 4 worker processes through an outage: per-process breakers, breakers
  shared through Redis, and pybreaker's own ``CircuitRedisStorage``.

``python -m benchmarks`` runs them all and rewrites ``benchmarks/RESULTS.md``. Nothing here
asserts a timing: these are measurements, reported with the goals they are compared against.
"""
