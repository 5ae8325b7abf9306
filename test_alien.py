"""Unit tests of alien.py's own pieces, in the order of alien.py's sections: no test grid."""
import hashlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

import alien
from testgrid import tools
from testgrid.tools import tool
from conftest import (
    ALIEN, CLIENT_CASES, GFAL_FAKE_CERT, REPO, _gfal_cred_files, decode_client_frame, other_python,
    run_cli, server_frame)


# ===== Helpers used everywhere: errors, exit codes, results, bounded input, terminal-safe output, logging =====


@pytest.mark.pure
def test_exit_status():
    assert [alien.exit_status(c) for c in (0, 2, 255, -1, 256, 107)] == [0, 2, 255, 255, 1, 107]


def test_result_out_and_write_lines_agree():
    r = alien.Result(0, None, results=['  first', {'message': 'b'}, {'other': 1}, '', ' \n'])
    assert r.out == 'first\nb'
    r2 = alien.Result(0, None, results=['  first', {'message': 'b'}, {'other': 1}, '', ' \n'])
    old, sys.stdout = sys.stdout, io.StringIO()
    try:
        alien.write_lines(r2)
        printed = sys.stdout.getvalue()
    finally:
        sys.stdout = old
    assert printed == r.out + '\n'


def test_redact():
    pem = '-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----'
    env = '-----BEGIN SEALED CIPHER-----xyz-----END SEALED ENVELOPE-----'
    out = alien.redact('{"k": "%s", "e": "%s", "u": "root://h//p?authz=SECRET&x=1"}' % (pem, env))
    assert 'MIIEabc' not in out and 'xyz' not in out and 'SECRET' not in out and 'x=1' in out
    assert len(alien.redact('a' * 10000)) < 4100


def test_human_bytes():
    assert [alien.human_bytes(n) for n in (0, 1023, 1024, 1536 * 1024 ** 2)] == \
        ['0 B', '1023 B', '1.00 KiB', '1.50 GiB']


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_term_text_escapes_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv('NO_COLOR', raising=False)
    tty, pipe = _FakeTTY(), io.StringIO()
    hostile = 'esc\x1b[31mred\x1b]0;title\x07\r\x9b2J\udcff'
    assert alien.term_text(hostile, tty) == 'esc\\033[31mred\\033]0;title\\a\\r\\302\\2332J\\377'
    assert alien.term_text(hostile, pipe) == hostile            # scripts get the bytes
    msg = 'Your new job ID is \x1b[34m42\x1b[0m \x1b[2J'
    assert alien.term_text(msg, tty, colour=True) == 'Your new job ID is \x1b[34m42\x1b[0m \\033[2J\x1b[0m'
    assert alien.term_text(msg, pipe, colour=True) == 'Your new job ID is 42 \x1b[2J'
    monkeypatch.setenv('NO_COLOR', '1')
    assert alien.term_text(msg, tty, colour=True) == 'Your new job ID is 42 \\033[2J'
    assert alien.visible('a\nb\tc', newlines=True) == 'a\\nb\\tc'


@pytest.mark.pure
def test_lazy_regex_compiles_at_first_use_and_behaves_like_the_pattern():
    rx = alien.LazyRegex(r'(a+)(b)?', re.I)
    assert 'match' not in rx.__dict__
    assert rx.match('AAb').groups() == ('AA', 'b')
    assert 'match' in rx.__dict__            # bound once, then found directly
    assert rx.sub('x', 'caab') == 'cx' and rx.pattern == '(a+)(b)?' and rx.flags & re.I
    with pytest.raises(AttributeError):
        rx.__len__


@pytest.mark.pure
@pytest.mark.parametrize('slice_chars', [1 << 20, 7])
def test_json_depth_scan_agrees_with_the_parsed_depth(slice_chars, monkeypatch):
    """json_too_deep on bytes: strings full of brackets, quotes, backslashes,
    escapes and non-ASCII text never change the depth it finds."""
    import random
    monkeypatch.setattr(alien, '_JSON_SLICE', slice_chars)     # slices cut anywhere, even in a string
    rnd = random.Random(64)
    pieces = ['[', ']', '{', '}', '"', '\\', '\\"', '\\n', 'é', '€', '\udcff', '\u2028', 'x', ' ', '""']

    def build(depth):
        if depth == 0 or rnd.random() < 0.2:
            return ''.join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 6)))
        kids = [build(depth - 1) for _ in range(rnd.randrange(1, 4))]
        return kids if rnd.random() < 0.5 else {'k%d%s' % (i, rnd.choice(pieces)): v for i, v in enumerate(kids)}

    def depth(v):
        if isinstance(v, list):
            return 1 + max([depth(x) for x in v] or [0])
        if isinstance(v, dict):
            return 1 + max([depth(x) for x in v.values()] or [0])
        return 0

    for _ in range(1500):
        doc = build(rnd.randrange(1, 12))
        text = json.dumps(doc, ensure_ascii=rnd.random() < 0.5)
        for limit in (1, 2, 3, 5, 8):
            if len(text) > 2 * limit:
                assert alien.json_too_deep(text, limit) == (depth(doc) > limit), (text, limit)


# ===== Configuration: the service's address, environment switches, settings files =====


@pytest.mark.pure
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


@pytest.mark.pure
def test_endpoint_bad_port():
    with pytest.raises(alien.AlienError) as e:
        alien.endpoints({'ALIENPY_JCENTRAL': 'h', 'ALIENPY_JCENTRAL_PORT': 'x'})
    assert e.value.exitcode == alien.EX_EINVAL


@pytest.mark.pure
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


def test_jbox_endpoint_from_the_jclient_token_file(tmp_path):
    path = tmp_path / ('jclient_token_%d' % os.getuid())
    path.write_text('JALIEN_PID=%d\nJALIEN_HOST=127.0.0.1\nJALIEN_WSPORT=4321\n' % os.getpid())
    env = {'TMPDIR': str(tmp_path)}
    assert alien.endpoints(env) == [('127.0.0.1', 4321), ('alice-jcentral.cern.ch', 8097)]
    path.write_text('JALIEN_PID=999999999\nJALIEN_WSPORT=4321\n')  # not running: ignored
    assert alien.endpoints(env) == [('alice-jcentral.cern.ch', 8097)]


@pytest.mark.pure
def test_ascii_host_keeps_the_idna_codec_out():
    assert alien.ascii_host('alice-jcentral.cern.ch') == b'alice-jcentral.cern.ch'
    assert alien.ascii_host('bücher.example') == 'bücher.example'   # the codec does its job


# ===== Credentials and TLS =====


@pytest.mark.pure
def test_write_private_file_is_never_readable_by_others(tmp_path):
    target = tmp_path / 'tokenkey.pem'
    target.write_text('old')
    os.chmod(str(target), 0o644)
    old_umask = os.umask(0)
    try:
        alien.write_private_files([(str(target), 'SECRET')], 0o400)
    finally:
        os.umask(old_umask)
    assert target.read_text() == 'SECRET\n'
    assert os.stat(str(target)).st_mode & 0o777 == 0o400
    assert [p.name for p in tmp_path.iterdir()] == ['tokenkey.pem']  # no temp file left


@pytest.mark.pure
def test_key_with_open_permissions_is_refused(tmp_path):
    key = tmp_path / 'userkey.pem'
    key.write_text('x')
    os.chmod(str(key), 0o644)
    with pytest.raises(alien.AlienError) as e:
        alien.check_key_permissions(str(key))
    assert 'chmod 600' in str(e.value)


@pytest.mark.pure
def test_materialized_pem_is_owner_only(tmp_path):
    path = alien.materialize_pem('-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----', 'tokencert')
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        alien._cleanup_temp_files()
    assert not os.path.exists(path)
    assert alien.materialize_pem('/some/path.pem', 'tokencert') == '/some/path.pem'


@pytest.mark.pure
def test_no_credentials_is_one_line_error(tmp_path):
    env = {'HOME': str(tmp_path), 'TMPDIR': str(tmp_path), 'ALIENPY_JCENTRAL': '127.0.0.1:9'}
    p = run_cli(['pwd'], env=dict(os.environ, **env))
    assert p.returncode == alien.EX_NOTCONN
    assert p.stderr.count('\n') == 1 and 'no valid user certificate or token' in p.stderr
    assert p.stdout == ''


@pytest.mark.pure
def test_cert_reader_rejects_what_is_not_a_certificate(tmp_path):
    for text in ('', 'hello', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
                 '-----BEGIN CERTIFICATE-----\n!!notbase64\n-----END CERTIFICATE-----\n'):
        f = tmp_path / 'x.pem'
        f.write_text(text)
        with pytest.raises(alien.CertError):
            alien.read_certs(str(f))
    with pytest.raises(alien.CertError):
        alien.Cert(b'\x30\x84\xff\xff\xff\xff')
    with pytest.raises(OSError):
        alien.read_certs(str(tmp_path / 'missing.pem'))


@pytest.mark.pure
def test_find_ca_local_cas_first(tmp_path):
    local = tmp_path / 'globus' / 'certificates'
    local.mkdir(parents=True)
    env = {'ALIENPY_USE_LOCAL_CAS': str(local), 'X509_CERT_DIR': str(tmp_path)}
    assert alien.find_ca(env) == ('capath', str(tmp_path))     # empty: not used, the search goes on
    (local / 'CERN-GridCA.pem').write_text('x')
    assert alien.find_ca(env) == ('capath', str(local))
    assert alien.local_cas_dir({'ALIENPY_USE_LOCAL_CAS': '1'}).endswith('/.globus/certificates')


@pytest.mark.pure
def test_der_time_matches_the_calendar_without_importing_it():
    import calendar
    import random
    rnd = random.Random(13)
    for _ in range(3000):
        t = rnd.randrange(-2000000000, 4000000000)
        g = time.gmtime(t)
        general = time.strftime('%Y%m%d%H%M%SZ', g).encode()
        assert alien.der_time(0x18, general) == calendar.timegm(g)
        if 1950 <= g.tm_year < 2050:
            assert alien.der_time(0x17, general[2:]) == calendar.timegm(g)
    assert alien.der_time(0x17, b'491231235959Z') == calendar.timegm((2049, 12, 31, 23, 59, 59))
    assert alien.der_time(0x17, b'500101000000Z') == calendar.timegm((1950, 1, 1, 0, 0, 0))
    for tag, bad in ((0x18, b'2024130100000Z'), (0x18, b'20240100000000Z'), (0x18, b'2024-1-1'),
                     (0x17, b'24ab01000000Z'), (0x18, b''), (0x02, b'20240101000000Z')):
        with pytest.raises(alien.CertError):
            alien.der_time(tag, bad)


# ===== Transport: TCP (RFC 8305), HTTP proxies, WebSocket (RFC 6455) =====


@pytest.mark.pure
@pytest.mark.parametrize('size', [0, 1, 125, 126, 65535, 65536, 200000])
def test_encode_frame_lengths_roundtrip(size):
    payload = os.urandom(size)
    data = alien.encode_frame(alien.OP_TEXT, payload)
    fin, opcode, got = decode_client_frame(data)
    assert (fin, opcode, got) == (True, alien.OP_TEXT, payload)
    expected_header = 2 + 4 + (0 if size < 126 else 2 if size < 65536 else 8)
    assert len(data) == expected_header + size


@pytest.mark.pure
@pytest.mark.parametrize('size', [0, 5, 125, 126, 300, 65535, 65536, 100000])
def test_parse_frame_lengths(size):
    payload = b'x' * size
    data = server_frame(alien.OP_TEXT, payload)
    assert alien.parse_frame(data) == (True, alien.OP_TEXT, payload, len(data))
    for cut in (0, 1, len(data) - 1):  # incomplete input asks for more
        if cut < len(data):
            assert alien.parse_frame(data[:cut]) is None


@pytest.mark.pure
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


@pytest.mark.pure
def test_parse_frame_huge_length_is_an_error_not_an_allocation():
    frame = bytes([0x81, 127]) + struct.pack('!Q', 1 << 62)
    with pytest.raises(alien.WebSocketError) as e:
        alien.parse_frame(frame)
    assert 'maximum' in str(e.value)


@pytest.mark.pure
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


@pytest.mark.pure
def test_assembler_rejects_bad_fragment_sequences():
    asm = alien.MessageAssembler()
    asm.feed(server_frame(alien.OP_CONT, b'x'))
    with pytest.raises(alien.WebSocketError):
        asm.next_event()
    asm = alien.MessageAssembler()
    asm.feed(server_frame(alien.OP_TEXT, b'a', fin=False) + server_frame(alien.OP_TEXT, b'b'))
    with pytest.raises(alien.WebSocketError):
        asm.next_event()


@pytest.mark.pure
def test_assembler_message_size_limit_counts_fragments():
    asm = alien.MessageAssembler(max_size=10)
    asm.feed(server_frame(alien.OP_TEXT, b'x' * 6, fin=False) + server_frame(alien.OP_CONT, b'y' * 6))
    with pytest.raises(alien.WebSocketError) as e:
        asm.next_event()
    assert 'maximum' in str(e.value)


@pytest.mark.pure
def test_close_payload():
    assert alien.parse_close_payload(b'') == (1005, '')
    assert alien.parse_close_payload(struct.pack('!H', 1013) + b'Session timed out') == (1013, 'Session timed out')
    with pytest.raises(alien.WebSocketError):
        alien.parse_close_payload(b'\x03')
    with pytest.raises(alien.WebSocketError):
        alien.parse_close_payload(b'\x03\xe8\xff')


@pytest.mark.pure
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


@pytest.mark.pure
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


@pytest.mark.pure
def test_interleave_addresses():
    v4 = [(socket.AF_INET, 1, 6, '', ('1.1.1.%d' % i, 1)) for i in range(3)]
    v6 = [(socket.AF_INET6, 1, 6, '', ('::%d' % i, 1)) for i in range(2)]
    out = alien.interleave_addresses(v6 + v4)
    assert [a[4][0] for a in out] == ['::0', '1.1.1.0', '::1', '1.1.1.1', '1.1.1.2']


def drain(asm):
    events = []
    while True:
        ev = asm.next_event()
        if ev is None:
            return events
        events.append(ev)


@pytest.mark.pure
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


@pytest.mark.pure
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


@pytest.mark.pure
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_handshake_parser(data):
    try:
        alien.parse_handshake_response(data, 'dGhlIHNhbXBsZSBub25jZQ==')
    except alien.AlienError:
        pass


@pytest.mark.pure
def test_non_ascii_digits_are_not_numbers():
    # found by fuzz/fuzz_websocket.py: str.isdigit() accepts superscripts, int() does not
    with pytest.raises(alien.WebSocketError):
        alien.parse_handshake_response('HTTP/1.1 \u00b901 X'.encode('utf-8'), 'k')
    with pytest.raises(alien.AlienError):
        alien.parse_hostport('h:\u00b9', 8097)


# ===== JCentral session: requests, replies, session state =====


@pytest.mark.pure
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


@pytest.mark.pure
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_reply_parser(text):
    try:
        alien.reply_to_result(*alien.parse_reply(text))
    except alien.AlienError:
        pass


def test_load_json_bounds_nesting_and_never_recurses():
    assert alien.load_json('[' * 64 + ']' * 64) is not None
    for text in ('[' * 65 + ']' * 65, '{"a":' * 65 + '1' + '}' * 65, '[' * 100000 + ']' * 100000,
                 '[' * 100000, '[' * 70 + '"\\"]]]]\\\\"' + ']' * 70):
        with pytest.raises(alien.JsonTooDeep):
            alien.load_json(text)
    # brackets inside strings, escaped quotes and backslashes do not count
    deep_in_string = '[' * 60 + json.dumps('[' * 500 + '\\"{') + ']' * 60
    assert alien.load_json(deep_in_string) is not None
    with pytest.raises(ValueError):
        alien.load_json('[' * 10 + '}')
    with pytest.raises(alien.AlienError) as e:
        alien.parse_reply('{"metadata": {}, "results": ' + '[' * 100000 + ']' * 100000 + '}')
    assert e.value.exitcode == 42 and 'JCentral format' in str(e.value)


# ===== Paths: grid and local path expansion (pure functions) =====


@pytest.mark.pure
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


@pytest.mark.pure
def test_expand_local_path(tmp_path):
    d = tmp_path / 'd'
    d.mkdir()
    assert alien.expand_local_path('file:' + str(d)) == str(d) + '/'
    assert alien.expand_local_path('file://' + str(d / 'f')) == str(d / 'f')
    assert alien.expand_local_path('~/x').startswith(os.path.expanduser('~'))


def test_path_needs_cwd_only_when_relative():
    assert not alien.path_needs_cwd('/alice/data/x')
    assert not alien.path_needs_cwd('alien:/alice/x')
    assert all(alien.path_needs_cwd(p) for p in ('x', './x', '../x', '~', '~/x', '%ALIEN/x', '/%ALIEN', 'alien:x'))


# ===== The command line: splitting, aliases, options, the command registry =====


@pytest.mark.pure
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


@pytest.mark.pure
def test_split_pipe_and_tokenize():
    assert alien.split_pipe('ls -l | grep x | wc') == ('ls -l', 'grep x | wc')
    assert alien.split_pipe("find '/a|b'") == ("find '/a|b'", None)
    assert alien.tokenize('stat "my file" x') == ['stat', 'my file', 'x']
    with pytest.raises(alien.AlienError) as e:
        alien.tokenize('stat "open')
    assert e.value.exitcode == alien.EX_USAGE


@pytest.mark.pure
def test_client_side_commands_need_no_connection(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), TMPDIR=str(tmp_path), ALIENPY_JCENTRAL='127.0.0.1:9')
    p = run_cli(['version'], env=env)
    assert p.returncode == 0 and 'alien.py version' in p.stdout
    p = run_cli(['exitcode'], env=env)
    assert (p.returncode, p.stdout) == (0, '0\n')
    p = run_cli(['token-info'], env=env)
    assert p.returncode == alien.EX_ENOENT and p.stderr.count('\n') == 1


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


FIND2_PARSE = [
    (['-glob', '*.root', '/d'], {'glob': '*.root'}, ['/d']),
    (['-name', 'ext_root', '-exclude', 'a', '-exclude', 'b', 'd'], {'name': 'ext_root', 'exclude': ('a', 'b')}, ['d']),
    (['-minsize', '10', '-maxdepth', '2', '-user', 'u', '-x', 'file:o.xml', 'd'],
     {'minsize': 10, 'maxdepth': 2, 'user': 'u', 'xml': 'file:o.xml'}, ['d']),
    (['-v', '-a', '-s', '-f', '-d', '-w', '-wh', '-j', '7', '-l', '5', '-o', '1', 'd'],
     {'jobid': '7', 'limit': 5, 'offset': 1}, ['d']),
    (['-min-ctime', '1700000000', 'd'], {'min_ctime': 1700000000000}, ['d']),
]


@pytest.mark.pure
@pytest.mark.parametrize('args,want,pos', FIND2_PARSE)
def test_find2_options(args, want, pos):
    opts, got = alien.parse_args('find2', args, alien.FIND2_OPTIONS)
    assert got == pos and {k: opts[k] for k in want} == want


@pytest.mark.pure
@pytest.mark.parametrize('args,words', [
    (['-bogus', 'd'], 'unknown option -bogus'), (['-minsize', 'x', 'd'], 'needs an integer'),
    (['-glob', '*', '-name', 'ext_x', 'd'], 'only one selection rule'), (['-x'], 'needs a value'),
    (['-min-ctime', 'yesterday', 'd'], 'cannot read the time'),
])
def test_find2_bad_options(args, words):
    with pytest.raises(alien.AlienError) as e:
        alien.parse_args('find2', args, alien.FIND2_OPTIONS)
    assert e.value.exitcode == alien.EX_EINVAL and words in str(e.value)


# ===== Transfers: cp arguments, names, selections, listings, replies that answer their own request =====


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
    with pytest.raises(alien.ShowUsage):
        alien.parse_cp_args(['-h'])
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


def test_cp_meta_filter_and_times():
    opts = alien.parse_cp_args(['-exclude', 'tmp', '-exclude_re', r'\.bak$', '-maxdepth', '1', '-minsize', '10',
                                '-user', 'u', '-min-ctime', '1700000000', 'a', 'b'])[0]
    needs, ok = alien.cp_meta_filter(opts)
    m = {'size': 10, 'owner': 'u', 'gowner': 'g', 'ctime': 1700000000000, 'jobid': None}
    assert needs and ok('a/f.root', m)
    assert not ok('a/tmp/f', m) and not ok('f.bak', m) and not ok('a/b/f', m)
    assert not ok('f', dict(m, size=9)) and not ok('f', dict(m, owner='v')) and not ok('f', dict(m, ctime=1))
    assert ok('f', dict(m, size=None))                  # a value the listing lacks does not exclude
    assert alien.cp_meta_filter(alien.parse_cp_args(['a', 'b'])[0]) == (False, None)
    assert alien.cp_meta_filter(alien.parse_cp_args(['-mindepth', '1', 'a', 'b'])[0])[0] is False
    assert alien.parse_time_ms('1700000000123') == 1700000000123
    assert alien.parse_time_ms('1700000000') == 1700000000000
    assert alien.parse_time_ms('2024-01-02') == int(time.mktime((2024, 1, 2, 0, 0, 0, 0, 0, -1)) * 1000)
    with pytest.raises(alien.AlienError):
        alien.parse_time_ms('yesterday')
    with pytest.raises(alien.AlienError) as e:
        alien.cp_meta_filter(alien.parse_cp_args(['-exclude_re', '[', 'a', 'b'])[0])
    assert e.value.exitcode == alien.EX_USAGE


def test_dst_dir_targets():
    assert alien.dst_dir_targets(['/a/b/x', '/a/c/y', '/a/z'], 'file:out') == ['file:out/b/', 'file:out/c/', 'file:out/']
    assert alien.dst_dir_targets(['/a/b/x'], '/g/d@disk:1,!S::E::X') == ['/g/d/@disk:1,!S::E::X']
    assert alien.dst_dir_targets(['/a/b/dir/', '/a/b/f'], 'alien:/g/') == ['alien:/g/', 'alien:/g/']


def test_stat_fields_accepts_every_field_set():
    old = alien.stat_fields({'file': '/a/f', 'type': 'f', 'size': '5', 'md5': 'ABC'})
    new = alien.stat_fields({'lfn': '/a/f', 'type': 'f', 'size': '5', 'md5': 'abc', 'mtime': '1'})
    assert old['path'] == new['path'] == '/a/f' and old['md5'] == new['md5'] == 'abc'
    assert alien.stat_fields({'lfn': '/a/', 'type': 'directory'})['type'] == 'd'
    assert alien.stat_fields({'lfn': '/a/f', 'size': ''})['size'] == 0


def test_requests_are_pipelined_through_request_many():
    class Recorder(object):
        def __init__(self):
            self.calls = []

        def request(self, command, options=(), nomsg=False, nokeys=False):
            self.calls.append((command, list(options), nomsg))
            return alien.Result(0, out=command)

        def request_many(self, requests, nomsg=False, window=32):
            self.calls.append(('many', len(requests), nomsg, window))
            return [alien.Result(0, out=c) for c, _ in requests]
    reqs = [('access', ['read', '/a']), ('commit', ['x'])]
    s = Recorder()
    assert [r.out for r in alien._requests(s, reqs)] == ['access', 'commit']
    assert s.calls == [('many', 2, True, alien.REQUEST_WINDOW)]
    s = Recorder()  # one request too: a lost reply comes back as a result to resolve, not an exception
    assert [r.out for r in alien._requests(s, reqs[:1])] == ['access'] and s.calls == [('many', 1, True, alien.REQUEST_WINDOW)]


def test_bounded_readers_and_input_lines(tmp_path):
    f = tmp_path / 'big'
    f.write_bytes(b'x' * 11)
    with pytest.raises(ValueError):
        alien.read_text_limited(str(f), 10)
    assert alien.read_text_limited(str(f), 11) == 'x' * 11
    f.write_bytes(b'\xff')
    with pytest.raises(ValueError):
        alien.read_text_limited(str(f), 10)
    pairs, notices = alien.parse_input_lines('a b\n' + 'bad\n' * 150 + "'un closed\nc d\n")
    assert pairs == [('a', 'b'), ('c', 'd')] and len(notices) == 101 and notices[-1] == 'cp -input: 51 more lines skipped'
    with pytest.raises(alien.AlienError) as e:
        alien.expand_aliases(['x'] * 3, {'x': ';'.join(['pwd'] * 5000)})
    assert e.value.exitcode == 64


def test_input_lines_fast_path_splits_like_shlex():
    import shlex
    lines = ['a b', '  a\tb  ', 'a\xa0b c', '/x/y.root file:/tmp/y.root', 'a#b c', "x 'y z'", 'p\\ q r']
    pairs, _ = alien.parse_input_lines('\n'.join(lines))
    assert pairs == [tuple(shlex.split(l.strip())) for l in lines if len(shlex.split(l.strip())) == 2]


@pytest.mark.pure
def test_parse_cp_args_accepts_every_reference_option():
    args = ['-dryrun', '-f', '-force', '-S', '2', '-chunks', '3', '-chunksz', '1024', '-parent', '1',
            '-rmprefix', '1', '-T', '4', '-timeout', '5', '-retry', '6', '-ratethreshold', '7', '-strictspec',
            '-norecovery', '-noxrdzip', '-j', '1', '-l', '2', '-o', '3', '-e', 'x*y', '-glob', '*',
            '-exclude', 'a', '-exclude_re', 'b', '-user', 'u', '-group', 'g', '-jobid', '9', '-minsize', '1',
            '-maxsize', '2', '-mindepth', '0', '-maxdepth', '3', '-min-ctime', '1700000000',
            '-max-ctime', '1800000000', '-fastcheck', '-skipmd5', '-cksum', '-y', '2', '-http', '-site', 'S',
            '-v', '-a', '-s', '-c', '-w', '-wh', '-d', '-xrdcp', '-tpc', 'SRC', 'DST']
    opts, pos = alien.parse_cp_args(args, environ={})
    assert pos == ['SRC', 'DST']
    assert (opts['ratethreshold'], opts['retry'], opts['site'], opts['exclude_pat']) == (7, 6, 'S', ('x*y',))
    assert opts['http'] and opts['noxrdzip'] and opts['tpc'] and opts['skipmd5'] and opts['fastcheck']
    assert alien.parse_cp_args(['-dst', 'D', 'S'], environ={})[0]['dst'] == 'D'
    assert alien.parse_cp_args(['-input', 'F'], environ={})[0]['input'] == 'F'


@pytest.mark.pure
def test_parse_cp_args_xrd_variables_are_defaults():
    assert alien.parse_cp_args(['a', 'b'], environ={})[0]['retry'] == 2   # the reference's default
    env = {'XRD_CPRETRY': '4', 'XRD_CPTIMEOUT': '30', 'XRD_XRATETHRESHOLD': '100', 'XRD_SUBSTREAMSPERCHANNEL': '20',
           'XRD_CPPARALLELCHUNKS': '2', 'XRD_CPCHUNKSIZE': '65536'}
    o = alien.parse_cp_args(['a', 'b'], environ=env)[0]
    assert (o['retry'], o['timeout'], o['ratethreshold'], o['streams'], o['chunks'], o['chunksize']) == \
        (4, 30, 100, 15, 2, 65536)
    assert alien.parse_cp_args(['-retry', '0', 'a', 'b'], environ=env)[0]['retry'] == 0  # the option wins
    with pytest.raises(alien.AlienError) as e:
        alien.parse_cp_args(['a', 'b'], environ={'XRD_CPRETRY': 'many'})
    assert e.value.exitcode == alien.EX_EINVAL and 'XRD_CPRETRY' in str(e.value)


@pytest.mark.pure
@pytest.mark.parametrize('specs, lfn, size, expected', [
    ([], '/a/run.sh', 100, ['disk:4']), ([], '/a/Macro.C', 100, ['disk:4']), ([], '/a/j.jdl', 0, ['disk:4']),
    ([], '/a/c.xml', (1 << 20) - 1, ['disk:4']), ([], '/a/c.xml', 1 << 20, ['disk:2']),
    ([], '/a/f.root', 100, ['disk:2']), (['!ALICE::X::SE'], '/a/run.sh', 1, ['disk:2', '!ALICE::X::SE']),
    (['disk:1'], '/a/run.sh', 1, ['disk:1']), ([], '/a/macro.c', 1, ['disk:2']),
])
def test_default_replicas_of_job_files(specs, lfn, size, expected):
    assert alien._with_default_specs(specs, lfn, size) == expected


@pytest.mark.pure
def test_cp_exclude_pattern_option():
    _, ok = alien.cp_meta_filter(alien.parse_cp_args(['-e', 'tmp*log', '-e', 'core', 'a', 'b'], environ={})[0])
    assert ok('x/tmp_1.log', {}) is False and ok('core.1', {}) is False and ok('x/data.root', {}) is True


@pytest.mark.pure
def test_cp_name_fast_path_never_hides_a_problem():
    import random
    rnd = random.Random(10)
    alphabet = ['a', 'é', '.', '/', '\x00', '\n', '\r', '\udcff', 'x' * 40, '€' * 20]
    for _ in range(20000):
        name = ''.join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 9)))
        if alien._NAME_SUSPECT.search(name) is None:
            assert alien.cp_name_problem(name, 'grid') == '' and alien.cp_name_problem(name, 'local') == '', repr(name)


# ===== Transfers: XRootD I/O =====


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
    # a member's name runs from the first '#' to the end, '#' included
    assert alien.grid_url('root://h:1//a/z.zip#h#x.txt', 'E').endswith('&xrdcl.unzip=h#x.txt')


def test_split_member_and_which_members_xrootd_cannot_name():
    assert alien.split_member('root://h:1//a/z.zip#m.root') == ('root://h:1//a/z.zip', 'm.root')
    assert alien.split_member('root://h:1//a/z.zip#a#b') == ('root://h:1//a/z.zip', 'a#b')
    assert alien.split_member('root://h:1//a/b') == ('root://h:1//a/b', '')
    assert [m for m in ('m.root', 's p.txt', 'h#x', 'p%41', 'a&b', 'q?x') if alien.member_needs_local_unzip(m)] \
        == ['a&b', 'q?x']


# ===== Transfers: verified downloads and uploads =====


@pytest.mark.pure
def test_xattrs_mark_an_untouched_download(tmp_path):
    f = tmp_path / 'f'
    f.write_bytes(b'0123456789')
    md5 = hashlib.md5(b'0123456789').hexdigest()
    assert not alien.present_unchanged(str(f), 10, md5)          # nothing recorded
    assert alien.write_xattrs(str(f), '/g/f', 'guid-1', md5, 10)
    x = {k: os.getxattr(str(f), k).decode() for k in os.listxattr(str(f))}
    assert {k: x[k] for k in ('user.lfn', 'user.guid', 'user.md5', 'user.size')} == \
        {'user.lfn': '/g/f', 'user.guid': 'guid-1', 'user.md5': md5, 'user.size': '10'}
    assert x['user.ts_w'] == x['user.ts_r'] == str(os.stat(str(f)).st_mtime_ns // 1000000)
    assert alien.present_unchanged(str(f), 10, md5)
    assert not alien.present_unchanged(str(f), 10, 'f' * 32)     # the catalogue has another file
    assert not alien.present_unchanged(str(f), 11, md5)
    os.utime(str(f), ns=(0, os.stat(str(f)).st_mtime_ns + 5000000))  # written again: same size, new mtime
    assert not alien.present_unchanged(str(f), 10, md5)
    assert alien._file_matches(str(f), 10, md5)                  # hashed, still right: recorded again
    assert alien.present_unchanged(str(f), 10, md5)


@pytest.mark.pure
def test_extract_zip_member(tmp_path):
    import zipfile
    z = tmp_path / 'a.zip'
    with zipfile.ZipFile(str(z), 'w') as w:
        w.writestr('inner.txt', b'hello')
    good = hashlib.md5(b'hello').hexdigest()
    assert alien.extract_zip_member(str(z), 'nothere', good).startswith('cannot extract nothere')
    assert 'md5' in alien.extract_zip_member(str(z), 'inner.txt', 'f' * 32)
    assert zipfile.is_zipfile(str(z)) and sorted(os.listdir(str(tmp_path))) == ['a.zip']   # untouched
    assert alien.extract_zip_member(str(z), 'inner.txt', good) == ''
    assert z.read_bytes() == b'hello'
    p = tmp_path / 'plain'
    p.write_bytes(b'not a zip')
    assert alien.extract_zip_member(str(p), 'inner.txt', '') != ''


@pytest.mark.pure
def test_local_facts_prefetch_reads_what_a_direct_read_reads(tmp_path):
    (tmp_path / 'sub').mkdir()
    paths = [tmp_path / 'a.dat', tmp_path / 'sub' / 'b.dat', tmp_path / 'sub' / 'plain.dat']
    for p in paths:
        p.write_bytes(b'x' * 10)
    for p in paths[:2]:
        assert alien.write_xattrs(str(p), md5='0' * 32)
    facts = alien.LocalFacts()
    facts.prefetch(str(tmp_path))
    facts.threads[0].join()              # a listing slower than the scan: everything read ahead
    facts.stop()
    assert sorted(facts.facts) == sorted(map(str, paths))
    for p in paths:
        assert facts.get(str(p)) == alien._local_facts(str(p))
    assert facts.get(str(paths[0]))[3] == '0' * 32 and facts.get(str(paths[2])) is None
    assert alien.present_unchanged(str(paths[0]), 10, '0' * 32, facts)
    assert not alien.present_unchanged(str(paths[0]), 11, '0' * 32, facts)
    stopped = alien.LocalFacts()
    stopped.stopped = True
    stopped._scan(str(tmp_path))         # stopped before it began: nothing read ahead
    assert stopped.facts == {}
    assert all(stopped.get(str(p)) == alien._local_facts(str(p)) for p in paths)  # read when asked


@pytest.mark.pure
@pytest.mark.once
def test_md5_ahead_hashes_in_order_and_hands_errors_back_in_place(tmp_path):
    paths = []
    for n, data in enumerate([b'', b'abc', os.urandom(3 * 2 ** 20 + 7)]):
        p = tmp_path / ('f%d' % n)
        p.write_bytes(data)
        paths.append(str(p))
    paths[1:1] = [str(tmp_path / 'missing')]
    paths.append(paths[2])                  # the same file twice: hashed twice, taken twice
    ahead = alien.Md5Ahead()
    ahead.add(paths[:2])
    ahead.add(p for p in paths[2:])
    got = []
    for p in paths:
        try:
            got.append(ahead.take())
        except OSError as e:
            got.append(e.__class__.__name__)
    want = [(hashlib.md5(open(p, 'rb').read()).hexdigest(), os.path.getsize(p)) if os.path.exists(p)
            else 'FileNotFoundError' for p in paths]
    assert got == want
    assert not ahead.ready()
    ahead.close()
    with pytest.raises(alien.AlienError):
        ahead.take()                          # nothing queued any more: never waits forever
    stop = threading.Event()
    stop.set()
    assert alien.md5_and_size(paths[-1], stop=stop) == (None, 0)   # a stopped hash gives no digest


# ===== Transfers: the cp command, its catalogue check and its summary =====


@pytest.mark.pure
def test_cp_option_notices_and_tpc():
    base = alien.parse_cp_args(['a', 'b'], environ={})[0]
    assert alien.cp_option_notices(base) == []
    notes = alien.cp_option_notices(dict(base, skipmd5=True, fastcheck=True))
    assert len(notes) == 2 and all(n.startswith('cp: -') and '\n' not in n for n in notes)
    with pytest.raises(alien.AlienError) as e:
        alien.cp_option_notices(dict(base, tpc=True))
    assert e.value.exitcode == 1 and '-tpc' in str(e.value)


@pytest.mark.pure
def test_cp_sources_to_dir(tmp_path):
    assert alien.cp_sources_to_dir(['a', 'b', '/g/d/']) == ('/g/d/', ['a', 'b'])
    assert alien.cp_sources_to_dir(['a', 'b', '/g/d/@disk:1']) == ('/g/d/@disk:1', ['a', 'b'])
    assert alien.cp_sources_to_dir(['/g/a', '/g/b', 'file:%s' % tmp_path]) == ('file:%s' % tmp_path, ['/g/a', '/g/b'])
    with pytest.raises(alien.AlienError) as e:
        alien.cp_sources_to_dir(['a', 'b', '/g/notadir'])
    assert e.value.exitcode == alien.EX_EINVAL
    with pytest.raises(alien.AlienError):   # a grid path is never taken for a local directory
        alien.cp_sources_to_dir(['file:a', 'file:b', 'alien:%s' % tmp_path])


# ===== Commands: the session, files and the catalogue =====


@pytest.mark.pure
def test_xml_collection_shape(tmp_path):
    import xml.etree.ElementTree as ET
    f = tmp_path / 'a&b.txt'
    f.write_bytes(b'hello\n')
    rows = [alien.xml_entry_grid({'lfn': '/d/x "1".root', 'size': '3', 'md5': 'ab', 'ctime': '1700000000000',
                                  'owner': 'u', 'gowner': 'g', 'guid': 'G', 'perm': '755', 'type': 'f'}),
            alien.xml_entry_local(str(f))]
    text = alien.xml_collection(rows, 'find2 -x o.xml /d', 'jalien', now=1700000000)
    root = ET.fromstring(text)
    files = [e.find('file').attrib for e in root.find('collection').findall('event')]
    assert [e.attrib['name'] for e in root.find('collection').findall('event')] == ['1', '2']
    assert files[0]['lfn'] == '/d/x "1".root' and files[0]['turl'] == 'alien:///d/x "1".root'
    assert files[0]['ctime'] == '2023-11-14 22:13:20' and files[0]['name'] == 'x "1".root'
    assert list(files[0]) == list(alien._XML_FILE_FIELDS)
    assert files[1]['lfn'] == 'file://' + str(f) and files[1]['md5'] == hashlib.md5(b'hello\n').hexdigest()
    assert files[1]['size'] == '6' and files[1]['name'] == 'a&b.txt'
    info = root.find('collection').find('info').attrib
    assert info['command'] == 'find2 -x o.xml /d' and info['creator'] == 'jalien' and info['timestamp'] == '1700000000000'


@pytest.mark.pure
@pytest.mark.parametrize('args,want', [
    (['cat', 'f'], (['cat', 'f'], [1])),
    (['wc', '-l', '-force', 'f', '-noout'], (['wc', '-l', 'f'], [2])),
    (['diff', 'alien:a', '-u', 'alien:b'], (['diff', '-u', 'alien:a', 'alien:b'], [2, 3])),
    (['grep', 'alien:x', 'alien:x'], (['grep', 'alien:x', 'alien:x'], [1, 2])),
    (['cat'], None), (['-force', 'cat', '-noout'], None), ([], None),
])
def test_run_arguments(args, want):
    assert alien.run_argv(args) == want


# Normal case, -json, -h, a wrong argument (one line, documented exit code) and a failing
# service (an SE stopped with grid.stop_se and always restarted; a silent server that
# never answers) for each command. The grid is shared: every test restores it.
STORE_XML = ('<statistics tod="1" ver="v5.5.3" src="h:1094" tos="0" pgm="xrootd" ins="anon" pid="7" site="">'
             '<stats id="info"><host>h</host><port>1094</port></stats>'
             '<stats id="oss" v="2"><paths>1<stats id="0"><lp>"/"</lp><tot>10</tot></stats></paths>'
             '<space>0</space></stats><stats id="sched"><jobs>4</jobs></stats></statistics>')


# ===== Commands: storage elements (XRootD probes and the storage commands) =====


@pytest.mark.once   # no network
def test_storage_pure_helpers():
    se = {'seName': 'ALICE::CERN::EOS', 'seNumber': '12', 'endpointUrl': 'root://eos.cern.ch:1094//eos/alice'}
    assert alien.se_matches(se, 'cern::eos') and alien.se_matches(se, 'eos.cern') and alien.se_matches(se, '12')
    assert not alien.se_matches(se, '1') and not alien.se_matches(se, '2')  # a number is the whole SE number
    assert alien.se_host(se) == 'eos.cern.ch:1094'
    assert alien.xrd_host_label('eos.cern.ch') == 'eos.cern.ch:1094'
    assert alien.xrd_host_label('[::1]:1095') == '[::1]:1095' and alien.xrd_host_label('nosuch') is None
    assert alien.xrd_host_label('h.x:99999999') is None and alien.xrd_host_label('a b.c') is None
    assert alien.xrd_config_value('sitename', b'sitename\n') == 'NOT_SET'
    assert alien.xrd_config_value('version', b'v5.5.3\n\x00') == 'v5.5.3'
    d = alien.xrd_stats_dict(STORE_XML)
    assert d['ver'] == 'v5.5.3' and d['site'] == '' and d['stats']['info'] == {'host': 'h', 'port': '1094'}
    assert d['stats']['oss']['paths'] == {'#text': '1', 'stats': {'0': {'lp': '/', 'tot': '10'}}}
    assert d['stats']['sched'] == {'jobs': '4'}
    with pytest.raises(alien.AlienError) as e:
        alien.xrd_stats_dict('<statistics')
    assert e.value.exitcode == 42
    assert alien.parse_args('n', ['-v', 'x', '-c', '3'], '-v -c:str') == ({'v': True, 'c': '3'}, ['x'])
    for bad in (['-q'], ['-c']):
        with pytest.raises(alien.AlienError) as e:
            alien.parse_args('n', bad, '-v -c:str')
        assert e.value.exitcode == 64
    for text in ('0', '-1', 'x'):
        with pytest.raises(alien.AlienError) as e:
            alien.parse_args('n', ['-c', text], '-c:count', {'c': 3})
        assert e.value.exitcode == 64
    assert alien.parse_args('n', [], '-c:count', {'c': 3}) == ({'c': 3}, [])


# ===== Commands: jobs, and outside services (one HTTP GET) =====


@pytest.mark.pure
def test_job_trace_and_jdl_parsing():
    t = 1700000000
    trace = '\n'.join(['%d [state     ]: Job state transition from WAITING to ASSIGNED' % t,
                       '%d [trace     ]: Running JAliEn JobAgent 1.9 on wn7.site.org.' % t,
                       '%d [trace     ]: BatchId 12345' % t,
                       '%d [trace     ]: Created workdir: /pool/job1' % t,
                       '%d [procfmt   ]: time cpu rss' % t, '%d [proc      ]: 1 2 3' % t, 'junk'])
    info = alien.parse_trace(trace)
    local = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t)) + time.strftime('%z', time.localtime(t))
    assert info['wn'] == 'wn7.site.org' and info['workdir'] == '/pool/job1' and info['queue'] == ['12345']
    assert info['state'] == [local + ' Job state transition from WAITING to ASSIGNED']
    assert [p.split(' ', 2)[-1] for p in info['proc']] == ['time cpu rss', '1 2 3']
    assert alien.parse_trace(trace, unixtime=True)['state'][0].startswith('%d Job' % t)
    assert alien.trace_local_times('%d [state     ]: x\n12 [a]' % t) == local + ' [state     ]: x\n12 [a]'
    jdl = alien.parse_jdl('User = "u";\nOutputFile = {\n"a@disk=1",\n "b"\n};\nTTL = 300;\n')
    assert jdl == {'User': 'u', 'OutputFile': ['a@disk=1', 'b'], 'TTL': '300'}
    row = {'id ': '7', 'owner ': 'u', 'split': '0', 'status': 'DONE', 'name': 'n'}     # the 2021 keys
    assert alien.ps_row(row) == {'id': '7', 'owner': 'u', 'split': '0', 'status': 'DONE', 'name': 'n'}
    assert alien.job_line(alien.ps_row(row)).split() == ['7', '0', 'DONE', 'u', 'n']
    # time stamps: seconds (2021 ls -l, stat, find -f) and ms (newer) both come out in ms
    assert alien.ctime_ms('1796121869') == alien.ctime_ms('1796121869000') == 1796121869000
    assert alien.ctime_ms('') is None and alien.ctime_ms('0') == 0


@pytest.mark.pure
def test_ccdb_download_urls():
    o = {'path': 'A/B', 'Valid-From': '1700000000000', 'ETag': 'id1',
         'replicas': ['alien:///alice/x', '/download/id1', 'https://mirror/id1']}
    assert alien.ccdb_download_urls('http://ccdb:8080/', o) == [
        'http://ccdb:8080/download/id1', 'https://mirror/id1', 'http://ccdb:8080/A/B/1700000000000/id1']


@pytest.mark.pure
def test_ccdb_query_path_and_options():
    assert alien.ccdb_query_path('TPC/Calib/*') == ('TPC/Calib', False)
    assert alien.ccdb_query_path('/A/B/1700000000000/runNumber=5', '') == ('A/B/1700000000000/runNumber=5', True)
    assert alien.ccdb_query_path('A/B/k=v', '1700000000001') == ('A/B/1700000000001/k=v', False)
    assert alien.service_base('host:8080') == 'http://host:8080/'
    assert alien.service_base('https://h/rest') == 'https://h/rest/'
    with pytest.raises(alien.AlienError) as e:
        alien.parse_args('x', ['-limit'], '-limit:str')
    assert e.value.exitcode == 64
    assert alien.parse_args('x', ['-a', 'p', '-h2', 'v', '-5'], '-a -h2:list') == ({'a': True, 'h2': ('v',)}, ['p', '-5'])


@pytest.mark.pure
def test_quota_report_says_when_there_is_no_job_quota():
    text = alien.quota_report(None, {'username': 'u', 'totalSize': '1048576', 'maxTotalSize': '0',
                                     'nbFiles': '1', 'maxNbFiles': '4'}, 'No jobs quota found for user u')
    assert 'Job quota :\t\t\tnone (No jobs quota found for user u)' in text
    assert 'Storage size :\t\t\t1.00/0.00 MiB --> n/a' in text and '1/4 --> 25.00%' in text


# ===== Interactive shell: prompt, working directory, completion =====


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
    s = alien.Session(environ={'ALIENPY_PROMPT_CWD': 'yes'})
    s.user, s.cwd = 'jdoe', '/a/b/'
    assert alien.prompt_text(s).endswith(' local:%s >' % os.getcwd())


class CountingSession(object):
    """Enough of a Session for the completer: counts the listings it asks for."""
    def __init__(self):
        self.cwd, self.home, self.calls, self.aliases = '/h/', '/h/', [], {'myalias': 'pwd'}

    def request(self, command, options=(), nomsg=False, nokeys=False):
        self.calls.append((command, list(options), nomsg))
        names = ['alpha/', 'alps.txt', '.hid/', 'beta']
        return alien.Result(0, results=[{'name': n, 'path': options[-1] + n} for n in names])

    def grid_path(self, p):
        return alien.expand_grid_path(p, self.cwd, self.home)

    def server_commands(self):
        return ['whoami', 'ls']


def test_completion_candidates_and_listing_cache(tmp_path):
    s = CountingSession()
    sh = alien.Shell(s)
    assert sh.completions('ls al', 'al') == ['alpha/', 'alps.txt ']
    assert sh.completions('cd al', 'al') == ['alpha/']  # cd: directories only
    assert sh.completions('ls x/.', 'x/.') == ['x/.hid/']
    assert s.calls == [('ls', ['-a', '-F', '/h/'], True), ('ls', ['-a', '-F', '/h/x/'], True)]
    assert sh.completions('stat alien:/h/al', 'alien:/h/al') == ['alien:/h/alpha/', 'alien:/h/alps.txt ']
    assert len(s.calls) == 2  # /h/ again: from the cache
    sh.listings = {d: (t - alien.COMPLETION_TTL, n) for d, (t, n) in sh.listings.items()}
    sh.completions('cd al', 'al')  # too old: listed again
    assert len(s.calls) == 3
    assert sh.completions('who', 'who') == ['whoami ']
    assert sh.completions('pwd; my', 'my') == ['myalias ']
    assert sh.completions('', '') == sorted(n + ' ' for n in (set(alien.COMMANDS) - {'$?'}) | {'whoami', 'ls', 'myalias'})
    (tmp_path / 'f 1.txt').write_text('')
    (tmp_path / 'dir').mkdir()
    word = 'file:%s/' % tmp_path
    assert sh.completions('cp ' + word, word) == [word + 'dir/', word + 'f\\ 1.txt ']
    assert sh.completions('cp ' + word + 'f\\ ', '') == ['1.txt ']  # readline's word starts after the space
    assert sh.completions('ls | cat %s/d' % tmp_path, '%s/d' % tmp_path) == ['%s/dir/' % tmp_path]


# ===== gfal jobs: the job, its entries, options and credentials, its output lines =====


# ---- pure functions (no gfal2 needed) ----
@pytest.mark.once
def test_gfal_join_url():
    j = alien.gfal_join_url
    assert j('root://h:1094//data/', 'sub/f') == 'root://h:1094//data/sub/f'
    assert j('root://h:1094//data', '/sub/f') == 'root://h:1094//data/sub/f'
    assert j('root://127.0.0.1:1094//', 'x/y') == 'root://127.0.0.1:1094//x/y'
    assert j('file:///', 'tmp/a') == 'file:///tmp/a'
    assert j('file:///tmp/', 'a') == 'file:///tmp/a'
    assert j(None, 'gsiftp://h/abs') == 'gsiftp://h/abs'
    assert j('file:///base/', 'root://other//abs') == 'root://other//abs'
    with pytest.raises(alien.GfalJobError, match='needs a "base"'):
        j(None, 'relative/path')


@pytest.mark.once
def test_gfal_job_type_is_case_insensitive():
    assert alien.gfal_job_type('COPY') == 'copy'
    assert alien.gfal_job_type('List') == 'list'
    with pytest.raises(alien.GfalJobError, match='unknown job type'):
        alien.gfal_job_type('chmod')


@pytest.mark.once
def test_gfal_parse_both_input_styles():
    doc = {'base': 'root://h//d/', 'files': ['a', ['7.1', 'b'], 'file:///abs'], 'dirs': [['7.2', 'x/']]}
    job = alien.gfal_parse_job('remove', doc)
    assert job.entries == [(None, 'file', 'root://h//d/a'), ('7.1', 'file', 'root://h//d/b'),
                           (None, 'file', 'file:///abs'), ('7.2', 'dir', 'root://h//d/x/')]
    job = alien.gfal_parse_job('copy', {'base': 'file:///s/', 'files': [['a', 'b'], ['3.1', 'c', 'root://o//d']]})
    assert job.entries == [(None, 'file', 'file:///s/a', 'file:///s/b'),
                           ('3.1', 'file', 'file:///s/c', 'root://o//d')]
    job = alien.gfal_parse_job('list', {'files': [['7.0', 'mock://h/p']]})
    assert job.entries == [('7.0', 'file', 'mock://h/p')]
    job = alien.gfal_parse_job('mkdir', {'files': [], 'dirs': [[5, 'file:///n']]})
    assert job.entries == [(5, 'dir', 'file:///n')]


@pytest.mark.once
def test_gfal_option_defaults():
    opts = alien.gfal_parse_job('copy', {'files': [['file:///a', 'file:///b']]}).options
    assert opts == {'timeout': None, 'make_dirs': True, 'checksum': None, 'encrypt': False,
                    'preserve_timestamp': False, 'overwrite': False, 'nbstreams': None,
                    'parallel': alien.GFAL_DEFAULT_PARALLEL, 'copy_mode': None}
    opts = alien.gfal_check_options('copy', {'parent': False, 'checksum': 'ADLER32:DEADBEEF',
                                             'timeout': 30, 'nbstreams': 2, 'parallel': 3})
    assert (opts['make_dirs'], opts['checksum'], opts['timeout'], opts['nbstreams'], opts['parallel']) == \
        (False, ('ADLER32', 'deadbeef'), 30, 2, 3)
    assert alien.gfal_check_options('copy', {'checksum': True})['checksum'] == ('adler32', '')
    assert alien.gfal_check_options('list', {})['depth'] == -1
    assert alien.gfal_check_options('list', {'depth': -7})['depth'] == -1
    assert alien.gfal_check_options('list', {'checksum': 'md5'})['checksum'] == ('md5', '')


GFAL_BAD_JOBS = [
    ('list', {'files': []}, 'exactly one entry'),
    ('list', {}, 'exactly one entry'),
    ('list', {'files': ['file:///a', 'file:///b']}, 'exactly one entry'),
    ('list', {'files': ['rel/path']}, 'needs a "base"'),
    ('list', {'files': ['file:///a'], 'options': None}, '"options" must be a JSON object'),
    ('list', {'files': ['file:///a'], 'options': []}, '"options" must be a JSON object'),
    ('list', {'files': ['file:///a'], 'options': {'recursive': True}}, 'unknown option "recursive"'),
    ('list', {'files': ['file:///a'], 'options': {'depth': '2'}}, 'depth must be an integer'),
    ('list', {'files': ['file:///a'], 'options': {'depth': True}}, 'depth must be an integer'),
    ('list', {'files': ['file:///a'], 'options': {'checksum': 'adler32:00'}}, 'algorithm name'),
    ('list', {'files': ['file:///a'], 'options': {'checksum': 'name'}}, 'not an algorithm'),
    ('list', {'files': [['id', 'file:///a', 'x']]}, 'expected "path" or ["id", "path"]'),
    ('list', {'files': [{'url': 'file:///a'}]}, 'expected "path"'),
    ('list', {'files': [['id', 3]]}, 'a path must be a string'),
    ('list', {'files': [[True, 'file:///a']]}, 'an id must be'),
    ('list', {'files': ['']}, 'empty path'),
    ('list', {'files': 'file:///a'}, '"files" must be a list'),
    ('list', {'files': ['file:///a'], 'type': 'LIST'}, 'unknown key "type"'),
    ('list', {'base': '/no/scheme/', 'files': ['a']}, '"base" must be a URL'),
    ('remove', {'files': [], 'dirs': []}, 'nothing to remove'),
    ('remove', {'files': ['file:///a'], 'options': {'timeout': 0}}, 'timeout must be an integer >= 1'),
    ('remove', {'files': ['file:///a'], 'options': {'overwrite': True}}, 'unknown option "overwrite"'),
    ('mkdir', {'dirs': []}, 'no directories'),
    ('mkdir', {'files': ['file:///a'], 'dirs': ['file:///b']}, 'MKDIR takes its directories in "dirs"'),
    ('rename', {'files': []}, 'no files to rename'),
    ('rename', {'files': ['file:///a']}, 'expected ["src", "dst"]'),
    ('copy', {'files': []}, 'no files to copy'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'dirs': ['file:///c']}, '"dirs" must be empty'),
    ('copy', {'files': [['a', 'b', 'c', 'd']]}, 'expected ["src", "dst"]'),
    ('copy', {'files': [['file:///a', 'b']]}, 'needs a "base"'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'parallel': 0}}, 'parallel must be'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'parallel': 1000}}, 'at most'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'overwrite': 'yes'}}, 'true or false'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'checksum': 5}}, 'algorithm name'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'checksum': 'adler32:xyz'}}, 'hexadecimal'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'make_dirs': True, 'parent': False}},
     'disagree'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'verbosity': 10}}, 'unknown option'),
    ('copy', {'files': [['file:///a', 'file:///b']], 'options': {'copy_mode': '3rd pull'}}, 'copy_mode must be one of'),
    ('list', {'files': ['file:///a'], 'options': {'copy_mode': 'pull'}}, 'unknown option "copy_mode"'),
]


@pytest.mark.once
@pytest.mark.parametrize('jobtype,doc,message', GFAL_BAD_JOBS)
def test_gfal_bad_job_is_one_error_line(jobtype, doc, message):
    with pytest.raises(alien.GfalJobError) as info:
        alien.gfal_parse_job(jobtype, doc)
    assert message in str(info.value)
    # through gfal_main: exactly one JSON line, exit 2 (parsing fails before gfal2 is needed)
    out, err = io.StringIO(), io.StringIO()
    rc = alien.gfal_main([jobtype.upper()], io.StringIO(json.dumps(doc)), out, err)
    lines = out.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1 and err.getvalue() == ''
    line = json.loads(lines[0])
    assert list(line) == ['Reason', 'Code', 'id'] and line['id'] == '' and line['Code'] == 1 and message in line['Reason']


@pytest.mark.once
def test_gfal_encrypted_url():
    e = alien.gfal_encrypted_url
    assert e('root://h//f') == 'roots://h//f'
    assert e('xroot://h//f') == 'xroots://h//f'
    assert e('roots://h//f') == 'roots://h//f'
    assert e('https://h/f') == 'https://h/f'
    assert e('gsiftp://h/f') == 'gsiftp://h/f'
    assert e('file:///f') == 'file:///f'
    for url in ('http://h/f', 'mock://h/f', 'dav://h/f', 'srm://h/f'):
        with pytest.raises(ValueError, match='cannot encrypt'):
            e(url)


@pytest.mark.once
def test_gfal_url_helpers():
    assert alien.gfal_parent_url('root://h//d/f') == ('root://h//d', 'f')
    assert alien.gfal_parent_url('root://h//f') == ('root://h//', 'f')
    assert alien.gfal_parent_url('file:///tmp/x/a.txt') == ('file:///tmp/x', 'a.txt')
    assert alien.gfal_parent_url('file:///a') == ('file:///', 'a')
    assert alien.gfal_child_url('root://h//', 'x') == 'root://h//x'
    assert alien.gfal_child_url('file:///d', 'x') == 'file:///d/x'
    assert alien.gfal_local_path('file:///tmp/a') == '/tmp/a'
    assert alien.gfal_local_path('file://localhost/tmp/a') == '/tmp/a'
    assert alien.gfal_local_path('root://h//tmp/a') is None
    assert alien.gfal_monitor_line('file:///a', 11, 524288000, 45196288) == \
        'MONITOR src: file:///a [  11] 500.00MB (44137.00KB/s)'


@pytest.mark.once
def test_gfal_credentials_rule(tmp_path):
    src, dst, one = _gfal_cred_files(tmp_path, 'src.pem', 'dst.pem', 'one.pem')
    c = alien.gfal_credentials
    env = {'X509_USER_PROXY_SRC': src, 'X509_USER_PROXY_DST': dst, 'X509_USER_PROXY': one}
    assert c('copy', env) == (('X509_USER_PROXY_SRC', src), ('X509_USER_PROXY_DST', dst))
    # each COPY side falls back to X509_USER_PROXY; nothing set: no credential
    assert c('copy', {'X509_USER_PROXY_SRC': src, 'X509_USER_PROXY': one}) == \
        (('X509_USER_PROXY_SRC', src), ('X509_USER_PROXY', one))
    assert c('copy', {'X509_USER_PROXY_DST': dst}) == (None, ('X509_USER_PROXY_DST', dst))
    assert c('copy', {'X509_USER_PROXY_SRC': ''}) == (None, None)
    # every other job has the one credential of X509_USER_PROXY, whatever _SRC/_DST say
    for jobtype in ('list', 'remove', 'rename', 'mkdir'):
        assert c(jobtype, env) == (('X509_USER_PROXY', one),) * 2
        assert c(jobtype, {'X509_USER_PROXY_SRC': str(tmp_path / 'missing')}) == (None, None)


@pytest.mark.once
def test_gfal_cred_bindings(tmp_path):
    src, dst = _gfal_cred_files(tmp_path, 'src.pem', 'dst.pem')
    job = alien.gfal_parse_job('copy', {'files': [
        ['davs://a.example:443/p/1', 'davs://b.example:8443/q/1'],
        ['davs://a2.example/p/2', 'davs://b.example:8443/q/2'],
        ['file:///local/3', 'root://x.example:1094//q/3'],
        ['davs://b.example:8443/p/4', 'davs://b.example:8443/q/4']]})   # within one endpoint
    job.creds = (('X509_USER_PROXY_SRC', src), ('X509_USER_PROXY_DST', dst))
    assert alien.gfal_cred_bindings(job) == ({
        'davs://a.example:443/': src, 'davs://a2.example/': src,
        'davs://b.example:8443/': dst,            # on both sides: the destination's
        'root://x.example:1094/': dst},           # file:// takes no credential
        frozenset(['davs://b.example:8443/']), True)      # davs -> davs: tokens for its agent
    job.creds = (('X509_USER_PROXY_SRC', src), ('X509_USER_PROXY_DST', src))     # one file: nothing shared
    assert alien.gfal_cred_bindings(job)[1] == frozenset()
    job.creds = (None, ('X509_USER_PROXY_DST', dst))
    assert alien.gfal_cred_bindings(job) == ({'davs://b.example:8443/': dst, 'root://x.example:1094/': dst},
                                             frozenset(), True)
    job = alien.gfal_parse_job('copy', {'files': [['root://a.example//p', 'http://h/q']],
                                        'options': {'encrypt': True}})
    job.creds = (('X509_USER_PROXY', src),) * 2
    assert alien.gfal_cred_bindings(job) == ({'root://a.example/': src, 'roots://a.example/': src,
                                              'http://h/': src}, frozenset(), False)
    job = alien.gfal_parse_job('list', {'files': ['davs://a.example/p']})
    job.creds = (('X509_USER_PROXY', src),) * 2
    assert alien.gfal_cred_bindings(job) == ({}, frozenset(), False)    # gfal2 reads X509_USER_PROXY itself
    for files, options, tokens in (([['davs://a/1', 'https://b/2']], {}, True),
                                   ([['davs://a/1', 'davs://b/2']], {'copy_mode': 'streamed'}, False),
                                   ([['file:///1', 'davs://b/2'], ['davs://a/1', 'file:///2']], {}, False)):
        job = alien.gfal_parse_job('copy', {'files': files, 'options': options})
        assert alien.gfal_cred_bindings(job)[2] is tokens
    assert alien.gfal_endpoint('davs://h:1') == 'davs://h:1/'
    assert alien.gfal_endpoint('file:///x') is None


@pytest.mark.once
def test_gfal_credential_note():
    note = alien.gfal_credential_note
    creds = (('X509_USER_PROXY_SRC', '/s.pem'), None)
    urls = ('davs://a:1/p/f', 'davs://b:2/q/f')
    assert note('DESTINATION MAKE_PARENT HTTP 403 : Permission refused', creds, urls, True) == \
        'DESTINATION MAKE_PARENT HTTP 403 : Permission refused [credential for destination davs://b:2/: ' \
        'no credential (X509_USER_PROXY_DST and X509_USER_PROXY unset)]'
    assert note('Copy failed: SSL error: tlsv1 alert unknown ca (source)', creds, urls, True).endswith(
        '[credential for source davs://a:1/: X509_USER_PROXY_SRC=/s.pem]')
    assert note('Connection reset by peer', creds, urls, True).endswith(
        '[credential for source davs://a:1/: X509_USER_PROXY_SRC=/s.pem; destination davs://b:2/: '
        'no credential (X509_USER_PROXY_DST and X509_USER_PROXY unset)]')
    # not about authentication: unchanged; local files take no credential
    assert note('The file exists and overwrite is not set', creds, urls, True) == \
        'The file exists and overwrite is not set'
    assert note('Permission denied', creds, ('file:///x', 'file:///y'), True) == 'Permission denied'
    one = (('X509_USER_PROXY', '/u.pem'),) * 2
    assert note('HTTP 403 : Permission refused', one, ('davs://a:1/x', 'davs://a:1/y')) == \
        'HTTP 403 : Permission refused [credential for davs://a:1/: X509_USER_PROXY=/u.pem]'
    assert note('HTTP 403', (None, None), ('davs://a:1/x',)) == \
        'HTTP 403 [credential for davs://a:1/: no credential (X509_USER_PROXY unset)]'


# ===== gfal jobs: running them on gfal2 (imported lazily) =====


@pytest.mark.once
@pytest.mark.parametrize('args,text,message', [
    (['copy'], '{not json', 'invalid JSON'),
    (['copy'], '', 'empty input'),
    (['list'], '[["7.0", "file:///x"]]', 'must be a JSON object'),
    (['list'], 'null', 'must be a JSON object'),
    (['chmod'], '{}', 'unknown job type "chmod"'),
    ([], '{}', 'usage:'),
    (['list', 'a.json', 'b.json'], '{}', 'usage:'),
    (['list', '/nonexistent/job.json'], '', 'cannot read the job file'),
])
def test_gfal_main_bad_input(args, text, message):
    out, err = io.StringIO(), io.StringIO()
    rc = alien.gfal_main(args, io.StringIO(text), out, err)
    lines = out.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1
    line = json.loads(lines[0])
    assert line['Code'] == 1 and message in line['Reason']


@pytest.mark.once
def test_gfal_missing_module_in_process(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'gfal2', None)     # import gfal2 -> ImportError
    out, err = io.StringIO(), io.StringIO()
    job = {'dirs': ['file://%s/new' % tmp_path]}
    rc = alien.gfal_main(['mkdir'], io.StringIO(json.dumps(job)), out, err)
    lines = out.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1
    assert 'python3-gfal2' in json.loads(lines[0])['Reason']
    assert not (tmp_path / 'new').exists()


@pytest.mark.once
def test_gfal_command_registered():
    cmd = alien.COMMANDS['gfal']
    assert cmd.connect is False and 'list|remove|copy|rename|mkdir' in cmd.usage


@pytest.mark.once
def test_gfal_command_handler_and_help(capsys):
    result = alien.COMMANDS['gfal'].handler(None, [])
    out = capsys.readouterr().out.splitlines()
    assert result.exitcode == 2 and result.out == '' and len(out) == 1
    assert 'usage: alien.py gfal' in json.loads(out[0])['Reason']
    assert alien.gfal_main(['--help'], None, io.StringIO(), io.StringIO()) == 0


@pytest.mark.once
def test_gfal_lazy_system_cas(tmp_path, monkeypatch):
    """davix parses OpenSSL's default CA file for every HTTPS request; where the default
    directory holds a hash link for each of its certificates, the file is swapped for an
    empty one (the same CAs, found by hash on demand), and only then."""
    import collections
    Paths = collections.namedtuple('Paths', 'openssl_cafile_env openssl_cafile openssl_capath_env openssl_capath')
    bundle, capath = tmp_path / 'bundle.pem', tmp_path / 'certs'
    bundle.write_text(GFAL_FAKE_CERT * 3)
    capath.mkdir()
    paths = Paths('SSL_CERT_FILE', str(bundle), 'SSL_CERT_DIR', str(capath))
    monkeypatch.setattr(alien.ssl, 'get_default_verify_paths', lambda: paths)

    def lazy(env, links):
        for n in os.listdir(str(capath)):
            os.unlink(str(capath / n))
        for i in range(links):
            (capath / ('%08x.0' % i)).write_text('')
        env = dict(env)
        alien.gfal_lazy_system_cas(env)
        return env.get('SSL_CERT_FILE')
    assert lazy({}, 3) == os.devnull
    assert lazy({'SSL_CERT_FILE': str(bundle), 'SSL_CERT_DIR': str(capath)}, 3) == os.devnull
    assert lazy({}, 2) is None                                     # a CA of the file not in the directory
    other = tmp_path / 'mine.pem'
    other.write_text(GFAL_FAKE_CERT)
    assert lazy({'SSL_CERT_FILE': str(other)}, 3) == str(other)    # the user's own file: kept
    assert lazy({'SSL_CERT_DIR': str(tmp_path)}, 3) is None        # another directory: nothing changed


# ===== main() =====


@pytest.mark.pure
@pytest.mark.parametrize('argv0, verb', [
    ('alien.py', ''), ('/usr/bin/alien.py', ''), ('alien_cmd', ''), ('python3', ''), ('alien_', ''),
    ('/x/alien_ls', 'ls'), ('alien_cp', 'cp'), ('alien_home', 'home'), ('alien_whereis.py', 'whereis'),
    ('alien-token-init', 'token-init'), ('alien-cert-info', 'cert-info'), ('alien-bogus', ''),
])
def test_entry_verb(argv0, verb):
    assert alien.entry_verb(argv0) == verb


@pytest.mark.pure
def test_parse_main_args():
    words, o = alien.parse_main_args(['ls', '-json', '-l', '-debugfile', 'log.txt', '/a', '-debug'])
    assert words == ['ls', '-l', '/a'] and o == {'json': True, 'debug': True, 'debugfile': 'log.txt'}
    assert alien.parse_main_args(['pwd']) == (['pwd'], {'json': False, 'debug': False, 'debugfile': None})
    for bad in (['pwd', '-debugfile'], ['-debugfile', '']):
        with pytest.raises(alien.AlienError) as e:
            alien.parse_main_args(bad)
        assert e.value.exitcode == alien.EX_USAGE


@pytest.mark.pure
def test_command_file_lines():
    text = '# comment\n\n  pwd  \n   # indented comment\nls -l; whoami\n\t\nexit 3\n'
    assert alien.command_file_lines(text) == ['pwd', 'ls -l; whoami', 'exit 3']


# ===== installation: what .ci/setup installs, Python 3.6+ =====


# Tests marked `pure` (no network, no external program) also run under every CPython
# of the machine image (test_pure_unit_tests_on). Those and the tests marked `once` do
# not depend on the websocket transport: the README's test command runs them in its
# first pass only.
@pytest.mark.once
def test_ci_setup_installed_every_tool_the_tests_use():
    missing = tools.missing()
    assert not missing, 'missing, run `bash .ci/setup`: ' + '; '.join('%s (%s)' % m for m in missing)


@pytest.mark.once
def test_vermin_python36():
    vermin = tool('vermin')
    p = subprocess.run([vermin, '-t=3.6-', '--no-tips', '--violations', ALIEN], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([vermin, '-t=3.6-', '--no-tips', ALIEN], capture_output=True, text=True)
    assert 'Minimum required versions: 3.6' in p.stdout, p.stdout


@pytest.mark.once
def test_imports_with_the_standard_library_only():
    code = ("import importlib.util as u; s = u.spec_from_file_location('alien', %r); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); import sys; "
            "bad = [n for n in ('XRootD', 'gfal2', 'websocket', 'websockets') if n in sys.modules]; "
            "assert not bad, bad" % ALIEN)
    p = subprocess.run([sys.executable, '-I', '-S', '-c', code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def _pure_test_names():
    """Names of the pure unit tests (marked `pure`), in file order."""
    return [name for name, f in list(globals().items())
            if name.startswith('test_') and any(m.name == 'pure' for m in getattr(f, 'pytestmark', ()))]


_PURE_RUNS = {}  # version -> Future of its subprocess: all interpreters start at the first test


def _pure_run(version):
    """The pure unit tests of this file, run by pytest under that interpreter (its own
    venv from .ci/setup, with pytest and hypothesis of a release it supports)."""
    names = _pure_test_names()
    assert len(names) >= 30, names
    env = dict(os.environ)
    env.pop('ALIENPY_TRANSPORT', None)
    return subprocess.run([tools.test_venv(version), '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider',
                           '-W', 'ignore::DeprecationWarning']
                          + ['%s::%s' % (os.path.basename(__file__), n) for n in names],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.once
@pytest.mark.parametrize('version', tools.OTHER_VERSIONS)
def test_pure_unit_tests_on(version):
    other_python(version)
    if not _PURE_RUNS:  # two at a time (the machine's cores): half the wall time of one after the other
        import concurrent.futures
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        for v in tools.OTHER_VERSIONS:
            if tools.interpreter(v) is not None:
                _PURE_RUNS[v] = pool.submit(_pure_run, v)
        pool.shutdown(wait=False)
    p = _PURE_RUNS[version].result()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert ' passed' in p.stdout and 'failed' not in p.stdout, p.stdout[-500:]
