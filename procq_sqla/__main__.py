"""`python -m procq_sqla`: the same command line as the `procq` script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
