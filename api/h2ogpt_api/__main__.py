"""`python -m h2ogpt_api`: the `h2ogpt-api` command (how --workers starts its processes)."""

from h2ogpt_api.cli import main

if __name__ == "__main__":
    main()
