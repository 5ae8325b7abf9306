"""Issue 2 benchmark: `alien.py pwd` versus the reference client's, cold process
each time, on the local test grid. Target: wall <= 0.5x, peak RSS <= 0.4x."""
import argparse

from common import ALIEN, REFERENCE, compare, measure, start_grid

ap = argparse.ArgumentParser()
ap.add_argument('--runs', type=int, default=15)
args = ap.parse_args()
state, env = start_grid()
measure(ALIEN + ['pwd'], env)  # first run with the user certificate writes the token
m = compare('pwd', args.runs, {'alien.py (this)': ALIEN + ['pwd'],
                               'alienpy 1.7.0 (reference)': REFERENCE + ['pwd']}, env)
