"""Shared helpers and fixtures of the tests (test_alien.py, tests/, testgrid/).

pytest loads this file first: it puts the repository on sys.path and restricts PATH to
the system directories (testgrid/tools.py), so that files in tests/ and testgrid/ can
`from conftest import run_cli, ...`. The fixtures here (grid_state: the one test grid of
the session; cenv: a user's environment for it) need no import.

Markers (pyproject.toml): `pure` (no network, no external program; also run under every
CPython 3.6+ of the machine) and `once` (independent of the websocket transport: the
README's test command runs them in its first pass only).

Other interpreters: the tests that run alien.py under every CPython 3.6 ... 3.13 of the
machine image FAIL when one is missing (the message names the .ci/setup step); set
ALIENPY_ALLOW_MISSING_PYTHONS=1 to skip them instead on a machine without them.
"""
import contextlib
import json
import os
import re
import shlex
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time

import pexpect
import pytest

REPO = os.path.dirname(os.path.abspath(__file__))

sys.path.insert(0, REPO)
import alien
from testgrid import tools
from testgrid.tools import tool

ALIEN = os.path.join(REPO, 'alien.py')


# Programs are found only where .ci/setup installs them (testgrid/tools.py): with
# PATH reduced to the system directories, nothing installed by hand elsewhere
# (a global `pip install alienpy`, say) can stand in for a missing install step.
tools.restrict_path()


def run_cli(args, env=None, input=None, timeout=60, python=None, program=None, cwd=None, quote=False,
            tty=False, no_tty=False, preexec_fn=None):
    """Run the client as a user would, `python3 alien.py ARGS`: the one way the tests run
    a client; returns a CompletedProcess (text).

    python      another interpreter for alien.py;
    program     the command to run instead of `python3 alien.py` (a list: the reference
                client, alien.py under another name);
    cwd         the working directory;
    quote       ARGS are words: several are shell-quoted, as alien.py joins its arguments
                into one command line and splits it again (one is a whole command line);
    tty         on a pseudo-terminal (pexpect): stdout is everything printed, stderr '';
    no_tty      in a new session, with no controlling terminal (a pass phrase then comes
                from INPUT);
    preexec_fn  called in the child before the client starts (a resource limit)."""
    words = [str(a) for a in args]
    if quote and len(words) > 1:
        words = [shlex.quote(w) for w in words]
    cmd = (list(program) if program else [python or sys.executable, ALIEN]) + words
    if tty:
        child = pexpect.spawn(cmd[0], cmd[1:], env=dict(env, TERM='xterm'), cwd=cwd, encoding='utf-8',
                              codec_errors='surrogateescape', timeout=timeout, dimensions=(50, 300))
        child.expect(pexpect.EOF)
        child.close()
        return subprocess.CompletedProcess(cmd, child.exitstatus, child.before.replace('\r\n', '\n'), '')
    # spelled for Python 3.6 (no capture_output/text): the pure tests run under 3.6 too
    return subprocess.run(cmd, env=env, input=input, cwd=cwd, start_new_session=no_tty, preexec_fn=preexec_fn,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout)


def server_frame(opcode, payload, fin=True, masked=False, rsv=0):
    """A frame as a server would send it (unmasked unless asked)."""
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 65536:
        head.append(mbit | 126)
        head += struct.pack('!H', n)
    else:
        head.append(mbit | 127)
        head += struct.pack('!Q', n)
    if masked:
        mask = b'abcd'
        head += mask
        payload = alien.mask_payload(payload, mask)
    return bytes(head) + payload


def decode_client_frame(data):
    """Inverse of encode_frame, for checking what the client sends."""
    b0, b1 = data[0], data[1]
    assert b1 & 0x80, 'client frames must be masked'
    n, pos = b1 & 0x7F, 2
    if n == 126:
        n, pos = struct.unpack_from('!H', data, 2)[0], 4
    elif n == 127:
        n, pos = struct.unpack_from('!Q', data, 2)[0], 10
    mask = data[pos:pos + 4]
    return bool(b0 & 0x80), b0 & 0x0F, alien.mask_payload(data[pos + 4:pos + 4 + n], mask)


def other_python(version):
    """CPython VERSION from the machine image (pyenv). Absent: the test fails, naming the
    step that provides it; with ALIENPY_ALLOW_MISSING_PYTHONS=1 it is skipped instead."""
    py = tools.interpreter(version)
    if py is None:
        why = ('python%s is missing: the machine image carries CPython 3.6 ... 3.13 (pyenv, ~/.pyenv/versions), '
               'and .ci/setup makes a test venv .venv-py%s for each' % (version, version.replace('.', '')))
        if os.environ.get('ALIENPY_ALLOW_MISSING_PYTHONS') == '1':
            pytest.skip(why + ' (ALIENPY_ALLOW_MISSING_PYTHONS=1)')
        pytest.fail(why + '; ALIENPY_ALLOW_MISSING_PYTHONS=1 skips the tests that need it', pytrace=False)
    return py


CLIENT_VARS = ('ALIENPY_', 'X509_', 'JALIEN_', 'https_proxy', 'HTTPS_PROXY')

KEEP_VARS = ('ALIENPY_TRANSPORT',)  # the transport under test comes from the outside

_TG_DIR = os.path.join(REPO, '.testgrid-pytest')


@pytest.fixture(scope='session')
def grid_state():
    """Running test grid (fresh catalogue) for the whole test session; stopped at the end."""
    from testgrid import grid
    state = grid.start(_TG_DIR, fresh=True)
    yield state
    grid.stop(_TG_DIR)


def client_env(grid_state, tmp_path, token=False, workdir=False, outside_proxy=True, **extra):
    """The one environment builder: a user of the test grid, with a fresh HOME and TMPDIR
    under TMP_PATH (the same ones at every call of a test), no token yet and none of the
    outside's client variables (but the transport under test).

    token          the grid's valid token, and one short connection try (a server that
                   must see no token request);
    workdir        PWD: a fresh working directory (run_cli(cwd=env['PWD']));
    outside_proxy  False: without the outside's http_proxy and no_proxy;
    EXTRA          more variables."""
    env = {k: v for k, v in os.environ.items() if k in KEEP_VARS or not k.startswith(CLIENT_VARS)}
    if not outside_proxy:
        env = {k: v for k, v in env.items() if k.lower() not in ('http_proxy', 'no_proxy')}
    env.update(grid_state['env'])
    home, tmp = tmp_path / 'home', tmp_path / 'tmp'
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(tmp),
               JALIEN_TOKEN_CERT=str(tmp / 'tokencert.pem'), JALIEN_TOKEN_KEY=str(tmp / 'tokenkey.pem'))
    if token:
        env.update(JALIEN_TOKEN_CERT=grid_state['pki']['token_cert'], JALIEN_TOKEN_KEY=grid_state['pki']['token_key'],
                   ALIENPY_TIMEOUT='1', ALIENPY_CONNECT_TRIES='1')
    if workdir:
        work = tmp_path / 'work'
        work.mkdir(exist_ok=True)
        env['PWD'] = str(work)
    env.update(extra)
    return env


@pytest.fixture
def cenv(grid_state, tmp_path):
    """Environment of a user of the test grid with a fresh HOME and no token yet."""
    return client_env(grid_state, tmp_path)


def one_line_error(p):
    return p.returncode != 0 and p.stdout == '' and p.stderr.count('\n') == 1 and 'Traceback' not in p.stderr


def read_http_head(conn):
    """The bytes a test server received up to and past the end of an HTTP head; None
    when the peer closed first."""
    data = b''
    while b'\r\n\r\n' not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


class Hostile(object):
    """A TLS websocket server on loopback that misbehaves on purpose. Each accepted
    connection is handed to script(server, conn, index) after a correct (or the
    given) handshake reply. Client messages are collected in .messages."""

    def __init__(self, grid_state, script, handshake=None):
        self.script = script
        self.handshake = handshake
        self.messages = []
        self.connections = 0
        self.buffered = {}   # conn -> bytes read beyond the last frame (the client pipelines)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(grid_state['pki']['host_cert'], grid_state['pki']['host_key'])
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            index = self.connections
            self.connections += 1
            threading.Thread(target=self._handle, args=(raw, index), daemon=True).start()

    def _handle(self, raw, index):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            data = read_http_head(conn)
            if data is None:
                return
            key = re.search(rb'Sec-WebSocket-Key: (\S+)', data).group(1).decode()
            self.buffered[conn] = data.partition(b'\r\n\r\n')[2]   # the request sent behind the upgrade
            reply = self.handshake or ('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n'
                                       'Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n'
                                       % alien.ws_accept_key(key)).encode()
            conn.sendall(reply)
            self.script(self, conn, index)
        except (OSError, ssl.SSLError, AttributeError):
            pass
        finally:
            try:
                raw.close()
            except OSError:
                pass

    def recv(self, conn):
        """Next client frame (opcode, payload); None when the client went away."""
        data = self.buffered.pop(conn, b'')
        while True:
            try:
                while len(data) < 2 or len(data) < self._need(data):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return None
                    data += chunk
            except OSError:
                return None
            fin, opcode, payload = decode_client_frame(data)
            self.buffered[conn] = data[self._need(data):]
            if opcode == alien.OP_TEXT:
                self.messages.append(json.loads(payload))
            return opcode, payload

    @staticmethod
    def _need(data):
        n = data[1] & 0x7F
        if n == 126:
            return 8 if len(data) < 4 else 8 + struct.unpack_from('!H', data, 2)[0]
        if n == 127:
            return 14 if len(data) < 10 else 14 + struct.unpack_from('!Q', data, 2)[0]
        return 6 + n

    def reply(self, conn, cwd='/localhost/localdomain/user/j/jalien/', message='ok', code='0'):
        conn.sendall(server_frame(alien.OP_TEXT, json.dumps(
            {'metadata': {'exitcode': code, 'error': '', 'user': 'jalien', 'currentdir': cwd},
             'results': [{'message': message}] if message is not None else []}).encode()))

    def close(self):
        self.stop = True
        self.sock.close()


@pytest.fixture
def henv(grid_state, tmp_path):
    """Client environment with a valid token, so no token request goes to the hostile server."""
    return client_env(grid_state, tmp_path, token=True)


# The diagnostics of the hostile-server tests are those of alien.py's own websocket
# code; with the websocket-client transport the same faults end in one-line errors
# worded by that library, a few with other exit codes (WEBSOCKET_CLIENT_ENDS).
OWN_TRANSPORT = os.environ.get('ALIENPY_TRANSPORT', '') in ('', 'builtin')


def hostile_run(grid_state, henv, script, line='pwd', handshake=None, timeout=20):
    server = Hostile(grid_state, script, handshake)
    try:
        t0 = time.monotonic()
        p = run_cli([line], env=dict(henv, ALIENPY_JCENTRAL='127.0.0.1:%d' % server.port), timeout=timeout)
        return p, time.monotonic() - t0, server
    finally:
        server.close()


def _tg_ctx(state, cert=None, key=None, check_hostname=False):
    env = state['env']
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.load_verify_locations(capath=env['X509_CERT_DIR'])
    if cert is not False:
        ctx.load_cert_chain(cert or env['X509_USER_CERT'], key or env['X509_USER_KEY'])
    return ctx


@contextlib.contextmanager
def _tg_ws(state, cert=None, key=None, port=None, check_hostname=False):
    from websockets.sync.client import connect
    url = 'wss://127.0.0.1:%d/websocket/json' % (port or state['service']['port'])
    with connect(url, ssl=_tg_ctx(state, cert, key, check_hostname), max_size=None,
                 open_timeout=5, close_timeout=2) as conn:
        yield conn


def _tg_call(conn, command, options=(), raw=None):
    conn.send(raw if raw is not None else json.dumps({'command': command,
                                                          'options': list(options)}))
    return json.loads(conn.recv(timeout=10))


def _tg_ok(reply):
    assert reply['metadata']['exitcode'] == '0', reply['metadata']
    return reply['results']


@pytest.fixture
def tg_dir(grid_state):
    """A fresh empty directory under the grid home for one test; returns its LFN (with /)."""
    name = 'tg_%d_%d' % (os.getpid(), int(time.time() * 1e6))
    with _tg_ws(grid_state) as c:
        _tg_ok(_tg_call(c, 'mkdir', ['-p', grid_state['home'] + name]))
    return grid_state['home'] + name + '/'


@contextlib.contextmanager
def _tg_dialect(name):
    """The service speaks this dialect (testgrid/dialects.py) to the connections opened
    meanwhile; the default is back afterwards, whatever happens."""
    from testgrid import grid
    grid.set_service(_TG_DIR, {'dialect': name})
    try:
        yield name
    finally:
        grid.set_service(_TG_DIR, None)


@pytest.fixture(params=['2021', '2024'])
def dialect(request, grid_state):
    """The test runs once against each dialect of the service."""
    with _tg_dialect(request.param):
        yield request.param


def _tg_xrdcp(*args):
    p = subprocess.run([tool('xrdcp'), '--nopbar', '--force'] + list(args), capture_output=True,
                           text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p


PROMPT = r'AliEn\[jalien\]:(/[^\r\n]*?) >'


def spawn_shell(env, cwd=None):
    p = pexpect.spawn(sys.executable, [ALIEN], env=dict(env, TERM='xterm'), cwd=cwd,
                      encoding='utf-8', timeout=30, dimensions=(50, 300))
    p.expect(PROMPT)
    return p


def shell_cmd(p, line):
    """Run one line at the prompt; the output lines (the echo of the line removed)."""
    p.sendline(line)
    p.expect(PROMPT)
    text = re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', p.before)  # colours, terminal modes
    return text.replace('\r\n', '\n').split('\n', 1)[-1].splitlines()


def shell_end(p, how='eof'):
    if how == 'eof':
        p.sendcontrol('d')
    else:
        p.sendline(how)
    p.expect(pexpect.EOF)
    p.close()
    return p.exitstatus


# Every client-side command: its happy path and one bad input (one-line error, non-zero).
CLIENT_CASES = [
    # (command line, expected exit code, regex on stdout (ok) or stderr (error))
    ('prompt', 0, r'^usage: prompt date\|pwd'),
    ('prompt date', 0, r'^$'),
    ('prompt bogus', 22, r"^prompt: unknown item 'bogus'"),
    ('help', 0, r'\bcd\b[\s\S]*\bpushd\b[\s\S]*\bwhoami\b'),
    ('help cd', 0, r'^cd \[DIR'),
    ('? whoami', 0, r'whoami'),
    ('whoami -h', 0, r'whoami'),
    ('help no_such_command', 2, r'not found'),
    ('exit', 0, r'^$'),
    ('exit 3', 3, r'^$'),
    ('exit x', 22, r"^exit: 'x' is not a number"),
    ('quit 4', 4, r'^$'),
    ('exitcode', 0, r'^0$'),
    ('$? extra', 64, r'unexpected argument'),
    ('home', 0, r'^/localhost/localdomain/user/j/jalien/$'),
    ('home x', 64, r"^home: unexpected argument 'x'"),
    ('version', 0, r'^alien.py version: '),
    ('version x', 64, r'unexpected argument'),
    ('cd', 0, r'^$'),
    ('cd /no/such', 2, r'No such file or directory'),
    ('ls -a', 0, r''),
    ('ls /no/such', 2, r'No such file or directory'),
    ('ll', 0, r''), ('ll /no/such', 2, r'No such file'),
    ('la', 0, r''), ('la /no/such', 2, r'No such file'),
    ('lla', 0, r''), ('lla /no/such', 2, r'No such file'),
    ('ping 1', 0, r'^1 websocket ping\(s\) to 127.0.0.1:[0-9]+, round trip'),
    ('ping x', 22, r"^ping: 'x' is not a number"),
    ('dirs', 0, r'^~$'),
    ('dirs -x', 64, r'^dirs: unknown option -x'),
    ('dirs -c', 0, r'^$'),
    ('pushd /localhost/', 0, r'^/localhost ~$'),
    ('pushd /no/such', 2, r'No such file'),
    ('pushd', 1, r'^pushd: no other directory'),
    ('mkdir -p pd1 pd2; pushd pd1; pushd ../pd2; pushd +2; dirs -v', 0, r'\n 0  ~\n 1  ~/pd2\n 2  ~/pd1$'),
    ('pushd /localhost/; popd', 0, r'^/localhost ~\n~$'),
    ('popd', 1, r'^popd: directory stack empty$'),
    ('pushd /localhost/; popd x', 64, r'^popd: usage'),
    ('cert-info', 0, r'^DN >>> '),
    ('cert-info /no/such.pem', 2, r'cannot read /no/such.pem'),
    ('token-init', 0, r'OU=token'),
    ('token-init -v abc', 22, r'could not get a token'),
    ('pwd; token-info', 0, r'OU=token'),
    ('token-destroy; token-info', 2, r'no token certificate'),
    ('pwd; token-destroy', 0, r'token files removed'),
    ('token-destroy now', 64, r'unexpected argument'),
]


@pytest.fixture
def cpenv(grid_state, tmp_path):
    """A user's environment with a working directory of its own (PWD)."""
    return client_env(grid_state, tmp_path, workdir=True)


def cpx(env, *args, **kw):
    """`alien.py cp ARGS...` in ENV's working directory, each of ARGS one word."""
    return run_cli(['cp'] + list(args), env=env, cwd=env['PWD'], quote=True, **kw)


def grid_dir(grid_state, name):
    return '%scp_%s_%d/' % (grid_state['home'], name, os.getpid())


def write(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), 'wb') as f:
        f.write(data)
    return str(path)


# ---- credentials: which file each side of a job gets (pure) ----
GFAL_FAKE_CERT = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'


def _gfal_cred_files(tmp_path, *names):
    paths = []
    for name in names:
        (tmp_path / name).write_text(GFAL_FAKE_CERT)
        paths.append(str(tmp_path / name))
    return paths


class LoopbackProxy(object):
    """An HTTP proxy on loopback, one thread per client: records each request line
    and Proxy-Authorization header, then hands the client to handle(client, lines)."""

    def __init__(self):
        self.lines, self.auth = [], []
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(client,), daemon=True).start()

    def _client(self, client):
        head = read_http_head(client)
        if head is None:
            return
        lines = head.decode().split('\r\n')
        self.lines.append(lines[0])
        self.auth.extend(l for l in lines if l.startswith('Proxy-Authorization'))
        self.handle(client, lines)

    def close(self):
        self.sock.close()


class ConnectProxy(LoopbackProxy):
    """A minimal HTTP CONNECT proxy (lines: the CONNECT requests it got)."""

    def __init__(self, refuse=False):
        self.refuse = refuse
        LoopbackProxy.__init__(self)

    def handle(self, client, lines):
        if self.refuse:
            client.sendall(b'HTTP/1.1 403 Forbidden\r\n\r\n')
            client.close()
            return
        host, port = lines[0].split()[1].rsplit(':', 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)


@pytest.fixture
def f2dir(cenv, grid_state, tmp_path):
    """A grid directory with a small tree (uploaded with cp) for find2, toXml, run, exec."""
    d = '%sissue13_%d_%s/' % (grid_state['home'], os.getpid(), tmp_path.name[-12:])
    src = tmp_path / 'src'
    write(src / 'a' / 'x.py', b'print(1)\n' * 300)
    write(src / 'a' / 'b' / 'r.md', b'# readme\n' * 100)
    write(src / 'l.txt', b'line\n' * 3)
    write(src / 's.sh', b'#!/bin/sh\necho "script: $*"\nexit 3\n')
    p = run_cli(['cp', '-quiet', 'file:%s/' % src, d], env=cenv)
    assert p.returncode == 0, p.stderr
    return d


def _gj_job(cenv, tg_dir, tmp_path):
    """A submitted job (INSERTING): uploads ~/bin/myjob.sh and TG_DIR/job2.jdl, submits
    with a relative path; returns the job id."""
    (tmp_path / 'myjob.sh').write_text('#!/bin/sh\necho hello\n')
    (tmp_path / 'job2.jdl').write_text('Executable = "~/bin/myjob.sh";\nSplit = "production:1-2";\n'
                                       'OutputFile = {\n"stdout@disk=1"\n};\nTTL = 300;\n')
    p = run_cli(['mkdir -p ~/bin; cp -f file:%s ~/bin/myjob.sh; cp file:%s %sjob2.jdl; cd %s; submit job2.jdl'
                 % (tmp_path / 'myjob.sh', tmp_path / 'job2.jdl', tg_dir, tg_dir)], env=cenv)
    assert p.returncode == 0, p.stderr
    m = re.search(r'Your new job ID is ([0-9]+)\n', p.stdout)   # the service's colour codes removed in a pipe
    assert m, p.stdout
    return m.group(1)


_STORE_FILES = {}


@pytest.fixture
def store(cenv, grid_state, tmp_path):
    """(env, LFN of a file with one replica on each SE); uploaded once per session."""
    env = dict(cenv, PWD=str(tmp_path))
    key = grid_state['workdir']
    if key not in _STORE_FILES:
        lfn = '%sh9store_%d/two.txt' % (grid_state['home'], os.getpid())
        src = tmp_path / 'store-source' / 'two.txt'   # not in tmp_path itself: tests list it
        src.parent.mkdir()
        src.write_bytes(b'two replicas\n')
        p = run_cli(['mkdir -p %s; cp file:%s %s@disk:2' % (lfn.rsplit('/', 1)[0], src, lfn)], env=env)
        assert p.returncode == 0, p
        _STORE_FILES[key] = lfn
    return env, _STORE_FILES[key]


def h13_debug_requests(log):
    return [json.loads(line.split(' request ', 1)[1]) for line in open(log) if ' request {' in line]


@pytest.fixture
def service_back(grid_state):
    """Yields the grid directory; the service is running again afterwards."""
    from testgrid import grid
    workdir = grid_state['workdir']
    yield workdir
    grid.set_faults(workdir, None)
    state = grid.load_state(workdir)
    if not grid._alive(state['service'].get('pid')):
        grid.restart_service(workdir)


def _rc_entries(grid_state, lfn_dir):
    """{lfn: (size, md5, guid, replica count)} of the files below lfn_dir, read from the catalogue itself."""
    db = sqlite3.connect(os.path.join(grid_state['workdir'], 'catalogue.sqlite'), timeout=10)
    try:
        rows = db.execute("SELECT e.lfn, e.size, e.md5, e.guid, (SELECT COUNT(*) FROM replicas r WHERE r.guid = e.guid)"
                          " FROM entries e WHERE e.type = 'f' AND e.lfn LIKE ?", (lfn_dir + '%',)).fetchall()
    finally:
        db.close()
    return {r[0]: tuple(r[1:]) for r in rows}


def _rc_service_log(grid_state):
    path = os.path.join(grid_state['workdir'], 'jcentral.log')
    start = os.path.getsize(path)

    def since():
        with open(path) as f:
            f.seek(start)
            return f.read()
    return since


def _rc_files(root, n, prefix='f'):
    """n tiny files, each with its own content -> {relative name: bytes}."""
    files = {}
    for i in range(n):
        name = '%s/%s%03d.txt' % ('d%d' % (i % 5), prefix, i)
        files[name] = ('file %d of the chaos test\n' % i).encode()
        write(os.path.join(str(root), name), files[name])
    return files


@pytest.fixture
def service_conf(grid_state):
    """set_conf(dict): how the service behaves (service.json); the defaults afterwards."""
    from testgrid import grid
    yield lambda conf: grid.set_service(grid_state['workdir'], conf)
    grid.set_service(grid_state['workdir'], None)
