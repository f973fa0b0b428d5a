"""One worker process for the multi-process shared-breaker tests (run as a script).

``python _worker.py REDIS_URL NAMESPACE BASE_URL SECONDS [THREADS]``: builds a resilient client
with shared breakers, prints ``ready``, waits for a line on stdin, then calls the upstream every
10 ms from each of THREADS threads (default 1) for SECONDS, and prints a JSON summary: calls
sent upstream, refused by the breaker, and every call as ``[start, kind, seconds]`` (start in
seconds since ``go``; kind ``ok``, ``failed``, ``refused`` or the name of any other exception,
which no caller should ever see).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import openai

from resilient_openai import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy, SharedPolicy, resilient

#: fail_max 5; a 0.3 s first break, doubling: over a 1 s run, probes near 0.3 s and 0.9 s.
POLICY = BreakerPolicy(fail_max=5, break_duration=0.3, break_multiplier=2.0, break_max=5.0)


def main(redis_url: str, namespace: str, base_url: str, seconds: float, threads: int) -> None:
    policy = Policy(
        retry=RetryPolicy(rules={}), breaker=POLICY, shared=SharedPolicy(url=redis_url, namespace=namespace)
    )
    client = resilient(openai.OpenAI(api_key="sk-worker", base_url=base_url, max_retries=0), policy)
    calls: list[tuple[float, str, float]] = []
    print("ready", flush=True)
    sys.stdin.readline()
    go = time.monotonic()

    def run() -> None:
        while (start := time.monotonic()) < go + seconds:
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                kind = "ok"
            except CircuitOpenError:
                kind = "refused"
            except openai.APIError:
                kind = "failed"
            except Exception as exc:  # what no caller should meet: reported, not hidden
                kind = type(exc).__name__
            calls.append((start - go, kind, time.monotonic() - start))
            time.sleep(0.01)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    sent = sum(1 for _, kind, _ in calls if kind in ("ok", "failed"))
    refused = sum(1 for _, kind, _ in calls if kind == "refused")
    print(json.dumps({"sent": sent, "refused": refused, "calls": calls}), flush=True)


if __name__ == "__main__":
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), threads)
