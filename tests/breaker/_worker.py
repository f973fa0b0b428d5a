"""One worker process for the multi-process shared-breaker tests (run as a script).

``python _worker.py REDIS_URL NAMESPACE BASE_URL SECONDS``: builds a resilient client with
shared breakers, prints ``ready``, waits for a line on stdin, then calls the upstream every
10 ms for SECONDS and prints a JSON summary: calls sent upstream, refused by the breaker.
"""

from __future__ import annotations

import json
import sys
import time

import openai

from resilient_openai import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy, resilient
from resilient_openai._policy import SharedPolicy

#: fail_max 5; a 0.3 s first break, doubling: over a 1 s run, probes near 0.3 s and 0.9 s.
POLICY = BreakerPolicy(fail_max=5, break_duration=0.3, break_multiplier=2.0, break_max=5.0)


def main(redis_url: str, namespace: str, base_url: str, seconds: float) -> None:
    policy = Policy(
        retry=RetryPolicy(rules={}), breaker=POLICY, shared=SharedPolicy(url=redis_url, namespace=namespace)
    )
    client = resilient(openai.OpenAI(api_key="sk-worker", base_url=base_url, max_retries=0), policy)
    print("ready", flush=True)
    sys.stdin.readline()
    sent = refused = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            sent += 1
        except CircuitOpenError:
            refused += 1
        except openai.APIError:
            sent += 1
        time.sleep(0.01)
    print(json.dumps({"sent": sent, "refused": refused}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
