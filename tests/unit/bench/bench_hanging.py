"""A bench module for the harness tests: starts a server process, then never finishes."""

import sys
import time

from bench.common import background_process, bench_main


def run(quick: bool = False) -> str:
    server = [sys.executable, "-c", "import time; time.sleep(600)"]
    with background_process("sleeper", server) as running:
        print(f"server pid {running.process.pid}", flush=True)
        time.sleep(600)
    return "## never reached\n"


if __name__ == "__main__":
    bench_main(run)
