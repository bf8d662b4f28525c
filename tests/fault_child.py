"""Runs one core function in a child process for the fault tests (tests/faults.py).

``python tests/fault_child.py '{"call": "module:function", "args": [...], "kwargs": {...}}'``
An LczError ends the run like the command line does: one ``error:`` line, exit status 2.
Anything else is a bug and ends with its traceback, which the tests refuse.
"""

import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lcz_qgis_plugin.core.errors import LczError  # noqa: E402
from lcz_qgis_plugin.core.feedback import ConsoleFeedback  # noqa: E402


def main() -> int:
    spec = json.loads(sys.argv[1])
    module, name = spec["call"].split(":")
    function = getattr(importlib.import_module(module), name)
    try:
        function(*spec["args"], feedback=ConsoleFeedback(), **spec["kwargs"])
    except LczError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
