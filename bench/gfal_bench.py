#!/usr/bin/env python3
"""Benchmark of `alien.py gfal` (prints figures; not a test).

1. COPY of N x 10 KiB files file:// -> root:// (a local xrootd on loopback):
   alien.py gfal copy with several `parallel` values versus a sequential
   one-file-at-a-time gfal2 filecopy loop (what the pdm worker did).
2. LIST depth -1 of a 10,000-entry tree on root:// and file://: alien.py gfal
   list versus (a) a gfal-ls -l style recursion in-process (gfal2 listdir +
   stat per entry) and (b) gfal2-util's gfal-ls -l run once per directory.
3. davs:// on the WebDAV sites of testgrid/davs.py (XrdHttp on loopback):
   COPY of N x 10 KiB file:// -> davs:// and davs -> davs (site a -> site b),
   and of one large file davs -> davs, by alien.py gfal copy versus gfal2-util's
   gfal-copy run once per file and with its bulk forms (--from-file, -r). The
   sites trust each other's CA here (one grid, as with IGTF), so one credential
   works for gfal-copy and davs -> davs is a third-party copy (pull); the
   streamed mode is measured too. Also the test grid's case, sites that trust
   only their own CA, copied with two credentials (gfal-copy cannot: one -E).

Run with the interpreter that has gfal2 (Debian: /usr/bin/python3):
    /usr/bin/python3 bench/gfal_bench.py [--files 1000] [--tree 10000] [--davs-files 200]
    /usr/bin/python3 bench/gfal_bench.py --davs-only       # section 3 only
"""

import argparse
import json
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testgrid import davs, relay, tools  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_xrootd(top):
    """One xrootd serving top/data on a free port; returns (url, proc)."""
    data, admin = os.path.join(top, 'data'), os.path.join(top, 'admin')
    for d in (data, admin):
        os.makedirs(d, exist_ok=True)
    cfg = os.path.join(top, 'xrd.cfg')
    with open(cfg, 'w') as f:
        f.write('all.export /\noss.localroot %s\nall.adminpath %s\nall.pidpath %s\n'
                'xrootd.chksum adler32\nxrd.allow host localhost\nxrd.allow host 127.0.0.1\n'
                'ofs.tpc pgm /usr/bin/xrdcp --server\n' % (data, admin, admin))
    chown_tree(top)
    port = free_port()
    log = open(os.path.join(top, 'xrootd.log'), 'w')
    args = ['xrootd', '-c', cfg, '-p', str(port), '-l', os.path.join(admin, 'log')]
    if os.geteuid() == 0:
        args[1:1] = ['-R', 'xrootd']
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit('xrootd died, see %s' % log.name)
        try:     # plain TCP probe: the XRootD client retries a closed port for minutes
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
            continue
        time.sleep(0.1)
        if proc.poll() is None:      # a port already taken makes our server die
            return 'root://127.0.0.1:%d//' % port, proc
    raise SystemExit('xrootd did not start')


def chown_tree(top):
    if os.geteuid() != 0:
        return
    import pwd
    pw = pwd.getpwnam('xrootd')
    os.chmod(top, 0o755)
    for root, dirs, files in os.walk(top):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def run_alien(jobtype, job, env=None):
    """One `alien.py gfal TYPE` process (gfal_main called directly, so this works
    whatever the front end does); returns (seconds, CompletedProcess)."""
    code = ('import sys; sys.path.insert(0, %r); import alien; '
            'sys.exit(alien.gfal_main(sys.argv[1:]))' % REPO)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run([PY, '-c', code, jobtype], input=json.dumps(job).encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    took = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, proc


def baseline_copy(pairs):
    """What the pdm worker did: one context, then per file, in order, filecopy
    with create_parent, an event callback writing one JSON line per gfal2 event
    and one result line (here to /dev/null)."""
    import gfal2
    sink = open(os.devnull, 'w')
    cpu = os.times()
    started = time.time()
    ctx = gfal2.creat_context()
    failed = 0
    for src, dst in pairs:
        params = ctx.transfer_parameters()
        params.create_parent = True
        params.event_callback = lambda ev: (json.dump(
            {'timestamp': ev.timestamp, 'domain': ev.domain, 'stage': ev.stage,
             'desc': ev.description}, sink), sink.write('\n'), sink.flush())
        try:
            ctx.filecopy(params, src, dst)
            sink.write(json.dumps({'Code': 0, 'Reason': 'OK'}) + '\n')
        except gfal2.GError as e:
            sink.write(json.dumps({'Code': 1, 'Reason': str(e)}) + '\n')
            failed += 1
        sink.flush()
    took = time.time() - started
    now = os.times()
    baseline_copy.cpu = (now.user - cpu.user) + (now.system - cpu.system)
    return took, failed


def bench_copy(nfiles, url, top, parallels, rounds):
    """Rounds of: the baseline loop, then alien.py gfal copy at each `parallel`
    (interleaved so a busy machine slows all alike); medians are reported."""
    src = os.path.join(top, 'src')
    os.makedirs(src)
    payload = os.urandom(10240)
    for i in range(nfiles):
        with open(os.path.join(src, 'f%05d' % i), 'wb') as f:
            f.write(payload)
    names = sorted(os.listdir(src))

    def pairs(tag):
        return [('file://%s/%s' % (src, n), '%sbench/%s/%s' % (url, tag, n)) for n in names]

    print('COPY %d x 10 KiB file:// -> %s, %d rounds, median seconds (load average before: %s)'
          % (nfiles, url, rounds, ' '.join('%.2f' % x for x in os.getloadavg())))
    times = {'base': []}
    cpus = {'base': []}
    for r in range(rounds):
        took, failed = baseline_copy(pairs('base%d' % r))
        assert failed == 0
        times['base'].append(took)
        cpus['base'].append(baseline_copy.cpu)
        for par in parallels:
            job = {'files': [list(p) for p in pairs('r%dp%d' % (r, par))], 'options': {'parallel': par}}
            took, proc = run_alien('copy', job)
            lines = proc.stdout.decode().splitlines()
            ok = sum(1 for l in lines if json.loads(l).get('Code') == 0)
            assert ok == nfiles and proc.returncode == 0, (ok, proc.returncode)
            times.setdefault(par, []).append(took)
            cpus.setdefault(par, []).append(proc.cpu)
    med = dict((k, sorted(v)[len(v) // 2]) for k, v in times.items())
    cpu = dict((k, sorted(v)[len(v) // 2] * 1000.0 / nfiles) for k, v in cpus.items())
    print('  baseline sequential gfal2 loop (in-process, no process start): %.2f s  (%d files/s, '
          'client CPU %.2f ms/file)  all: %s'
          % (med['base'], nfiles / med['base'], cpu['base'], ' '.join('%.2f' % t for t in times['base'])))
    for par in parallels:
        print('  alien.py gfal copy parallel=%-3d (whole process): %.2f s  (%d files/s, client CPU %.2f ms/file)'
              '  speed-up %.1fx  all: %s'
              % (par, med[par], nfiles / med[par], cpu[par], med['base'] / med[par],
                 ' '.join('%.2f' % t for t in times[par])))
    best = min(parallels, key=lambda p: med[p])
    print('  best: parallel=%d, %.1fx the sequential loop' % (best, med['base'] / med[best]))
    return med, best


def start_delay_proxy(url, delay):
    """The test grid's delay relay in front of the xrootd at url -> (relayed url, proc)."""
    upstream = int(url.split(':')[2].split('/')[0])
    port, proc = relay.start(upstream, delay)
    return 'root://127.0.0.1:%d//' % port, proc


def bench_copy_latency(nfiles, url, top, parallels, delay):
    """COPY through the delay proxy: what a worker sees over a WAN."""
    proxied, proxy = start_delay_proxy(url, delay)
    try:
        src = os.path.join(top, 'src')
        names = sorted(os.listdir(src))[:nfiles]

        def pairs(tag):
            return [('file://%s/%s' % (src, n), '%slat/%s/%s' % (proxied, tag, n)) for n in names]

        print('COPY %d x 10 KiB file:// -> root:// through a relay adding %d ms each way (RTT %d ms)'
              % (nfiles, delay * 1000, 2 * delay * 1000))
        base, failed = baseline_copy(pairs('base'))
        assert failed == 0
        print('  baseline sequential gfal2 loop: %.2f s  (%.1f files/s, %.0f ms/file)'
              % (base, nfiles / base, base * 1000.0 / nfiles))
        for par in parallels:
            took, proc = run_alien('copy', {'files': [list(p) for p in pairs('p%d' % par)],
                                            'options': {'parallel': par}})
            assert proc.returncode == 0, proc.stdout[-300:]
            print('  alien.py gfal copy parallel=%-3d: %.2f s  (%.1f files/s)  speed-up %.1fx'
                  % (par, took, nfiles / took, base / took))
    finally:
        proxy.kill()
        proxy.wait()


def make_tree(top, nentries, per_dir=99):
    """nentries entries: directories of per_dir files each (+ the directories)."""
    made, d = 0, 0
    while made < nentries:
        sub = os.path.join(top, 'd%03d' % d)
        os.makedirs(sub)
        made += 1
        for i in range(min(per_dir, nentries - made)):
            open(os.path.join(sub, 'f%03d' % i), 'w').close()
            made += 1
        d += 1
    return made


def baseline_list(url):
    """gfal-ls -lR style: listdir each directory, stat every entry, recurse."""
    import gfal2
    started = time.time()
    ctx = gfal2.creat_context()
    count, stack = 0, [url]
    while stack:
        d = stack.pop()
        for name in ctx.listdir(d):
            if name in ('.', '..'):
                continue
            child = d.rstrip('/') + '/' + name
            st = ctx.stat(child)
            count += 1
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
    return time.time() - started, count


def baseline_gfal_ls(url):
    """gfal2-util: one `gfal-ls -l` process per directory (it has no -R)."""
    gfal_ls = tools.tool('gfal-ls')   # from .ci/setup (gfal2-util-scripts)
    env = dict(os.environ, GFAL_PYTHONBIN=PY)
    started = time.time()
    count, stack = 0, [url]
    while stack:
        d = stack.pop()
        out = subprocess.run([gfal_ls, '-la', d], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=env).stdout.decode()
        for line in out.splitlines():
            parts = line.rstrip().split(None, 8)
            if len(parts) < 9 or parts[8] in ('.', '..'):
                continue
            count += 1
            if line.startswith('d'):
                stack.append(d.rstrip('/') + '/' + parts[8])
    return time.time() - started, count


def bench_list(nentries, url, label):
    print('LIST depth -1 of a %d-entry tree on %s' % (nentries, label))
    took, proc = run_alien('list', {'files': [url], 'options': {'depth': -1}})
    listing = json.loads(proc.stdout.decode())
    count = sum(len(v) for v in listing.values())
    print('  alien.py gfal list: %.2f s  (%d entries, %d directories, exit %d, process start included)'
          % (took, count, len(listing), proc.returncode))
    base_t, base_n = baseline_list(url)
    print('  baseline listdir+stat recursion (in-process gfal2): %.2f s (%d entries)  -> %.1fx'
          % (base_t, base_n, base_t / took))
    ls_t, ls_n = baseline_gfal_ls(url)
    if ls_t is None and ls_n == -1:
        print('  gfal-ls baseline skipped (--skip-gfal-ls)')
    else:
        print('  baseline gfal-ls -la per directory (gfal2-util, %d processes): %.2f s (%d entries)  -> %.1fx'
              % (len(listing), ls_t, ls_n, ls_t / took))
    return took, base_t, ls_t


def gfal_copy(args, env):
    """One gfal-copy process (gfal2-util, on the interpreter with gfal2) -> seconds; it must succeed."""
    started = time.time()
    proc = subprocess.run([tools.tool('gfal-copy')] + args, env=dict(env, GFAL_PYTHONBIN=PY),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode:
        raise SystemExit('gfal-copy %s failed: %s' % (' '.join(args), proc.stderr.decode()[-500:]))
    return time.time() - started


def alien_copy(pairs, env, rounds=1, **options):
    """Median seconds of `rounds` alien.py gfal copy jobs of pairs (each round to
    its own destination directory: pairs(round) -> [(src, dst)]); all must succeed."""
    times = []
    for r in range(rounds):
        job = {'files': [list(p) for p in pairs(r)], 'options': options}
        took, proc = run_alien('copy', job, env)
        lines = [json.loads(l) for l in proc.stdout.decode().splitlines()]
        if proc.returncode or len(lines) != len(job['files']):
            raise SystemExit('alien.py gfal copy failed: %s' % proc.stdout.decode()[-500:])
        times.append(took)
    return sorted(times)[len(times) // 2]


def davs_env(state, **creds):
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith('X509_'))
    env['X509_CERT_DIR'] = state['certdir']
    env.update((var, state['sites'][site]['proxy']) for var, site in creds.items())
    return env


def bench_davs(top, nfiles, big_mib, rounds):
    """Section 3: COPY on the WebDAV sites against gfal-copy (see the module docstring)."""
    workdir = os.path.join(top, 'davs')
    state = davs.start(workdir, trust_all=True)
    try:
        a, b = state['sites']['a'], state['sites']['b']
        src = os.path.join(top, 'davs-src')
        os.makedirs(src)
        payload = os.urandom(10240)
        names = ['f%05d' % i for i in range(nfiles)]
        for n in names:
            with open(os.path.join(src, n), 'wb') as f:
                f.write(payload)
        one = davs_env(state, X509_USER_PROXY='a')                # what gfal-copy gets: one -E for both
        two = davs_env(state, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b')   # the pdm worker's way
        def row(label, seconds, base=None):
            print('  %-58s %7.2f s  %7.1f files/s%s' % (label, seconds, nfiles / seconds,
                                                    '' if base is None else '   alien.py %.1fx faster' % (seconds / base)))

        def compare(title, pairs, env, src_dir, dst_url):
            """pairs(tag)(round) -> [(src, dst)]: gfal-copy per file (also with the lazy CA
            lookup), --from-file and -r of src_dir into dst_url, alien.py parallel 1 and 16."""
            print('COPY %d x 10 KiB %s, load average %s' % (nfiles, title, ' '.join('%.2f' % x for x in os.getloadavg())))
            seq = sum(gfal_copy(['-p', s, d], one) for s, d in pairs('each')(0))
            lazy = sum(gfal_copy(['-p', s, d], dict(one, SSL_CERT_FILE=os.devnull)) for s, d in pairs('lazy')(0))
            alien16 = alien_copy(pairs('p16'), env, rounds)
            row('gfal-copy, one process per file', seq, alien16)
            row('  the same with SSL_CERT_FILE=/dev/null (alien.py\'s CA lookup)', lazy, alien16)
            listing = os.path.join(top, 'sources.list')
            with open(listing, 'w') as f:
                f.write(''.join(s + '\n' for s, _ in pairs('x')(0)))
            run_alien('mkdir', {'dirs': [dst_url + 'list']}, one)
            row('gfal-copy --from-file (one process, file by file)',
                gfal_copy(['-p', '--from-file', listing, dst_url + 'list'], one), alien16)
            row('gfal-copy -r (one process, file by file)', gfal_copy(['-r', '-p', src_dir, dst_url + 'rec'], one), alien16)
            row('alien.py gfal copy parallel=1', alien_copy(pairs('p1'), env, rounds, parallel=1), alien16)
            row('alien.py gfal copy parallel=16 (default)', alien16)

        up = lambda tag: (lambda r: [('file://%s/%s' % (src, n), '%sup/%s%d/%s' % (a['url'], tag, r, n)) for n in names])
        compare('file:// -> davs:// (site a)', up, one, 'file://' + src, a['url'] + 'up/')
        srcurl = a['url'] + 'up/p160/'
        cross = lambda tag: (lambda r: [(srcurl + n, '%sin/%s%d/%s' % (b['url'], tag, r, n)) for n in names])
        compare('davs:// site a -> davs:// site b (third-party pull)', cross, two, srcurl, b['url'] + 'in/')
        row('alien.py gfal copy parallel=16 copy_mode=streamed', alien_copy(cross('str'), two, rounds,
                                                                             copy_mode='streamed'))
        # one large file, davs -> davs
        big = os.path.join(a['datadir'], 'big')
        with open(big, 'wb') as f:
            f.truncate(big_mib << 20)           # sparse on site a: read fast, sent and written for real
        chown_tree(a['datadir'])
        print('COPY 1 x %d MiB davs:// site a -> davs:// site b, median of %d (alien.py and gfal-copy in turn)'
              % (big_mib, rounds))
        for label, mode in (('third-party pull', None), ('streamed through the client', 'streamed')):
            dst = b['url'] + 'big-%s' % (mode or 'pull')
            opts = {'copy_mode': mode} if mode else {}
            extra = ['--copy-mode', mode] if mode else []
            ours, theirs = [], []
            for r in range(rounds):
                ours.append(alien_copy(lambda r: [(a['url'] + 'big', dst + '-alien')], two, **opts))
                theirs.append(gfal_copy(extra + [a['url'] + 'big', dst + '-gfal'], one))
                for p in (dst + '-alien', dst + '-gfal'):
                    os.unlink(os.path.join(b['datadir'], p[len(b['url']):]))
            ours, theirs = sorted(ours)[rounds // 2], sorted(theirs)[rounds // 2]
            print('  %-30s alien.py %.2f s (%.0f MiB/s)   gfal-copy %.2f s (%.0f MiB/s)'
                  % (label, ours, big_mib / ours, theirs, big_mib / theirs))
        os.unlink(big)
    finally:
        davs.stop(workdir)
    # the test grid's sites: each trusts only its own CA; two credentials, streamed after pull and push fail
    state = davs.start(workdir)
    try:
        a, b = state['sites']['a'], state['sites']['b']
        two = davs_env(state, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b')
        print('COPY %d x 10 KiB davs:// -> davs:// between sites that trust only their own CA '
              '(two credentials; gfal-copy has one -E and cannot)' % nfiles)
        alien_copy(lambda r: [('file://%s/%s' % (src, n), a['url'] + 'src/' + n) for n in names],
                   davs_env(state, X509_USER_PROXY='a'))
        for label, opts in (('gfal2 default: pull, push fail; streamed', {}),
                            ('copy_mode=streamed', {'copy_mode': 'streamed'})):
            took = alien_copy(lambda r: [(a['url'] + 'src/' + n, '%sin%d%s/%s' % (b['url'], r, 's' if opts else '', n))
                                         for n in names], two, rounds, **opts)
            print('  alien.py parallel=16, %-42s %6.2f s  %6.1f files/s' % (label, took, nfiles / took))
    finally:
        davs.stop(workdir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--files', type=int, default=1000)
    ap.add_argument('--tree', type=int, default=10000)
    ap.add_argument('--parallel', default='1,2,4,8,16')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--skip-gfal-ls', action='store_true')
    ap.add_argument('--latency-files', type=int, default=200)
    ap.add_argument('--latency-ms', type=float, default=5.0, help='one-way delay of the WAN relay')
    ap.add_argument('--latency-parallel', default='1,8,16,32')
    ap.add_argument('--davs-files', type=int, default=200, help='small files of the davs:// section (0: skip it)')
    ap.add_argument('--davs-big-mib', type=int, default=1024)
    ap.add_argument('--davs-only', action='store_true', help='only the davs:// section')
    args = ap.parse_args()
    try:
        import gfal2  # noqa: F401
    except ImportError:
        raise SystemExit('gfal2 is not importable by %s: run with /usr/bin/python3' % PY)
    top = tempfile.mkdtemp(prefix='gfal-bench-', dir='/tmp')
    os.chmod(top, 0o755)
    if args.davs_only:
        try:
            bench_davs(top, args.davs_files, args.davs_big_mib, args.rounds)
        finally:
            shutil.rmtree(top, ignore_errors=True)
        return
    xrd_top = os.path.join(top, 'xrd')
    os.makedirs(xrd_top)
    url, proc = start_xrootd(xrd_top)
    try:
        bench_copy(args.files, url, top, [int(p) for p in args.parallel.split(',')], args.rounds)
        if args.latency_files:
            bench_copy_latency(min(args.latency_files, args.files), url, top,
                               [int(p) for p in args.latency_parallel.split(',')], args.latency_ms / 1000.0)
        tree = os.path.join(xrd_top, 'data', 'tree')
        n = make_tree(tree, args.tree)
        chown_tree(xrd_top)
        if args.skip_gfal_ls:
            global baseline_gfal_ls
            baseline_gfal_ls = lambda url: (None, -1)  # noqa: E731
        bench_list(n, url + 'tree', 'root:// (xrootd on loopback)')
        bench_list(n, 'file://' + tree, 'file://')
        if args.davs_files:
            bench_davs(top, args.davs_files, args.davs_big_mib, args.rounds)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == '__main__':
    main()
