"""``python -m durable``: the ``durable`` command (:mod:`durable.cli`), for where the script that
``pip install`` puts beside the interpreter is not on ``PATH``."""

from durable.cli import main

if __name__ == "__main__":
    main(prog_name="durable")
