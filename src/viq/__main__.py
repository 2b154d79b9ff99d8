"""``python -m viq <command> ...`` — the same as the ``viq`` console script (also under
``torchrun -m viq train ...``)."""

from viq.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
