"""``python -m t2ijax <command> ...``: see `t2ijax.cli`."""

from t2ijax.cli import main

if __name__ == "__main__":
    main()
