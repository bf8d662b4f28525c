"""``python -m training <command>``; see :mod:`training.cli`."""

from .cli import main

raise SystemExit(main())
