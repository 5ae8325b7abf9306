#!/usr/bin/env python3
"""WAN benchmark: alien.py versus the reference client (alienpy 1.7) with the
service AND the storage elements behind the test grid's delay relays
(testgrid/relay.py; default 25 ms each way = 50 ms RTT), in the same run,
alternating the clients so that machine load hits both alike. The service
behaves like the real endpoint (one commander per session, the 1 s hand-off)
and charges --cost-ms for every access and commit, as a real one does.

  pwd       cold `pwd` (token present), also without the relay: the time the
            network costs, against the round-trip floor (docs/wan.md);
  ls        `ls -l` of a directory of --entries entries;
  copies    --files x 10 KiB recursive upload (2 replicas each) and download;
  small     --small files up and down over the WAN and on a LAN grid (a second
            grid without relays): the difference in round trips;
  options   the same --small upload with the ways to send requests safely:
            checked pipelining on 4 sessions (the default) and on one
            (ALIENPY_SESSIONS=1), one request in flight (ALIENPY_PIPELINE=0),
            and one in flight on --sessions sessions at once (as many
            processes, each with its share of the files);
  throttled --throttled files up and down, both clients, on the 2024 throttle
            after ~120 logins (every command sleeps over a second): wall time,
            requests and logins each client spent.

Usage: .venv/bin/python bench/wan_bench.py [--delay-ms 25] [--cost-ms 6] [--runs 7] [--copy-runs 1]
         [--files 1000] [--small 100] [--sessions 8] [--throttled 10] [--entries 10000]
         [--only pwd,ls,copies,small,options,throttled] [--skip-reference]
pwd and ls run both clients as installed commands (alien.py from this checkout in
.venv-this); the copies run `python3 alien.py` with this interpreter, which has XRootD.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from common import REPO, finish, grid, timed  # noqa: E402

SECTIONS = ('pwd', 'ls', 'copies', 'small', 'options', 'throttled')


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
        print('  %-34s %8.2f s   (runs: %s)' % (name, med[name], ', '.join('%.2f' % v for v in values)))
    names = list(commands)
    if len(names) == 2:
        print('  speed %s / %s = %.1fx' % (names[0], names[1], med[names[1]] / med[names[0]]))
    return med


def small_tree(root, n, size=10240):
    os.makedirs(root)
    for i in range(n):
        with open(os.path.join(root, 'f%05d.dat' % i), 'wb') as f:
            f.write(os.urandom(size))
    return root


def counted(workdir, cmd, env):
    """(wall seconds, exit code, logins, requests, {command: n}) of one run, from the
    service's log; a failure does not end the benchmark (a client may fail here)."""
    count = grid.request_counter(workdir)
    t0 = time.perf_counter()
    code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t0
    logins, commands = count()
    return wall, code, logins, sum(commands.values()), commands


def show_counts(name, wall, code, logins, requests, commands):
    print('  %-34s %8.2f s   exit %d   %3d logins %5d requests (%s)' % (
        name, wall, code, logins, requests, ', '.join('%s %d' % kv for kv in sorted(commands.items()))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--delay-ms', type=float, default=25.0, help='one-way delay of every relay')
    ap.add_argument('--cost-ms', type=float, default=6.0, help='what the service spends on each access and commit')
    ap.add_argument('--runs', type=int, default=7, help='cold runs of pwd and ls')
    ap.add_argument('--copy-runs', type=int, default=1)
    ap.add_argument('--files', type=int, default=1000)
    ap.add_argument('--small', type=int, default=100)
    ap.add_argument('--sessions', type=int, default=8)
    ap.add_argument('--throttled', type=int, default=10)
    ap.add_argument('--entries', type=int, default=10000)
    ap.add_argument('--only', default=','.join(SECTIONS))
    ap.add_argument('--skip-reference', action='store_true')
    a = ap.parse_args()
    only = set(a.only.split(','))

    workdir = os.path.join(REPO, '.testgrid-bench-wan')
    lan_dir = os.path.join(REPO, '.testgrid-bench-lan')
    state = grid.start(workdir, fresh=True, delay_ms=a.delay_ms)
    lan = grid.start(lan_dir, fresh=True) if only & {'small'} else None
    cost = {'cost_ms': {'access': a.cost_ms, 'commit': a.cost_ms}}
    for d in (workdir, lan_dir) if lan else (workdir,):
        grid.set_service(d, cost)
    scratch = tempfile.mkdtemp(prefix='wan-bench-')
    rtt = 2 * a.delay_ms / 1000.0
    try:
        env = dict(os.environ, **state['env'])
        for k in ('ALIENPY_DEBUG', 'XRD_CPUSEPGWRTRD'):
            env.pop(k, None)
        ours = common.installed_command() if only & {'pwd', 'ls'} else None
        ours_cp = common.ALIEN               # cp: this interpreter has the XRootD bindings
        ref = None if a.skip_reference else common.REFERENCE
        ref_env = dict(env, JALIEN_TOKEN_CERT=os.path.join(scratch, 'ref_tokencert.pem'),
                       JALIEN_TOKEN_KEY=os.path.join(scratch, 'ref_tokenkey.pem'))
        if ref:
            subprocess.run(ref + ['token-init'], env=ref_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(ours_cp + ['pwd'], env=env, stdout=subprocess.DEVNULL)   # our token
        home = state['home']
        print('machine: %d cores, load %s; relays add %.0f ms each way (RTT %.0f ms) in front of the service '
              'and both SEs; the service spends %g ms on each access and commit'
              % (os.cpu_count(), ' '.join('%.1f' % x for x in os.getloadavg()), a.delay_ms, 2 * a.delay_ms,
                 a.cost_ms))

        if 'pwd' in only:
            cold_pwd(a, state, env, ref_env, ours, ref, rtt)
        if 'ls' in only:
            big = home + 'wan_ls/'
            grid.populate(workdir, big, a.entries)
            cmds = {'alien.py ls -l': ours + ['ls', '-l', big]}
            if ref:
                cmds['alienpy ls -l'] = ref + ['ls', '-l', big]
            copies('\nls -l of %d entries' % a.entries, a.runs,
                   {n: (lambda r, c=c, n=n: timed(c, ref_env if n.startswith('alienpy') else env))
                    for n, c in cmds.items()})
        if 'copies' in only:
            many_files(a, env, ref_env, ours_cp, ref, home, scratch)
        if 'small' in only:
            lan_versus_wan(a, state, lan, env, ours_cp, scratch, rtt)
        if 'options' in only:
            request_options(a, workdir, env, ours_cp, home, scratch)
        if 'throttled' in only:
            throttled(a, workdir, env, ref_env, ours_cp, ref, home, scratch)
    finally:
        if lan:
            grid.stop(lan_dir)
            shutil.rmtree(lan_dir, ignore_errors=True)
        finish(scratch, workdir)


def cold_pwd(a, state, env, ref_env, ours, ref, rtt):
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
    net = med['alien.py pwd'] - med['alien.py pwd, no relay']
    print('  alien.py: network part %.3f s = %.1f RTT (floor through the relay: 3 RTT = %.3f s; '
          'on a real WAN add 1 RTT for TCP)' % (net, net / rtt, 3 * rtt))
    if ref:
        net = med['alienpy pwd'] - med['alienpy pwd, no relay']
        print('  alienpy:  network part %.3f s = %.1f RTT' % (net, net / rtt))
        print('  speed alien.py / alienpy = %.1fx' % (med['alienpy pwd'] / med['alien.py pwd']))


def many_files(a, env, ref_env, ours_cp, ref, home, scratch):
    small = small_tree(os.path.join(scratch, 'small'), a.files)
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


def lan_versus_wan(a, state, lan, env, ours_cp, scratch, rtt):
    """The same upload and download on the WAN grid and on a LAN grid: the WAN
    costs (difference) / RTT round trips; the target is 10."""
    lan_env = dict(os.environ, **lan['env'])
    lan_env.pop('ALIENPY_DEBUG', None)
    subprocess.run(ours_cp + ['pwd'], env=lan_env, stdout=subprocess.DEVNULL)
    tree = small_tree(os.path.join(scratch, 'lan_wan'), a.small)
    grids = (('LAN', lan, lan_env), ('WAN', state, env))
    ups = {name: [] for name, _, _ in grids}
    downs = {name: [] for name, _, _ in grids}
    for r in range(max(3, a.copy_runs)):
        for name, st, e in grids:
            g = '%slw_%d/' % (st['home'], r)
            ups[name].append(timed(ours_cp + ['cp', '-quiet', 'file:%s/' % tree, g], e))
            out = os.path.join(scratch, 'lw_%s_%d' % (name, r))
            downs[name].append(timed(ours_cp + ['cp', '-quiet', g, 'file:%s/' % out], e))
            shutil.rmtree(out, ignore_errors=True)
    print('\n%d x 10 KiB up and down, 2 replicas, LAN grid against WAN grid (median of %d runs)'
          % (a.small, len(ups['LAN'])))
    for what, samples in (('upload', ups), ('download', downs)):
        lan_t, wan_t = statistics.median(samples['LAN']), statistics.median(samples['WAN'])
        print('  %-9s LAN %6.2f s   WAN %6.2f s   WAN - LAN = %.2f s = %.1f RTT (target: at most 10)'
              % (what, lan_t, wan_t, wan_t - lan_t, (wan_t - lan_t) / rtt))


def request_options(a, workdir, env, ours_cp, home, scratch):
    """One upload of --small files, three ways to keep every reply its own."""
    tree = small_tree(os.path.join(scratch, 'options'), a.small)
    parts = os.path.join(scratch, 'options_parts')
    for k in range(a.sessions):   # the files split over the sessions
        os.makedirs(os.path.join(parts, str(k)))
    for i, name in enumerate(sorted(os.listdir(tree))):
        os.link(os.path.join(tree, name), os.path.join(parts, str(i % a.sessions), name))
    print('\n%d x 10 KiB upload, 2 replicas: how requests are kept safe (time, logins and requests from the '
          'service log)' % a.small)

    def several(g):
        count = grid.request_counter(workdir)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(ours_cp + ['cp', '-quiet', 'file:%s/' % os.path.join(parts, str(k)), g],
                                  env=dict(env, ALIENPY_PIPELINE='0'), stdout=subprocess.DEVNULL)
                 for k in range(a.sessions)]
        code = max(p.wait() for p in procs)
        wall = time.perf_counter() - t0
        logins, commands = count()
        return wall, code, logins, sum(commands.values()), commands

    for r in range(max(1, a.copy_runs)):
        show_counts('checked pipelining, 4 sessions',
                    *counted(workdir, ours_cp + ['cp', '-quiet', 'file:%s/' % tree, '%sopt_p_%d/' % (home, r)], env))
        show_counts('checked pipelining, 1 session',
                    *counted(workdir, ours_cp + ['cp', '-quiet', 'file:%s/' % tree, '%sopt_q_%d/' % (home, r)],
                             dict(env, ALIENPY_SESSIONS='1')))
        show_counts('one in flight',
                    *counted(workdir, ours_cp + ['cp', '-quiet', 'file:%s/' % tree, '%sopt_1_%d/' % (home, r)],
                             dict(env, ALIENPY_PIPELINE='0')))
        show_counts('one in flight, %d sessions' % a.sessions, *several('%sopt_s_%d/' % (home, r)))


def throttled(a, workdir, env, ref_env, ours_cp, ref, home, scratch):
    """Both clients on the 2024 throttle, after ~120 logins: every command sleeps
    about 1.1 s before it runs, over the 1 s hand-off."""
    tree = small_tree(os.path.join(scratch, 'throttled'), a.throttled)
    grid.set_service(workdir, {'cost_ms': {'access': a.cost_ms, 'commit': a.cost_ms},
                               'throttle': True, 'throttle_start': 1200})
    print('\n%d x 10 KiB up and down, 2 replicas, on the 2024 throttle after ~120 logins '
          '(each command first sleeps over a second)' % a.throttled)
    try:
        show_counts('alien.py cp (upload)', *counted(workdir, ours_cp + ['cp', '-quiet', 'file:%s/' % tree,
                                                                          '%sthr_ours/' % home], env))
        if ref:
            show_counts('alienpy cp (upload)', *counted(workdir, ref + ['cp', 'file:%s/' % tree,
                                                                         '%sthr_ref/' % home], ref_env))
        show_counts('alien.py cp (download)', *counted(workdir, ours_cp + [
            'cp', '-quiet', '%sthr_ours/' % home, 'file:%s/' % os.path.join(scratch, 'thr_ours')], env))
        if ref:
            show_counts('alienpy cp (download)', *counted(workdir, ref + [
                'cp', '%sthr_ours/' % home, 'file:%s/' % os.path.join(scratch, 'thr_ref')], ref_env))
    finally:
        grid.set_service(workdir, {'cost_ms': {'access': a.cost_ms, 'commit': a.cost_ms}})


if __name__ == '__main__':
    main()
