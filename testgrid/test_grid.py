"""The test grid itself: its service, its storage elements, its relays and faults."""
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

import alien
from testgrid.tools import tool
from conftest import (
    CLIENT_VARS, KEEP_VARS, REPO, _TG_DIR, _tg_call, _tg_ctx, _tg_ok, _tg_ws, _tg_xrdcp, run_cli)


# The test grid's own tests talk to it with their own clients (websockets, xrdcp, alienpy)
# or run alien.py only to exercise the grid: the client's transport is not what they test.
pytestmark = pytest.mark.once


# ===== the service: replies, errors, TLS, faults; the SEs; the reference client on the grid =====


def test_grid_state_and_credentials(grid_state):
    st = grid_state
    assert st['home'] == '/localhost/localdomain/user/j/jalien/'
    env = st['env']
    for k in ('ALIENPY_JCENTRAL', 'ALIENPY_JCENTRAL_PORT', 'X509_CERT_DIR', 'X509_USER_CERT',
              'X509_USER_KEY', 'JALIEN_TOKEN_CERT', 'JALIEN_TOKEN_KEY'):
        assert k in env
    assert env['ALIENPY_JCENTRAL'] == '127.0.0.1'
    for k in ('X509_USER_CERT', 'X509_USER_KEY', 'JALIEN_TOKEN_CERT', 'JALIEN_TOKEN_KEY'):
        assert env[k].startswith(_TG_DIR), env[k]
        assert os.path.isfile(env[k])
    for k in ('X509_USER_KEY', 'JALIEN_TOKEN_KEY'):
        assert os.stat(env[k]).st_mode & 0o077 == 0
        with open(env[k]) as f:
            assert f.readline().strip() == '-----BEGIN RSA PRIVATE KEY-----'
    assert any(n.endswith('.0') for n in os.listdir(env['X509_CERT_DIR']))
    assert [se['name'] for se in st['ses']] == ['LOCALHOST::JTESTSITE::FIRSTSE',
                                                'LOCALHOST::JTESTSITE::SECONDSE']
    for se in st['ses']:
        assert se['url'] == 'root://127.0.0.1:%d//' % se['port']
        assert os.path.isdir(se['datadir'])
    from testgrid import grid
    t = time.time()
    again = grid.start(_TG_DIR)          # already running: returns at once, same grid
    assert time.time() - t < 1
    assert again['service']['port'] == st['service']['port']


def _tg_all_strings(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _tg_all_strings(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_tg_all_strings(v) for v in obj)
    return isinstance(obj, str)


def test_pwd_reply_shape(grid_state, dialect):
    with _tg_ws(grid_state) as c:
        r = _tg_call(c, 'pwd')
    assert set(r) == {'metadata', 'results'}
    assert _tg_all_strings(r)
    md = r['metadata']
    assert md == {'exitcode': '0', 'error': '', 'user': 'jalien',
                  'currentdir': grid_state['home']}
    assert r['results'] == [{'pwd': grid_state['home'], 'message': grid_state['home']}]


def test_slashes_may_arrive_escaped(grid_state, dialect):
    with _tg_ws(grid_state) as c:
        c.send(json.dumps({'command': 'pwd', 'options': []}))
        raw = c.recv(timeout=10)
    assert '\\/localhost\\/' in raw          # valid JSON, exercised on purpose
    assert json.loads(raw)['results'][0]['pwd'] == grid_state['home']


def test_cwd_is_per_connection(grid_state, dialect, tg_dir):
    with _tg_ws(grid_state) as a, _tg_ws(grid_state) as b:
        r = _tg_call(a, 'cd', [tg_dir])
        assert _tg_ok(r) == [] and r['metadata']['currentdir'] == tg_dir
        assert _tg_ok(_tg_call(a, 'pwd'))[0]['pwd'] == tg_dir
        assert _tg_ok(_tg_call(b, 'pwd'))[0]['pwd'] == grid_state['home']
        _tg_ok(_tg_call(a, 'cd', ['..']))
        assert _tg_call(a, 'pwd')['metadata']['currentdir'] == grid_state['home']
        _tg_ok(_tg_call(a, 'cd', ['/']))
        assert _tg_call(a, 'pwd')['results'][0]['pwd'] == '/'
        _tg_ok(_tg_call(a, 'cd'))
        assert _tg_call(a, 'pwd')['results'][0]['pwd'] == grid_state['home']
    for d in ('/', '/localhost/', '/localhost/localdomain/', '/localhost/localdomain/user/',
              '/localhost/localdomain/user/j/'):
        with _tg_ws(grid_state) as c:
            assert _tg_call(c, 'cd', [d])['metadata']['currentdir'] == d


def test_commandlist_format(grid_state, dialect):
    newer = ('listCEs', 'guidinfo', 'archiveList', 'jobListMatch', 'listpartitions', 'setCEstatus', 'resyncLDAP',
             'optimiserLogs', 'echo')
    with _tg_ws(grid_state) as c:
        res = _tg_ok(_tg_call(c, 'commandlist'))
        for n in newer:       # the 2021 service has none of them
            r = _tg_call(c, n, ['x'])
            if dialect == '2021':
                assert r['metadata']['error'] == 'No such file or directory : Command [%s] not found!' % n
            else:
                assert r['metadata']['exitcode'] != '2' or 'not found' not in r['metadata']['error'], r
    names = res[0]['message'].split('\n')
    assert all((n in names) == (dialect != '2021') for n in newer), names
    assert res[0]['commandlist'] == names[0]
    assert [r['commandlist'] for r in res] == names
    assert all(set(r) == {'commandlist'} for r in res[1:])
    for n in ('pwd', 'cd', 'ls', 'mkdir', 'rmdir', 'rm', 'mv', 'touch', 'stat', 'find',
              'whoami', 'whereis', 'access', 'commit', 'token', 'listSEs', 'version',
              'commandlist', 'type'):
        assert n in names


@pytest.mark.parametrize('command,options,code,error', [
    ('ls', ['/nonexistent'], '2', 'No such file or directory : /nonexistent'),
    ('cd', ['/nonexist'], '2', 'No such file or directory : /nonexist'),
    ('ls', ['-z'], '22', 'Invalid argument : z is not a recognized option'),
    ('ls', ['-l /'], '22', None),
    ('bogus', [], '2', 'No such file or directory : Command [bogus] not found!'),
    ('rm', ['/localhost/localdomain/user/j/jalien/no_such_file'], '5',
     'Input/output error : Failed to remove [/localhost/localdomain/user/j/jalien/no_such_file]'),
    ('access', ['write-once', '/localhost/localdomain/user/j/jalien/'], '77',
     'File descriptor in bad state : No write PFNs'),
    ('access', ['read', '/localhost/localdomain/user/j/jalien/nothing_here'], '77', None),
    ('commit', ['-----BEGIN SEALED CIPHER-----bogus-----END SEALED ENVELOPE-----', '5',
                '/localhost/localdomain/user/j/jalien/never', '644', '0', 'root://x//y',
                'LOCALHOST::JTESTSITE::FIRSTSE', 'guid', 'md5'], '53', None),
])
def test_error_codes(grid_state, dialect, command, options, code, error):
    with _tg_ws(grid_state) as c:
        r = _tg_call(c, command, options)
    md = r['metadata']
    assert md['exitcode'] == code, md
    if error is not None:
        assert md['error'] == error
    assert md['user'] == 'jalien' and md['currentdir'] == grid_state['home']
    assert _tg_all_strings(r)


def test_cp_refused_and_bad_json(grid_state, dialect):
    cp = "'cp' grid command is not implemented. Please use native client's Cp() method"
    with _tg_ws(grid_state) as c:
        # refused before any command runs: 2021 says -1 and nothing else, the newer one 22 with
        # who and where (in that key order)
        for raw, error in ((json.dumps({'command': 'cp', 'options': ['a', 'b']}), cp),
                           ('{"command": "ls", "options": [', {'2021': 'Incoming JSON not ok',
                                                                '2024': 'Incoming JSON is not ok'}[dialect])):
            c.send(raw)
            text = c.recv(timeout=10)
            if dialect == '2021':
                assert text == '{"metadata":{"exitcode":"-1","error":%s},"results":[]}' % json.dumps(error)
            else:
                assert json.loads(text) == {'metadata': {'exitcode': '22', 'error': error, 'user': 'jalien',
                                                             'currentdir': grid_state['home']}, 'results': []}
                assert list(json.loads(text)['metadata']) == ['exitcode', 'error', 'user', 'currentdir']
        # the connection survives both; numbers are accepted as options
        r = _tg_call(c, 'ls', [1])
        assert r['metadata']['exitcode'] == '2'
        assert r['metadata']['error'] == 'No such file or directory : 1'


def test_options_as_string_drops_connection(grid_state, dialect):
    from websockets.exceptions import ConnectionClosed
    with _tg_ws(grid_state) as c:
        c.send('{"command": "ls", "options": "-l"}')
        with pytest.raises((ConnectionClosed, OSError, EOFError)):
            c.recv(timeout=5)


def test_request_without_command_gets_empty_frame_then_close(grid_state, dialect):
    from websockets.exceptions import ConnectionClosed
    with _tg_ws(grid_state) as c:
        c.send('{"options": []}')
        assert c.recv(timeout=5) == ''
        with pytest.raises(ConnectionClosed) as e:
            c.recv(timeout=5)
        assert e.value.rcvd.code == 1002          # protocol error, on both code bases


def test_output_flags_stripped_anywhere(grid_state, dialect):
    with _tg_ws(grid_state) as c:
        assert _tg_ok(_tg_call(c, 'pwd', ['-nokeys'])) == [{'message': grid_state['home']}]
        assert _tg_ok(_tg_call(c, 'pwd', ['-nomsg'])) == [{'pwd': grid_state['home']}]
        res = _tg_ok(_tg_call(c, 'ls', ['-F', grid_state['home'], '-nomsg']))
        assert all('message' not in r for r in res)
        res = _tg_ok(_tg_call(c, 'ls', ['-help']))
        assert res and 'ls' in res[0]['message']


def test_mkdir_ls_touch_mv_rm(grid_state, dialect, tg_dir):
    with _tg_ws(grid_state) as c:
        r = _tg_call(c, 'mkdir', [tg_dir + 'x/y/z'])
        assert r['metadata']['exitcode'] == '2'
        assert _tg_ok(_tg_call(c, 'mkdir', ['-p', tg_dir + 'x/y/z'])) == []
        assert _tg_ok(_tg_call(c, 'mkdir', ['-p', tg_dir + 'x/y/z'])) == []
        assert _tg_ok(_tg_call(c, 'mkdir', [tg_dir + 'x/y/z'])) == []      # an existing directory: silent
        assert _tg_ok(_tg_call(c, 'touch', [tg_dir + 'f1.txt', tg_dir + '.hidden'])) == []
        names = [r['name'] for r in _tg_ok(_tg_call(c, 'ls', [tg_dir]))]
        assert names == ['f1.txt', 'x']
        res = _tg_ok(_tg_call(c, 'ls', ['-F', '-a', tg_dir]))
        assert [r['name'] for r in res] == ['.hidden', 'f1.txt', 'x/']
        assert res[2]['path'] == tg_dir + 'x//'          # -F adds its slash to the path too
        assert res[1]['path'] == tg_dir + 'f1.txt'
        long = _tg_ok(_tg_call(c, 'ls', ['-l', tg_dir + 'f1.txt']))[0]
        assert list(long) == ['permissions', 'user', 'group', 'size', 'ctime', 'name', 'path', 'message']
        assert long['permissions'] == '-rwxr-xr-x' and long['size'] == '0'
        ctime = int(long['ctime']) / (1 if dialect == '2021' else 1000)     # unix seconds / ms
        assert abs(ctime - time.time()) < 600 and long['ctime'].endswith('' if dialect == '2021' else '000')
        assert re.match(r'^-rwxr-xr-x     jalien   jalien            0 '
                            r'[A-Z][a-z]{2} \d\d \d\d:\d\d    f1\.txt$', long['message'])
        dl = _tg_ok(_tg_call(c, 'ls', ['-l', '-F', tg_dir]))
        assert dl[-1]['message'].startswith('drwxr-xr-x     jalien   jalien ')
        assert dl[-1]['message'].endswith('    x/')
        r = _tg_call(c, 'mv', [tg_dir + 'no_such', tg_dir + 'x/'])
        assert (r['metadata']['exitcode'], r['metadata']['error']) == {
            '2021': ('121', 'Remote I/O error : java.lang.NullPointerException'),
            '2024': ('22', 'Invalid argument : Source cannot be found')}[dialect]
        assert _tg_ok(_tg_call(c, 'mv', [tg_dir + 'f1.txt', tg_dir + 'x/f2.txt'])) == []
        assert _tg_call(c, 'ls', [tg_dir + 'f1.txt'])['metadata']['exitcode'] == '2'
        assert _tg_ok(_tg_call(c, 'ls', [tg_dir + 'x/f2.txt']))[0]['name'] == 'f2.txt'
        assert _tg_ok(_tg_call(c, 'mv', [tg_dir + 'x', tg_dir + 'w'])) == []
        assert _tg_ok(_tg_call(c, 'ls', [tg_dir + 'w/y/']))[0]['name'] == 'z'
        assert _tg_call(c, 'cd', [tg_dir + 'w/f2.txt'])['metadata']['exitcode'] == '20'
        r = _tg_call(c, 'rmdir', [tg_dir + 'w'])
        assert r['metadata']['exitcode'] != '0'
        assert _tg_ok(_tg_call(c, 'rm', [tg_dir + 'w/f2.txt'])) == []
        _tg_ok(_tg_call(c, 'cd', [tg_dir + 'w/y']))
        r = _tg_call(c, 'rm', ['-rf', tg_dir + 'w'])
        assert r['metadata']['exitcode'] == '22'
        assert r['metadata']['error'] == 'Invalid argument : Cannot delete the directory you are in'
        _tg_ok(_tg_call(c, 'cd', [tg_dir]))
        assert _tg_ok(_tg_call(c, 'rm', ['-rf', 'w'])) == []
        assert _tg_call(c, 'ls', [tg_dir + 'w'])['metadata']['exitcode'] == '2'
        # outside the home jalien may not write
        r = _tg_call(c, 'mkdir', ['-p', '/alice/cern.ch/test_x'])
        assert r['metadata']['exitcode'] != '0'


def test_stat_type_whoami_version(grid_state, dialect, tg_dir):
    with _tg_ws(grid_state) as c:
        _tg_ok(_tg_call(c, 'touch', [tg_dir + 'e.txt']))
        st = _tg_ok(_tg_call(c, 'stat', [tg_dir + 'e.txt']))[0]
        path = 'file' if dialect == '2021' else 'lfn'      # the path's key: file (2021), lfn (newer)
        assert list(st) == ['message', path, 'type', 'owner', 'gowner', 'perm', 'ctime', 'size', 'md5', 'guid', 'mtime']
        assert st[path] == tg_dir + 'e.txt' and len(st['ctime']) == {'2021': 10, '2024': 13}[dialect]
        assert (st['type'], st['owner'], st['gowner'], st['perm'], st['size']) == \
            ('f', 'jalien', 'jalien', '755', '0')
        assert st['md5'] == 'd41d8cd98f00b204e9800998ecf8427e'
        lines = st['message'].split('\n')
        assert lines[0] == 'File: ' + tg_dir + 'e.txt' and 'Type: f' in lines
        assert 'Owner: jalien:jalien' in lines and 'MD5: ' + st['md5'] in lines
        sd = _tg_ok(_tg_call(c, 'stat', [tg_dir]))[0]
        assert sd['type'] == 'd' and list(sd) == ['message', path, 'type', 'owner', 'gowner', 'perm', 'ctime']
        assert _tg_call(c, 'stat', ['/fail/no/valid'])['metadata']['exitcode'] == '2'
        t = _tg_ok(_tg_call(c, 'type', [tg_dir + 'e.txt']))[0]
        assert t['type'] == 'file' and t['message'] == 'file'
        assert _tg_ok(_tg_call(c, 'type', [tg_dir]))[0]['type'] == 'directory'
        w = _tg_ok(_tg_call(c, 'whoami'))[0]
        assert list(w) == ['username', 'role', 'roles', 'message', 'certificate_expires', 'certificate_dn'] + \
            ['connected_from'] * (dialect != '2021') + ['homedir']
        assert w['username'] == 'jalien' and w['message'] == 'jalien'
        assert w['certificate_dn'] == 'CN=jalien, O=JAliEn, C=CH'
        assert w['homedir'] == grid_state['home'] and w.get('connected_from', '127.0.0.1') == '127.0.0.1'
        assert int(w['certificate_expires']) > time.time()
        v = _tg_ok(_tg_call(c, 'version'))[0]
        assert list(v) == ['message', 'tag', 'git_hash', 'compiled_at', 'compiled_by']
        assert v['tag'] == {'2021': '', '2024': '1.8.6'}[dialect]


def test_find(grid_state, dialect, tg_dir):
    from testgrid import grid
    grid.populate(_TG_DIR, tg_dir + 'many', 50)
    with _tg_ws(grid_state) as c:
        _tg_ok(_tg_call(c, 'mkdir', ['-p', tg_dir + 'sub/.hid']))
        _tg_ok(_tg_call(c, 'touch', [tg_dir + 'sub/a.log', tg_dir + 'sub/b.root',
                                      tg_dir + 'sub/.hid/c.log']))
        res = _tg_ok(_tg_call(c, 'find', [tg_dir + 'sub', '.log']))
        assert res == [{'lfn': tg_dir + 'sub/a.log', 'message': tg_dir + 'sub/a.log'}]
        res = _tg_ok(_tg_call(c, 'find', ['-a', tg_dir + 'sub', '*.log']))
        assert [r['lfn'] for r in res] == [tg_dir + 'sub/.hid/c.log', tg_dir + 'sub/a.log']
        res = _tg_ok(_tg_call(c, 'find', [tg_dir + 'sub/*.root']))
        assert [r['lfn'] for r in res] == [tg_dir + 'sub/b.root']
        res = _tg_ok(_tg_call(c, 'find', ['-r', tg_dir + 'sub', r'.*/[ab]\.(log|root)$']))
        assert len(res) == 2
        res = _tg_ok(_tg_call(c, 'find', ['-f', '-a', '-s', tg_dir + 'sub/', '*']))
        assert len(res) == 3
        for r in res:
            for k in ('lfn', 'size', 'md5', 'ctime', 'type', 'owner', 'gowner', 'perm', 'guid'):
                assert k in r, k
            assert len(r['ctime']) == {'2021': 10, '2024': 13}[dialect]       # s / ms, as ls -l and stat
        # -c (count), -e (exclude) and -x - (the collection on screen) came after 2021
        r = _tg_call(c, 'find', ['-e', 'b.', tg_dir + 'sub', '*'])
        if dialect == '2021':
            assert (r['metadata']['exitcode'], r['metadata']['error']) == ('22', 'Invalid argument : e is not a recognized option')
            assert _tg_call(c, 'find', ['-c', tg_dir + 'sub', '*'])['metadata']['exitcode'] == '22'
        else:
            assert [x['lfn'] for x in _tg_ok(r)] == [tg_dir + 'sub/a.log']
            xml = _tg_ok(_tg_call(c, 'find', ['-x', '-', tg_dir + 'sub', '*']))[0]['message']
            assert xml.count('<file name=') == 2 and 'lfn="%ssub/b.root"' % tg_dir in xml
        assert _tg_ok(_tg_call(c, 'find', ['-x', tg_dir + 'coll', tg_dir + 'sub', '*'])) == []
        r = _tg_call(c, 'find', ['-l', tg_dir, '*'])
        assert r['metadata']['error'] == "Invalid argument : Cannot parse argument '%s' of option l" % tg_dir
        res = _tg_ok(_tg_call(c, 'find', ['-l', '10', '-o', '5', tg_dir + 'many', '*']))
        assert [r['lfn'].rsplit('/', 1)[1] for r in res] == \
            ['file_%06d.dat' % i for i in range(5, 15)]
        r = _tg_call(c, 'find', [tg_dir + 'sub/a.log', '*'])
        assert r['metadata']['exitcode'] == '20'
        assert r['metadata']['error'] == 'Not a directory : ' + tg_dir + 'sub/a.log'
        assert _tg_call(c, 'find', ['-q', tg_dir, '*'])['metadata']['exitcode'] == '22'


def test_listses(grid_state, dialect):
    with _tg_ws(grid_state) as c:
        res = _tg_ok(_tg_call(c, 'listSEs'))
    assert [r['seName'] for r in res] == [se['original'] for se in grid_state['ses']]
    assert [r['seName'].upper() for r in res] == [se['name'] for se in grid_state['ses']]
    for r, se in zip(res, grid_state['ses']):
        for k in ('seNumber', 'totalSpace', 'usedSpace', 'freeSpace', 'fileCount',
                  'demoteRead', 'demoteWrite', 'qos'):
            assert k in r, k
        assert r['endpointUrl'] == se['url']


def test_token_cert_is_accepted(grid_state, dialect, tmp_path):
    with _tg_ws(grid_state) as c:
        r = _tg_ok(_tg_call(c, 'token', ['-nomsg', '-v', '2']))[0]
        assert set(r) == {'tokencert', 'tokenkey'}
        full = _tg_ok(_tg_call(c, 'token'))[0]
    assert r['tokencert'].startswith('-----BEGIN CERTIFICATE-----')
    assert r['tokenkey'].startswith('-----BEGIN RSA PRIVATE KEY-----')
    assert full['message'].startswith('DN: /C=CH/O=JAliEn/OU=token/CN=jalien\nExpires: ')
    cert, key = tmp_path / 'tokencert.pem', tmp_path / 'tokenkey.pem'
    cert.write_text(r['tokencert'])
    key.write_text(r['tokenkey'])
    key.chmod(0o400)
    with _tg_ws(grid_state, str(cert), str(key)) as c:
        w = _tg_ok(_tg_call(c, 'whoami'))[0]
    assert w['username'] == 'jalien'
    assert w['certificate_dn'] == 'CN=jalien, OU=token, O=JAliEn, C=CH'
    # -v 2 days
    assert 1.5 * 86400 < int(w['certificate_expires']) - time.time() < 2.5 * 86400


def test_access_commit_whereis_round_trip(grid_state, dialect, tg_dir, tmp_path):
    data = b'hello test grid\n'
    src = tmp_path / 'up.txt'
    src.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    lfn = tg_dir + 'up.txt'
    with _tg_ws(grid_state) as c:
        res = _tg_ok(_tg_call(c, 'access', ['-s', str(len(data)), '-m', md5, 'write-once', lfn]))
        assert len(res) == 2 and {r['se'] for r in res} == {se['name'] for se in grid_state['ses']}
        for r in res:
            assert set(r) >= {'url', 'envelope', 'guid', 'se', 'tags', 'nSEs', 'md5', 'size'}
            assert r['nSEs'] == '2' and r['tags'] == '[disk]' and r['md5'] == md5
            # the real layout: two armoured blocks, a newline, and the newer service's traffic marks
            assert r['envelope'].startswith('-----BEGIN SEALED CIPHER-----\n')
            assert r['envelope'].endswith('-----END SEALED ENVELOPE-----\n' + {
                '2021': '', '2024': '&scitag.flow=335&eos.app=cliUpload'}[dialect])
            assert re.match(r'^root://127\.0\.0\.1:\d+//\d\d/\d{5}/%s$' % r['guid'], r['url'])
        assert res[0]['guid'] == res[1]['guid']
        # nothing visible before the commit
        assert _tg_call(c, 'ls', [lfn])['metadata']['exitcode'] == '2'
        first = res[0]
        _tg_xrdcp(str(src), first['url'] + '?authz=' + first['envelope'])
        se = [s for s in grid_state['ses'] if s['name'] == first['se']][0]
        with open(se['log'], errors='replace') as f:
            assert 'authz=-----BEGIN SEALED CIPHER-----' in f.read()
        cm = _tg_ok(_tg_call(c, 'commit', [first['envelope'], str(len(data)), lfn, '644', '0',
                                           first['url'], first['se'], first['guid'], md5]))
        assert cm[0]['path'] == lfn and cm[0]['lfn'] == '1' and cm[0]['pfn'] == first['url']
        # committing the same envelope again registers nothing
        again = _tg_call(c, 'commit', [first['envelope'], str(len(data)), lfn, '644', '0',
                                       first['url'], first['se'], first['guid'], md5])
        assert again['metadata']['exitcode'] == '53'
        wh = _tg_ok(_tg_call(c, 'whereis', [lfn]))
        assert [(w['seName'], w['pfn']) for w in wh] == [(first['se'], first['url'])]
        st = _tg_ok(_tg_call(c, 'stat', [lfn]))[0]
        assert (st['size'], st['md5'], st['guid'], st['perm']) == \
            (str(len(data)), md5, first['guid'], '644')
        rd = _tg_ok(_tg_call(c, 'access', ['read', lfn]))
        assert len(rd) == 1 and rd[0]['url'] == first['url'] and rd[0]['nSEs'] == '1'
        assert rd[0]['envelope'].endswith({'2021': '-\n', '2024': '-\n&scitag.flow=330&eos.app=dataAccess'}[dialect])
        assert rd[0]['md5'] == md5 and rd[0]['size'] == str(len(data))
        dst = tmp_path / 'down.txt'
        _tg_xrdcp(rd[0]['url'] + '?authz=' + rd[0]['envelope'], str(dst))
        assert dst.read_bytes() == data
        # write-once of an existing LFN
        r = _tg_call(c, 'access', ['write-once', lfn])
        assert r['metadata']['exitcode'] == '77'
        assert r['metadata']['error'] == 'File descriptor in bad state : No write PFNs'
        assert _tg_ok(_tg_call(c, 'rm', [lfn])) == []
        assert _tg_call(c, 'whereis', [lfn])['metadata']['exitcode'] == '2'


def test_access_specifiers_and_uncommitted_upload(grid_state, dialect, tg_dir):
    first, second = [se['name'] for se in grid_state['ses']]
    lfn = tg_dir + 'never_committed.txt'
    with _tg_ws(grid_state) as c:
        res = _tg_ok(_tg_call(c, 'access', ['-s', '3', 'write-once', lfn, 'disk:1']))
        assert len(res) == 1 and res[0]['nSEs'] == '1'
        res = _tg_ok(_tg_call(c, 'access', ['write-once', lfn, second]))
        assert [r['se'] for r in res] == [second]
        res = _tg_ok(_tg_call(c, 'access', ['write-once', lfn, 'disk:2,!' + first]))
        assert [r['se'] for r in res] == [second]
        res = _tg_ok(_tg_call(c, 'access', ['write-once', lfn, 'disk:5']))
        assert len(res) == 2                                   # capped to the SEs we have
        r = _tg_call(c, 'access', ['write-once', lfn, '!' + first + ',!' + second])
        assert r['metadata']['exitcode'] == '77'
        # no commit: the LFN must not exist
        assert _tg_call(c, 'ls', [lfn])['metadata']['exitcode'] == '2'
        assert _tg_call(c, 'stat', [lfn])['metadata']['exitcode'] == '2'
        assert _tg_ok(_tg_call(c, 'find', [tg_dir, 'never'])) == []


def test_fault_injection(grid_state, dialect, tg_dir):
    from testgrid import grid
    lfn = tg_dir + 'refused.txt'
    with _tg_ws(grid_state) as c:
        res = _tg_ok(_tg_call(c, 'access', ['-s', '1', 'write-once', lfn, 'disk:1']))
        r = res[0]
        grid.set_faults(_TG_DIR, {'commit': 'refuse'})
        try:
            cm = _tg_call(c, 'commit', [r['envelope'], '1', lfn, '644', '0', r['url'], r['se'],
                                        r['guid'], 'x'])
            assert cm['metadata']['exitcode'] == '53'
            grid.set_faults(_TG_DIR, {'pwd': {'exitcode': 121, 'error': 'boom'}})
            assert _tg_call(c, 'pwd')['metadata'] == {
                'exitcode': '121', 'error': 'boom', 'user': 'jalien',
                'currentdir': grid_state['home']}
        finally:
            grid.set_faults(_TG_DIR, None)
        assert _tg_call(c, 'ls', [lfn])['metadata']['exitcode'] == '2'
        cm = _tg_ok(_tg_call(c, 'commit', [r['envelope'], '1', lfn, '644', '0', r['url'],
                                           r['se'], r['guid'], 'x']))
        assert cm[0]['lfn'] == '1'


def test_unmapped_dn_gets_401(grid_state):
    from testgrid import grid
    from websockets.exceptions import InvalidStatus
    cert, key = grid.make_user_cert(_TG_DIR, 'stranger', cn='stranger')
    with pytest.raises(InvalidStatus) as ei:
        with _tg_ws(grid_state, cert, key):
            pass
    assert ei.value.response.status_code == 401


@pytest.mark.parametrize('kind', ['none', 'other-ca', 'expired'])
def test_tls_refuses_bad_client_certs(grid_state, kind):
    from testgrid import grid
    if kind == 'none':
        cert = key = False
    elif kind == 'other-ca':
        cert, key = grid.make_user_cert(_TG_DIR, 'otherca', ca='other')
    else:
        cert, key = grid.make_user_cert(_TG_DIR, 'expired', expired=True)
    # TLS 1.2: the server's alert (handshake failure / unknown ca / certificate expired)
    # ends the client's handshake
    with pytest.raises(ssl.SSLError):
        with _tg_ws(grid_state, cert, key) as c:
            _tg_call(c, 'pwd')


def test_tls12_only(grid_state):
    ctx = _tg_ctx(grid_state)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(('127.0.0.1', grid_state['service']['port']), timeout=5) as s:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s, server_hostname='127.0.0.1')
    ctx = _tg_ctx(grid_state)
    with socket.create_connection(('127.0.0.1', grid_state['service']['port']), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname='127.0.0.1') as t:
            assert t.version() == 'TLSv1.2'


def test_hostname_mismatch_service(grid_state):
    from testgrid import grid
    cert, key = grid.make_host_cert(_TG_DIR, 'wronghost', san=('DNS:wrong.example',))
    port = grid.start_service(_TG_DIR, host_cert=cert, host_key=key)
    # CA-valid certificate: fine without a host name check, refused with one
    with _tg_ws(grid_state, port=port) as c:
        assert _tg_ok(_tg_call(c, 'pwd'))
    with pytest.raises(ssl.SSLCertVerificationError):
        with _tg_ws(grid_state, port=port, check_hostname=True):
            pass
    with _tg_ws(grid_state, check_hostname=True) as c:        # the main one has IP:127.0.0.1
        assert _tg_ok(_tg_call(c, 'pwd'))


def test_stop_and_start_se(grid_state, tmp_path):
    from testgrid import grid
    se = grid_state['ses'][1]
    grid.stop_se(_TG_DIR, se['name'])
    try:
        p = subprocess.run([tool('xrdfs'), 'root://127.0.0.1:%d' % se['port'], 'ls', '/'],
                               capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, XRD_CONNECTIONRETRY='1',
                                        XRD_REQUESTTIMEOUT='3'))
        assert p.returncode != 0
    finally:
        again = grid.start_se(_TG_DIR, se['name'])
    assert again['port'] == se['port']
    p = subprocess.run([tool('xrdfs'), 'root://127.0.0.1:%d' % se['port'], 'ls', '/'],
                           capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


def test_big_directory_listing_is_fast(grid_state, tg_dir):
    from testgrid import grid
    n = 20000
    grid.populate(_TG_DIR, tg_dir + 'big', n)
    with _tg_ws(grid_state) as c:
        t = time.time()
        res = _tg_ok(_tg_call(c, 'ls', ['-nokeys', tg_dir + 'big']))
        t_ls = time.time() - t
        t = time.time()
        found = _tg_ok(_tg_call(c, 'find', ['-nomsg', tg_dir + 'big', '*']))
        t_find = time.time() - t
    assert len(res) == n and len(found) == n
    assert t_ls < 1.5 and t_find < 1.5, (t_ls, t_find)


def _tg_alienpy(state, line, extra_env=None):
    exe = tool('alienpy')
    env = dict(os.environ)
    env.update(state['env'])
    env.update(extra_env or {})
    env['ALIENPY_NO_STAGGER'] = '1'
    return run_cli([line], program=[exe], env=env, cwd=str(_TG_DIR))


def test_reference_client_alienpy(grid_state, dialect, tg_dir, tmp_path):
    """alienpy (an independent implementation of the client side) works against the grid."""
    home = grid_state['home']
    name = tg_dir.rstrip('/').rsplit('/', 1)[1]
    # own token files, so alienpy's token-init does not touch the grid's
    tok = {'JALIEN_TOKEN_CERT': str(tmp_path / 'tokencert.pem'),
           'JALIEN_TOKEN_KEY': str(tmp_path / 'tokenkey.pem')}
    p = _tg_alienpy(grid_state, 'token-init', tok)
    assert p.returncode == 0, p.stderr
    assert 'DN >>> C=CH/O=JAliEn/OU=token/CN=jalien' in p.stdout
    assert (tmp_path / 'tokenkey.pem').read_text().startswith('-----BEGIN RSA PRIVATE KEY-----')
    p = _tg_alienpy(grid_state, 'pwd; whoami; mkdir -p %s/d1/d2; ls -l %s; stat %s/d1'
                    % (name, name, name), tok)
    assert p.returncode == 0, p.stderr
    out = p.stdout.split('\n')
    assert out[0] == home and out[1] == 'jalien'
    assert re.match(r'^drwxr-xr-x     jalien   jalien            0 .*    d1/$', out[2])
    assert 'File: %sd1' % tg_dir in p.stdout
    p = _tg_alienpy(grid_state, 'find %s d2' % tg_dir, tok)
    assert p.returncode == 0 and p.stdout.strip() == '', (p.stdout, p.stderr)
    p = _tg_alienpy(grid_state, 'ls /nonexistent', tok)
    assert p.returncode == 2
    assert p.stderr.strip() == 'No such file or directory : /nonexistent'


def test_fault_actions_and_idle_timeout(grid_state, dialect):
    from testgrid import grid
    from websockets.exceptions import ConnectionClosed
    try:
        grid.set_faults(_TG_DIR, {'whoami': 'empty', 'version': 'drop', 'type': 'exception'})
        with _tg_ws(grid_state) as c:
            c.send(json.dumps({'command': 'whoami', 'options': []}))
            assert c.recv(timeout=5) == ''
            r = _tg_call(c, 'type', ['/'])
            assert r['metadata']['exitcode'] == '121'
            c.send(json.dumps({'command': 'version', 'options': []}))
            with pytest.raises((ConnectionClosed, OSError, EOFError)):
                c.recv(timeout=5)
        grid.set_faults(_TG_DIR, {'idle_timeout': 0.3})
        with _tg_ws(grid_state) as c:
            assert _tg_ok(_tg_call(c, 'pwd'))
            with pytest.raises(ConnectionClosed) as ei:
                c.recv(timeout=5)
            assert ei.value.rcvd.code == 1013 and ei.value.rcvd.reason == 'Session timed out'
    finally:
        grid.set_faults(_TG_DIR, None)


def test_md5sum_guid_commands(grid_state, dialect, tg_dir):
    with _tg_ws(grid_state) as c:
        _tg_ok(_tg_call(c, 'touch', [tg_dir + 'g.txt']))
        g = _tg_ok(_tg_call(c, 'lfn2guid', [tg_dir + 'g.txt']))[0]['guid']
        assert _tg_ok(_tg_call(c, 'guid2lfn', [g]))[0]['lfn'] == tg_dir + 'g.txt'
        m = _tg_ok(_tg_call(c, 'md5sum', [tg_dir + 'g.txt']))
        assert m == [{'message': 'd41d8cd98f00b204e9800998ecf8427e\t' + tg_dir + 'g.txt'}]


def test_mirror_and_the_options_of_one_dialect(grid_state, dialect, tg_dir):
    """mirror copies to the other SE at once (-r SE: a move, newer service); options only
    the newer service has are refused by the 2021 one with its parser's 22."""
    first, second = [se['name'] for se in grid_state['ses']]
    lfn = tg_dir + 'm.txt'
    with _tg_ws(grid_state) as c:
        r = _tg_ok(_tg_call(c, 'access', ['-s', '3', '-m', hashlib.md5(b'mm\n').hexdigest(), 'write-once', lfn,
                                          first]))[0]
        src = os.path.join(str(_TG_DIR), 'mirror-src.txt')
        with open(src, 'wb') as f:
            f.write(b'mm\n')
        _tg_xrdcp(src, r['url'] + '?authz=' + r['envelope'])
        _tg_ok(_tg_call(c, 'commit', [r['envelope'], '3', lfn, '644', '0', r['url'], r['se'], r['guid'], '']))
        assert _tg_ok(_tg_call(c, 'mirror', [lfn, second])) == []
        assert [w['seName'] for w in _tg_ok(_tg_call(c, 'whereis', [lfn]))] == [first, second]
        assert _tg_ok(_tg_call(c, 'cat', [lfn])) == [{'value': 'mm', 'message': 'mm'}]
        newer = [('w', ['-a']), ('packages', ['-all']), ('listFilesFromCollection', ['-t', lfn]),
                 ('jquota', ['list', 'jalien', 'jalien']), ('mirror', ['-r', first, lfn, second]), ('ps', ['-q'])]
        for cmd, opts in newer:
            r = _tg_call(c, cmd, opts)
            if dialect == '2021':
                assert r['metadata']['exitcode'] == '22', (cmd, r)
            else:
                assert r['metadata']['exitcode'] != '22' or cmd == 'listFilesFromCollection', (cmd, r)
        where = [w['seName'] for w in _tg_ok(_tg_call(c, 'whereis', [lfn]))]
        assert where == {'2021': [first, second], '2024': [second]}[dialect]      # -r moved it off the first
        assert _tg_ok(_tg_call(c, 'cat', [lfn]))[0]['value'] == 'mm'


def test_access_write_adds_replicas_of_same_file(grid_state, dialect, tg_dir):
    lfn = tg_dir + 'two.txt'
    first, second = [se['name'] for se in grid_state['ses']]
    with _tg_ws(grid_state) as c:
        r = _tg_ok(_tg_call(c, 'access', ['-s', '4', '-m', 'a' * 32, 'write', lfn, first]))[0]
        _tg_ok(_tg_call(c, 'commit', [r['envelope'], '4', lfn, '644', '0', r['url'], r['se'],
                                      r['guid'], 'a' * 32]))
        bad = _tg_call(c, 'access', ['-s', '5', '-m', 'b' * 32, 'write', lfn])
        assert bad['metadata']['exitcode'] == '22'
        more = _tg_ok(_tg_call(c, 'access', ['-s', '4', '-m', 'a' * 32, 'write', lfn]))
        assert [m['se'] for m in more] == [second] and more[0]['guid'] == r['guid']
        _tg_ok(_tg_call(c, 'commit', [more[0]['envelope'], '4', lfn, '644', '0', more[0]['url'],
                                      second, r['guid'], 'a' * 32]))
        assert [w['seName'] for w in _tg_ok(_tg_call(c, 'whereis', [lfn]))] == [first, second]
        full = _tg_call(c, 'access', ['write', lfn])
        assert full['metadata']['exitcode'] == '77'


def test_reference_client_alienpy_transfers_and_401(grid_state, tg_dir, tmp_path):
    """alienpy's cp (access/commit + XRootD) round trip, and its 129 exit on HTTP 401."""
    from testgrid import grid
    src = tmp_path / 'payload.txt'
    src.write_bytes(b'payload for the reference client\n' * 100)
    p = _tg_alienpy(grid_state, 'cp file:%s %spayload.txt' % (src, tg_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    with _tg_ws(grid_state) as c:
        wh = _tg_ok(_tg_call(c, 'whereis', [tg_dir + 'payload.txt']))
    assert len(wh) == 2
    dst = tmp_path / 'back.txt'
    p = _tg_alienpy(grid_state, 'cp %spayload.txt file:%s' % (tg_dir, dst))
    assert p.returncode == 0, p.stdout + p.stderr
    assert dst.read_bytes() == src.read_bytes()
    cert, key = grid.make_user_cert(_TG_DIR, 'stranger', cn='stranger')
    p = _tg_alienpy(grid_state, 'pwd', {'X509_USER_CERT': cert, 'X509_USER_KEY': key,
                                        'JALIEN_TOKEN_CERT': str(tmp_path / 'no_token'),
                                        'JALIEN_TOKEN_KEY': str(tmp_path / 'no_key'),
                                        'ALIENPY_CONNECT_TRIES': '1'})
    assert p.returncode == 129, p.stderr


# ===== WAN mode: the delay relays =====


def test_relay_delays_both_ways_and_keeps_order(grid_state):
    from testgrid import relay
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(1)
    port, proc = relay.start(srv.getsockname()[1], 0.02)
    try:
        c = socket.create_connection(('127.0.0.1', port), timeout=5)
        s, _ = srv.accept()
        s.settimeout(5)
        t0 = time.monotonic()
        for i in range(50):
            c.sendall(b'%03d' % i)
        got = b''
        while len(got) < 150:
            got += s.recv(1000)
        s.sendall(got)
        back = b''
        while len(back) < 150:
            back += c.recv(1000)
        assert back == b''.join(b'%03d' % i for i in range(50))
        assert time.monotonic() - t0 >= 0.04          # one delay each way, never less
        c.close()
        assert s.recv(10) == b''                      # the end of the stream is relayed too
        s.close()
    finally:
        proc.kill()
        proc.wait()
        srv.close()


@pytest.fixture(scope='module')
def wan_grid():
    """A second test grid in WAN mode: relays adding 10 ms each way (20 ms RTT)
    in front of the service and of both storage elements. In the checkout like the
    main one: xrootd runs as another user, and every pytest session start makes
    /tmp/pytest-of-USER untraversable for others again."""
    from testgrid import grid
    workdir = os.path.join(REPO, '.testgrid-pytest-wan')
    state = grid.start(workdir, fresh=True, delay_ms=10)
    yield state
    grid.stop(workdir)


def test_wan_grid_serves_commands_and_copies_through_the_relays(wan_grid, tmp_path):
    st = wan_grid
    relay_ports = {r['port'] for r in st['relays']}
    assert int(st['env']['ALIENPY_JCENTRAL_PORT']) in relay_ports
    assert st['env']['ALIENPY_JCENTRAL_PORT'] != str(st['service']['port'])
    assert all(se['public_port'] in relay_ports and se['url'].endswith(':%d//' % se['public_port'])
               for se in st['ses'])
    env = {k: v for k, v in os.environ.items() if k in KEEP_VARS or not k.startswith(CLIENT_VARS)}
    env.update(st['env'], HOME=str(tmp_path), TMPDIR=str(tmp_path), ALIENPY_TIMECONNECT='1')
    p = run_cli(['pwd'], env=env)
    assert (p.returncode, p.stdout) == (0, st['home'] + '\n'), p.stderr
    assert 'connected in' in p.stderr
    src = tmp_path / 'wan.dat'
    src.write_bytes(os.urandom(3000))
    p = run_cli(['cp', '-quiet', 'file:%s' % src, st['home'] + 'wan.dat'], env=env)
    assert p.returncode == 0, p.stderr
    s = alien.Session(env)
    acc = s.request('access', ['read', st['home'] + 'wan.dat'], nomsg=True)
    s.close()
    assert {int(r['url'].split(':')[2].split('/')[0]) for r in acc.results} <= relay_ports
    p = run_cli(['cp', '-quiet', st['home'] + 'wan.dat', 'file:%s' % (tmp_path / 'back.dat')], env=env)
    assert p.returncode == 0 and (tmp_path / 'back.dat').read_bytes() == src.read_bytes(), p.stderr


# ===== the 1 s hand-off race and the per-user throttle =====


def test_the_service_races_like_the_real_endpoint(grid_state, service_conf, tg_dir):
    """Three requests sent at once to commands slower than the hand-off: the first gets
    the second's reply, the second an empty frame, and a run that had not read its
    arguments yet ran the newer request (two directories made, one asked for twice)."""
    service_conf({'handoff': 0.1, 'queue_delay': [0.15, 0.15]})
    with _tg_ws(grid_state) as c:
        for name in ('r1', 'r2'):
            c.send(json.dumps({'command': 'mkdir', 'options': ['-p', tg_dir + name]}))
        c.send(json.dumps({'command': 'whoami', 'options': []}))
        frames = [c.recv(timeout=10) for _ in range(3)]
        listing = _tg_ok(_tg_call(c, 'ls', [tg_dir]))
    assert '' in frames, frames                      # a reply taken by another request
    names = [r['name'] for r in listing]
    assert 'r2' in names and 'r1' not in names, names   # r1's run read r2's arguments


def test_the_throttle_counts_logins_and_commands_and_halves():
    from testgrid.jcentral import Throttle
    t, conf = Throttle(), {'throttle_scale': 1.0}
    assert t.add('CN=jalien,O=JAliEn,C=CH', 10, conf) == 10          # a login
    for _ in range(95):
        t.add('CN=jalien,O=JAliEn,C=CH', 1, conf)
    assert t.add('CN=jalien,O=JAliEn,C=CH', 1, conf) == 106           # above 100: 6 ms of sleep
    t.next_swap = time.monotonic() - 1                               # 5 minutes later
    assert t.add('CN=jalien,O=JAliEn,C=CH', 1, conf) == 107 and t.counts['CN=jalien,O=JAliEn,C=CH'] == 53
    t0 = time.monotonic()
    Throttle().sleep('x', 1, {'throttle_start': 299, 'throttle_scale': 0.5})   # 200 ms, scaled to 100
    assert 0.09 < time.monotonic() - t0 < 1.0
