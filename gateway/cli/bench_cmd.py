"""`agentspace bench`: run the benchmark harness (`python -m bench`) from the source checkout this gateway runs from.

The harness lives beside the package, not in it (it drives the gateway from outside, in other processes), so this
command only finds it and hands over every argument.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import gateway


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure the gateway against a bare relay and the direct SDK (python -m bench)",
        add_help=False,  # --help goes to the harness, which knows its own options
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed to `python -m bench` (try --help, --quick)")
    parser.set_defaults(handler=run, passthrough=True)


def checkout_root() -> Path | None:
    root = Path(gateway.__file__).resolve().parent.parent
    return (
        root
        if (root / "bench" / "__main__.py").is_file() and (root / "tests" / "fake_anthropic.py").is_file()
        else None
    )


def run(args: argparse.Namespace) -> int:
    root = checkout_root()
    if root is None:
        print(
            "agentspace: the benchmark needs a source checkout (bench/ and tests/ beside gateway/); "
            "install with `pip install -e .` from one",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *args.args], cwd=root)
