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

@pytest.fixture(scope='session')
def grid_state():
    from testgrid import grid
    d = os.path.join(REPO, '.testgrid-pytest')
    state = grid.start(d, fresh=True)
    yield state
    grid.stop(d)


# ===== cp tests =====
import signal  # noqa: E402


def test_parse_cp_args():
    opts, pos = alien.parse_cp_args(['-f', '-T', '4', 'a', '-parent', '2', 'b', '-quiet'])
    assert pos == ['a', 'b']
    assert (opts['force'], opts['parallel'], opts['parent'], opts['quiet']) == (True, 4, 2, True)
    opts, pos = alien.parse_cp_args(['-glob', '*.log', '-chunks', '3', '-chunksz', '1048576', '-S', '99',
                                     '-y', '2', '-retry', '0', '-timeout', '5', '-l', '10', '-o', '2',
                                     '-j', '123', '-a', '-P', '-cksum', '-dryrun', 'x', 'y'])
    assert (opts['glob'], opts['chunks'], opts['chunksize'], opts['streams'], opts['sources']) == \
        ('*.log', 3, 1048576, 15, 2)
    assert (opts['limit'], opts['offset'], opts['jobid'], opts['dryrun']) == (10, 2, '123', True)
    assert alien.parse_cp_args(['-h'])[0]['help']
    assert alien.parse_cp_args(['-input', 'f.txt'])[0]['input'] == 'f.txt'
    assert alien.parse_cp_args(['--', '-f', 'x'])[1] == ['-f', 'x']


@pytest.mark.parametrize('args, words', [
    (['-T'], 'needs a value'),
    (['-T', 'x', 'a', 'b'], 'integer'),
    (['-parent', '-1', 'a', 'b'], '>= 0'),
    (['-bogus', 'a', 'b'], 'unknown option'),
    (['-glob', '*', '-select', 'x', 'a', 'b'], 'only one selection rule'),
    (['-name', 'ext_root', '-glob', '*', 'a', 'b'], 'only one selection rule'),
])
def test_parse_cp_args_errors(args, words):
    with pytest.raises(alien.AlienError) as e:
        alien.parse_cp_args(args)
    assert words in str(e.value) and e.value.exitcode == alien.EX_EINVAL


@pytest.mark.parametrize('value, regex', [
    ('begin_myf_contain_run1_ext_root', r'.*/myf[^/]*run1[^/]*\.root$'),
    ('ext_root', r'.*/[^/]*\.root$'),
    ('begin_AO2D', r'.*/AO2D[^/]*$'),
    ('contain_a_contain_b', r'.*/[^/]*a[^/]*b[^/]*$'),
    ('ends_log', r'.*/[^/]*log$'),
    ('begin_x.y_ends_z_ext_gz', r'.*/x\.y[^/]*z\.gz$'),
])
def test_name_verbs_to_regex(value, regex):
    assert alien.name_verbs_to_regex(value) == regex


def test_name_verbs_match_what_they_say():
    rx = re.compile(alien.name_verbs_to_regex('begin_myf_contain_run1_ext_root'))
    assert rx.match('/a/b/myfile_run12.root')
    assert not rx.match('/a/b/yourfile_run12.root')
    assert not rx.match('/a/myf/run1/x.root')   # the whole match stays inside the name
    assert not rx.match('/a/b/myfile_run12.root.bak')


@pytest.mark.parametrize('value', ['root', 'ext_', 'begin_a_begin_b', 'exts_root', 'ext_a_ext_b', ''])
def test_name_verbs_errors(value):
    with pytest.raises(alien.AlienError) as e:
        alien.name_verbs_to_regex(value)
    assert e.value.exitcode == alien.EX_EINVAL


@pytest.mark.parametrize('arg, expected', [
    ('/a/f', ('/a/f', [])),
    ('/a/f@disk:2', ('/a/f', ['disk:2'])),
    ('/a/f@disk:2,ALICE::CERN::EOS,!ALICE::X::Y', ('/a/f', ['disk:2', 'ALICE::CERN::EOS', '!ALICE::X::Y'])),
    ('/a/f,disk:1', ('/a/f', ['disk:1'])),
    ('/a/f,v2.txt', ('/a/f,v2.txt', [])),            # a comma in a name is not a specifier
    ('alien:/a/f@tape=1', ('alien:/a/f', ['tape=1'])),
    ('dir/@disk:2', ('dir/', ['disk:2'])),
])
def test_split_specs(arg, expected):
    assert alien.split_specs(arg) == expected


@pytest.mark.parametrize('arg', ['/a/f@disk:0', '/a/f@nonsense', '/a/f@disk:x'])
def test_split_specs_errors(arg):
    with pytest.raises(alien.AlienError) as e:
        alien.split_specs(arg)
    assert e.value.exitcode == alien.EX_EINVAL


def test_parse_input_lines():
    text = ('# comment\n\n  ; other\n// c++ style\n/a/f file:out/\n'
            '"file:my file" "/g/with space"\n one two three\n"unclosed\n')
    pairs, notices = alien.parse_input_lines(text)
    assert pairs == [('/a/f', 'file:out/'), ('file:my file', '/g/with space')]
    assert len(notices) == 2 and 'line 7' in notices[0] and 'line 8' in notices[1]


@pytest.mark.parametrize('src, dst, exists, expected', [
    ('file:a', 'b', False, ('upload', 'a', 'b')),
    ('file://a', 'alien:b', False, ('upload', 'a', 'b')),
    ('a', 'file:b', True, ('download', 'a', 'b')),
    ('alien:a', 'b', True, ('download', 'a', 'b')),
    ('a', 'alien://b', False, ('upload', 'a', 'b')),
    ('a', 'b', True, ('upload', 'a', 'b')),      # no prefixes: a local file is uploaded
    ('a', 'b', False, ('download', 'a', 'b')),
])
def test_cp_direction(src, dst, exists, expected):
    assert alien.cp_direction(src, dst, lambda p: exists) == expected


@pytest.mark.parametrize('src, dst, words', [
    ('alien:a', 'alien:b', 'grid to grid'), ('alien:a', 'b', None), ('file:a', 'file:b', 'both sides are local'),
    ('file:a', 'a', None),
])
def test_cp_direction_refusals(src, dst, words):
    if words is None:
        alien.cp_direction(src, dst, lambda p: False)
        return
    with pytest.raises(alien.AlienError) as e:
        alien.cp_direction(src, dst, lambda p: False)
    assert words in str(e.value) and e.value.exitcode == 1


def test_split_glob():
    assert alien.split_glob('/a/b/*.log') == ('/a/b/', '*.log')
    assert alien.split_glob('/a/*/x.log') == ('/a/', '*/x.log')
    assert alien.split_glob('/a/b/') == ('/a/b/', '')


REF = '/alice/cern.ch/user/a/admin/referenceData/'


@pytest.mark.parametrize('src_dir, rel, dst, parent, rmprefix, expected', [
    # the worked examples of the behaviour spec (4.5)
    (REF, 'referenceData.xml', 'ci/', 0, 0, 'ci/referenceData.xml'),
    (REF, 'referenceData.xml', 'ci/', 2, 0, 'ci/admin/referenceData/referenceData.xml'),
    (REF, 'referenceData.xml', 'ci/', 0, 4, 'ci/admin/referenceData/referenceData.xml'),
    (REF + '001/', 'stdout.log', 'ci/', 2, 0, 'ci/referenceData/001/stdout.log'),
    (REF + '001/', 'stdout.log', 'ci/', 0, 5, 'ci/referenceData/001/stdout.log'),
    ('/x/dir/', 'sub/f', 'out/', 1, 0, 'out/dir/sub/f'),     # "cp /x/dir out/": parent became 1
    ('/x/dir/', 'sub/f', 'out/', 0, 0, 'out/sub/f'),         # "cp /x/dir/ out/"
    ('/x/', 'f', '/l/name', 3, 0, '/l/name'),                # no trailing '/': a rename
    ('/x/', 'f', '/l/', 9, 0, '/l/x/f'),                     # parent beyond the root
    ('/x/', 'f', '/l/', 0, 9, '/l/f'),
    ('/x/', 'a/../f', '/l//', 0, 0, '/l/f'),
])
def test_cp_dst_name(src_dir, rel, dst, parent, rmprefix, expected):
    assert alien.cp_dst_name(src_dir, rel, dst, parent, rmprefix) == expected


@pytest.mark.parametrize('pattern, yes, no', [
    ('*.log', ['a.log', 'x/y/b.log'], ['a.log.gz', 'alog']),
    ('*/stdout.log', ['001/stdout.log'], ['stdout.log', 'a/b/stdout.log']),
    ('**/*.root', ['a.root', 'a/b/c.root'], ['a.rootx']),
    ('f?.txt', ['f1.txt'], ['f12.txt']),
    ('[ab]*', ['a1', 'b'], ['c']),
])
def test_glob_to_regex(pattern, yes, no):
    rx = re.compile(alien.glob_to_regex(pattern))
    assert all(rx.match(y) for y in yes) and not any(rx.match(n) for n in no)


def test_part_name_is_hidden_and_url_safe(tmp_path):
    final = str(tmp_path / 'a?b#c&d.root')
    p = alien.part_name(final)
    base = os.path.basename(p)
    assert os.path.dirname(p) == str(tmp_path)
    assert base.startswith('.') and '.alienpy-part-' in base and not re.search('[?#&]', base)
    assert alien.part_name(final) != p


def test_grid_url():
    assert alien.grid_url('root://h:1//a/b', 'ENV') == 'root://h:1//a/b?xrd.wantprot=unix&authz=ENV'
    assert alien.grid_url('root://h:1//a/z.zip#m.root', 'E') == \
        'root://h:1//a/z.zip?xrd.wantprot=unix&authz=E&xrdcl.unzip=m.root'
    assert alien.grid_url('root://h:1//a?x=1', 'E') == 'root://h:1//a?x=1&xrd.wantprot=unix&authz=E'


def test_stat_fields_accepts_every_field_set():
    old = alien.stat_fields({'file': '/a/f', 'type': 'f', 'size': '5', 'md5': 'ABC'})
    new = alien.stat_fields({'lfn': '/a/f', 'type': 'f', 'size': '5', 'md5': 'abc', 'mtime': '1'})
    assert old['path'] == new['path'] == '/a/f' and old['md5'] == new['md5'] == 'abc'
    assert alien.stat_fields({'lfn': '/a/', 'type': 'directory'})['type'] == 'd'
    assert alien.stat_fields({'lfn': '/a/f', 'size': ''})['size'] == 0


def test_human_bytes():
    assert [alien.human_bytes(n) for n in (0, 1023, 1024, 1536 * 1024 ** 2)] == \
        ['0 B', '1023 B', '1.00 KiB', '1.50 GiB']


# -- cp against the test grid (real xrootd storage elements) --

SE1, SE2 = 'LOCALHOST::JTESTSITE::FIRSTSE', 'LOCALHOST::JTESTSITE::SECONDSE'


@pytest.fixture
def cpenv(cenv, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    return dict(cenv, PWD=str(work))


def cpcli(env, *args, **kw):
    return subprocess.run([sys.executable, ALIEN] + list(args), env=env, cwd=env['PWD'],
                          capture_output=True, text=True, timeout=kw.get('timeout', 60))


def cpx(env, *args, **kw):
    return cpcli(env, 'cp', *[str(a) for a in args], **kw)


def grid_dir(grid_state, name):
    return '%scp_%s_%d/' % (grid_state['home'], name, os.getpid())


def write(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), 'wb') as f:
        f.write(data)
    return str(path)


def replica_file(grid_state, env, lfn, se):
    """Path on disk of the replica of lfn on se."""
    p = cpcli(env, 'whereis', lfn)
    for line in p.stdout.splitlines():
        if se in line:
            pfn = line.split('pfn =>')[1].strip()
            rel = pfn.split('//', 2)[2]
            datadir = [s for s in grid_state['ses'] if s['name'] == se][0]['datadir']
            return os.path.join(datadir, rel)
    raise AssertionError('no replica of %s on %s: %s' % (lfn, se, p.stdout))


def test_cp_round_trips(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'rt')
    files = {'empty': b'', 'one': b'x', 'with space.txt': b'spaces\n', 'ünï cødé ☃.dat': os.urandom(5000)}
    src = tmp_path / 'src'
    for name, data in files.items():
        write(src / name, data)
    for name in files:
        p = cpx(cpenv, 'file:' + str(src / name), g + name)
        assert p.returncode == 0 and '1/1 files copied' in p.stdout, p
    out = tmp_path / 'out'
    for name, data in files.items():
        p = cpx(cpenv, g + name, 'file:%s/' % out)
        assert p.returncode == 0, p
        assert (out / name).read_bytes() == data
    p = cpcli(cpenv, 'stat', g + 'one')
    assert hashlib.md5(b'x').hexdigest() in p.stdout
    assert not [n for n in os.listdir(str(out)) if 'alienpy-part' in n]
    # cat prints the content; a relative LFN is expanded against the cwd
    p = cpcli(cpenv, 'cd %s; cat "with space.txt"' % g)
    assert (p.returncode, p.stdout) == (0, 'spaces\n'), p


def test_cp_100mib_and_sigkill_leaves_no_partial_file(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'big')
    data = os.urandom(1 << 20) * 100
    big = write(tmp_path / 'big.bin', data)
    p = cpx(cpenv, '-quiet', 'file:' + big, g + 'big.bin')
    assert p.returncode == 0 and p.stdout == '', p
    out = tmp_path / 'out'
    out.mkdir()
    p = cpx(cpenv, g + 'big.bin', 'file:%s/' % out)
    assert p.returncode == 0 and (out / 'big.bin').read_bytes() == data, p
    # an existing good copy is never replaced by an interrupted one
    good = write(out / 'kept.bin', b'previous good content')
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, ALIEN, 'cp', '-f', g + 'big.bin', 'file:' + good],
                                env=cpenv, cwd=cpenv['PWD'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 30:
            if [n for n in os.listdir(str(out)) if '.alienpy-part-' in n]:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            break
        write(out / 'kept.bin', b'previous good content')   # finished before the kill: try again
    assert proc.returncode == -signal.SIGKILL
    assert (out / 'kept.bin').read_bytes() == b'previous good content'
    leftovers = [n for n in os.listdir(str(out)) if n not in ('big.bin', 'kept.bin')]
    assert leftovers and all(n.startswith('.kept.bin.alienpy-part-') for n in leftovers)


def test_cp_recursive_filters_and_naming(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'tree')
    src = tmp_path / 'tree'
    names = ['a.log', 'b.root', 'sub/c.log', 'sub/myfile_run12.root', 'sub/deep/d.txt', '.hidden']
    for n in names:
        write(src / n, n.encode())
    p = cpx(cpenv, 'file:%s/' % src, g)      # content of tree/ into g
    assert p.returncode == 0 and '6/6 files copied' in p.stdout, p

    def get(*args):
        out = tmp_path / ('out%d' % get.n)
        get.n += 1
        p = cpx(cpenv, *(list(args[:-1]) + ['file:%s/%s' % (out, args[-1])]))
        assert p.returncode == 0, p
        return sorted(os.path.relpath(os.path.join(r, f), str(out)) for r, _, fs in os.walk(str(out)) for f in fs)
    get.n = 0
    assert get(g.rstrip('/'), '') == sorted(['cp_tree_%d/%s' % (os.getpid(), n) for n in names])  # dir: itself
    assert get(g, '') == sorted(names)                                                    # dir/: content
    assert get('-glob', '*.log', g, '') == ['a.log', 'sub/c.log']
    assert get(g + '*.log', '') == ['a.log', 'sub/c.log']
    assert get('-select', '.*/sub/.*\\.(log|txt)$', g, '') == ['sub/c.log', 'sub/deep/d.txt']
    assert get('-name', 'begin_myf_contain_run1_ext_root', g, '') == ['sub/myfile_run12.root']
    assert get('-name', 'ext_root', '-parent', 1, g, 'x') == \
        ['x/cp_tree_%d/b.root' % os.getpid(), 'x/cp_tree_%d/sub/myfile_run12.root' % os.getpid()]
    assert get('-glob', '*.txt', '-rmprefix', 5, g, '') == ['cp_tree_%d/sub/deep/d.txt' % os.getpid()]
    assert get('-parent', 2, g + 'sub/deep/d.txt', '') == ['sub/deep/d.txt']
    assert len(get('-l', 2, g, '')) == 2
    # dry run: the plan, nothing copied
    p = cpx(cpenv, '-dryrun', '-glob', '*.log', g, 'file:%s/dry/' % tmp_path)
    assert p.returncode == 0 and p.stdout.count(' -> ') == 2 and not os.path.exists(str(tmp_path / 'dry')), p
    # recursive upload with a filter and -parent
    p = cpx(cpenv, '-name', 'ext_log', '-parent', 1, 'file:%s/sub/' % src, g + 'up/')
    assert p.returncode == 0, p
    p = cpcli(cpenv, 'find', g + 'up/', '*')
    assert p.stdout.split() == [g + 'up/sub/c.log'], p
    p = cpx(cpenv, '-select', '[', g, 'file:%s/bad/' % tmp_path)
    assert p.returncode == alien.EX_USAGE and one_line_error(p), p


def test_cp_input_file_specifiers_and_overwrite(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'in')
    a = write(tmp_path / 'a.txt', b'aaa')
    b = write(tmp_path / 'b c.txt', b'bbb')
    lst = write(tmp_path / 'list.txt', ('# uploads\n\nfile:%s %sa.txt@disk:1,%s\n"file:%s" "%sb c.txt@disk:1,!%s"\n'
                                       'a b c\n' % (a, g, SE2, b, g, SE2)).encode())
    p = cpx(cpenv, '-input', lst)
    assert p.returncode == 0 and '2/2 files copied' in p.stdout and 'skipped' in p.stderr, p
    where = cpcli(cpenv, 'whereis', g + 'a.txt').stdout
    assert SE2 in where and SE1 not in where
    where = cpcli(cpenv, 'whereis', g + 'b c.txt').stdout
    assert SE1 in where and SE2 not in where
    # identical destination: skipped; -f copies again; different content replaces it
    p = cpx(cpenv, 'file:' + a, g + 'a.txt')
    assert p.returncode == 0 and '1 already present' in p.stdout, p
    p = cpx(cpenv, '-f', 'file:' + a, g + 'a.txt')
    assert p.returncode == 0 and '1/1 files copied' in p.stdout, p
    write(tmp_path / 'a.txt', b'new content')
    p = cpx(cpenv, 'file:' + a, g + 'a.txt')
    assert p.returncode == 0 and '1/1 files copied' in p.stdout, p
    assert cpcli(cpenv, 'cat', g + 'a.txt').stdout == 'new content\n'
    assert '.alienpy-part' not in cpcli(cpenv, 'ls', '-a', g).stdout
    # downloads: same rules
    out = tmp_path / 'out'
    p = cpx(cpenv, g + 'a.txt', 'file:%s/' % out)
    mtime = os.stat(str(out / 'a.txt')).st_mtime_ns
    p = cpx(cpenv, g + 'a.txt', 'file:%s/' % out)
    assert p.returncode == 0 and '1 already present' in p.stdout and os.stat(str(out / 'a.txt')).st_mtime_ns == mtime
    write(out / 'a.txt', b'local edit!')
    p = cpx(cpenv, g + 'a.txt', 'file:%s/' % out)
    assert p.returncode == 0 and (out / 'a.txt').read_bytes() == b'new content', p
    # a read specifier selects the replica; an excluded only replica means no access
    p = cpx(cpenv, g + 'b c.txt@!' + SE1, 'file:%s/x' % out)
    assert p.returncode != 0 and not os.path.exists(str(out / 'x')), p


def test_cp_usage_errors(cpenv, grid_state, tmp_path):
    for args, code, words in [
            (['alien:/a', 'alien:/b'], 1, 'grid to grid'),
            (['file:/a', 'file:/b'], 1, 'both sides are local'),
            ([grid_state['home'] + 'nope_%d' % os.getpid(), 'file:%s/' % tmp_path], 2, 'not found'),
            (['file:%s/nope' % tmp_path, grid_state['home']], 2, 'not found'),
            (['onlyone'], 22, 'SRC and DST'),
            (['-input', str(tmp_path / 'missing.txt')], 2, 'cannot read'),
    ]:
        p = cpx(cpenv, *args)
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)


def test_cp_download_fails_over_and_detects_corruption(cpenv, grid_state, tmp_path):
    from testgrid import grid
    g = grid_dir(grid_state, 'fo')
    data = os.urandom(300000)
    f = write(tmp_path / 'f.bin', data)
    assert cpx(cpenv, 'file:' + f, g + 'f.bin@disk:2').returncode == 0
    out = tmp_path / 'out'
    grid.stop_se(grid_state['workdir'], SE1)
    try:
        p = cpx(cpenv, g + 'f.bin', 'file:%s/' % out)
        assert p.returncode == 0 and (out / 'f.bin').read_bytes() == data, p
        p = cpx(dict(cpenv, ALIENPY_STREAM_MIN_SIZE='1'), g + 'f.bin', 'file:%s/s.bin' % out)
        assert p.returncode == 0 and (out / 's.bin').read_bytes() == data, p
    finally:
        grid.start_se(grid_state['workdir'], SE1)
    # one corrupted replica: the other one is delivered
    r1 = replica_file(grid_state, cpenv, g + 'f.bin', SE1)
    with open(r1, 'r+b') as fh:
        fh.seek(1000)
        fh.write(b'CORRUPT')
    p = cpx(cpenv, '-f', g + 'f.bin', 'file:%s/second.bin' % out)
    assert p.returncode == 0 and (out / 'second.bin').read_bytes() == data, p
    # the same through the streaming reader used for big files (md5 while reading)
    p = cpx(dict(cpenv, ALIENPY_STREAM_MIN_SIZE='1'), g + 'f.bin', 'file:%s/third.bin' % out)
    assert p.returncode == 0 and (out / 'third.bin').read_bytes() == data, p
    # both corrupted: nothing delivered, an existing file kept, exit code non-zero
    r2 = replica_file(grid_state, cpenv, g + 'f.bin', SE2)
    with open(r2, 'r+b') as fh:
        fh.seek(5)
        fh.write(b'CORRUPT')
    write(out / 'kept.bin', b'old')
    for dst, env in (('new.bin', cpenv), ('kept.bin', cpenv), ('new.bin', dict(cpenv, ALIENPY_STREAM_MIN_SIZE='1'))):
        p = cpx(env, g + 'f.bin', 'file:%s/%s' % (out, dst))
        assert p.returncode == 1 and 'CheckSum' in p.stderr and '0/1 files copied' in p.stderr, p
    assert not os.path.exists(str(out / 'new.bin')) and (out / 'kept.bin').read_bytes() == b'old'
    assert not [n for n in os.listdir(str(out)) if 'alienpy-part' in n]


def test_cp_upload_reroutes_and_never_leaves_uncommitted_entries(cpenv, grid_state, tmp_path):
    from testgrid import grid
    g = grid_dir(grid_state, 'upf')
    f = write(tmp_path / 'f.txt', b'payload')
    grid.stop_se(grid_state['workdir'], SE1)
    try:
        # SE1 asked for and down: the replica goes to SE2
        p = cpx(cpenv, 'file:' + f, g + 'one.txt@disk:1,' + SE1)
        assert p.returncode == 0, p
        where = cpcli(cpenv, 'whereis', g + 'one.txt').stdout
        assert SE2 in where and SE1 not in where
        # two replicas wanted, only one SE left: stored once, with a notice
        p = cpx(cpenv, 'file:' + f, g + 'two.txt')
        assert p.returncode == 0 and '1 of 2 replicas' in p.stderr, p
        grid.stop_se(grid_state['workdir'], SE2)
        p = cpx(cpenv, 'file:' + f, g + 'none.txt')
        assert p.returncode == 1 and 'Connection' in p.stderr and '0/1 files copied' in p.stderr, p
        assert cpcli(cpenv, 'stat', g + 'none.txt').returncode == 2
    finally:
        grid.start_se(grid_state['workdir'], SE1)
        grid.start_se(grid_state['workdir'], SE2)
    grid.set_faults(grid_state['workdir'], {'commit': 'refuse'})
    try:
        p = cpx(cpenv, 'file:' + f, g + 'refused.txt')
    finally:
        grid.set_faults(grid_state['workdir'], None)
    assert p.returncode == 1 and 'commit refused' in p.stderr, p
    assert cpcli(cpenv, 'stat', g + 'refused.txt').returncode == 2


def test_without_xrootd_cp_says_what_to_install(cpenv, grid_state, tmp_path):
    code = ('import sys, runpy; sys.modules["XRootD"] = None; sys.argv = ["alien.py"] + sys.argv[1:]; '
            'runpy.run_path(%r, run_name="__main__")' % ALIEN)
    f = write(tmp_path / 'f.txt', b'x')
    p = subprocess.run([sys.executable, '-c', code, 'cp', 'file:' + f, grid_state['home']], env=cpenv,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and one_line_error(p) and 'pip install xrootd' in p.stderr, p
    p = subprocess.run([sys.executable, '-c', code, 'pwd'], env=cpenv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == grid_state['home'] + '\n', p


def test_edit_keeps_a_backup_and_restores_it_on_failure(cpenv, grid_state, tmp_path):
    from testgrid import grid
    g = grid_dir(grid_state, 'edit')
    f = write(tmp_path / 'doc.txt', b'line one\n')
    assert cpx(cpenv, 'file:' + f, g + 'doc.txt').returncode == 0
    editor = write(tmp_path / 'ed.sh', b'#!/bin/sh\necho "added by editor" >> "$1"\n')
    os.chmod(editor, 0o755)
    env = dict(cpenv, EDITOR=editor, VISUAL='')
    p = cpcli(env, 'edit', g + 'doc.txt@disk:1')
    assert p.returncode == 0 and 'Uploaded' in p.stdout, p
    assert cpcli(cpenv, 'cat', g + 'doc.txt').stdout == 'line one\nadded by editor\n'
    assert cpcli(cpenv, 'cat', g + 'doc.txt~').stdout == 'line one\n'
    assert cpcli(cpenv, 'whereis', g + 'doc.txt').stdout.count('SE =>') == 1
    # unchanged: nothing uploaded
    p = cpcli(dict(cpenv, EDITOR='true'), 'edit', g + 'doc.txt')
    assert p.returncode == 0 and 'unchanged' in p.stdout, p
    # upload refused: the previous version is back under its name
    grid.set_faults(grid_state['workdir'], {'commit': 'refuse'})
    try:
        p = cpcli(env, 'edit', g + 'doc.txt')
    finally:
        grid.set_faults(grid_state['workdir'], None)
    assert p.returncode == 1 and 'restored' in p.stderr and one_line_error(p), p
    assert cpcli(cpenv, 'cat', g + 'doc.txt').stdout == 'line one\nadded by editor\n'
    kept = p.stderr.split('edited copy kept at ')[1].split(';')[0]
    assert open(kept).read().endswith('added by editor\nadded by editor\n')
    shutil.rmtree(os.path.dirname(kept), ignore_errors=True)
