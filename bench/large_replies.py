"""Issue 3 benchmark: `ls -l` and `find` returning 100,000 entries, alien.py
versus the reference client on the same grid. Target: <= 0.5x wall and RSS."""
import argparse
import os
import subprocess

from common import ALIEN, REFERENCE, compare, grid, start_grid

ap = argparse.ArgumentParser()
ap.add_argument('--runs', type=int, default=5)
ap.add_argument('--entries', type=int, default=100000)
args = ap.parse_args()
state, env = start_grid()
big = state['home'] + 'big%d/' % args.entries
grid.populate(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '.testgrid-bench'), big, args.entries)
for label, line in (('ls -l of %d entries' % args.entries, ['ls', '-l', big]),
                    ('find of %d entries' % args.entries, ['find', big, '*'])):
    out = subprocess.run(ALIEN + line, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count('\n') >= args.entries, (out.returncode, out.stderr[:200])
    compare(label, args.runs, {'alien.py (this)': ALIEN + line, 'alienpy 1.7.0 (reference)': REFERENCE + line}, env)
