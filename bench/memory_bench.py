#!/usr/bin/env python3
"""Memory at scale: `cp` of 100,000 files, planned and run, on the test grid (loopback).

  1. a recursive download of a directory of N entries (tiny real files on an SE);
  2. `cp -input LIST` with N lines "LFN file:DST" (the same files).

For each: peak RSS of the client process, the time from the listing arriving (the
`find` reply; for -input, the start of the command, the list being local) to the
first transfer starting, and the total time. `--dryrun` plans only (cp -dryrun).

Usage: .venv/bin/python bench/memory_bench.py [--entries 100000] [--size 100] [--dryrun] [--client PATH/alien.py]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import REPO, grid  # noqa: E402

# Runs the client in a fresh interpreter, marking when the listing arrived and
# when the first transfer started (the client's own functions, wrapped).
_PROBE = r'''
import importlib.util, json, os, resource, sys, time
spec = importlib.util.spec_from_file_location('alien', sys.argv[1])   # exactly that file
alien = importlib.util.module_from_spec(spec)
sys.modules['alien'] = alien
spec.loader.exec_module(alien)
marks = {'start': time.monotonic()}
_request = alien.Session.request
def request(self, command, *a, **k):
    r = _request(self, command, *a, **k)
    if command == 'find':
        marks.setdefault('listing', time.monotonic())
    return r
alien.Session.request = request
def wrap(fn):
    def first(*a, **k):
        marks.setdefault('first', time.monotonic())
        return fn(*a, **k)
    return first
for name in ('_copy_one', '_copy_batch'):
    if hasattr(alien, name):
        setattr(alien, name, wrap(getattr(alien, name)))
if hasattr(alien, 'VerifiedRead'):   # small downloads start without _copy_one
    alien.VerifiedRead.start = wrap(alien.VerifiedRead.start)
try:
    code = alien.main(sys.argv[2:])
except SystemExit as e:
    code = e.code
marks['end'] = time.monotonic()
marks['rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
marks['code'] = code
sys.stderr.write('PROBE ' + json.dumps(marks) + '\n')
'''


def probe(client, args, env):
    p = subprocess.run([sys.executable, '-c', _PROBE, client] + args, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, universal_newlines=True)
    line = [x for x in p.stderr.splitlines() if x.startswith('PROBE ')]
    if not line:
        raise SystemExit('probe failed:\n' + p.stderr[-2000:])
    m = json.loads(line[-1][6:])
    m['client'] = client
    since = m.get('listing', m['start'])
    first = ('%.2f s' % (m['first'] - since)) if 'first' in m else '-'
    print('  exit %s, peak RSS %.1f MiB, total %.1f s, first transfer %s after the listing'
          % (m['code'], m['rss_mib'], m['end'] - m['start'], first))
    other = [x for x in p.stderr.splitlines() if not x.startswith('PROBE ')]
    if other:
        print('  stderr: ' + ' | '.join(other[-3:])[:300])
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--entries', type=int, default=100000)
    ap.add_argument('--size', type=int, default=100, help='bytes per file')
    ap.add_argument('--dryrun', action='store_true', help='plan only (cp -dryrun)')
    ap.add_argument('--client', default=os.path.join(REPO, 'alien.py'))
    ap.add_argument('--only', choices=('recursive', 'input'), help='run one of the two')
    ap.add_argument('--keep-grid', action='store_true',
                    help='leave the grid running at the end, and reuse a running populated one')
    a = ap.parse_args()
    workdir = os.path.join(REPO, '.testgrid-bench-memory')
    home = grid.HOME
    src = home + 'mem%d/' % a.entries
    running = grid.load_state(workdir) if a.keep_grid else None
    reuse = bool(running and grid._running(running) and running.get('populated') == [src, a.size])
    state = grid.start(workdir, fresh=not reuse)
    env = dict(os.environ, **state['env'])
    env.pop('ALIENPY_DEBUG', None)
    scratch = tempfile.mkdtemp(prefix='mem-bench-')
    try:
        t = time.time()
        if not reuse:
            grid.populate(workdir, src, a.entries, se=state['ses'][0]['name'], size=a.size)
            state['populated'] = [src, a.size]
            grid._save_state(workdir, state)
        print('%d entries of %d bytes in %s (made in %.0f s); client %s; load %s' % (
            a.entries, a.size, src, time.time() - t, a.client, ' '.join('%.1f' % x for x in os.getloadavg())))
        dry = ['-dryrun'] if a.dryrun else []
        if a.only != 'input':
            print('recursive download%s:' % (' (dry run)' if dry else ''))
            probe(a.client, ['cp', '-quiet'] + dry + [src, 'file:%s/rec/' % scratch], env)
            shutil.rmtree(os.path.join(scratch, 'rec'), ignore_errors=True)
        if a.only == 'recursive':
            return
        listing = os.path.join(scratch, 'list.txt')
        width = max(6, len(str(a.entries)))
        with open(listing, 'w') as f:
            for i in range(a.entries):
                name = 'file_%0*d.dat' % (width, i)
                f.write('%s%s file:%s/inp/%s\n' % (src, name, scratch, name))
        print('cp -input with %d lines%s:' % (a.entries, ' (dry run)' if dry else ''))
        probe(a.client, ['cp', '-quiet'] + dry + ['-input', listing], env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not a.keep_grid:
            grid.stop(workdir)


if __name__ == '__main__':
    main()
