"""A bench module for the harness tests: fails the way a broken benchmark does."""

from bench.common import bench_main


def run(quick: bool = False) -> str:
    raise RuntimeError("the sample bench failed on purpose")


if __name__ == "__main__":
    bench_main(run)
