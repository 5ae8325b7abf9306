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


# ===== shell tests =====
import pexpect  # noqa: E402

PROMPT = r'AliEn\[jalien\]:(/[^\r\n]*?) >'


def test_read_settings_and_aliases(tmp_path):
    (tmp_path / '.alienpy_aliases').write_text(
        '# comment\nmk=mkdir -p x;cd x\n  p = "pwd"  \nq=\'ls -l\'\nbad key = x\nnovalue\n')
    aliases = alien.load_aliases({'HOME': str(tmp_path)})
    assert aliases == {'mk': 'mkdir -p x;cd x', 'p': 'pwd', 'q': 'ls -l'}
    assert alien.load_aliases({'HOME': str(tmp_path / 'missing')}) == {}


def test_expand_aliases_whole_first_word_only():
    aliases = {'mk': 'mkdir -p x;cd x', 'p': 'pwd', 'ls': 'ls -a'}
    expand = alien.expand_aliases
    assert expand(['mk', 'p'], aliases) == ['mkdir -p x', 'cd x', 'pwd']
    assert expand(['mk -v'], aliases) == ['mkdir -p x', 'cd x -v']  # arguments go to the last element
    assert expand(['ls /p/mk', 'cat p', 'pwd'], aliases) == ['ls -a /p/mk', 'cat p', 'pwd']
    assert expand(['ls'], {'ls': 'ls -l', 'll': 'ls'}) == ['ls -l']  # one pass: no loops
    assert expand(['pp', '"p"'], aliases) == ['pp', '"p"']


def test_current_word():
    cw = alien.current_word
    assert cw('') == ('', '', True, False)
    assert cw('wh') == ('wh', 'wh', True, False)
    assert cw('ls /a/b') == ('/a/b', '/a/b', False, False)
    assert cw('ls a\\ b') == ('a\\ b', 'a b', False, False)
    assert cw('pwd; cd') == ('cd', 'cd', True, False)
    assert cw('ls | gre') == ('gre', 'gre', True, True)
    assert cw('!cat fi') == ('fi', 'fi', False, True)
    assert cw('ls "sp a') == ('"sp a', 'sp a', False, False)


def test_prompt_text_toggles():
    s = alien.Session(environ={'ALIENPY_PROMPT_DATE': '1'})
    s.user, s.cwd = 'jdoe', '/a/b/'
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d AliEn\[jdoe\]:/a/b/ >$', alien.prompt_text(s))
    s = alien.Session(environ={})
    s.user, s.cwd = 'jdoe', '/a/b/'
    assert alien.prompt_text(s) == 'AliEn[jdoe]:/a/b/ >'
    assert alien.cmd_prompt(s, ['pwd']).exitcode == 0
    assert alien.prompt_text(s) == 'AliEn[jdoe]:/a/b/ local:%s >' % os.getcwd()
    assert alien.cmd_prompt(s, ['pwd']).exitcode == 0
    assert alien.prompt_text(s) == 'AliEn[jdoe]:/a/b/ >'


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


def test_shell_prompt_banner_and_ctrl_d(cenv, grid_state):
    p = pexpect.spawn(sys.executable, [ALIEN], env=cenv, encoding='utf-8', timeout=30)
    p.expect('Welcome to the ALICE GRID')
    p.expect(PROMPT)
    assert p.match.group(0) == 'AliEn[jalien]:%s >' % grid_state['home']
    assert shell_cmd(p, 'ls /nonexistent') == ['No such file or directory : /nonexistent']
    assert shell_cmd(p, '') == []  # empty lines are ignored
    p.sendcontrol('d')
    p.expect('Exit')
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0  # Ctrl-D exits 0 whatever the last code


def test_shell_errors_red_on_a_tty_only(cenv):
    p = spawn_shell(cenv)
    p.sendline('ls /nonexistent')
    p.expect(re.escape('\x1b[91mNo such file or directory : /nonexistent\x1b[0m'))
    p.expect(PROMPT)
    assert shell_end(p, 'exit') == 2  # exit without a code: the last code
    r = run_cli([], env=cenv, input='ls /nonexistent\n')  # not a tty: no colour, no prompt
    assert (r.returncode, r.stdout, r.stderr) == (2, '', 'No such file or directory : /nonexistent\n')


def test_shell_exit_codes(cenv, grid_state):
    p = spawn_shell(cenv)
    assert shell_cmd(p, 'exit abc') == ["exit: 'abc' is not a number"]  # bad input: the shell stays
    assert shell_cmd(p, 'exitcode') == ['22']
    assert shell_end(p, 'exit 7') == 7
    p = spawn_shell(cenv)
    assert shell_end(p, 'pwd; quit') == 0
    r = run_cli([], env=cenv, input='pwd\nwhoami\n')
    assert (r.returncode, r.stdout) == (0, grid_state['home'] + '\njalien\n')


def test_shell_history_across_runs(cenv):
    p = spawn_shell(cenv)
    shell_cmd(p, 'whoami')
    shell_cmd(p, '!echo second-line')
    assert shell_end(p) == 0
    hist = os.path.join(cenv['HOME'], '.alienpy_history')
    assert open(hist).read().splitlines()[-2:] == ['whoami', '!echo second-line']
    assert os.stat(hist).st_mode & 0o077 == 0
    p = spawn_shell(cenv)
    p.send('\x1b[A\x1b[A\r')  # Up Up Enter: the command of the previous shell
    p.expect(PROMPT)
    assert p.before.replace('\r', '').endswith('whoami\njalien\n')
    shell_end(p)
    assert open(hist).read().splitlines()[-1] == 'whoami'
    assert alien.HISTORY_SIZE == 5000


def test_shell_no_history(cenv):
    env = dict(cenv, ALIENPY_NO_HISTORY='1')
    p = spawn_shell(env)
    shell_cmd(p, 'pwd')
    p.send('wh\t')  # no completion either
    p.sendcontrol('c')
    p.expect(PROMPT)
    shell_end(p)
    assert not os.path.exists(os.path.join(cenv['HOME'], '.alienpy_history'))


def test_shell_tab_completion(cenv, grid_state, tmp_path):
    run_cli(['mkdir -p tabdir_unique/inner "tabdir_sp ace"'], env=cenv)
    local = tmp_path / 'loc'
    local.mkdir()
    (local / 'localfile_abc.txt').write_text('x')
    p = spawn_shell(cenv)
    p.send('whoam\t')  # a server command name
    p.expect('whoami ')
    p.send('\r')
    p.expect('jalien')
    p.expect(PROMPT)
    p.send('promp\t')  # a client-side command name
    p.expect('prompt ')
    p.sendcontrol('c')
    p.expect(PROMPT)
    p.send('cd tabdir_u\t')  # a grid directory
    p.expect('tabdir_unique/')
    p.send('in\t')
    p.expect('inner/')
    p.send('\r')
    p.expect(PROMPT)
    assert p.match.group(1) == grid_state['home'] + 'tabdir_unique/inner/'
    p.send('cd ../../tabdir_s\t')  # a name with a space comes back escaped
    p.expect(re.escape('tabdir_sp\\ ace/'))
    p.send('\r')
    p.expect(PROMPT)
    assert p.match.group(1) == grid_state['home'] + 'tabdir_sp ace/'
    p.send('ls file:%s/localf\t' % local)  # a local path
    p.expect('localfile_abc.txt ')
    p.sendcontrol('c')
    p.expect(PROMPT)
    shell_end(p)


def test_shell_bang_pipe_chain_and_quoting(cenv, grid_state):
    p = spawn_shell(cenv)
    assert shell_cmd(p, '!echo "hello  world"') == ['hello  world']
    assert shell_cmd(p, 'mkdir -p "q dir/a" "q dir/b"; ls "q dir" | wc -l') == ['2']
    assert shell_cmd(p, 'cd "q dir"; pwd; !echo done') == [grid_state['home'] + 'q dir/', 'done']
    assert shell_cmd(p, 'ls | grep b') == ['b/']
    assert shell_cmd(p, '!exit 3') == []
    assert shell_cmd(p, 'exitcode') == ['3']
    assert shell_end(p, 'exit') == 0  # exitcode itself succeeded


def test_aliases_in_shell_and_command_mode(cenv, grid_state):
    with open(os.path.join(cenv['HOME'], '.alienpy_aliases'), 'w') as f:
        f.write('mkgo = mkdir -p alias_dir; cd alias_dir\nwhere="pwd"\n')
    p = spawn_shell(cenv)
    assert shell_cmd(p, 'mkgo; where') == [grid_state['home'] + 'alias_dir/']
    assert shell_cmd(p, '!echo mkgo where') == ['mkgo where']  # only first words are replaced
    shell_end(p)
    r = run_cli(['mkgo; where'], env=cenv)
    assert (r.returncode, r.stdout) == (0, grid_state['home'] + 'alias_dir/\n')
    r = run_cli(['!echo where'], env=cenv)  # not a first word: untouched
    assert r.stdout == 'where\n'
    s = alien.Session(environ=cenv)
    try:
        assert s.run('where').out == grid_state['home']
    finally:
        s.close()


def test_shell_ctrl_c(cenv, grid_state):
    from testgrid import grid
    workdir = grid_state['env']['TESTGRID_DIR']
    p = spawn_shell(cenv)
    p.sendline('mkdir -p ctrlc_dir; cd ctrlc_dir')
    p.expect(PROMPT)
    p.send('half typed line')
    p.expect('half typed line')  # readline has the characters (a signal that comes
    p.sendcontrol('c')           # in the middle of a key stroke waits for the next one)
    p.expect(PROMPT)
    t0 = time.monotonic()
    p.sendline('!sleep 20')  # a local command
    p.expect('sleep 20')
    time.sleep(0.3)
    p.sendcontrol('c')
    p.expect('interrupted')
    p.expect(PROMPT)
    assert time.monotonic() - t0 < 10
    grid.set_faults(workdir, {'find': 'delay:20'})
    try:
        t0 = time.monotonic()
        p.sendline('find . *')  # a server command: the connection is dropped
        p.expect('find')
        time.sleep(0.3)
        p.sendcontrol('c')
        p.expect('interrupted')
        p.expect(PROMPT)
        assert time.monotonic() - t0 < 10
    finally:
        grid.set_faults(workdir, None)
    # a new connection, in the same directory
    assert shell_cmd(p, 'pwd') == [grid_state['home'] + 'ctrlc_dir/']
    assert shell_cmd(p, 'exitcode') == ['0']
    assert shell_end(p) == 0


def test_cwd_restore(cenv, grid_state):
    home = grid_state['home']
    p = spawn_shell(cenv)
    shell_cmd(p, 'mkdir -p restore_dir/sub; cd restore_dir; cd sub')
    shell_end(p)
    path = os.path.join(cenv['HOME'], '.alienpy_session')
    assert open(path).read() == 'CWD = %srestore_dir/sub/\nCWDPREV = %srestore_dir/\n' % (home, home)
    assert os.stat(path).st_mode & 0o077 == 0
    p = spawn_shell(cenv)
    assert p.match.group(1) == home + 'restore_dir/sub/'
    assert shell_cmd(p, 'cd -; pwd') == [home + 'restore_dir/']
    shell_end(p)
    p = spawn_shell(dict(cenv, ALIENPY_NO_CWD_RESTORE='1'))
    assert p.match.group(1) == home
    shell_end(p)
    assert run_cli(['pwd'], env=cenv).stdout == home + '\n'  # command mode never restores
    with open(path, 'w') as f:
        f.write('CWD = "%sno_such_dir/"\n' % home)
    p = spawn_shell(cenv)  # a directory that is gone: a warning, then home
    assert p.match.group(1) == home
    assert 'cannot return to' in p.before
    shell_end(p)


def test_cd_forms_write_the_session_file(cenv, grid_state):
    home = grid_state['home']
    r = run_cli(['mkdir -p cdf/x; cd cdf/x; cd ~; pwd; cd -; pwd; cd; pwd; cd ..; pwd'], env=cenv)
    assert r.stdout.splitlines() == [home, home + 'cdf/x/', home, home.rsplit('/', 2)[0] + '/']
    assert 'CWD = %s\n' % (home.rsplit('/', 2)[0] + '/') in open(os.path.join(cenv['HOME'], '.alienpy_session')).read()
    r = run_cli(['cd /no/such/dir'], env=cenv)
    assert r.returncode == 2 and one_line_error(r)
    r = run_cli(['cd -'], env=cenv)
    assert r.returncode == 1 and one_line_error(r)


def test_prompt_command_in_the_shell(cenv, tmp_path):
    p = spawn_shell(cenv, cwd=str(tmp_path))
    p.sendline('prompt pwd')
    p.expect(r'AliEn\[jalien\]:/\S* local:%s >' % re.escape(str(tmp_path)))
    p.sendline('prompt date pwd')
    p.expect(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d AliEn\[jalien\]:/\S* >')
    assert "prompt: unknown item 'nonsense' (use date or pwd)" in shell_cmd(p, 'prompt nonsense')
    shell_end(p)
    p = pexpect.spawn(sys.executable, [ALIEN], env=dict(cenv, ALIENPY_PROMPT_DATE='1'), encoding='utf-8', timeout=30)
    p.expect(r'\n\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d AliEn\[jalien\]:/')
    shell_end(p)


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
    ('ping 1', 0, r'^Websocket ping/pong\(s\) : 1 time'),
    ('ping x', 22, r"^ping: 'x' is not a number"),
    ('dirs', 0, r'^~$'),
    ('dirs -x', 22, r'^dirs: -x: invalid option'),
    ('dirs -c', 0, r'^$'),
    ('pushd /localhost/', 0, r'^/localhost ~$'),
    ('pushd /no/such', 2, r'No such file'),
    ('pushd', 1, r'^pushd: no other directory'),
    ('mkdir -p pd1 pd2; pushd pd1; pushd ../pd2; pushd +2; dirs -v', 0, r'\n 0  ~\n 1  ~/pd2\n 2  ~/pd1$'),
    ('pushd /localhost/; popd', 0, r'^/localhost ~\n~$'),
    ('popd', 1, r'^popd: directory stack empty$'),
    ('pushd /localhost/; popd x', 64, r'^popd: usage'),
    ('cert-info', 0, r'^DN >>> '),
    ('cert-info /no/such.pem', 2, r'cannot read a certificate'),
    ('token-init', 0, r'OU=token'),
    ('token-init -v abc', 22, r'could not get a token'),
    ('pwd; token-info', 0, r'OU=token'),
    ('token-destroy; token-info', 2, r'no token certificate'),
    ('pwd; token-destroy', 0, r'Token was destroyed'),
    ('token-destroy now', 64, r'unexpected argument'),
]


def run_in_process(env, line):
    """(exit code, out, err) of a command line in a fresh embedded session."""
    s = alien.Session(environ=env)
    try:
        r = s.run(line)
        return r.exitcode, r.out, r.err
    except SystemExit as e:  # exit/quit
        return e.code, '', ''
    finally:
        s.close()


def test_client_side_commands_good_and_bad(cenv):
    for line, code, pattern in CLIENT_CASES:
        got, out, err = run_in_process(cenv, line)
        assert got == code and re.search(pattern, out if code == 0 else err), (line, got, out, err)
        if code:
            assert err.count('\n') == 0 and 'Traceback' not in err, (line, err)
    for line in ('dirs -x', 'home x', 'prompt bogus', 'exit x'):  # the same through the front end
        assert one_line_error(run_cli([line], env=cenv)), line


def test_every_client_command_is_covered():
    covered = set()
    for line, _, _ in CLIENT_CASES:
        for element in alien.split_chain(line):
            covered.add(element.split()[0])
    shell_area = {'cd', 'ls', 'll', 'la', 'lla', 'home', 'version', 'help', '?', 'exit', 'quit',
                  'ping', 'exitcode', '$?', 'cert-info', 'token-info', 'token-init', 'token-destroy',
                  'prompt', 'dirs', 'pushd', 'popd'}
    assert shell_area <= set(alien.COMMANDS)
    assert shell_area - covered == set()


def test_embedding_api_documented(cenv, grid_state):
    doc = alien.__doc__
    for word in ('alien.Session()', '.run(', 'exitcode', 'out', 'err', 'results'):
        assert word in doc
    s = alien.Session(environ=cenv)
    try:
        r = s.run('ls -l ' + grid_state['home'])
        assert isinstance(r, alien.Result) and r.exitcode == 0 and r.err == ''
        assert isinstance(r.results, list) and all(isinstance(x, dict) for x in r.results)
        r = s.run('pushd /localhost/; dirs')
        assert (r.exitcode, r.out.splitlines()[-1]) == (0, '/localhost ~')
    finally:
        s.close()
