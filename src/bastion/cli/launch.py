"""The ``bastion`` executable. ``bastion serve`` runs under the watchdog (``api/watchdog.py``):
this process stays small and watches the real command, run in a child process; every other
verb runs here directly."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["serve"] and "--watchdog-fd" not in args:
        from bastion.api.watchdog import watch  # noqa: PLC0415 - the standard library only

        sys.exit(watch(args))
    from bastion.cli.main import main as run  # noqa: PLC0415

    run()
