#!/usr/bin/env python3
"""Launcher installed as the `alien.py` command by `pip install .`, and under the
reference client's names (`alien_ls`, `alien-token-init`, ...: links to this file in
packaging/): main() reads the verb from the program name.

The command and the module share the name alien.py; Python puts the command's
own directory first on sys.path, so without this launcher `import alien` would
import the command itself. It removes that directory and runs the installed
module, whose bytecode pip has cached (a curl'd copy is compiled at each start)."""
import os
import sys

_here = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or '.') != _here]
from alien import leave, main  # noqa: E402

if __name__ == '__main__':
    leave(main())
