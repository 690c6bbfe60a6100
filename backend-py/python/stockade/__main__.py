"""``python -m stockade`` and the ``stockade`` console script: the Rust command line."""

import sys

from ._native import cli_main


def main() -> int:
    return cli_main(["stockade", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
