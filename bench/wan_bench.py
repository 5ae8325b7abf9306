#!/usr/bin/env python3
"""WAN benchmark: alien.py versus the reference client (alienpy 1.7) with the
service AND the storage elements behind the test grid's delay relays
(testgrid/relay.py; default 25 ms each way = 50 ms RTT), in the same run,
alternating the clients so that machine load hits both alike:

  1. cold `pwd` (token present), also against the service without the relay:
     the difference is the time the network costs, to compare with the
     round-trip floor (see docs/wan.md);
  2. `ls -l` of a directory of 10,000 entries;
  3. 1,000 x 10 KiB recursive upload (2 replicas each) and download.

Usage: python3 bench/wan_bench.py [--delay-ms 25] [--runs 7] [--copy-runs 1] [--files 1000]
         [--entries 10000] [--skip-reference] [--skip-copies]
pwd and ls run both clients as installed commands (alien.py from this checkout in
.venv-this); cp runs `python3 alien.py` with this interpreter, which has XRootD.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from common import REPO, finish, grid, timed  # noqa: E402


def copies(label, runs, commands):
    """commands: name -> function(run index) -> seconds; alternated, medians printed."""
    samples = {name: [] for name in commands}
    for r in range(runs):
        for name, fn in commands.items():
            samples[name].append(fn(r))
    print('%s (median of %d runs)' % (label, runs))
    med = {}
    for name, values in samples.items():
        med[name] = statistics.median(values)
        print('  %-28s %8.2f s   (runs: %s)' % (name, med[name], ', '.join('%.2f' % v for v in values)))
    names = list(commands)
    if len(names) == 2:
        print('  speed %s / %s = %.1fx' % (names[0], names[1], med[names[1]] / med[names[0]]))
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--delay-ms', type=float, default=25.0, help='one-way delay of every relay')
    ap.add_argument('--runs', type=int, default=7, help='cold runs of pwd and ls')
    ap.add_argument('--copy-runs', type=int, default=1)
    ap.add_argument('--files', type=int, default=1000)
    ap.add_argument('--entries', type=int, default=10000)
    ap.add_argument('--skip-reference', action='store_true')
    ap.add_argument('--skip-copies', action='store_true', help='pwd and ls only')
    a = ap.parse_args()

    workdir = os.path.join(REPO, '.testgrid-bench-wan')
    state = grid.start(workdir, fresh=True, delay_ms=a.delay_ms)
    scratch = tempfile.mkdtemp(prefix='wan-bench-')
    try:
        env = dict(os.environ, **state['env'])
        for k in ('ALIENPY_DEBUG', 'XRD_CPUSEPGWRTRD'):
            env.pop(k, None)
        ours = common.installed_command()   # pwd, ls: startup counts, as for the reference's installed command
        ours_cp = common.ALIEN               # cp: this interpreter has the XRootD bindings
        ref = None if a.skip_reference else common.REFERENCE
        ref_env = dict(env, JALIEN_TOKEN_CERT=os.path.join(scratch, 'ref_tokencert.pem'),
                       JALIEN_TOKEN_KEY=os.path.join(scratch, 'ref_tokenkey.pem'))
        if ref:
            subprocess.run(ref + ['token-init'], env=ref_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        home = state['home']
        print('machine: %d cores, load %s; relays add %.0f ms each way (RTT %.0f ms) in front of the service '
              'and both SEs' % (os.cpu_count(), ' '.join('%.1f' % x for x in os.getloadavg()), a.delay_ms,
                                2 * a.delay_ms))

        # ---- 1. cold pwd -----------------------------------------------------------
        direct = dict(env, ALIENPY_JCENTRAL_PORT=str(state['service']['port']))
        ref_direct = dict(ref_env, ALIENPY_JCENTRAL_PORT=str(state['service']['port']))
        cmds = {'alien.py pwd': (ours + ['pwd'], env)}
        if ref:
            cmds['alienpy pwd'] = (ref + ['pwd'], ref_env)
        cmds['alien.py pwd, no relay'] = (ours + ['pwd'], direct)
        if ref:
            cmds['alienpy pwd, no relay'] = (ref + ['pwd'], ref_direct)
        samples = {name: [] for name in cmds}
        for _ in range(a.runs):
            for name, (cmd, e) in cmds.items():
                wall, rss, rc, cpu = common.measure(cmd, e)
                if rc:
                    raise SystemExit('%s exited %d' % (name, rc))
                samples[name].append(wall)
        print('cold pwd (median of %d runs, installed commands)' % a.runs)
        med = {n: statistics.median(v) for n, v in samples.items()}
        for n in cmds:
            print('  %-28s %8.3f s' % (n, med[n]))
        rtt = 2 * a.delay_ms / 1000.0
        print('  alien.py: network part %.3f s = %.1f RTT (floor through the relay: 3 RTT = %.3f s; '
              'on a real WAN add 1 RTT for TCP)' % (med['alien.py pwd'] - med['alien.py pwd, no relay'],
                                                     (med['alien.py pwd'] - med['alien.py pwd, no relay']) / rtt,
                                                     3 * rtt))
        if ref:
            print('  alienpy:  network part %.3f s = %.1f RTT' % (
                med['alienpy pwd'] - med['alienpy pwd, no relay'],
                (med['alienpy pwd'] - med['alienpy pwd, no relay']) / rtt))
            print('  speed alien.py / alienpy = %.1fx' % (med['alienpy pwd'] / med['alien.py pwd']))

        # ---- 2. ls -l of 10,000 entries ------------------------------------------------
        big = home + 'wan_ls/'
        grid.populate(workdir, big, a.entries)
        cmds = {'alien.py ls -l': ours + ['ls', '-l', big]}
        if ref:
            cmds['alienpy ls -l'] = ref + ['ls', '-l', big]
        copies('\nls -l of %d entries' % a.entries, a.runs,
               {n: (lambda r, c=c, n=n: timed(c, ref_env if n.startswith('alienpy') else env))
                for n, c in cmds.items()})

        # ---- 3. 1,000 x 10 KiB upload and download --------------------------------------
        if a.skip_copies:
            return
        small = os.path.join(scratch, 'small')
        os.makedirs(small)
        for i in range(a.files):
            with open(os.path.join(small, 'f%05d.dat' % i), 'wb') as f:
                f.write(os.urandom(10240))
        up = {'alien.py cp (upload)': lambda r: timed(ours_cp + ['cp', '-quiet', 'file:%s/' % small,
                                                              '%sup_ours_%d/' % (home, r)], env)}
        if ref:
            up['alienpy cp (upload)'] = lambda r: timed(ref + ['cp', 'file:%s/' % small, '%sup_ref_%d/' % (home, r)],
                                                        ref_env)
        copies('\n%d x 10 KiB recursive upload, 2 replicas each, default options' % a.files, a.copy_runs, up)

        def down(cmd, e, tag):
            def run(r):
                out = os.path.join(scratch, 'd_%s_%d' % (tag, r))
                try:
                    return timed(cmd + ['%sup_ours_0/' % home, 'file:%s/' % out], e)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
            return run
        dn = {'alien.py cp (download)': down(ours_cp + ['cp', '-quiet'], env, 'ours')}
        if ref:
            dn['alienpy cp (download)'] = down(ref + ['cp'], ref_env, 'ref')
        copies('\n%d x 10 KiB recursive download, default options' % a.files, a.copy_runs, dn)
    finally:
        finish(scratch, workdir)


if __name__ == '__main__':
    main()
