#!/usr/bin/env python3
"""cp re-run benchmark: a second download with every file already present.

A download records xattrs (user.md5, user.size, user.ts_w = the file's mtime);
a re-run skips a file whose size and mtime still match them and whose recorded
md5 is the catalogue's, without an access request and without reading it.
The baseline is the same re-run with the xattrs removed first: alien.py then does
what every re-run did before they existed (an access request and an md5 of each
present file), then records them again.

  1. 1,000 files of 10 KiB, recursive download, all present;
  2. one 1 GiB file, present.

Usage: .venv/bin/python bench/cp_rerun_bench.py [--runs N] [--files N] [--big-mib N]
Runs the installed command (pip install . into a venv that sees XRootD) and
prints wall times (median of N alternated cold runs) and the ratio.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import REPO, fresh_grid  # noqa: E402

COMMAND = []


def installed_with_xrootd():
    """alien.py installed from this checkout (pip install .) into .venv-bench-xrd, a venv
    with the XRootD bindings from PyPI (the same version as this interpreter's, when it
    has them). Not --system-site-packages: this machine's interpreter runs a sandbox
    .pth file at every start (about 40 ms) that no client on a worker node pays."""
    venv = os.path.join(REPO, '.venv-bench-xrd')
    pip = os.path.join(venv, 'bin', 'pip')
    if not os.path.exists(pip) or \
            'include-system-site-packages = true' in open(os.path.join(venv, 'pyvenv.cfg')).read():
        import shutil
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
        try:
            from importlib.metadata import version
            wanted = 'xrootd==' + version('xrootd')
        except Exception:
            wanted = 'xrootd'
        subprocess.run([pip, 'install', '-q', '--disable-pip-version-check', '--only-binary', ':all:', wanted],
                       check=True)
    subprocess.run([pip, 'install', '-q', '--disable-pip-version-check', '--no-deps',
                    '--force-reinstall', REPO], check=True)
    return [os.path.join(venv, 'bin', 'alien.py')]


def run(args, env):
    t0 = time.perf_counter()
    p = subprocess.run(COMMAND + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit('FAILED (%d): %s\n%s' % (p.returncode, ' '.join(args)[:300], p.stdout[-2000:]))
    return wall, p.stdout


def strip_xattrs(root):
    paths = [root] if os.path.isfile(root) else [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    for p in paths:
        for k in os.listxattr(p):
            if k.startswith('user.'):
                os.removexattr(p, k)


def compare(label, args, dst, env, runs, expect):
    samples = {'re-run, xattrs present': [], 're-run, re-hash (no xattrs)': []}
    for _ in range(runs):
        wall, out = run(args, env)
        assert expect in out, out
        samples['re-run, xattrs present'].append(wall)
        strip_xattrs(dst)
        wall, out = run(args, env)
        assert expect in out, out
        samples['re-run, re-hash (no xattrs)'].append(wall)
    print(label)
    med = {}
    for name, values in samples.items():
        med[name] = statistics.median(values)
        print('  %-30s %8.3f s   (runs: %s)' % (name, med[name], ', '.join('%.3f' % v for v in values)))
    print('  -> %.1fx faster with the xattrs' % (med['re-run, re-hash (no xattrs)'] / med['re-run, xattrs present']))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--files', type=int, default=1000)
    ap.add_argument('--big-mib', type=int, default=1024)
    a = ap.parse_args()
    COMMAND[:] = installed_with_xrootd()   # both runs pay the same start-up: cached bytecode
    with fresh_grid('.testgrid-bench-rerun', 'cp-rerun-bench-') as (state, env, scratch):
        home = state['home']
        print('machine: %d cores, load %s' % (os.cpu_count(), ' '.join('%.1f' % x for x in os.getloadavg())))
        small = os.path.join(scratch, 'small')
        os.makedirs(small)
        for i in range(a.files):
            with open(os.path.join(small, 'f%05d.dat' % i), 'wb') as f:
                f.write(os.urandom(10240))
        run(['cp', '-quiet', 'file:%s/' % small, '%ssmall/' % home], env)
        out = os.path.join(scratch, 'down')
        run(['cp', '-quiet', '%ssmall/' % home, 'file:%s/' % out], env)
        compare('\n%d x 10 KiB recursive download, all present' % a.files,
                ['cp', '%ssmall/' % home, 'file:%s/' % out], out, env, a.runs,
                '%d already present, 0 failed' % a.files)

        big = os.path.join(scratch, 'big.bin')
        block = os.urandom(1 << 20)
        with open(big, 'wb') as f:
            for _ in range(a.big_mib):
                f.write(block)
        run(['cp', '-quiet', 'file:' + big, '%sbig@disk:1' % home], env)
        os.unlink(big)
        out = os.path.join(scratch, 'big_down')
        run(['cp', '-quiet', '%sbig' % home, 'file:' + out], env)
        compare('\n%d MiB file, present' % a.big_mib, ['cp', '%sbig' % home, 'file:' + out], out, env, a.runs,
                '1 already present, 0 failed')

if __name__ == '__main__':
    main()
