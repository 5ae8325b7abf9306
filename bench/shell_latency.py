"""Interactive latency of the shell: time from Enter to the next prompt under a
pseudo-terminal (pexpect), for `pwd`, `ls` of a 1,000-entry directory and `cd`,
compared with the service's own time for the same request, measured with an
independent websocket client (websockets.sync.client) on its own connection.

Target: median shell latency at most 10 ms above the service's own median.

    .venv/bin/python bench/shell_latency.py [--runs N]
"""
import argparse
import json
import os
import re
import ssl
import statistics
import tempfile
import time

from common import ALIEN, start_grid, grid

import pexpect
from websockets.sync.client import connect

PROMPT = re.compile(r'AliEn\[[^\]]*\]:(/[^\r\n]*?) >')

ap = argparse.ArgumentParser()
ap.add_argument('--runs', type=int, default=60)
args = ap.parse_args()

state, env = start_grid()
home = state['home']
big = '%sbench_shell_%d/' % (home, os.getpid())
grid.populate(env['TESTGRID_DIR'], big, 1000)
other = big.rstrip('/').rsplit('/', 1)[0] + '/'

# (label, line typed in the shell, what the client sends for it)
cases = [
    ('pwd', 'pwd', {'command': 'pwd', 'options': ['-nokeys']}),
    ('ls 1,000 entries', 'ls ' + big, {'command': 'ls', 'options': ['-nokeys', '-F', big]}),
    ('cd (two dirs, alternating)', None, None),
]


class Service(object):
    """A bare websocket client on its own connection: the service's own time for a
    request (plus the loopback round trip and one JSON decode)."""

    def __init__(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(capath=env['X509_CERT_DIR'])
        ctx.load_cert_chain(env['X509_USER_CERT'], env['X509_USER_KEY'])
        url = 'wss://%s:%s/websocket/json' % (env['ALIENPY_JCENTRAL'], env['ALIENPY_JCENTRAL_PORT'])
        self.conn = connect(url, ssl=ctx, max_size=None)
        self.ws = self.conn.__enter__()

    def time(self, request):
        t0 = time.perf_counter()
        self.ws.send(json.dumps(request))
        json.loads(self.ws.recv())
        return time.perf_counter() - t0


class Shell(object):
    """alien.py's interactive shell under a pty, with a fresh HOME (history on)."""

    def __init__(self, home):
        self.p = pexpect.spawn(ALIEN[0], ALIEN[1:], env=dict(env, HOME=home, TERM='xterm'),
                               encoding='utf-8', timeout=60, dimensions=(50, 300),
                               maxread=1 << 20, searchwindowsize=400)
        self.p.delaybeforesend = None  # pexpect waits 50 ms before each send by default
        self.p.expect(PROMPT)

    def time(self, line):
        t0 = time.perf_counter()
        self.p.sendline(line)
        self.p.expect(PROMPT)
        return time.perf_counter() - t0

    def close(self):
        self.p.sendcontrol('d')
        self.p.expect(pexpect.EOF)
        self.p.close()


def measure(shell, service, line, request, n):
    """Alternate shell and service, so that the load of a shared machine hits both."""
    a, b = [], []
    for i in range(n + 3):
        s = shell.time(line(i) if callable(line) else line)
        v = service.time(request(i) if callable(request) else request)
        if i >= 3:  # warm-up
            a.append(s)
            b.append(v)
    return a, b


def ms(values, q=0.5):
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


print('Shell latency, Enter -> next prompt under a pty (%d runs each, after 3 warm-up)' % args.runs)
print('  %-28s %12s %12s %12s %10s' % ('command', 'shell med', 'service med', 'difference', 'shell p90'))
ok = True
service = Service()
with tempfile.TemporaryDirectory() as h:
    shell = Shell(h)
    for label, line, request in cases:
        if line is None:  # cd: alternate so that every cd really changes directory
            line = lambda i: 'cd ' + (big if i % 2 else other)  # noqa: E731
            request = lambda i: {'command': 'cd', 'options': ['-nokeys', big if i % 2 else other]}  # noqa: E731
        sh, sv = measure(shell, service, line, request, args.runs)
        diff = statistics.median(sh) * 1000 - statistics.median(sv) * 1000
        ok = ok and diff < 10
        print('  %-28s %9.2f ms %9.2f ms %+9.2f ms %7.2f ms' % (label, ms(sh), ms(sv), diff, ms(sh, 0.9)))
    shell.close()
service.conn.__exit__(None, None, None)
print('target: shell median at most 10 ms above the service: %s' % ('met' if ok else 'NOT met'))
