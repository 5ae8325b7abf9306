

# ===== gfal jobs tests =====
# `alien.py gfal TYPE [JOB.json|-]`: validation is tested in-process (pure
# functions, no gfal2 needed); jobs run for real in a subprocess with the
# system interpreter, which imports Debian's gfal2, on file:// trees, on a
# real xrootd on loopback (fixture gfal_xrootd) and on mock:// URLs.

import io as _gfal_io
import json as _gfal_json
import os as _gfal_os
import pwd as _gfal_pwd
import re as _gfal_re
import shutil as _gfal_shutil
import socket as _gfal_socket
import subprocess as _gfal_subprocess
import sys as _gfal_sys
import tempfile as _gfal_tempfile
import time as _gfal_time
import zlib as _gfal_zlib

import pytest

GFAL_REPO = _gfal_os.path.dirname(_gfal_os.path.abspath(__file__))
if GFAL_REPO not in _gfal_sys.path:
    _gfal_sys.path.insert(0, GFAL_REPO)
import alien  # noqa: E402

GFAL_PY = '/usr/bin/python3'    # Debian's interpreter: the one python3-gfal2 is built for
GFAL_RUNNER = ('import sys; sys.path.insert(0, %r); import alien; '
               'sys.exit(alien.gfal_main(sys.argv[1:]))' % GFAL_REPO)
GFAL_MONITOR_RE = _gfal_re.compile(r'^MONITOR src: (\S+) \[ *\d+\] \d+\.\d\dMB \(\d+\.\d\dKB/s\)$')
GFAL_STAT_KEYS = ['st_dev', 'st_ino', 'st_mode', 'st_nlink', 'st_uid', 'st_gid', 'st_size',
                  'st_atime', 'st_mtime', 'st_ctime', 'name']


def gfal_run(jobtype, job, *args, python=GFAL_PY, timeout=60):
    """Run one gfal job in a subprocess -> (exit status, [stdout JSON objects], stderr)."""
    data = job if isinstance(job, str) else _gfal_json.dumps(job)
    proc = _gfal_subprocess.run([python, '-c', GFAL_RUNNER, jobtype] + list(args),
                                input=data.encode(), stdout=_gfal_subprocess.PIPE,
                                stderr=_gfal_subprocess.PIPE, timeout=timeout)
    lines = proc.stdout.decode().splitlines()
    return proc.returncode, [_gfal_json.loads(line) for line in lines], proc.stderr.decode()


def gfal_tree(top):
    """A small tree: top/{a.txt, .hidden, sub/{f1, deep/{f2}}, empty/}."""
    _gfal_os.makedirs(_gfal_os.path.join(top, 'sub', 'deep'))
    _gfal_os.makedirs(_gfal_os.path.join(top, 'empty'))
    for rel, data in (('a.txt', b'hello\n'), ('.hidden', b''), ('sub/f1', b'one'),
                      ('sub/deep/f2', b'two')):
        with open(_gfal_os.path.join(top, rel), 'wb') as f:
            f.write(data)
    return top


def gfal_ok(ident=None):
    line = {'Reason': 'OK', 'Code': 0}
    if ident is not None:
        line['id'] = ident
    return line


def _gfal_free_port():
    s = _gfal_socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope='session')
def gfal_xrootd():
    """One real xrootd on loopback: {'url': 'root://127.0.0.1:PORT//', 'datadir': DIR}.

    (To be replaced by the test grid's grid_state['ses'][0] once it lands.)
    """
    top = _gfal_tempfile.mkdtemp(prefix='gfal-xrd-', dir='/tmp')
    _gfal_os.chmod(top, 0o755)
    data, admin = _gfal_os.path.join(top, 'data'), _gfal_os.path.join(top, 'admin')
    _gfal_os.makedirs(data)
    _gfal_os.makedirs(admin)
    cfg = _gfal_os.path.join(top, 'xrd.cfg')
    with open(cfg, 'w') as f:
        f.write('all.export /\noss.localroot %s\nall.adminpath %s\nall.pidpath %s\n'
                'xrootd.chksum adler32\nxrd.allow host localhost\nxrd.allow host 127.0.0.1\n'
                'ofs.tpc pgm /usr/bin/xrdcp --server\n' % (data, admin, admin))
    pw = _gfal_pwd.getpwnam('xrootd')
    for d in (top, data, admin):
        _gfal_os.chown(d, pw.pw_uid, pw.pw_gid)
    proc = None
    for _attempt in range(3):
        port = _gfal_free_port()
        log = open(_gfal_os.path.join(top, 'xrootd.log'), 'a')
        proc = _gfal_subprocess.Popen(['xrootd', '-R', 'xrootd', '-c', cfg, '-p', str(port),
                                       '-l', _gfal_os.path.join(admin, 'log')],
                                      stdout=log, stderr=_gfal_subprocess.STDOUT)
        deadline = _gfal_time.time() + 10
        ready = False
        while _gfal_time.time() < deadline and proc.poll() is None:
            try:      # a plain TCP probe: the XRootD client would retry a closed port for minutes
                _gfal_socket.create_connection(('127.0.0.1', port), timeout=1).close()
            except OSError:
                _gfal_time.sleep(0.05)
                continue
            _gfal_time.sleep(0.1)
            ready = proc.poll() is None     # a taken port makes our server die
            break
        if ready:
            break
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    else:
        raise RuntimeError('xrootd did not start; see %s' % top)
    yield {'url': 'root://127.0.0.1:%d//' % port, 'datadir': data, 'top': top}
    proc.terminate()
    proc.wait()
    _gfal_shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def gfal_se(gfal_xrootd, request):
    """A fresh directory on the xrootd: (root URL ending in '/', local path of it)."""
    name = 't_%s_%d' % (_gfal_re.sub(r'\W', '_', request.node.name)[:60], _gfal_time.time() * 1e6)
    path = _gfal_os.path.join(gfal_xrootd['datadir'], name)
    _gfal_os.makedirs(path)
    pw = _gfal_pwd.getpwnam('xrootd')
    _gfal_os.chown(path, pw.pw_uid, pw.pw_gid)
    return gfal_xrootd['url'] + name + '/', path


def gfal_chown_tree(top):
    pw = _gfal_pwd.getpwnam('xrootd')
    for root, dirs, files in _gfal_os.walk(top):
        _gfal_os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in files:
            _gfal_os.chown(_gfal_os.path.join(root, name), pw.pw_uid, pw.pw_gid)


# ---- pure functions (no gfal2 needed) ----

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


def test_gfal_job_type_is_case_insensitive():
    assert alien.gfal_job_type('COPY') == 'copy'
    assert alien.gfal_job_type('List') == 'list'
    with pytest.raises(alien.GfalJobError, match='unknown job type'):
        alien.gfal_job_type('chmod')


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


def test_gfal_option_defaults():
    opts = alien.gfal_parse_job('copy', {'files': [['file:///a', 'file:///b']]}).options
    assert opts == {'timeout': None, 'make_dirs': True, 'checksum': None, 'encrypt': False,
                    'preserve_timestamp': False, 'overwrite': False, 'nbstreams': None,
                    'parallel': alien.GFAL_DEFAULT_PARALLEL}
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
]


@pytest.mark.parametrize('jobtype,doc,message', GFAL_BAD_JOBS)
def test_gfal_bad_job_is_one_error_line(jobtype, doc, message):
    with pytest.raises(alien.GfalJobError) as info:
        alien.gfal_parse_job(jobtype, doc)
    assert message in str(info.value)
    # through gfal_main: exactly one JSON line, exit 2 (parsing fails before gfal2 is needed)
    out, err = _gfal_io.StringIO(), _gfal_io.StringIO()
    rc = alien.gfal_main([jobtype.upper()], _gfal_io.StringIO(_gfal_json.dumps(doc)), out, err)
    lines = out.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1 and err.getvalue() == ''
    line = _gfal_json.loads(lines[0])
    assert list(line) == ['Reason', 'Code'] and line['Code'] == 1 and message in line['Reason']


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
    out, err = _gfal_io.StringIO(), _gfal_io.StringIO()
    rc = alien.gfal_main(args, _gfal_io.StringIO(text), out, err)
    lines = out.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1
    line = _gfal_json.loads(lines[0])
    assert line['Code'] == 1 and message in line['Reason']


def test_gfal_missing_module_in_process(monkeypatch, tmp_path):
    monkeypatch.setitem(_gfal_sys.modules, 'gfal2', None)     # import gfal2 -> ImportError
    out, err = _gfal_io.StringIO(), _gfal_io.StringIO()
    job = {'dirs': ['file://%s/new' % tmp_path]}
    rc = alien.gfal_main(['mkdir'], _gfal_io.StringIO(_gfal_json.dumps(job)), out, err)
    lines = out.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1
    assert 'python3-gfal2' in _gfal_json.loads(lines[0])['Reason']
    assert not (tmp_path / 'new').exists()


def test_gfal_missing_module_pyenv_python(tmp_path):
    # The project's own interpreter (pyenv) has no gfal2: one error line naming the package.
    assert _gfal_subprocess.call([_gfal_sys.executable, '-c', 'import gfal2'],
                                 stderr=_gfal_subprocess.DEVNULL) != 0
    rc, lines, err = gfal_run('mkdir', {'dirs': ['file://%s/new' % tmp_path]}, python=_gfal_sys.executable)
    assert rc == 2 and len(lines) == 1 and lines[0]['Code'] == 1
    assert 'python3-gfal2' in lines[0]['Reason'] and 'gfal2-plugin-file' in lines[0]['Reason']
    assert not (tmp_path / 'new').exists()


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


def test_gfal_command_registered():
    cmd = alien.COMMANDS['gfal']
    assert cmd.connect is False and 'list|remove|copy|rename|mkdir' in cmd.usage


# ---- real gfal2: LIST ----

def test_gfal_list_file_tree_unlimited(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, err = gfal_run('list', {'files': ['file://' + top], 'options': {'depth': -1}})
    assert rc == 0 and len(lines) == 1
    listing = lines[0]
    root = 'file://' + top
    assert set(listing) == {root, root + '/sub', root + '/sub/deep', root + '/empty'}
    keys = list(listing)
    assert keys[0] == root
    assert keys.index(root + '/sub') + 1 == keys.index(root + '/sub/deep')   # depth-first pre-order
    assert listing[root + '/empty'] == []
    names = sorted(e['name'] for e in listing[root])
    assert names == ['.hidden', 'a.txt', 'empty', 'sub']        # hidden kept, . and .. skipped
    a = [e for e in listing[root] if e['name'] == 'a.txt'][0]
    assert list(a) == GFAL_STAT_KEYS
    assert all(isinstance(a[k], int) for k in GFAL_STAT_KEYS[:-1])
    assert a['st_size'] == 6 and a['st_mode'] == _gfal_os.stat(_gfal_os.path.join(top, 'a.txt')).st_mode


@pytest.mark.parametrize('depth,levels', [(0, 1), (1, 1), (2, 3), (-1, 4), (-5, 4)])
def test_gfal_list_depth(tmp_path, depth, levels):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, err = gfal_run('list', {'files': ['file://' + top], 'options': {'depth': depth}})
    assert rc == 0 and len(lines[0]) == levels


def test_gfal_list_relative_and_pdm_wrapped(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, _ = gfal_run('list', {'base': 'file://%s/' % top, 'dirs': [['7.0', 'sub']],
                                     'options': {'depth': 1, 'timeout': 30}})
    assert rc == 0 and len(lines) == 1
    wrapped = lines[0]
    assert list(wrapped) == ['Reason', 'Code', 'id', 'Listing']
    assert wrapped['Reason'] == 'OK' and wrapped['Code'] == 0 and wrapped['id'] == '7.0'
    assert list(wrapped['Listing']) == ['file://%s/sub' % top]
    assert sorted(e['name'] for e in wrapped['Listing']['file://%s/sub' % top]) == ['deep', 'f1']


def test_gfal_list_file_root_is_listed_under_parent(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, _ = gfal_run('list', {'files': ['file://%s/sub/f1' % top]})
    assert rc == 0
    assert list(lines[0]) == ['file://%s/sub' % top]
    [entry] = lines[0]['file://%s/sub' % top]
    assert entry['name'] == 'f1' and entry['st_size'] == 3


def test_gfal_list_symlinks(tmp_path):
    top = tmp_path / 'links'
    (top / 'real').mkdir(parents=True)
    (top / 'real' / 'f').write_text('x')
    _gfal_os.symlink('nowhere', str(top / 'dangling'))
    _gfal_os.symlink('..', str(top / 'real' / 'loop'))       # a cycle: listed, not entered again
    rc, lines, _ = gfal_run('list', {'files': ['file://%s' % top]})
    assert rc == 0, lines
    root = 'file://%s' % top
    assert list(lines[0]) == [root, root + '/real']
    modes = dict((e['name'], e['st_mode']) for e in lines[0][root])
    assert _gfal_os.path.stat.S_ISLNK(modes['dangling'])
    assert sorted(e['name'] for e in lines[0][root + '/real']) == ['f', 'loop']


def test_gfal_list_checksum(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, _ = gfal_run('list', {'files': ['file://' + top], 'options': {'checksum': 'adler32'}})
    assert rc == 0
    for entries in lines[0].values():
        for e in entries:
            path = _gfal_os.path.join(top, e['name'])
            if e['name'] in ('sub', 'empty', 'deep'):
                assert 'adler32' not in e
            elif e['name'] == 'a.txt':
                assert e['adler32'] == '%08x' % _gfal_zlib.adler32(open(path, 'rb').read())


def test_gfal_list_errors(tmp_path):
    missing = 'file://%s/nope' % tmp_path
    rc, lines, _ = gfal_run('list', {'files': [missing]})
    assert rc == 1 and len(lines) == 1
    assert lines[0]['Code'] == 1 and 'No such file' in lines[0]['Reason'] and 'id' not in lines[0]
    rc, lines, _ = gfal_run('list', {'files': [['9.0', 'mock://host/p?errno=13']]})
    assert rc == 1 and lines == [{'Reason': lines[0]['Reason'], 'Code': 1, 'id': '9.0'}]
    assert 'Permission denied' in lines[0]['Reason']
    # bad checksum algorithm: the listing fails as a whole, no partial listing
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, _ = gfal_run('list', {'files': ['file://' + top], 'options': {'checksum': 'bogus'}})
    assert rc == 1 and len(lines) == 1 and lines[0]['Code'] == 1 and 'bogus' in lines[0]['Reason']


def test_gfal_list_mock_directory():
    url = 'mock://host/d?list=a:100644:10,b:40755:0'
    rc, lines, _ = gfal_run('list', {'files': [url], 'options': {'depth': 1}})
    assert rc == 0
    assert [(e['name'], e['st_size']) for e in lines[0][url]] == [('a', 10), ('b', 0)]


def test_gfal_list_xrootd(gfal_se):
    url, path = gfal_se
    gfal_tree(_gfal_os.path.join(path, 'tree'))
    gfal_chown_tree(path)
    rc, lines, _ = gfal_run('list', {'base': url, 'files': [['1.0', 'tree']],
                                     'options': {'depth': -1, 'checksum': 'adler32'}})
    assert rc == 0, lines
    listing = lines[0]['Listing']
    root = url + 'tree'
    assert list(listing)[0] == root
    assert set(listing) == {root, root + '/sub', root + '/sub/deep', root + '/empty'}
    a = [e for e in listing[root] if e['name'] == 'a.txt'][0]
    assert a['st_size'] == 6 and a['adler32'] == '%08x' % _gfal_zlib.adler32(b'hello\n')


# ---- real gfal2: REMOVE, MKDIR, RENAME ----

def test_gfal_remove_files_then_dirs(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    base = 'file://%s/' % top
    job = {'base': base, 'files': [['4.1', 'a.txt'], ['4.2', 'missing'], ['4.3', 'sub']],
           'dirs': [['4.4', 'sub/'], ['4.5', 'empty']]}
    rc, lines, _ = gfal_run('remove', job)
    assert rc == 1
    assert [(l['id'], l['Code']) for l in lines] == [('4.1', 0), ('4.2', 1), ('4.3', 1), ('4.4', 1), ('4.5', 0)]
    assert lines[0] == gfal_ok('4.1')
    assert 'No such file' in lines[1]['Reason'] and 'Is a directory' in lines[2]['Reason']
    assert 'not empty' in lines[3]['Reason']
    assert not _gfal_os.path.exists(_gfal_os.path.join(top, 'a.txt'))
    assert not _gfal_os.path.exists(_gfal_os.path.join(top, 'empty'))
    # wiki style, every entry fine: exit 0, no ids
    rc, lines, _ = gfal_run('remove', {'base': base, 'files': ['sub/f1', 'sub/deep/f2'],
                                       'dirs': ['sub/deep', 'sub'], 'options': {'timeout': 20}})
    assert rc == 0 and lines == [gfal_ok()] * 4
    assert not _gfal_os.path.exists(_gfal_os.path.join(top, 'sub'))


def test_gfal_remove_mock_error_injection():
    rc, lines, _ = gfal_run('remove', {'files': ['mock://host/p?errno=2', 'mock://host/q?size=1']})
    assert rc == 1 and lines[0]['Code'] == 1 and 'No such file' in lines[0]['Reason']
    assert lines[1] == gfal_ok()


def test_gfal_mkdir(tmp_path):
    base = 'file://%s/' % tmp_path
    (tmp_path / 'plainfile').write_text('x')
    rc, lines, _ = gfal_run('MKDIR', {'base': base, 'files': [],
                                      'dirs': [['5.1', 'a/b/c'], 'a', ['5.3', 'plainfile/sub']]})
    assert rc == 1
    assert lines[:2] == [gfal_ok('5.1'), gfal_ok()]
    assert lines[2]['Code'] == 1 and lines[2]['id'] == '5.3'
    assert (tmp_path / 'a' / 'b' / 'c').is_dir()
    rc, lines, _ = gfal_run('mkdir', {'dirs': ['mock://host/d']})
    assert rc == 1 and 'Protocol not supported' in lines[0]['Reason']


def test_gfal_rename(tmp_path):
    (tmp_path / 'old').write_text('data')
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('rename', {'base': base, 'files': [['6.1', 'old', 'new'], ['gone', 'x']]})
    assert rc == 1 and lines[0] == gfal_ok('6.1')
    assert lines[1]['Code'] == 1 and 'No such file' in lines[1]['Reason'] and 'id' not in lines[1]
    assert (tmp_path / 'new').read_text() == 'data' and not (tmp_path / 'old').exists()


def test_gfal_namespace_ops_xrootd(gfal_se):
    url, path = gfal_se
    with open(_gfal_os.path.join(path, 'f'), 'w') as f:
        f.write('x')
    gfal_chown_tree(path)
    rc, lines, _ = gfal_run('mkdir', {'base': url, 'dirs': ['d1/d2', 'd3']})
    assert rc == 0 and lines == [gfal_ok(), gfal_ok()]
    assert _gfal_os.path.isdir(_gfal_os.path.join(path, 'd1', 'd2'))
    rc, lines, _ = gfal_run('rename', {'base': url, 'files': [['f', 'd3/g']]})
    assert rc == 0 and _gfal_os.path.exists(_gfal_os.path.join(path, 'd3', 'g'))
    rc, lines, _ = gfal_run('remove', {'base': url, 'files': ['d3/g', 'nope'], 'dirs': ['d1/d2', 'd3']})
    assert rc == 1 and [l['Code'] for l in lines] == [0, 1, 0, 0]
    assert sorted(_gfal_os.listdir(path)) == ['d1']


# ---- real gfal2: COPY ----

def _gfal_monitor_sources(err):
    return [m.group(1) for m in map(GFAL_MONITOR_RE.match, err.splitlines()) if m]


def test_gfal_copy_file_to_file_both_styles(tmp_path):
    top = gfal_tree(str(tmp_path / 'src'))
    dst = tmp_path / 'dst'
    job = {'base': 'file://%s/' % tmp_path,
           'files': [['src/a.txt', 'dst/a.txt'], ['3.2', 'src/sub/f1', 'dst/x/y/f1'],
                     ['3.3', 'src/nope', 'dst/nope'],
                     ['file://%s/sub/deep/f2' % top, 'file://%s/f2' % dst]]}
    rc, lines, err = gfal_run('copy', job, '-')
    assert rc == 1
    assert lines[0] == gfal_ok() and lines[1] == gfal_ok('3.2') and lines[3] == gfal_ok()
    assert lines[2]['Code'] == 1 and lines[2]['id'] == '3.3' and 'No such file' in lines[2]['Reason']
    assert (dst / 'a.txt').read_bytes() == b'hello\n'
    assert (dst / 'x' / 'y' / 'f1').read_bytes() == b'one'       # make_dirs defaults to true
    srcs = _gfal_monitor_sources(err)
    assert sorted(set(srcs)) == sorted('file://%s/%s' % (top, p) for p in ('a.txt', 'sub/f1', 'sub/deep/f2'))


def test_gfal_copy_job_file_argument(tmp_path):
    (tmp_path / 'a').write_text('A')
    job = tmp_path / 'job.json'
    job.write_text(_gfal_json.dumps({'base': 'file://%s' % tmp_path, 'files': [['a', 'b']]}))
    rc, lines, _ = gfal_run('Copy', '', str(job))
    assert rc == 0 and lines == [gfal_ok()] and (tmp_path / 'b').read_text() == 'A'


def test_gfal_copy_make_dirs_false(tmp_path):
    (tmp_path / 'a').write_text('A')
    base = 'file://%s/' % tmp_path
    for opts in ({'make_dirs': False}, {'parent': False}):
        rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'no/such/dir/a']], 'options': opts})
        assert rc == 1 and lines[0]['Code'] == 1 and 'No such file' in lines[0]['Reason']
    assert not (tmp_path / 'no').exists()
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'new/a']], 'options': {'parent': True}})
    assert rc == 0 and (tmp_path / 'new' / 'a').read_text() == 'A'


def test_gfal_copy_overwrite(tmp_path):
    (tmp_path / 'a').write_text('new')
    (tmp_path / 'b').write_text('old')
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'b']]})
    assert rc == 1 and 'exists' in lines[0]['Reason'] and (tmp_path / 'b').read_text() == 'old'
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'b']], 'options': {'overwrite': True}})
    assert rc == 0 and (tmp_path / 'b').read_text() == 'new'


def test_gfal_copy_checksum(tmp_path):
    (tmp_path / 'a').write_bytes(b'hello\n')
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'ok1'], ['a', 'ok2']],
                                     'options': {'checksum': 'adler32', 'parallel': 1}})
    assert rc == 0 and lines == [gfal_ok()] * 2
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'good']],
                                     'options': {'checksum': 'adler32:084b021f'}})
    assert rc == 0
    rc, lines, err = gfal_run('copy', {'base': base, 'files': [['1', 'a', 'bad']],
                                       'options': {'checksum': 'adler32:deadbeef'}})
    assert rc == 1 and lines[0]['Code'] == 1 and lines[0]['id'] == '1'
    assert 'checksum' in lines[0]['Reason'].lower() and 'deadbeef' in lines[0]['Reason']
    assert not (tmp_path / 'bad').exists()
    assert _gfal_monitor_sources(err) == []          # nothing was copied


def test_gfal_copy_encrypt(tmp_path, gfal_se):
    url, path = gfal_se
    (tmp_path / 'a').write_text('secret')
    base = 'file://%s/' % tmp_path
    job = {'base': base, 'options': {'encrypt': True},
           'files': [['a', 'mock://host/x?size_post=6'], ['a', 'http://127.0.0.1:9/x'],
                     ['a', url + 'enc'], ['a', 'local-copy']]}
    rc, lines, err = gfal_run('copy', job)
    assert rc == 1 and [l['Code'] for l in lines] == [1, 1, 1, 0]
    assert 'mock:// protocol cannot encrypt' in lines[0]['Reason']
    assert 'http:// protocol cannot encrypt' in lines[1]['Reason']
    # root:// becomes roots://; this server has no TLS, so the copy fails instead of going in clear
    assert 'encrypt' in lines[2]['Reason'].lower() or 'tls' in lines[2]['Reason'].lower()
    assert not _gfal_os.path.exists(_gfal_os.path.join(path, 'enc'))
    assert (tmp_path / 'local-copy').read_text() == 'secret'     # file:// to file://: nothing on a wire
    assert _gfal_monitor_sources(err) == ['file://%s/a' % tmp_path]


def test_gfal_copy_preserve_timestamp(tmp_path, gfal_se):
    url, path = gfal_se
    src = tmp_path / 'a'
    src.write_text('old file')
    _gfal_os.utime(str(src), (1000000000, 1234567890))
    base = 'file://%s/' % tmp_path
    rc, lines, err = gfal_run('copy', {'base': base, 'files': [['a', 'b'], ['a', url + 'c']],
                                       'options': {'preserve_timestamp': True}})
    assert rc == 0 and lines == [gfal_ok(), gfal_ok()]
    assert int(_gfal_os.stat(str(tmp_path / 'b')).st_mtime) == 1234567890
    warnings = [l for l in err.splitlines() if l.startswith('WARNING')]
    assert len(warnings) == 1 and 'preserve_timestamp' in warnings[0] and url + 'c' in warnings[0]
    assert _gfal_os.path.exists(_gfal_os.path.join(path, 'c'))
    # without the option the copy gets a fresh mtime
    rc, _, _ = gfal_run('copy', {'base': base, 'files': [['a', 'd']]})
    assert int(_gfal_os.stat(str(tmp_path / 'd')).st_mtime) != 1234567890


def test_gfal_copy_across_file_and_xrootd(tmp_path, gfal_se):
    url, path = gfal_se
    (tmp_path / 'a').write_bytes(b'payload' * 100)
    (tmp_path / 'back').mkdir()
    job = {'files': [['3.1', 'file://%s/a' % tmp_path, url + 'up/a'],
                     ['3.2', url + 'up/a', url + 'tpc/a'],           # root -> root (TPC): keep to one
                     ['3.3', url + 'up/a', 'file://%s/back/a' % tmp_path]],
           'options': {'parallel': 1, 'nbstreams': 2, 'timeout': 60, 'checksum': 'adler32'}}
    rc, lines, err = gfal_run('copy', job)
    assert rc == 0, lines
    assert lines == [gfal_ok('3.1'), gfal_ok('3.2'), gfal_ok('3.3')]
    assert open(_gfal_os.path.join(path, 'tpc', 'a'), 'rb').read() == b'payload' * 100
    assert (tmp_path / 'back' / 'a').read_bytes() == b'payload' * 100
    assert 'file://%s/a' % tmp_path in _gfal_monitor_sources(err)


def test_gfal_copy_parallel_order_and_concurrency(tmp_path):
    # three mock copies of 1 s each run at once; results stay in input order
    files = [['%d' % i, 'mock://host/src%d?size=10' % i, 'mock://host/dst%d?time=1&size_post=10' % i]
             for i in range(3)]
    files.insert(1, ['err', 'mock://host/e?size=10', 'mock://host/f?transfer_errno=5&size_post=10'])
    for i in range(6):
        (tmp_path / ('s%d' % i)).write_text(str(i))
        files.append(['f%d' % i, 'file://%s/s%d' % (tmp_path, i), 'file://%s/d/s%d' % (tmp_path, i)])
    started = _gfal_time.time()
    rc, lines, err = gfal_run('copy', {'files': files, 'options': {'parallel': 4}})
    took = _gfal_time.time() - started
    assert rc == 1
    assert [l['id'] for l in lines] == [f[0] for f in files]
    assert [l['Code'] for l in lines] == [0, 1, 0, 0] + [0] * 6
    assert took < 2.5, took            # sequentially it would take over 3 s
    assert all((tmp_path / 'd' / ('s%d' % i)).read_text() == str(i) for i in range(6))
    assert len(set(_gfal_monitor_sources(err))) == 9


def test_gfal_output_is_streamed(tmp_path):
    # The first result line arrives while a later entry is still being copied.
    job = {'files': [['mock://host/a?size=1', 'mock://host/b?time=0&size_post=1'],
                     ['mock://host/c?size=1', 'mock://host/d?time=1&size_post=1']],
           'options': {'parallel': 1}}
    proc = _gfal_subprocess.Popen([GFAL_PY, '-c', GFAL_RUNNER, 'copy'], stdin=_gfal_subprocess.PIPE,
                                  stdout=_gfal_subprocess.PIPE, stderr=_gfal_subprocess.DEVNULL)
    proc.stdin.write(_gfal_json.dumps(job).encode())
    proc.stdin.close()
    first = proc.stdout.readline()
    assert _gfal_json.loads(first.decode()) == gfal_ok()
    assert proc.poll() is None             # still copying the second file
    rest = proc.stdout.read()
    assert proc.wait() == 0 and _gfal_json.loads(rest.decode()) == gfal_ok()


def test_gfal_bad_job_does_nothing(tmp_path):
    (tmp_path / 'a').write_text('A')
    base = 'file://%s/' % tmp_path
    for job in ({'base': base, 'files': [['a', 'b']], 'options': {'make_dir': True}},
                {'base': base, 'files': [['a', 'b'], ['a']]},
                {'base': base, 'files': [['a', 'b']], 'options': None}):
        rc, lines, err = gfal_run('copy', job)
        assert rc == 2 and len(lines) == 1 and lines[0]['Code'] == 1 and err == ''
    assert not (tmp_path / 'b').exists()
    rc, lines, _ = gfal_run('copy', '{"base": "%s", "files": [["a", "b"]]' % base)   # truncated JSON
    assert rc == 2 and 'invalid JSON' in lines[0]['Reason'] and not (tmp_path / 'b').exists()


def test_gfal_timeout_option_everywhere(tmp_path):
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('mkdir', {'base': base, 'dirs': ['d'], 'options': {'timeout': 5}})
    assert rc == 0 and lines == [gfal_ok()]
    rc, lines, _ = gfal_run('rename', {'base': base, 'files': [['d', 'e']], 'options': {'timeout': 5}})
    assert rc == 0 and (tmp_path / 'e').is_dir()
    rc, lines, _ = gfal_run('remove', {'base': base, 'dirs': ['e'], 'options': {'timeout': 5}})
    assert rc == 0 and not (tmp_path / 'e').exists()


def test_gfal_command_handler_and_help(capsys):
    result = alien.COMMANDS['gfal'].handler(None, [])
    out = capsys.readouterr().out.splitlines()
    assert result.exitcode == 2 and result.out == '' and len(out) == 1
    assert 'usage: alien.py gfal' in _gfal_json.loads(out[0])['Reason']
    assert alien.gfal_main(['--help'], None, _gfal_io.StringIO(), _gfal_io.StringIO()) == 0
