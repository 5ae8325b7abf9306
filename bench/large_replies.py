"""Issue 3 benchmark: `ls -l` and `find` returning 100,000 entries, alien.py
versus the reference client on the same grid. Target: <= 0.5x wall and RSS.

Both clients wait for the same test service to build and send the reply, so the
service's own time for the request (measured on a persistent connection, without
compression) is printed too, and each client's wall time above it."""
import argparse
import json
import os
import ssl
import statistics
import subprocess
import time

from common import ALIEN, REFERENCE, REPO, compare, grid, installed_command, start_grid

ap = argparse.ArgumentParser()
ap.add_argument('--runs', type=int, default=5)
ap.add_argument('--entries', type=int, default=100000)
args = ap.parse_args()
state, env = start_grid()
INSTALLED = installed_command()  # run like the reference: an installed command
big = state['home'] + 'big%d/' % args.entries
grid.populate(os.path.join(REPO, '.testgrid-bench'), big, args.entries)


def service_time(command, options, runs):
    from websockets.sync.client import connect
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(capath=env['X509_CERT_DIR'])
    ctx.load_cert_chain(env['X509_USER_CERT'], env['X509_USER_KEY'])
    url = 'wss://127.0.0.1:%s/websocket/json' % env['ALIENPY_JCENTRAL_PORT']
    times = []
    with connect(url, ssl=ctx, max_size=None, compression=None) as conn:
        for _ in range(runs):
            t0 = time.perf_counter()
            conn.send(json.dumps({'command': command, 'options': options}))
            conn.recv()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


for label, line, server in (('ls -l of %d entries' % args.entries, ['ls', '-l', big], ['-nokeys', '-F', '-l', big]),
                            ('find of %d entries' % args.entries, ['find', big, '*'], ['-nokeys', big, '*'])):
    out = subprocess.run(ALIEN + line, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert out.returncode == 0 and out.stdout.count('\n') >= args.entries, (out.returncode, out.stderr[:200])
    del out
    m = compare(label, args.runs, {'alien.py (this)': INSTALLED + line, 'alienpy 1.7.0 (reference)': REFERENCE + line}, env)
    s = service_time(line[0], server, args.runs)
    ours, ref = m['alien.py (this)'][0] - s, m['alienpy 1.7.0 (reference)'][0] - s
    print('  service alone %.3f s; wall above it: alien.py %.3f s, alienpy %.3f s (%.2fx)' % (s, ours, ref, ours / ref))
