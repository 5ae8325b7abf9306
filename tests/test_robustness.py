"""Hostile replies and names, races, the throttle, a service killed and restarted."""
import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import hypothesis
import pytest
from hypothesis import given, settings, strategies as st

import alien
from testgrid import grid
from conftest import (
    ALIEN, Hostile, OWN_TRANSPORT, PROMPT, REPO, _rc_entries, _rc_files, _rc_service_log, client_env, cpx,
    grid_dir, hostile_run, one_line_error, run_cli, server_frame, shell_cmd, shell_end, spawn_shell, write)


def then_send(data, close=True):
    def script(server, conn, index):
        server.recv(conn)
        conn.sendall(data)
        if close:
            conn.close()
        else:
            time.sleep(5)
    return script


# ===== a hostile websocket server =====

# The same hostile replies through the websocket-client transport (measured with
# ALIENPY_TRANSPORT=websocket-client), keyed by the words of alien.py's own transport:
# that library words its errors itself, waits for the rest of a frame that never comes
# (a reply that is no frame, a 2**62-byte length) and accepts a masked frame.
WEBSOCKET_CLIENT_ENDS = {
    'closed by the server': (107, 'connection lost'),
    'reserved': (107, 'no answer from the server for 1 s'),
    'UTF-8': (107, 'cannot decode'),
    'not JSON': (22, 'not JSON'),
    'format': (42, 'format'),
    'empty': (70, 'empty'),
    'maximum': (107, 'no answer from the server for 1 s'),
    'masked': (42, 'format'),
    'binary': (107, 'binary'),
}


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
    if not OWN_TRANSPORT:
        code, words = WEBSOCKET_CLIENT_ENDS[words]
    assert p.returncode == code and words in p.stderr, p
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


def test_request_many_pipelines_in_order(cenv, grid_state):
    s = alien.Session(environ=cenv)
    try:
        s.run('mkdir -p pipe/a pipe/b pipe/c')
        reqs = [('stat', [p], alien.check_stat(p)) for p in (grid_state['home'] + 'pipe/' + n for n in 'abcx')] * 20
        results = s.request_many(reqs, nomsg=True, window=7)
        assert [r.exitcode for r in results[:4]] == [0, 0, 0, 2] and len(results) == 80
        assert [alien.stat_fields(r.results[0])['path'] for r in results[:3]] == [
            grid_state['home'] + 'pipe/%s/' % n for n in 'abc']
    finally:
        s.close()


def test_request_many_never_resends_a_modifying_request(grid_state, henv):
    def script(server, conn, index):
        for i in range(2):   # requests without a check go one at a time: each waits for its reply
            server.recv(conn)
            server.reply(conn, message=None)
        server.recv(conn)
        conn.close()  # the third commit: did it happen? nobody knows
    server = Hostile(grid_state, script)
    try:
        s = alien.Session(environ=dict(henv, ALIENPY_JCENTRAL='127.0.0.1:%d' % server.port))
        results = s.request_many([('commit', [str(i)]) for i in range(3)], nomsg=True)
        s.close()
    finally:
        server.close()
    assert [r.exitcode for r in results] == [0, 0, 107] and 'unknown' in results[2].err
    assert [m['command'] for m in server.messages] == ['commit'] * 3


# ===== hostile names and payloads: bounded parsing, terminal-safe output, per-file name refusal =====


def test_user_regex_is_one_line_error_whatever_it_holds(cenv, grid_state, tmp_path):
    for pattern in ('(' * 5000 + ')' * 5000, '[[a]', '(', 'a{99999999999}'):
        try:
            alien.user_regex(pattern)
        except alien.AlienError as e:
            assert e.exitcode == 64 and '\n' not in str(e)
    for option in ('-select', '-exclude_re'):
        p = run_cli(['cp', '-dryrun', option, '(' * 5000 + ')' * 5000, grid_state['home'], 'file:%s/' % tmp_path],
                    env=cenv)
        assert p.returncode == 64 and one_line_error(p) and 'invalid regex' in p.stderr, p


def test_gfal_deep_or_huge_job_is_one_job_error_line(tmp_path):
    for text in ('[' * 100000, '{"files": ' + '[' * 100000 + ']' * 100000 + '}'):
        out, err = io.StringIO(), io.StringIO()
        assert alien.gfal_main(['list'], io.StringIO(text), out, err) == 2
        lines = out.getvalue().splitlines()
        assert len(lines) == 1 and err.getvalue() == ''
        line = json.loads(lines[0])
        assert line['id'] == '' and line['Code'] == 1 and 'nested' in line['Reason']
    big = tmp_path / 'job.json'
    with open(str(big), 'wb') as fh:
        fh.truncate(alien.INPUT_MAX_BYTES + 1)
    out = io.StringIO()
    assert alien.gfal_main(['list', str(big)], io.StringIO(), out, io.StringIO()) == 2
    assert 'larger than' in json.loads(out.getvalue())['Reason']
    # through the command-line front end, as the worker runs it
    p = run_cli(['gfal', 'list'], input='[' * 100000)
    assert p.returncode == 2 and p.stderr == '' and json.loads(p.stdout)['id'] == '', p


@contextlib.contextmanager
def h10_faults(grid_state, faults):
    grid.set_faults(grid_state['workdir'], faults)
    try:
        yield
    finally:
        grid.set_faults(grid_state['workdir'], None)


def test_hostile_deep_reply_is_exit_42(cenv, grid_state):
    deep = '{"metadata": {"exitcode": "0"}, "results": [' + '[' * 100000 + ']' * 100000 + ']}'
    with h10_faults(grid_state, {'ls': {'raw': deep}, 'stat': {'raw': '{"metadata": {}, "results": 5}'}}):
        p = run_cli(['ls'], env=cenv)
        assert p.returncode == 42 and one_line_error(p) and 'Traceback' not in p.stderr, p
        p = run_cli(['stat /x'], env=cenv)
        assert p.returncode == 42 and one_line_error(p), p


def test_oversized_input_and_settings_files(cenv, grid_state, tmp_path):
    big = tmp_path / 'pairs.txt'
    with open(str(big), 'wb') as fh:
        fh.truncate(alien.INPUT_MAX_BYTES + 1)
    p = run_cli(['cp', '-input', str(big)], env=cenv)
    assert p.returncode == 22 and one_line_error(p) and 'larger than' in p.stderr, p
    home = cenv['HOME']
    with open(os.path.join(home, '.alienpy_aliases'), 'wb') as fh:
        fh.truncate(alien.SETTINGS_MAX_BYTES + 1)
    with open(os.path.join(home, '.alienpy_session'), 'wb') as fh:
        fh.truncate(alien.SETTINGS_MAX_BYTES + 1)
    p = run_cli([], env=cenv, input='pwd\n')       # the shell starts: both files ignored with a notice
    assert p.returncode == 0 and p.stdout.strip().endswith(grid_state['home']), p
    assert 'alienpy_aliases ignored: larger than' in p.stderr and 'Traceback' not in p.stderr
    with open(os.path.join(home, '.alienpy_aliases'), 'w') as fh:
        fh.write('bomb = %s\n' % ';'.join(['pwd'] * 5000))
    p = run_cli(['bomb;bomb;bomb'], env=cenv)
    assert p.returncode == 64 and one_line_error(p) and 'more than' in p.stderr, p


def test_service_messages_and_errors_on_a_terminal(cenv, grid_state):
    colour = {'exitcode': 0, 'results': [{'message': 'Your new job ID is \x1b[34m42\x1b[0m'}]}
    hostile = {'exitcode': 0, 'results': [{'message': 'user \x1b]0;pwned\x07\x1b[2J\x1b[31mred'}]}
    with h10_faults(grid_state, {'submit': colour, 'whoami': hostile,
                                 'pwd': {'exitcode': 5, 'error': 'bad \x1b[2Jthing'}}):
        p = run_cli(['submit x.jdl'], env=cenv)                   # a pipe: clean text
        assert (p.returncode, p.stdout) == (0, 'Your new job ID is 42\n'), p
        p = run_cli(['submit x.jdl'], env=cenv, tty=True)          # a terminal: the service's colour
        assert p.returncode == 0 and 'Your new job ID is \x1b[34m42\x1b[0m' in p.stdout, repr(p.stdout)
        p = run_cli(['submit x.jdl'], env=dict(cenv, NO_COLOR='1'), tty=True)
        assert p.returncode == 0 and 'Your new job ID is 42\n' in p.stdout and '\x1b' not in p.stdout, repr(p.stdout)
        p = run_cli(['whoami'], env=cenv, tty=True)                # nothing else reaches the terminal raw
        assert p.returncode == 0 and 'user \\033]0;pwned\\a\\033[2J\\033[31mred' in p.stdout and '\x1b' not in p.stdout, repr(p.stdout)
        p = run_cli(['pwd'], env=cenv, tty=True)
        assert p.returncode == 5 and 'bad \\033[2Jthing' in p.stdout and '\x1b' not in p.stdout, repr(p.stdout)
        p = run_cli(['whoami'], env=cenv)                         # off a terminal: the bytes
        assert p.stdout == 'user \x1b]0;pwned\x07\x1b[2J\x1b[31mred\n', p
        p = run_cli(['submit -json x.jdl'], env=cenv)             # -json: exact, escaped by JSON
        assert json.loads(p.stdout)['results'][0]['message'] == 'Your new job ID is \x1b[34m42\x1b[0m'
        p = run_cli(['submit x.jdl'], env=dict(cenv, ALIENPY_JSONRAW='1'))
        assert '\\u001b[34m42' in p.stdout.lower(), p   # exactly the service's text


def test_cp_mixed_directory_good_files_arrive_bad_names_refused(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'mixed')
    src = tmp_path / 'mixed'
    write(src / 'ok.txt', b'fine\n')
    write(src / 'sub' / 'ok2.txt', b'fine too\n')
    write(src / 'esc\x1b[31mred', b'red\n')                 # the catalogue holds it: uploaded
    write(src / 'bad\nname', b'nl\n')
    with open(os.path.join(str(src).encode(), b'bad\xffname'), 'wb') as fh:
        fh.write(b'ff\n')
    p = cpx(cpenv, 'file:%s/' % src, g)
    refused = [line for line in p.stderr.splitlines() if 'refused' in line]
    assert p.returncode == 1 and len(refused) == 2, p
    assert any('bad\\nname' in line and 'line break' in line for line in refused), refused
    assert any('bad\\377name' in line and 'not valid UTF-8' in line for line in refused), refused
    assert 'Traceback' not in p.stderr and p.stdout == '', p
    p = run_cli(['ls', g], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert sorted(p.stdout.split('\n')[:-1]) == ['esc\x1b[31mred', 'ok.txt', 'sub/'], p   # nothing booked for the bad ones
    # ls of that name on a terminal shows it escaped; the good files came back intact
    p = run_cli(['ls', g], env=cpenv, tty=True)
    assert p.returncode == 0 and 'esc\\033[31mred' in p.stdout and '\x1b' not in p.stdout, repr(p.stdout)
    out_dir = tmp_path / 'back'
    p = cpx(cpenv, g, 'file:%s/' % out_dir)
    assert p.returncode == 0, p
    assert (out_dir / 'ok.txt').read_bytes() == b'fine\n' and (out_dir / 'sub' / 'ok2.txt').read_bytes() == b'fine too\n'
    assert (out_dir / 'esc\x1b[31mred').read_bytes() == b'red\n'


def test_cp_download_refuses_lfns_that_cannot_be_local_names(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'longname')
    write(tmp_path / 'ok.txt', b'ok\n')
    assert cpx(cpenv, 'file:%s' % (tmp_path / 'ok.txt'), g + 'ok.txt').returncode == 0
    long_name = 'L' * 300
    p = run_cli(['touch', g + long_name], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 0, p
    p = cpx(cpenv, g, 'file:%s/' % (tmp_path / 'out'))
    refused = [line for line in p.stderr.splitlines() if 'refused' in line]
    assert p.returncode == 1 and len(refused) == 1 and long_name in refused[0] and '255 bytes' in refused[0], p
    assert (tmp_path / 'out' / 'ok.txt').read_bytes() == b'ok\n'


def test_cp_download_refuses_dot_dot_names_from_a_hostile_find(grid_state, henv, tmp_path):
    home = '/localhost/localdomain/user/j/jalien/'

    def script(server, conn, index):
        while True:
            msg = server.recv(conn)
            if msg is None or msg[0] != alien.OP_TEXT:
                return
            cmd = server.messages[-1]['command']
            rows = {'stat': [{'lfn': home + 'd', 'type': 'd', 'size': '0'}],
                    'find': [{'lfn': home + 'd/../../../../../../tmp/evil'},
                             {'lfn': home + 'd/./x'}]}.get(cmd, [{'message': 'ok'}])
            conn.sendall(server_frame(alien.OP_TEXT, json.dumps(
                {'metadata': {'exitcode': '0', 'error': '', 'user': 'jalien', 'currentdir': home},
                 'results': rows}).encode()))
    server = Hostile(grid_state, script)
    try:
        p = run_cli(['cp', home + 'd/', 'file:%s/' % (tmp_path / 'out')],
                    env=dict(henv, ALIENPY_JCENTRAL='127.0.0.1:%d' % server.port))
    finally:
        server.close()
    refused = [line for line in p.stderr.splitlines() if 'refused' in line]
    assert p.returncode == 1 and len(refused) == 2 and all('".."' in line for line in refused), p
    assert 'access' not in [m['command'] for m in server.messages]     # nothing was asked for them
    assert not os.path.exists('/tmp/evil') and not (tmp_path / 'out').exists()


def test_fuzz_parsers_short_run():
    """The CI-sized run of fuzz/fuzz_parsers.py (the long runs are in the README)."""
    p = subprocess.run([sys.executable, os.path.join(REPO, 'fuzz', 'fuzz_parsers.py'), '--count', '2000',
                        '--seed', str(int(time.time()))], capture_output=True, text=True, timeout=300)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) == 7 and all(line.endswith(', 0 crashes') for line in lines), p


# ===== reconnect and resume, a service restarted or gone, an SE dying =====


@pytest.mark.once  # session and cp logic: the same with either transport
def test_connect_tries_the_lost_address_last(grid_state):
    a, b = socket.socket(), socket.socket()
    for s in (a, b):
        s.bind(('127.0.0.1', 0))
        s.listen(4)
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, '', s.getsockname()) for s in (a, b)]
    old = alien.resolve
    alien.resolve = lambda host, p, environ: list(infos)
    try:
        for avoid, want in ((None, a), (a.getsockname(), b), (b.getsockname(), a)):
            c = alien.connect_tcp('x', 0, {}, avoid=avoid)
            assert c.getpeername() == want.getsockname()
            c.close()
    finally:
        alien.resolve = old
        a.close()
        b.close()


def test_a_session_rides_through_a_service_restart(cenv, grid_state, service_back, capsys):
    from testgrid import grid
    s = alien.Session(environ=cenv)
    try:
        assert s.run('mkdir -p rc_ride; cd rc_ride').exitcode == 0
        capsys.readouterr()
        grid.stop_service(service_back)
        threading.Timer(1.0, grid.restart_service, (service_back,)).start()
        t0 = time.monotonic()
        r = s.run('pwd; ls -l')  # the cwd is restored on the new connection
        assert r.exitcode == 0 and r.out.startswith(grid_state['home'] + 'rc_ride/'), r
        assert time.monotonic() - t0 > 0.9
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and 'lost' in err[0] and 'ALIENPY_RECONNECT_TIMEOUT' not in err[0], err
        assert re.match(r'^alien\.py: connection back after [0-9.]+ s$', err[1]), err
        # the budget runs out: exit 107 after ALIENPY_RECONNECT_TIMEOUT, nothing retried forever
        grid.stop_service(service_back)
        s.reconnect_timeout = 1.5
        t0 = time.monotonic()
        r = s.run('pwd')
        assert r.exitcode == 107 and 'ALIENPY_RECONNECT_TIMEOUT' in r.err and 1.4 < time.monotonic() - t0 < 5, r
    finally:
        s.close()


def test_empty_reply_to_a_read_only_request_is_sent_again_once(cenv, grid_state, service_back):
    from testgrid import grid
    log = _rc_service_log(grid_state)
    grid.set_faults(service_back, {'pwd': 'once:empty', 'rm': 'once:empty'})
    p = run_cli(['pwd'], env=cenv)
    assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\n'), p.stderr
    p = run_cli(['rm -f nothing_here'], env=cenv)  # modifying: never twice, the empty reply is the answer
    assert p.returncode == 70 and one_line_error(p), p
    assert log().count('recv {"command": "rm"') == 1
    grid.set_faults(service_back, {'pwd': 'empty'})  # empty twice: that is the answer
    p = run_cli(['pwd'], env=cenv)
    assert p.returncode == 70 and one_line_error(p), p


@pytest.mark.once  # session and cp logic: the same with either transport
@pytest.mark.parametrize('fault', ['nth:3:drop-after', 'nth:3:drop'])
def test_a_commit_whose_reply_is_lost_is_resolved_in_the_catalogue(cpenv, grid_state, service_back, tmp_path, fault):
    """drop-after: the third commit was registered, its reply lost -> counted once, not
    sent again. drop: it was not registered -> sent again. Either way exactly once."""
    from testgrid import grid
    files = _rc_files(tmp_path / 'src', 6)
    g = grid_dir(grid_state, 'lostcommit_' + fault.split(':')[-1])
    grid.set_faults(service_back, {'commit': fault})
    log = _rc_service_log(grid_state)
    p = cpx(cpenv, 'file:%s/' % (tmp_path / 'src'), g + '@disk:1')
    assert p.returncode == 0 and '6/6 files copied' in p.stdout, p
    wire = log()
    assert 'drop connection after {"command": "commit"' in wire
    assert '"command": "whereis"' in wire  # resolved by asking the catalogue
    entries = _rc_entries(grid_state, g)
    assert sorted(entries) == sorted(g + n for n in files) and all(e[3] == 1 for e in entries.values()), entries
    commits = wire.count('recv {"command": "commit"')
    assert commits == (6 if fault.endswith('drop-after') else 7), wire  # drop-after: registered, not repeated


def _rc_restart_when(workdir, counter, thresholds, proc, down=0.3):
    """In a thread: each time counter() reaches the next threshold, kill the service
    and start it again (while proc runs) -> the list of restart times."""
    from testgrid import grid
    done = []

    def run():
        for limit in thresholds:
            while proc.poll() is None and counter() < limit:
                time.sleep(0.01)
            if proc.poll() is not None:
                return
            grid.restart_service(workdir, down=down)
            done.append(time.monotonic())
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


@pytest.mark.once  # session and cp logic: the same with either transport
def test_chaos_service_restarted_three_times_during_upload_and_download(cpenv, grid_state, service_back, tmp_path):
    n = 500
    files = _rc_files(tmp_path / 'src', n)
    g = grid_dir(grid_state, 'chaos')
    # upload: the service dies three times while the catalogue fills up
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, ALIEN, 'cp', 'file:%s/' % (tmp_path / 'src'), g], env=cpenv,
                            cwd=cpenv['PWD'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer, kills = _rc_restart_when(service_back, lambda: len(_rc_entries(grid_state, g)), (50, 200, 350), proc)
    out, err = proc.communicate(timeout=240)
    killer.join(30)
    up_time = time.monotonic() - t0
    assert len(kills) == 3, (kills, out, err)
    assert proc.returncode == 0 and '%d/%d files copied' % (n, n) in out, err
    # one line when lost, one when back (a loss the client only meets once the service
    # is up again is mended by the first attempt, silently)
    assert 1 <= err.count('connection back after') == err.count(' lost (') <= 3, err
    entries = _rc_entries(grid_state, g)
    assert len(entries) == n and sorted(entries) == sorted(g + name for name in files)
    for name, data in files.items():
        size, md5, guid, nrep = entries[g + name]
        assert (size, md5, nrep) == (len(data), hashlib.md5(data).hexdigest(), 2), name
    # download: three more deaths while the files arrive
    dst = tmp_path / 'back'
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, ALIEN, 'cp', g, 'file:%s/' % dst], env=cpenv, cwd=cpenv['PWD'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrived = lambda: sum(len(fs) for _, _, fs in os.walk(str(dst)))  # noqa: E731
    killer, kills = _rc_restart_when(service_back, arrived, (50, 200, 350), proc)
    out, err = proc.communicate(timeout=240)
    killer.join(30)
    down_time = time.monotonic() - t0
    assert proc.returncode == 0 and '%d/%d files copied' % (n, n) in out, err
    assert len(kills) == 3 and 1 <= err.count('connection back after') == err.count(' lost (') <= 3, (kills, err)
    got = {}
    for root, _, fs in os.walk(str(dst)):
        for f in fs:
            full = os.path.join(root, f)
            got[os.path.relpath(full, str(dst))] = open(full, 'rb').read()
    assert got == files  # every file, verified, and nothing else (no part files)
    print('chaos: upload %.1f s, download %.1f s (%d restarts during the download)' % (up_time, down_time, len(kills)))


@pytest.mark.once  # session and cp logic: the same with either transport
def test_reconnect_budget_runs_out_mid_upload(cpenv, grid_state, service_back, tmp_path):
    from testgrid import grid
    n = 60
    files = _rc_files(tmp_path / 'src', n)
    g = grid_dir(grid_state, 'budget')
    env = dict(cpenv, ALIENPY_RECONNECT_TIMEOUT='2')
    grid.set_faults(service_back, {'commit': 'delay:0.05'})  # (so the service dies mid-copy, not after it)
    proc = subprocess.Popen([sys.executable, ALIEN, 'cp', '-json', 'file:%s/' % (tmp_path / 'src'), g + '@disk:1'],
                            env=env, cwd=cpenv['PWD'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and len(_rc_entries(grid_state, g)) < 10:
        time.sleep(0.01)
    t0 = time.monotonic()  # (before the kill: stopping the service can take a while under load)
    grid.stop_service(service_back)  # for good
    stopped = time.monotonic() - t0
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 107 and 2 <= elapsed < 15, (proc.returncode, elapsed, stopped, err)
    assert 'ALIENPY_RECONNECT_TIMEOUT' in err and 'not attempted' in err.splitlines()[-1], err
    reply = json.loads(out)
    rows = reply['results']
    assert sorted(r['src'] for r in rows) == sorted(str(tmp_path / 'src' / name) for name in files)
    by_state = {}
    for r in rows:
        by_state.setdefault(r['state'], []).append(r)
    assert set(by_state) <= {'copied', 'failed', 'not attempted'} and by_state.get('copied'), by_state.keys()
    assert reply['metadata']['copied'] == str(len(by_state['copied'])) and reply['metadata']['exitcode'] == '107'
    # nothing half-done: every copied file is in the catalogue, complete; an entry the
    # client could not confirm (its commit's reply died with the service) is reported
    # failed as unknown, and it is complete too (a re-run finds it already present)
    entries = _rc_entries(grid_state, g)
    unsure = dict((r['dst'], r) for r in by_state.get('failed', []) if 'unknown' in r.get('error', ''))
    assert set(r['dst'] for r in by_state['copied']) <= set(entries) <= set(r['dst'] for r in by_state['copied']) | set(unsure)
    src_of = dict((r['dst'], r['src']) for r in rows)
    for lfn, (size, md5, guid, nrep) in entries.items():
        data = files[os.path.relpath(src_of[lfn], str(tmp_path / 'src'))]
        assert (size, md5, nrep) == (len(data), hashlib.md5(data).hexdigest(), 1), lfn


@pytest.mark.once  # session and cp logic: the same with either transport
def test_download_finishes_from_the_other_replica_when_an_se_dies_mid_transfer(cpenv, grid_state, service_back,
                                                                              tmp_path):
    from testgrid import grid
    data = os.urandom(1 << 20) * 96
    src = write(tmp_path / 'big.bin', data)
    g = grid_dir(grid_state, 'sedeath')
    assert cpx(cpenv, 'file:' + src, g + 'big.bin@disk:2').returncode == 0
    os.unlink(src)
    s = alien.Session(environ=cpenv)
    first = s.request('access', ['read', g + 'big.bin'], nomsg=True).results[0]['se']
    s.close()
    se = [x for x in grid.load_state(service_back)['ses'] if x['name'] == first][0]
    dst = tmp_path / 'out'
    dst.mkdir()
    proc = subprocess.Popen([sys.executable, ALIEN, 'cp', g + 'big.bin', 'file:%s/' % dst], env=cpenv,
                            cwd=cpenv['PWD'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        part = None
        while proc.poll() is None and part is None:
            names = [n for n in os.listdir(str(dst)) if 'alienpy-part' in n]
            part = names[0] if names else None
        assert part, 'no transfer seen'
        os.kill(se['pid'], signal.SIGSTOP)  # frozen mid-transfer, then killed
        size = os.path.getsize(str(dst / part)) if os.path.exists(str(dst / part)) else 0
        os.kill(se['pid'], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert size < len(data)
        assert proc.returncode == 0 and '1/1 files copied' in out, err
        assert hashlib.md5(open(str(dst / 'big.bin'), 'rb').read()).digest() == hashlib.md5(data).digest()
        assert os.listdir(str(dst)) == ['big.bin']
    finally:
        grid.stop_se(service_back, first)
        grid.start_se(service_back, first)


@pytest.mark.once  # session and cp logic: the same with either transport
def test_shell_keeps_cwd_and_history_across_a_reconnect(cenv, grid_state, service_back):
    from testgrid import grid
    p = spawn_shell(cenv)
    p.sendline('mkdir -p rc_shell; cd rc_shell')
    p.expect(PROMPT)
    grid.restart_service(service_back, down=1.0)
    assert shell_cmd(p, 'pwd')[-1] == grid_state['home'] + 'rc_shell/'
    assert shell_cmd(p, 'cd ..; cd -; pwd')[-1] == grid_state['home'] + 'rc_shell/'
    assert shell_end(p) == 0
    history = open(os.path.join(cenv['HOME'], '.alienpy_history')).read()
    assert 'cd rc_shell' in history and 'cd ..; cd -; pwd' in history


# The test service behaves like the real endpoint (testgrid/jcentral.py, "the real
# endpoint"): one commander per session; a message that arrives after the hand-off
# while a command still runs overwrites its arguments and shares its output. The
# tests make commands slower than the hand-off, scaled down from the real 1 s with
# the delays in proportion; the client's ALIENPY_SLOW_REPLY is scaled alike.
RACE_HANDOFF = 0.05

RACE_SLOW = {'handoff': RACE_HANDOFF, 'queue_delay': [1.2 * RACE_HANDOFF, 1.5 * RACE_HANDOFF]}


def _race_catalogue_problems(grid_state, g, files):
    """What is wrong in the catalogue under g against the local files: an entry whose
    size or md5 is not its file's, a replica missing or holding other bytes, an
    entry that should not be there."""
    db = sqlite3.connect(os.path.join(grid_state['workdir'], 'catalogue.sqlite'), timeout=10)
    try:
        rows = db.execute("SELECT lfn, size, md5, guid FROM entries WHERE type = 'f' AND lfn LIKE ?",
                          (g + '%',)).fetchall()
        reps = {r[0]: db.execute('SELECT se, pfn FROM replicas WHERE guid = ?', (r[3],)).fetchall() for r in rows}
    finally:
        db.close()
    datadir = {se['name']: se['datadir'] for se in grid_state['ses']}
    problems = []
    for lfn, size, md5, guid in rows:
        data = files.get(lfn[len(g):])
        if data is None:
            problems.append('%s: not one of ours' % lfn)
            continue
        if (size, md5) != (len(data), hashlib.md5(data).hexdigest()):
            problems.append('%s: entry of another file' % lfn)
        if not reps[lfn]:
            problems.append('%s: no replica' % lfn)
        for se, pfn in reps[lfn]:
            path = os.path.join(datadir[se], pfn.split('//', 2)[2].lstrip('/'))
            try:
                got = open(path, 'rb').read()
            except OSError:
                problems.append('%s: replica on %s missing' % (lfn, se))
                continue
            if got != data:
                other = [k for k, v in files.items() if v == got]
                problems.append('%s: replica on %s holds %s' % (lfn, se, other or 'other bytes'))
    return problems


def _race_files(root, n, size=700):
    """n files of random bytes (f000.bin ...) in two directories -> {relative name: bytes}."""
    files = {}
    for i in range(n):
        name = '%s/f%03d.bin' % ('ab'[i % 2], i)
        files[name] = os.urandom(size + i)
        write(os.path.join(str(root), name), files[name])
    return files


def _race_local(root):
    got = {}
    for d, _, fs in os.walk(str(root)):
        for f in fs:
            full = os.path.join(d, f)
            got[os.path.relpath(full, str(root))] = open(full, 'rb').read()
    return got


# ===== a slow, throttled, racing service =====


@pytest.mark.once  # cp and session logic: the same with either transport
@pytest.mark.parametrize('case', ['slow', 'throttled', 'checks-only', 'restart', 'parallel'])
def test_cp_on_a_slow_racing_service_puts_no_byte_under_a_wrong_name(cpenv, grid_state, service_conf,
                                                                     service_back, tmp_path, case):
    """40 files up and back down while every command is slower than the hand-off
    (slow), under the 2024 throttle (throttled), with random delays and the client
    pipelining through them on its checks alone (checks-only), with the service
    killed and restarted in the middle (restart), with -T 4 / -y 2 (parallel):
    every file arrives and no entry, replica or downloaded file holds another's bytes."""
    from testgrid import grid
    n = 40
    files = _race_files(tmp_path / 'src', n)
    g = grid_dir(grid_state, 'race_' + case)
    env = client_env(grid_state, tmp_path, workdir=True, ALIENPY_SLOW_REPLY=str(RACE_HANDOFF / 2))
    conf = dict(RACE_SLOW)
    if case == 'throttled':    # a batch node after ~120 logins: every command sleeps over the hand-off
        conf = {'handoff': RACE_HANDOFF, 'throttle': True, 'throttle_start': 1200, 'throttle_scale': 0.05}
    elif case == 'checks-only':   # some commands slow, some quick; the client never slows down itself
        conf = {'handoff': RACE_HANDOFF, 'queue_delay': [0, 1.5 * RACE_HANDOFF], 'work_delay': [0, 0.3 * RACE_HANDOFF]}
        env['ALIENPY_SLOW_REPLY'] = '100'
    extra = ['-T', '4'] if case == 'parallel' else []
    cpenv_run = lambda *a: subprocess.Popen([sys.executable, ALIEN, 'cp'] + extra + list(a), env=env,  # noqa: E731
                                            cwd=env['PWD'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
    service_conf(conf)
    proc = cpenv_run('file:%s/' % (tmp_path / 'src'), g)
    if case == 'restart':
        killer, kills = _rc_restart_when(service_back, lambda: len(_rc_entries(grid_state, g)), (n // 2,), proc)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and '%d/%d files copied' % (n, n) in out, (out, err)
    assert _race_catalogue_problems(grid_state, g, files) == []
    assert sorted(_rc_entries(grid_state, g)) == sorted(g + k for k in files)
    if case == 'restart':
        killer.join(30)
        assert kills, err
    if case == 'parallel':
        extra = ['-y', '2']
    proc = cpenv_run(g, 'file:%s/' % (tmp_path / 'back'))
    if case == 'restart':
        arrived = lambda: len(_race_local(tmp_path / 'back')) if (tmp_path / 'back').exists() else 0  # noqa: E731
        killer, kills = _rc_restart_when(service_back, arrived, (n // 2,), proc)
    out, err = proc.communicate(timeout=300)
    if case == 'restart':   # (a restart still under way would race the fixture's own)
        killer.join(30)
    assert proc.returncode == 0 and '%d/%d files copied' % (n, n) in out, (out, err)
    assert _race_local(tmp_path / 'back') == files


@pytest.mark.once  # cp and session logic: the same with either transport
def test_cp_of_1000_files_on_a_slow_racing_service(cpenv, grid_state, service_conf, tmp_path):
    """1,000 files up and down with every command slower than the hand-off."""
    n = 1000
    files = _race_files(tmp_path / 'src', n, size=100)
    g = grid_dir(grid_state, 'race_1000')
    service_conf({'handoff': 0.005, 'queue_delay': [0.006, 0.008]})
    env = client_env(grid_state, tmp_path, workdir=True, ALIENPY_SLOW_REPLY='0.0025')
    p = cpx(env, '-quiet', 'file:%s/' % (tmp_path / 'src'), g + '@disk:1', timeout=600)
    assert p.returncode == 0 and not p.stdout, p
    assert _race_catalogue_problems(grid_state, g, files) == []
    assert len(_rc_entries(grid_state, g)) == n
    p = cpx(env, '-quiet', g, 'file:%s/' % (tmp_path / 'back'), timeout=600)
    assert p.returncode == 0, p.stderr
    assert _race_local(tmp_path / 'back') == files


_RACE_EXAMPLES = itertools.count()


@pytest.mark.once  # cp and session logic: the same with either transport
@settings(max_examples=6, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
@given(handoff=st.sampled_from([0.03, 0.05]), before=st.floats(0.5, 2), during=st.floats(0, 1),
       checks_only=st.booleans(), n=st.integers(10, 30))
def test_property_no_wrong_result_is_ever_used(cpenv, grid_state, service_conf, tmp_path, handoff, before,
                                               during, checks_only, n):
    """Random delays of 0-2 hand-offs before and during every command, the client
    slowing down on slow replies or pipelining on its checks alone: on one session,
    cp up, find, ls, rm of several files, cp -input and cp down give exactly the truth."""
    k = next(_RACE_EXAMPLES)
    root = tmp_path / ('ex%d' % k)
    files = _race_files(root / 'src', n)
    g = grid_dir(grid_state, 'prop%d' % k)
    service_conf({'handoff': handoff, 'queue_delay': [0, before * handoff], 'work_delay': [0, during * handoff]})
    env = client_env(grid_state, tmp_path, workdir=True,
                     ALIENPY_SLOW_REPLY=str(100 if checks_only else handoff / 2))
    s = alien.Session(environ=env)
    try:
        r = s.run('cp -quiet file:%s/ %s' % (root / 'src', g))
        assert r.exitcode == 0, r
        assert _race_catalogue_problems(grid_state, g, files) == []
        r = s.run('find %s .bin' % g)
        assert r.exitcode == 0 and sorted(r.out.split()) == sorted(g + x for x in files), r
        r = s.run('ls %sa' % g)
        assert r.exitcode == 0 and sorted(r.out.split()) == sorted(x[2:] for x in files if x[0] == 'a'), r
        gone = sorted(files)[:2]
        r = s.run('rm ' + ' '.join(g + x for x in gone))
        assert r.exitcode == 0, r
        assert sorted(_rc_entries(grid_state, g)) == sorted(g + x for x in files if x not in gone)
        left = sorted(x for x in files if x not in gone)
        listing = root / 'input.txt'
        listing.write_text(''.join('%s%s file:%s/in/%s\n' % (g, x, root, x) for x in left))
        r = s.run('cp -quiet -input %s' % listing)
        assert r.exitcode == 0, r
        assert _race_local(root / 'in') == {x: files[x] for x in left}
        r = s.run('cp -quiet %s file:%s/down/' % (g, root))
        assert r.exitcode == 0, r
        assert _race_local(root / 'down') == {x: files[x] for x in left}
    finally:
        s.close()
