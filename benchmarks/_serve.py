"""Child process for :func:`benchmarks._common.upstream_process`: a fake upstream on 127.0.0.1.

``python -m benchmarks._serve LATENCY`` prints the base URL, answers every request with
``Ok(latency=LATENCY)`` and exits when its stdin is closed.
"""

from __future__ import annotations

import sys

from resilient_openai import SYSTEM_CLOCK
from resilient_openai.testing import FakeUpstream, Ok

from ._common import server_fixes


def main(argv: list[str]) -> None:
    """Serve until stdin reaches end of file."""
    latency = float(argv[0]) if argv else 0.0
    upstream = FakeUpstream(clock=SYSTEM_CLOCK)
    upstream.set_default("*", Ok(latency=latency))
    with server_fixes(), upstream.serve("127.0.0.1") as base_url:
        print(base_url, flush=True)
        sys.stdin.read()  # blocks until the parent closes our stdin (or exits)


if __name__ == "__main__":
    main(sys.argv[1:])
