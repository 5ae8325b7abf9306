"""Issue 2 benchmark: `alien.py pwd` versus the reference client's, cold process
each time, on the local test grid. Target: wall <= 0.5x, peak RSS <= 0.4x.

Both clients run as installed commands from their own venvs on the same
interpreter (ours: `pip install .` into .venv-this; alienpy 1.7.0 in .venv-ref).
The curl'd single-file form `python3 alien.py` is measured too: it compiles the
module on every start, which costs time and memory that the installed form
(cached bytecode) does not pay.

--before FILE adds, in the same run, the curl'd copy against an earlier alien.py
(e.g. `git show REV:alien.py > /tmp/alien_before.py`): a re-cut must not start slower."""
import argparse
import os

from common import REFERENCE, REPO, compare, installed_command, measure, start_grid

ap = argparse.ArgumentParser()
ap.add_argument('--runs', type=int, default=15)
ap.add_argument('--before', metavar='FILE', help='an earlier alien.py to compare the curl\'d copy with')
args = ap.parse_args()

installed = installed_command()
# The curl'd file runs on a venv's interpreter too, like the reference in .venv-ref:
# the global interpreter may load extra .pth files at start (this machine's import
# certifi costs ~30 ms) that neither client should be charged for.
curled = [os.path.join(os.path.dirname(installed[0]), 'python'), os.path.join(REPO, 'alien.py')]

state, env = start_grid()
measure(installed + ['pwd'], env)  # the first run with the user certificate writes the token
compare('pwd, installed commands', args.runs,
        {'alien.py (pip install .)': installed + ['pwd'], 'alienpy 1.7.0 (reference)': REFERENCE + ['pwd']}, env)
compare('pwd, single-file copy', args.runs,
        {'python3 alien.py (curl copy)': curled + ['pwd'], 'alienpy 1.7.0 (reference)': REFERENCE + ['pwd']}, env)
if args.before:
    # under its own name: a copy called alien_X.py would run the verb X (alien_<verb>)
    import shutil
    import tempfile
    before = os.path.join(tempfile.mkdtemp(prefix='alienpy-before-'), 'alien.py')
    shutil.copy(args.before, before)
    compare('pwd, single-file copy, this checkout against %s' % args.before, args.runs,
            {'alien.py (this checkout)': curled + ['pwd'], 'alien.py (before)': [curled[0], before, 'pwd']}, env)
    shutil.rmtree(os.path.dirname(before))
