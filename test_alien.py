"""Tests of alien.py: pure functions first, then against the local test grid."""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import shutil

import pytest

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)
import alien  # noqa: E402

ALIEN = os.path.join(REPO, 'alien.py')


def run_cli(args, env=None, input=None, timeout=60, python=None):
    """Run `python3 alien.py ARGS` as a user would; returns CompletedProcess (text)."""
    cmd = [python or sys.executable, ALIEN] + list(args)
    return subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=timeout)


# ===== core unit tests (no network) =====

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


@pytest.mark.parametrize('size', [0, 1, 125, 126, 65535, 65536, 200000])
def test_encode_frame_lengths_roundtrip(size):
    payload = os.urandom(size)
    data = alien.encode_frame(alien.OP_TEXT, payload)
    fin, opcode, got = decode_client_frame(data)
    assert (fin, opcode, got) == (True, alien.OP_TEXT, payload)
    expected_header = 2 + 4 + (0 if size < 126 else 2 if size < 65536 else 8)
    assert len(data) == expected_header + size


@pytest.mark.parametrize('size', [0, 5, 125, 126, 300, 65535, 65536, 100000])
def test_parse_frame_lengths(size):
    payload = b'x' * size
    data = server_frame(alien.OP_TEXT, payload)
    assert alien.parse_frame(data) == (True, alien.OP_TEXT, payload, len(data))
    for cut in (0, 1, len(data) - 1):  # incomplete input asks for more
        if cut < len(data):
            assert alien.parse_frame(data[:cut]) is None


@pytest.mark.parametrize('frame,reason', [
    (server_frame(1, b'hi', masked=True), 'masked'),
    (server_frame(1, b'hi', rsv=0x40), 'reserved'),
    (server_frame(3, b'hi'), 'opcode'),
    (server_frame(9, b'x', fin=False), 'control'),
    (bytes([0x89, 126]) + struct.pack('!H', 200) + b'x' * 200, 'control'),
    (bytes([0x81, 127]) + struct.pack('!Q', 1 << 63), 'most significant'),
    (bytes([0x81, 126]) + struct.pack('!H', 5) + b'hello', 'non-minimal'),
])
def test_parse_frame_rejects(frame, reason):
    with pytest.raises(alien.WebSocketError) as e:
        alien.parse_frame(frame)
    assert reason in str(e.value)


def test_parse_frame_huge_length_is_an_error_not_an_allocation():
    frame = bytes([0x81, 127]) + struct.pack('!Q', 1 << 62)
    with pytest.raises(alien.WebSocketError) as e:
        alien.parse_frame(frame)
    assert 'maximum' in str(e.value)


def test_assembler_fragments_with_interleaved_control_frames():
    asm = alien.MessageAssembler()
    data = (server_frame(alien.OP_TEXT, b'hel', fin=False) + server_frame(alien.OP_PING, b'p1')
            + server_frame(alien.OP_CONT, b'lo ', fin=False) + server_frame(alien.OP_PONG, b'')
            + server_frame(alien.OP_CONT, b'world'))
    for i in range(0, len(data), 3):  # byte-by-byte-ish delivery
        asm.feed(data[i:i + 3])
    events = []
    while True:
        ev = asm.next_event()
        if ev is None:
            break
        events.append(ev)
    assert events == [('ping', b'p1'), ('pong', b''), ('message', alien.OP_TEXT, b'hello world')]


def test_assembler_rejects_bad_fragment_sequences():
    asm = alien.MessageAssembler()
    asm.feed(server_frame(alien.OP_CONT, b'x'))
    with pytest.raises(alien.WebSocketError):
        asm.next_event()
    asm = alien.MessageAssembler()
    asm.feed(server_frame(alien.OP_TEXT, b'a', fin=False) + server_frame(alien.OP_TEXT, b'b'))
    with pytest.raises(alien.WebSocketError):
        asm.next_event()


def test_assembler_message_size_limit_counts_fragments():
    asm = alien.MessageAssembler(max_size=10)
    asm.feed(server_frame(alien.OP_TEXT, b'x' * 6, fin=False) + server_frame(alien.OP_CONT, b'y' * 6))
    with pytest.raises(alien.WebSocketError) as e:
        asm.next_event()
    assert 'maximum' in str(e.value)


def test_close_payload():
    assert alien.parse_close_payload(b'') == (1005, '')
    assert alien.parse_close_payload(struct.pack('!H', 1013) + b'Session timed out') == (1013, 'Session timed out')
    with pytest.raises(alien.WebSocketError):
        alien.parse_close_payload(b'\x03')
    with pytest.raises(alien.WebSocketError):
        alien.parse_close_payload(b'\x03\xe8\xff')


def test_handshake_request_and_accept():
    key = 'dGhlIHNhbXBsZSBub25jZQ=='
    # RFC 6455 section 1.3 example
    assert alien.ws_accept_key(key) == 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    req = alien.build_handshake('example.org', 8097, '/websocket/json', key).decode()
    assert req.startswith('GET /websocket/json HTTP/1.1\r\n')
    assert 'Host: example.org:8097\r\n' in req and 'Sec-WebSocket-Version: 13\r\n' in req
    assert req.endswith('\r\n\r\n')
    ok = ('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
          'Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=').encode()
    assert alien.parse_handshake_response(ok, key)['upgrade'] == 'websocket'


@pytest.mark.parametrize('reply,code', [
    (b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong', 107),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 0', 107),
    (b'HTTP/1.1 401 Unauthorized', 129),
    (b'garbage', 107),
    (b'HTTP/1.1 101 X\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nbroken header', 107),
])
def test_handshake_response_errors(reply, code):
    with pytest.raises(alien.AlienError) as e:
        alien.parse_handshake_response(reply, 'dGhlIHNhbXBsZSBub25jZQ==')
    assert e.value.exitcode == code


@pytest.mark.parametrize('path,expected', [
    ('', '/home/u/cwd'),
    ('.', '/home/u/cwd'),
    ('..', '/home/u'),
    ('../x/', '/home/u/x/'),
    ('f.txt', '/home/u/cwd/f.txt'),
    ('./a//b/../c', '/home/u/cwd/a/c'),
    ('~', '/home/u'),
    ('~/data/', '/home/u/data/'),
    ('%ALIEN/x', '/home/u/x'),
    ('/%ALIEN', '/home/u'),
    ('alien:/abs/p', '/abs/p'),
    ('alien:///abs/p', '/abs/p'),
    ('alien:rel', '/home/u/cwd/rel'),
    ('/a/b/../../..', '/'),
])
def test_expand_grid_path(path, expected):
    assert alien.expand_grid_path(path, '/home/u/cwd/', '/home/u/') == expected


def test_expand_local_path(tmp_path):
    d = tmp_path / 'd'
    d.mkdir()
    assert alien.expand_local_path('file:' + str(d)) == str(d) + '/'
    assert alien.expand_local_path('file://' + str(d / 'f')) == str(d / 'f')
    assert alien.expand_local_path('~/x').startswith(os.path.expanduser('~'))


@pytest.mark.parametrize('line,expected', [
    ('ls; pwd', ['ls', 'pwd']),
    ('ls\npwd;;', ['ls', 'pwd']),
    ('echo "a;b"; pwd', ['echo "a;b"', 'pwd']),
    ("find '/x;y' z", ["find '/x;y' z"]),
    ('a\\;b', ['a\\;b']),
    ('   ', []),
])
def test_split_chain(line, expected):
    assert alien.split_chain(line) == expected


def test_split_pipe_and_tokenize():
    assert alien.split_pipe('ls -l | grep x | wc') == ('ls -l', 'grep x | wc')
    assert alien.split_pipe("find '/a|b'") == ("find '/a|b'", None)
    assert alien.tokenize('stat "my file" x') == ['stat', 'my file', 'x']
    with pytest.raises(alien.AlienError) as e:
        alien.tokenize('stat "open')
    assert e.value.exitcode == alien.EX_USAGE


@pytest.mark.parametrize('env,expected', [
    ({}, [('alice-jcentral.cern.ch', 8097)]),
    ({'ALIENPY_JCENTRAL': 'h.example'}, [('h.example', 8097)]),
    ({'ALIENPY_JCENTRAL': 'h.example', 'ALIENPY_JCENTRAL_PORT': '9000'}, [('h.example', 9000)]),
    ({'ALIENPY_JCENTRAL': 'h.example:1234'}, [('h.example', 1234)]),
    ({'ALIENPY_JCENTRAL': '[::1]:1234'}, [('::1', 1234)]),
    ({'ALIENPY_JCENTRAL': '::1'}, [('::1', 8097)]),
    ({'JALIEN_HOST': 'box', 'JALIEN_WSPORT': '1111'}, [('box', 1111), ('alice-jcentral.cern.ch', 8097)]),
])
def test_endpoints(env, expected, tmp_path):
    env = dict(env, TMPDIR=str(tmp_path))
    assert alien.endpoints(env) == expected


def test_endpoint_bad_port():
    with pytest.raises(alien.AlienError) as e:
        alien.endpoints({'ALIENPY_JCENTRAL': 'h', 'ALIENPY_JCENTRAL_PORT': 'x'})
    assert e.value.exitcode == alien.EX_EINVAL


def test_interleave_addresses():
    v4 = [(socket.AF_INET, 1, 6, '', ('1.1.1.%d' % i, 1)) for i in range(3)]
    v6 = [(socket.AF_INET6, 1, 6, '', ('::%d' % i, 1)) for i in range(2)]
    out = alien.interleave_addresses(v6 + v4)
    assert [a[4][0] for a in out] == ['::0', '1.1.1.0', '::1', '1.1.1.1', '1.1.1.2']


def test_parse_reply_errors():
    with pytest.raises(alien.AlienError) as e:
        alien.parse_reply('')
    assert e.value.exitcode == alien.EX_EMPTY_REPLY
    with pytest.raises(alien.AlienError) as e:
        alien.parse_reply('{not json')
    assert e.value.exitcode == alien.EX_EINVAL
    with pytest.raises(alien.AlienError) as e:
        alien.parse_reply('{"results": []}')
    assert e.value.exitcode == alien.EX_ENOMSG
    md, res = alien.parse_reply('{"metadata": {"exitcode": "0"}, "results": [{"message": "a\\/b"}, 3]}')
    r = alien.reply_to_result(md, res)
    assert (r.exitcode, r.out, r.results) == (0, 'a/b', [{'message': 'a/b'}])
    r = alien.reply_to_result({'exitcode': '-1', 'error': 'Incoming JSON not ok'}, [])
    assert (r.exitcode, r.err) == (-1, 'Incoming JSON not ok')


def test_exit_status():
    assert [alien.exit_status(c) for c in (0, 2, 255, -1, 256, 107)] == [0, 2, 255, 255, 1, 107]


def test_write_private_file_is_never_readable_by_others(tmp_path):
    target = tmp_path / 'tokenkey.pem'
    target.write_text('old')
    os.chmod(str(target), 0o644)
    old_umask = os.umask(0)
    try:
        alien.write_private_file(str(target), 'SECRET', 0o400)
    finally:
        os.umask(old_umask)
    assert target.read_text() == 'SECRET\n'
    assert os.stat(str(target)).st_mode & 0o777 == 0o400
    assert [p.name for p in tmp_path.iterdir()] == ['tokenkey.pem']  # no temp file left


def test_key_with_open_permissions_is_refused(tmp_path):
    key = tmp_path / 'userkey.pem'
    key.write_text('x')
    os.chmod(str(key), 0o644)
    with pytest.raises(alien.AlienError) as e:
        alien.check_key_permissions(str(key))
    assert 'chmod 600' in str(e.value)


def test_materialized_pem_is_owner_only(tmp_path):
    path = alien.materialize_pem('-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----', 'tokencert')
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        alien._cleanup_temp_files()
    assert not os.path.exists(path)
    assert alien.materialize_pem('/some/path.pem', 'tokencert') == '/some/path.pem'


def test_no_credentials_is_one_line_error(tmp_path):
    env = {'HOME': str(tmp_path), 'TMPDIR': str(tmp_path), 'ALIENPY_JCENTRAL': '127.0.0.1:9'}
    p = run_cli(['pwd'], env=dict(os.environ, **env))
    assert p.returncode == alien.EX_NOTCONN
    assert p.stderr.count('\n') == 1 and 'no valid user certificate or token' in p.stderr
    assert p.stdout == ''


def test_client_side_commands_need_no_connection(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), TMPDIR=str(tmp_path), ALIENPY_JCENTRAL='127.0.0.1:9')
    p = run_cli(['version'], env=env)
    assert p.returncode == 0 and 'alien.py version' in p.stdout
    p = run_cli(['exitcode'], env=env)
    assert (p.returncode, p.stdout) == (0, '0\n')
    p = run_cli(['token-info'], env=env)
    assert p.returncode == alien.EX_ENOENT and p.stderr.count('\n') == 1


@pytest.mark.parametrize('env,host,expected', [
    ({}, 'h.cern.ch', None),
    ({'https_proxy': 'http://proxy:3128'}, 'h.cern.ch', ('proxy', 3128, None)),
    ({'HTTPS_PROXY': 'http://u:p%40ss@proxy:8080/'}, 'h.cern.ch', ('proxy', 8080, 'u:p%40ss')),
    ({'https_proxy': 'proxy'}, 'h.cern.ch', ('proxy', 3128, None)),
    ({'https_proxy': 'proxy:1', 'no_proxy': '.cern.ch'}, 'h.cern.ch', None),
    ({'https_proxy': 'proxy:1', 'no_proxy': 'cern.ch'}, 'h.cern.ch', None),
    ({'https_proxy': 'proxy:1', 'no_proxy': 'localhost,127.0.0.1'}, '127.0.0.1', None),
    ({'https_proxy': 'proxy:1', 'no_proxy': 'xcern.ch'}, 'h.cern.ch', ('proxy', 1, None)),
    ({'https_proxy': 'proxy:1', 'NO_PROXY': '*'}, 'h.cern.ch', None),
])
def test_proxy_for(env, host, expected):
    assert alien.proxy_for(host, env) == expected


# ===== fuzz properties (hypothesis, CI-sized) =====
from hypothesis import given, settings, strategies as st  # noqa: E402


def drain(asm):
    events = []
    while True:
        ev = asm.next_event()
        if ev is None:
            return events
        events.append(ev)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_fuzz_assembler_ends_in_data_or_our_error(data, chunk):
    asm = alien.MessageAssembler(max_size=1 << 16)
    try:
        for i in range(0, len(data), chunk):
            asm.feed(data[i:i + chunk])
            drain(asm)
    except alien.WebSocketError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=200), st.booleans()),
                max_size=8))
def test_fuzz_frame_sequences(frames):
    data = b''.join(server_frame(op, p[:125] if op >= 8 else p, fin=fin or op >= 8) for op, p, fin in frames)
    asm = alien.MessageAssembler()
    asm.feed(data)
    try:
        for ev in drain(asm):
            assert ev[0] in ('message', 'ping', 'pong', 'close')
    except alien.WebSocketError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_handshake_parser(data):
    try:
        alien.parse_handshake_response(data, 'dGhlIHNhbXBsZSBub25jZQ==')
    except alien.AlienError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_reply_parser(text):
    try:
        alien.reply_to_result(*alien.parse_reply(text))
    except alien.AlienError:
        pass


def test_non_ascii_digits_are_not_numbers():
    # found by fuzz/fuzz_websocket.py: str.isdigit() accepts superscripts, int() does not
    with pytest.raises(alien.WebSocketError):
        alien.parse_handshake_response('HTTP/1.1 \u00b901 X'.encode('utf-8'), 'k')
    with pytest.raises(alien.AlienError):
        alien.parse_hostport('h:\u00b9', 8097)



def test_pip_install_exposes_the_alien_py_command(tmp_path):
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    p = subprocess.run([str(venv / 'bin' / 'pip'), 'install', '-q', '--disable-pip-version-check', REPO],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(venv / 'bin' / 'alien.py'), 'version'], capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 0 and 'alien.py version: %s' % alien.VERSION in p.stdout, p.stderr
    assert str(venv) in p.stdout  # the installed module ran, not this checkout's


def test_vermin_python36():
    vermin = shutil.which('vermin') or os.path.join(os.path.dirname(sys.executable), 'vermin')
    p = subprocess.run([vermin, '-t=3.6-', '--no-tips', '--violations', ALIEN], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([vermin, '-t=3.6-', '--no-tips', ALIEN], capture_output=True, text=True)
    assert 'Minimum required versions: 3.6' in p.stdout, p.stdout


def test_imports_with_the_standard_library_only():
    code = ("import importlib.util as u; s = u.spec_from_file_location('alien', %r); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); import sys; "
            "bad = [n for n in ('XRootD', 'gfal2', 'websocket', 'websockets') if n in sys.modules]; "
            "assert not bad, bad" % ALIEN)
    p = subprocess.run([sys.executable, '-I', '-S', '-c', code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

# ===== core integration tests (command mode against the test grid) =====
import re  # noqa: E402
import shutil  # noqa: E402

CLIENT_VARS = ('ALIENPY_', 'X509_', 'JALIEN_', 'https_proxy', 'HTTPS_PROXY')
KEEP_VARS = ('ALIENPY_TRANSPORT',)  # the transport under test comes from the outside


@pytest.fixture
def cenv(grid_state, tmp_path):
    """Environment of a user of the test grid with a fresh HOME and no token yet."""
    env = {k: v for k, v in os.environ.items() if k in KEEP_VARS or not k.startswith(CLIENT_VARS)}
    env.update(grid_state['env'])
    home, tmp = tmp_path / 'home', tmp_path / 'tmp'
    home.mkdir()
    tmp.mkdir()
    env.update(HOME=str(home), TMPDIR=str(tmp),
               JALIEN_TOKEN_CERT=str(tmp / 'tokencert.pem'), JALIEN_TOKEN_KEY=str(tmp / 'tokenkey.pem'))
    return env


def one_line_error(p):
    return p.returncode != 0 and p.stdout == '' and p.stderr.count('\n') == 1 and 'Traceback' not in p.stderr


def test_pwd_whoami_and_token_written_owner_only(cenv, grid_state):
    p = run_cli(['pwd'], env=cenv)
    assert (p.returncode, p.stdout, p.stderr) == (0, grid_state['home'] + '\n', '')
    for name in ('JALIEN_TOKEN_CERT', 'JALIEN_TOKEN_KEY'):
        assert os.stat(cenv[name]).st_mode & 0o777 == 0o400
    p = run_cli(['whoami -json'], env=cenv)  # now connects with the token
    reply = json.loads(p.stdout)
    assert reply['results'][0]['username'] == 'jalien'
    assert 'OU=token' in reply['results'][0]['certificate_dn'] or 'token' in reply['results'][0]['certificate_dn']


def test_chain_cwd_and_cd_minus(cenv, grid_state):
    home = grid_state['home']
    p = run_cli(['mkdir -p chain1/sub; cd chain1; pwd; ls; cd -; pwd; cd chain1/sub; cd; pwd'], env=cenv)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [home + 'chain1/', 'sub/', home, home]
    p = run_cli(['cd', home + 'chain1'], env=cenv)  # several argv words are joined with quoting
    assert p.returncode == 0


def test_errors_go_to_stderr_with_the_server_exit_code(cenv):
    cases = [('ls /nonexistent', 2, 'No such file or directory : /nonexistent\n'),
             ('ls -z', 22, 'Invalid argument : z is not a recognized option\n'),
             ('bogus', 2, 'No such file or directory : Command [bogus] not found!\n'),
             ('rm /no/such/file', 5, None)]
    for line, code, err in cases:
        p = run_cli([line], env=cenv)
        assert p.returncode == code and p.stdout == '', (line, p)
        if err:
            assert p.stderr == err


def test_exit_code_is_the_last_commands(cenv):
    assert run_cli(['ls /nonexistent; pwd'], env=cenv).returncode == 0
    p = run_cli(['pwd; ls /nonexistent'], env=cenv)
    assert p.returncode == 2 and p.stdout.endswith('/\n')


def test_json_output(cenv, grid_state):
    p = run_cli(['ls', '-json', grid_state['home']], env=cenv)
    reply = json.loads(p.stdout)
    assert set(reply) == {'metadata', 'results'} and reply['metadata']['exitcode'] == '0'
    p = run_cli(['-json', 'pwd'], env=cenv)
    assert json.loads(p.stdout)['results'][0]['pwd'] == grid_state['home']
    env = dict(cenv, ALIENPY_JSON='1')
    p = run_cli(['version'], env=env)  # a client-side command has no reply dict
    assert p.returncode == 0 and 'did not return a json dictionary' in p.stderr


def test_ls_aliases(cenv, grid_state):
    run_cli(['mkdir -p lsal/.hidden lsal/vis'], env=cenv)
    base = grid_state['home'] + 'lsal/'
    assert run_cli(['ls ' + base], env=cenv).stdout == 'vis/\n'
    assert sorted(run_cli(['la ' + base], env=cenv).stdout.split()) == ['.hidden/', 'vis/']
    assert run_cli(['ll ' + base], env=cenv).stdout.startswith('drwx')
    assert '.hidden/' in run_cli(['lla ' + base], env=cenv).stdout


def test_embedding_api(cenv, grid_state):
    s = alien.Session(environ=cenv)
    try:
        r = s.run('mkdir -p embed; cd embed; pwd')
        assert (r.exitcode, r.out) == (0, grid_state['home'] + 'embed/')
        assert s.cwd == grid_state['home'] + 'embed/' and s.home == grid_state['home'] and s.user == 'jalien'
        r = s.run('ls /nonexistent')
        assert r.exitcode == 2 and 'No such file' in r.err
        r = s.request('stat', ['-nomsg', s.grid_path('..')])
        assert r.results[0]['type'] == 'd'
    finally:
        s.close()


def test_token_given_as_pem_contents(cenv, tmp_path):
    assert run_cli(['pwd'], env=cenv).returncode == 0  # writes the token files
    env = dict(cenv, JALIEN_TOKEN_CERT=open(cenv['JALIEN_TOKEN_CERT']).read(),
               JALIEN_TOKEN_KEY=open(cenv['JALIEN_TOKEN_KEY']).read(),
               X509_USER_CERT='/nonexistent', X509_USER_KEY='/nonexistent', TMPDIR=str(tmp_path / 'tmp2'))
    os.mkdir(env['TMPDIR'])
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 0, p.stderr
    assert os.listdir(env['TMPDIR']) == []  # the temporary PEM files are gone


def test_endpoint_host_port_forms(cenv):
    port = cenv['ALIENPY_JCENTRAL_PORT']
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:%s' % port, ALIENPY_JCENTRAL_PORT='1')
    assert run_cli(['pwd'], env=env).returncode == 0
    env = dict(cenv, ALIENPY_JCENTRAL='localhost')
    assert run_cli(['pwd'], env=env).returncode == 0


def test_connection_refused_is_107(cenv):
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:1', ALIENPY_CONNECT_TRIES='2', ALIENPY_CONNECT_TRIES_INTERVAL='0')
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'refused' in p.stderr


def _other_ca_dir(grid_state, tmp_path):
    d = tmp_path / 'otherca'
    d.mkdir()
    shutil.copy(os.path.join(grid_state['workdir'], 'pki', 'other-ca', 'ca.pem'), str(d / 'ca.pem'))
    subprocess.run(['openssl', 'rehash', str(d)], check=True)
    return str(d)


def test_tls_wrong_ca(cenv, grid_state, tmp_path):
    env = dict(cenv, X509_CERT_DIR=_other_ca_dir(grid_state, tmp_path))
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'verify' in p.stderr


def test_tls_untrusted_client_certificate(cenv, grid_state):
    from testgrid import grid
    cert, key = grid.make_user_cert(grid_state['workdir'], 'othercauser', ca='other')
    env = dict(cenv, X509_USER_CERT=cert, X509_USER_KEY=key)
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p), p


def test_tls_expired_user_certificate(cenv, grid_state):
    from testgrid import grid
    cert, key = grid.make_user_cert(grid_state['workdir'], 'expireduser', expired=True)
    env = dict(cenv, X509_USER_CERT=cert, X509_USER_KEY=key)
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'expired' in p.stderr


def test_tls_unmapped_dn_is_129(cenv, grid_state):
    from testgrid import grid
    cert, key = grid.make_user_cert(grid_state['workdir'], 'nobody', cn='nobody')
    env = dict(cenv, X509_USER_CERT=cert, X509_USER_KEY=key)
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 129 and one_line_error(p), p


def test_tls_hostname_mismatch(cenv, grid_state):
    from testgrid import grid
    cert, key = grid.make_host_cert(grid_state['workdir'], 'wronghost', san=('DNS:wrong.example',))
    port = grid.start_service(grid_state['workdir'], host_cert=cert, host_key=key)
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:%d' % port)
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'host name' in p.stderr, p
    env['ALIENPY_NO_VERIFY_HOSTNAME'] = '1'  # the documented switch; the chain is still verified
    assert run_cli(['pwd'], env=env).returncode == 0


def test_group_readable_key_is_refused(cenv, tmp_path):
    key = tmp_path / 'key.pem'
    shutil.copy(cenv['X509_USER_KEY'], str(key))
    os.chmod(str(key), 0o640)
    p = run_cli(['pwd'], env=dict(cenv, X509_USER_KEY=str(key)))
    assert p.returncode == 107 and one_line_error(p) and 'chmod 600' in p.stderr



# ===== fault tests: a hostile websocket server =====

class Hostile(object):
    """A TLS websocket server on loopback that misbehaves on purpose. Each accepted
    connection is handed to script(server, conn, index) after a correct (or the
    given) handshake reply. Client messages are collected in .messages."""

    def __init__(self, grid_state, script, handshake=None):
        self.script = script
        self.handshake = handshake
        self.messages = []
        self.connections = 0
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
            data = b''
            while b'\r\n\r\n' not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            key = re.search(rb'Sec-WebSocket-Key: (\S+)', data).group(1).decode()
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
        data = b''
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
def henv(cenv, grid_state):
    """Client environment with a valid token, so no token request goes to the hostile server."""
    return dict(cenv, JALIEN_TOKEN_CERT=grid_state['pki']['token_cert'], JALIEN_TOKEN_KEY=grid_state['pki']['token_key'],
                ALIENPY_TIMEOUT='1', ALIENPY_CONNECT_TRIES='1')


# The diagnostics below are those of alien.py's own websocket code; with the
# websocket-client transport the same faults end in the same exit codes and one-line
# errors, worded by that library.
OWN_TRANSPORT = os.environ.get('ALIENPY_TRANSPORT', '') in ('', 'builtin')


def hostile_run(grid_state, henv, script, line='pwd', handshake=None, timeout=20):
    server = Hostile(grid_state, script, handshake)
    try:
        t0 = time.monotonic()
        p = run_cli([line], env=dict(henv, ALIENPY_JCENTRAL='127.0.0.1:%d' % server.port), timeout=timeout)
        return p, time.monotonic() - t0, server
    finally:
        server.close()


def then_send(data, close=True):
    def script(server, conn, index):
        server.recv(conn)
        conn.sendall(data)
        if close:
            conn.close()
        else:
            time.sleep(5)
    return script


@pytest.mark.parametrize('data,code,words', [
    (b'\x81\x7e\x01', 107, 'closed by the server'),                     # closes mid-header
    (server_frame(1, b'{"metadata": {"exitcode": "0"}, "results": [{"message": "x"}]}')[:20], 107,
     'closed by the server'),                                            # closes mid-reply
    (b'HTTP/1.1 500 garbage garbage', 107, 'reserved'),                 # not websocket frames
    (server_frame(1, b'\xff\xfe not utf-8'), 107, 'UTF-8'),
    (server_frame(1, b'{"metadata": '), 22, 'not JSON'),
    (server_frame(1, b'[1, 2]'), 42, 'format'),
    (server_frame(1, b''), 70, 'empty'),
    (bytes([0x81, 127]) + struct.pack('!Q', 1 << 62), 107, 'maximum'),
    (server_frame(1, b'{}', masked=True), 107, 'masked'),  # websocket-client accepts it: then 42
    (server_frame(2, b'binary'), 107, 'binary'),
])
def test_hostile_replies_end_in_one_line_errors(grid_state, henv, data, code, words):
    p, elapsed, server = hostile_run(grid_state, henv, then_send(data, close='closed' in words), line='rm /x')
    assert one_line_error(p), p
    assert (p.returncode == code and words in p.stderr) or not OWN_TRANSPORT, p
    assert elapsed < 10
    assert [m['command'] for m in server.messages] == ['rm']  # never sent twice


def test_bad_handshake_replies(grid_state, henv):
    for reply, code in ((b'HTTP/1.1 401 Unauthorized\r\n\r\n', 129),
                        (b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                         b'Sec-WebSocket-Accept: wrong\r\n\r\n', 107),
                        (b'\x00' * 70000, 107)):
        p, _, _ = hostile_run(grid_state, henv, lambda s, c, i: time.sleep(3), handshake=reply)
        assert p.returncode == code and one_line_error(p), p


def test_server_never_answers_times_out(grid_state, henv):
    def script(server, conn, index):
        while server.recv(conn) is not None:  # reads the request and our keep-alive ping, answers nothing
            pass
    p, elapsed, _ = hostile_run(grid_state, henv, script, line='rm /x')
    assert p.returncode == 107 and one_line_error(p) and elapsed < 8
    if OWN_TRANSPORT:
        assert 'no answer' in p.stderr and elapsed > 1.5  # ALIENPY_TIMEOUT=1: one ping, then give up


def test_slow_server_answering_pings_is_waited_for(grid_state, henv):
    def script(server, conn, index):
        server.recv(conn)
        for _ in range(3):  # silent for 3 keep-alive periods, but answers the pings
            frame = server.recv(conn)
            if frame and frame[0] == alien.OP_PING:
                conn.sendall(server_frame(alien.OP_PONG, frame[1]))
        server.reply(conn, message='late but fine')
        time.sleep(1)
    p, elapsed, _ = hostile_run(grid_state, henv, script, line='find / x')
    assert (p.returncode, p.stdout) == (0, 'late but fine\n'), p


def test_slow_trickle_reply(grid_state, henv):
    def script(server, conn, index):
        server.recv(conn)
        frame = server_frame(1, json.dumps({'metadata': {'exitcode': '0'}, 'results': [{'message': 'slow'}]}).encode())
        for i in range(0, len(frame), 8):
            conn.sendall(frame[i:i + 8])
            time.sleep(0.02)
        time.sleep(1)
    p, _, _ = hostile_run(grid_state, henv, script)
    assert (p.returncode, p.stdout) == (0, 'slow\n'), p


def test_fragment_storm_and_interleaved_pings(grid_state, henv):
    text = json.dumps({'metadata': {'exitcode': '0'}, 'results': [{'message': 'y' * 5000}]}).encode()

    def script(server, conn, index):
        server.recv(conn)
        frames = [server_frame(alien.OP_TEXT if i == 0 else alien.OP_CONT, text[i:i + 1], fin=(i == len(text) - 1))
                  + (server_frame(alien.OP_PING, b'p') if i % 100 == 0 else b'') for i in range(len(text))]
        conn.sendall(b''.join(frames))
        time.sleep(2)
    p, elapsed, server = hostile_run(grid_state, henv, script)
    assert (p.returncode, p.stdout) == (0, 'y' * 5000 + '\n'), p.stderr


def test_read_only_command_is_resent_after_the_connection_dies(grid_state, henv):
    def script(server, conn, index):
        msg = server.recv(conn)
        if index == 0:
            server.reply(conn, cwd='/localhost/localdomain/user/j/jalien/sub/', message=None)  # cd sub
            server.recv(conn)                                                   # pwd ... then die
            conn.close()
            return
        while msg is not None:
            cmd = server.messages[-1]
            server.reply(conn, cwd='/localhost/localdomain/user/j/jalien/sub/',
                         message=cmd['command'] + ' ' + ' '.join(cmd['options']))
            msg = server.recv(conn)
    p, _, server = hostile_run(grid_state, henv, script, line='cd sub; pwd')
    assert p.returncode == 0, p.stderr
    sent = [(m['command'], m['options']) for m in server.messages]
    # the new connection restores the cwd first, then sends pwd again
    assert sent == [('cd', ['-nokeys', 'sub']), ('pwd', ['-nokeys']),
                    ('cd', ['/localhost/localdomain/user/j/jalien/sub/']), ('pwd', ['-nokeys'])]
    assert p.stdout == 'pwd -nokeys\n'


def test_modifying_command_is_never_sent_twice(grid_state, henv):
    def script(server, conn, index):
        server.recv(conn)
        conn.close()  # dies after receiving rm: did it happen? nobody knows
    p, _, server = hostile_run(grid_state, henv, script, line='rm -f /a/file')
    assert p.returncode == 107 and one_line_error(p) and 'unknown' in p.stderr
    assert [m['command'] for m in server.messages] == ['rm']


def test_ping_without_pong_times_out(grid_state, henv):
    def script(server, conn, index):
        while server.recv(conn) is not None:
            pass
    p, elapsed, _ = hostile_run(grid_state, henv, script, line='ping 1')
    assert p.returncode == 107 and one_line_error(p) and elapsed < 8, p



# ===== conformance with the reference client (alienpy from PyPI) =====
REFERENCE = os.environ.get('ALIENPY_REFERENCE', os.path.join(REPO, '.venv-ref', 'bin', 'alien.py'))
CONFORMANCE_LINES = [
    'pwd', 'whoami', 'ls', 'ls -l conf', 'ls -a conf', 'ls -l -a conf/', 'ls conf/sub', 'ls /nonexistent', 'ls -z',
    'stat conf/f1', 'stat /no/such', 'find conf f', 'find conf .txt', 'find -r conf f[0-9]', 'type conf/f1',
    'type conf', 'listSEs', 'whereis conf/f1', 'cd conf; pwd; ls', 'cd /nonexistent', 'cd conf/f1',
    'mkdir -p conf/new/deep; ls conf/new; rmdir conf/new/deep; rmdir conf/new; ls conf',
    'mkdir conf/x/y', 'touch conf/t; ls conf; rm conf/t; ls conf', 'rm conf/missing',
    'mv conf/f1 conf/f1b; ls conf; mv conf/f1b conf/f1', 'rmdir conf', 'commandlist', 'whoami -v',
]


def _normalize_times(text):
    return re.sub(r'[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d', 'MMM DD HH:MM', text)


def test_conformance_with_the_reference_client(cenv, grid_state):
    """The same command lines through alienpy 1.7.0 and alien.py: identical stdout and
    exit codes (proves the test grid speaks the protocol the reference client expects)."""
    assert os.access(REFERENCE, os.X_OK), 'reference client missing: run .ci/setup'
    home = grid_state['home']
    setup = ('mkdir -p {h}conf/sub; touch {h}conf/f1; touch {h}conf/f2.txt; touch {h}conf/.hidden'
             .format(h=home))
    assert run_cli([setup], env=cenv).returncode == 0
    env = dict(cenv, ALIENPY_NO_CWD_RESTORE='1')
    mismatches, seen = [], {}
    for line in CONFORMANCE_LINES:
        ref = subprocess.run([REFERENCE, line], env=env, capture_output=True, text=True, timeout=60)
        ours = run_cli([line], env=env)
        seen[line] = (ours.returncode, ours.stdout)
        if (_normalize_times(ref.stdout), ref.returncode) != (_normalize_times(ours.stdout), ours.returncode):
            mismatches.append((line, ref.returncode, ref.stdout[:300], ours.returncode, ours.stdout[:300]))
        assert 'Traceback' not in ours.stderr
    assert mismatches == []
    # not vacuous: real listings and real errors were compared
    assert seen['ls -l conf'][0] == 0 and 'f2.txt' in seen['ls -l conf'][1] and 'sub/' in seen['ls -l conf'][1]
    assert seen['ls /nonexistent'][0] == 2 and seen['ls -z'][0] == 22 and seen['rm conf/missing'][0] != 0
    assert seen['find conf .txt'][1] == home + 'conf/f2.txt\n'

@pytest.fixture(scope='session')
def grid_state():
    from testgrid import grid
    d = os.path.join(REPO, '.testgrid-pytest')
    state = grid.start(d, fresh=True)
    yield state
    grid.stop(d)
