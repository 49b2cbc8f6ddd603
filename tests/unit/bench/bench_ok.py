"""A bench module for the harness tests: finishes and returns its section."""

from bench.common import bench_main


def run(quick: bool = False) -> str:
    return f"## Sample bench\n\nquick={quick}\n"


if __name__ == "__main__":
    bench_main(run)
