"""gfal jobs: on files, on the XRootD and the davs storage of the test grid."""
import hashlib
import json
import os
import pwd
import re
import ssl
import subprocess
import time
import zlib

import pytest

import alien
from testgrid import tools
from testgrid.tools import tool
from conftest import REPO, _gfal_cred_files, run_cli

GFAL_PY = tool('gfal-python')    # Debian's interpreter: the one python3-gfal2 is built for

GFAL_RUNNER = ('import sys; sys.path.insert(0, %r); import alien; '
               'sys.exit(alien.gfal_main(sys.argv[1:]))' % REPO)


def gfal_run(jobtype, job, *args, python=GFAL_PY, timeout=120, env=None):
    """Run one gfal job in a subprocess -> (exit status, [stdout JSON objects], stderr)."""
    data = job if isinstance(job, str) else json.dumps(job)
    proc = subprocess.run([python, '-c', GFAL_RUNNER, jobtype] + list(args),
                                input=data.encode(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=timeout, env=env)
    lines = proc.stdout.decode().splitlines()
    return proc.returncode, [json.loads(line) for line in lines], proc.stderr.decode()


# ===== gfal jobs: a missing gfal2 module =====


@pytest.mark.once
def test_gfal_missing_module_pyenv_python(tmp_path):
    # A pyenv interpreter's test venv has no gfal2 (the project's .venv sees Debian's):
    # one error line naming the package.
    python = tools.test_venv(tools.OTHER_VERSIONS[-1])
    assert subprocess.call([python, '-c', 'import gfal2'], stderr=subprocess.DEVNULL) != 0
    rc, lines, err = gfal_run('mkdir', {'dirs': ['file://%s/new' % tmp_path]}, python=python)
    assert rc == 2 and len(lines) == 1 and lines[0]['Code'] == 1
    assert 'python3-gfal2' in lines[0]['Reason'] and 'gfal2-plugin-file' in lines[0]['Reason']
    assert not (tmp_path / 'new').exists()


GFAL_STAT_KEYS = ['st_dev', 'st_ino', 'st_mode', 'st_nlink', 'st_uid', 'st_gid', 'st_size',
                  'st_atime', 'st_mtime', 'st_ctime', 'name']


def gfal_tree(top):
    """A small tree: top/{a.txt, .hidden, sub/{f1, deep/{f2}}, empty/}."""
    os.makedirs(os.path.join(top, 'sub', 'deep'))
    os.makedirs(os.path.join(top, 'empty'))
    for rel, data in (('a.txt', b'hello\n'), ('.hidden', b''), ('sub/f1', b'one'),
                      ('sub/deep/f2', b'two')):
        with open(os.path.join(top, rel), 'wb') as f:
            f.write(data)
    return top


# ---- real gfal2: LIST ----
@pytest.mark.once
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
    assert a['st_size'] == 6 and a['st_mode'] == os.stat(os.path.join(top, 'a.txt')).st_mode


@pytest.mark.once
@pytest.mark.parametrize('depth,levels', [(0, 1), (1, 1), (2, 3), (-1, 4), (-5, 4)])
def test_gfal_list_depth(tmp_path, depth, levels):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, err = gfal_run('list', {'files': ['file://' + top], 'options': {'depth': depth}})
    assert rc == 0 and len(lines[0]) == levels


@pytest.mark.once
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


@pytest.mark.once
def test_gfal_list_file_root_is_listed_under_parent(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, _ = gfal_run('list', {'files': ['file://%s/sub/f1' % top]})
    assert rc == 0
    assert list(lines[0]) == ['file://%s/sub' % top]
    [entry] = lines[0]['file://%s/sub' % top]
    assert entry['name'] == 'f1' and entry['st_size'] == 3


@pytest.mark.once
def test_gfal_list_symlinks(tmp_path):
    top = tmp_path / 'links'
    (top / 'real').mkdir(parents=True)
    (top / 'real' / 'f').write_text('x')
    os.symlink('nowhere', str(top / 'dangling'))
    os.symlink('..', str(top / 'real' / 'loop'))       # a cycle: listed, not entered again
    rc, lines, _ = gfal_run('list', {'files': ['file://%s' % top]})
    assert rc == 0, lines
    root = 'file://%s' % top
    assert list(lines[0]) == [root, root + '/real']
    modes = dict((e['name'], e['st_mode']) for e in lines[0][root])
    assert os.path.stat.S_ISLNK(modes['dangling'])
    assert sorted(e['name'] for e in lines[0][root + '/real']) == ['f', 'loop']


@pytest.mark.once
def test_gfal_list_checksum(tmp_path):
    top = gfal_tree(str(tmp_path / 'tree'))
    rc, lines, _ = gfal_run('list', {'files': ['file://' + top], 'options': {'checksum': 'adler32'}})
    assert rc == 0
    for entries in lines[0].values():
        for e in entries:
            path = os.path.join(top, e['name'])
            if e['name'] in ('sub', 'empty', 'deep'):
                assert 'adler32' not in e
            elif e['name'] == 'a.txt':
                assert e['adler32'] == '%08x' % zlib.adler32(open(path, 'rb').read())


@pytest.mark.once
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


@pytest.mark.once
def test_gfal_list_mock_directory():
    url = 'mock://host/d?list=a:100644:10,b:40755:0'
    rc, lines, _ = gfal_run('list', {'files': [url], 'options': {'depth': 1}})
    assert rc == 0
    assert [(e['name'], e['st_size']) for e in lines[0][url]] == [('a', 10), ('b', 0)]


def gfal_chown_tree(top):
    pw = pwd.getpwnam('xrootd')
    for root, dirs, files in os.walk(top):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


@pytest.fixture(scope='session')
def gfal_xrootd(grid_state):
    """A real xrootd on loopback: the test grid's first storage element (it allows
    third-party copies, which gfal2 uses for root:// -> root://)."""
    se = grid_state['ses'][0]
    return {'url': 'root://127.0.0.1:%d//' % se['port'], 'datadir': se['datadir']}


@pytest.fixture
def gfal_se(gfal_xrootd, request):
    """A fresh directory on the xrootd: (root URL ending in '/', local path of it)."""
    name = 't_%s_%d' % (re.sub(r'\W', '_', request.node.name)[:60], time.time() * 1e6)
    path = os.path.join(gfal_xrootd['datadir'], name)
    os.makedirs(path)
    pw = pwd.getpwnam('xrootd')
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return gfal_xrootd['url'] + name + '/', path


@pytest.mark.once
def test_gfal_list_xrootd(gfal_se):
    url, path = gfal_se
    gfal_tree(os.path.join(path, 'tree'))
    gfal_chown_tree(path)
    rc, lines, _ = gfal_run('list', {'base': url, 'files': [['1.0', 'tree']],
                                     'options': {'depth': -1, 'checksum': 'adler32'}})
    assert rc == 0, lines
    listing = lines[0]['Listing']
    root = url + 'tree'
    assert list(listing)[0] == root
    assert set(listing) == {root, root + '/sub', root + '/sub/deep', root + '/empty'}
    a = [e for e in listing[root] if e['name'] == 'a.txt'][0]
    assert a['st_size'] == 6 and a['adler32'] == '%08x' % zlib.adler32(b'hello\n')


def gfal_ok(ident=None):
    line = {'Reason': 'OK', 'Code': 0}
    if ident is not None:
        line['id'] = ident
    return line


# ---- real gfal2: REMOVE, MKDIR, RENAME ----
@pytest.mark.once
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
    assert not os.path.exists(os.path.join(top, 'a.txt'))
    assert not os.path.exists(os.path.join(top, 'empty'))
    # wiki style, every entry fine: exit 0, no ids
    rc, lines, _ = gfal_run('remove', {'base': base, 'files': ['sub/f1', 'sub/deep/f2'],
                                       'dirs': ['sub/deep', 'sub'], 'options': {'timeout': 20}})
    assert rc == 0 and lines == [gfal_ok()] * 4
    assert not os.path.exists(os.path.join(top, 'sub'))


@pytest.mark.once
def test_gfal_remove_mock_error_injection():
    rc, lines, _ = gfal_run('remove', {'files': ['mock://host/p?errno=2', 'mock://host/q?size=1']})
    assert rc == 1 and lines[0]['Code'] == 1 and 'No such file' in lines[0]['Reason']
    assert lines[1] == gfal_ok()


@pytest.mark.once
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


@pytest.mark.once
def test_gfal_rename(tmp_path):
    (tmp_path / 'old').write_text('data')
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('rename', {'base': base, 'files': [['6.1', 'old', 'new'], ['gone', 'x']]})
    assert rc == 1 and lines[0] == gfal_ok('6.1')
    assert lines[1]['Code'] == 1 and 'No such file' in lines[1]['Reason'] and 'id' not in lines[1]
    assert (tmp_path / 'new').read_text() == 'data' and not (tmp_path / 'old').exists()


@pytest.mark.once
def test_gfal_namespace_ops_xrootd(gfal_se):
    url, path = gfal_se
    with open(os.path.join(path, 'f'), 'w') as f:
        f.write('x')
    gfal_chown_tree(path)
    rc, lines, _ = gfal_run('mkdir', {'base': url, 'dirs': ['d1/d2', 'd3']})
    assert rc == 0 and lines == [gfal_ok(), gfal_ok()]
    assert os.path.isdir(os.path.join(path, 'd1', 'd2'))
    rc, lines, _ = gfal_run('rename', {'base': url, 'files': [['f', 'd3/g']]})
    assert rc == 0 and os.path.exists(os.path.join(path, 'd3', 'g'))
    rc, lines, _ = gfal_run('remove', {'base': url, 'files': ['d3/g', 'nope'], 'dirs': ['d1/d2', 'd3']})
    assert rc == 1 and [l['Code'] for l in lines] == [0, 1, 0, 0]
    assert sorted(os.listdir(path)) == ['d1']


GFAL_MONITOR_RE = re.compile(r'^MONITOR src: (\S+) \[ *\d+\] \d+\.\d\dMB \(\d+\.\d\dKB/s\)$')


# ---- real gfal2: COPY ----
def _gfal_monitor_sources(err):
    return [m.group(1) for m in map(GFAL_MONITOR_RE.match, err.splitlines()) if m]


@pytest.mark.once
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


@pytest.mark.once
def test_gfal_copy_job_file_argument(tmp_path):
    (tmp_path / 'a').write_text('A')
    job = tmp_path / 'job.json'
    job.write_text(json.dumps({'base': 'file://%s' % tmp_path, 'files': [['a', 'b']]}))
    rc, lines, _ = gfal_run('Copy', '', str(job))
    assert rc == 0 and lines == [gfal_ok()] and (tmp_path / 'b').read_text() == 'A'


@pytest.mark.once
def test_gfal_copy_make_dirs_false(tmp_path):
    (tmp_path / 'a').write_text('A')
    base = 'file://%s/' % tmp_path
    for opts in ({'make_dirs': False}, {'parent': False}):
        rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'no/such/dir/a']], 'options': opts})
        assert rc == 1 and lines[0]['Code'] == 1 and 'No such file' in lines[0]['Reason']
    assert not (tmp_path / 'no').exists()
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'new/a']], 'options': {'parent': True}})
    assert rc == 0 and (tmp_path / 'new' / 'a').read_text() == 'A'


@pytest.mark.once
def test_gfal_copy_overwrite(tmp_path):
    (tmp_path / 'a').write_text('new')
    (tmp_path / 'b').write_text('old')
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'b']]})
    assert rc == 1 and 'exists' in lines[0]['Reason'] and (tmp_path / 'b').read_text() == 'old'
    rc, lines, _ = gfal_run('copy', {'base': base, 'files': [['a', 'b']], 'options': {'overwrite': True}})
    assert rc == 0 and (tmp_path / 'b').read_text() == 'new'


@pytest.mark.once
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


@pytest.mark.once
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
    assert not os.path.exists(os.path.join(path, 'enc'))
    assert (tmp_path / 'local-copy').read_text() == 'secret'     # file:// to file://: nothing on a wire
    assert _gfal_monitor_sources(err) == ['file://%s/a' % tmp_path]


@pytest.mark.once
def test_gfal_copy_preserve_timestamp(tmp_path, gfal_se):
    url, path = gfal_se
    src = tmp_path / 'a'
    src.write_text('old file')
    os.utime(str(src), (1000000000, 1234567890))
    base = 'file://%s/' % tmp_path
    rc, lines, err = gfal_run('copy', {'base': base, 'files': [['a', 'b'], ['a', url + 'c']],
                                       'options': {'preserve_timestamp': True}})
    assert rc == 0 and lines == [gfal_ok(), gfal_ok()]
    assert int(os.stat(str(tmp_path / 'b')).st_mtime) == 1234567890
    warnings = [l for l in err.splitlines() if l.startswith('WARNING')]
    assert len(warnings) == 1 and 'preserve_timestamp' in warnings[0] and url + 'c' in warnings[0]
    assert os.path.exists(os.path.join(path, 'c'))
    # without the option the copy gets a fresh mtime
    rc, _, _ = gfal_run('copy', {'base': base, 'files': [['a', 'd']]})
    assert int(os.stat(str(tmp_path / 'd')).st_mtime) != 1234567890


@pytest.mark.once
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
    assert open(os.path.join(path, 'tpc', 'a'), 'rb').read() == b'payload' * 100
    assert (tmp_path / 'back' / 'a').read_bytes() == b'payload' * 100
    assert 'file://%s/a' % tmp_path in _gfal_monitor_sources(err)


@pytest.mark.once
def test_gfal_copy_parallel_order_and_concurrency(tmp_path):
    # three mock copies of 1 s each run at once; results stay in input order
    files = [['%d' % i, 'mock://host/src%d?size=10' % i, 'mock://host/dst%d?time=1&size_post=10' % i]
             for i in range(3)]
    files.insert(1, ['err', 'mock://host/e?size=10', 'mock://host/f?transfer_errno=5&size_post=10'])
    for i in range(6):
        (tmp_path / ('s%d' % i)).write_text(str(i))
        files.append(['f%d' % i, 'file://%s/s%d' % (tmp_path, i), 'file://%s/d/s%d' % (tmp_path, i)])
    started = time.time()
    rc, lines, err = gfal_run('copy', {'files': files, 'options': {'parallel': 4}})
    took = time.time() - started
    assert rc == 1
    assert [l['id'] for l in lines] == [f[0] for f in files]
    assert [l['Code'] for l in lines] == [0, 1, 0, 0] + [0] * 6
    assert took < 2.5, took            # sequentially it would take over 3 s
    assert all((tmp_path / 'd' / ('s%d' % i)).read_text() == str(i) for i in range(6))
    assert len(set(_gfal_monitor_sources(err))) == 9


@pytest.mark.once
def test_gfal_output_is_streamed(tmp_path):
    # The first result line arrives while a later entry is still being copied.
    job = {'files': [['mock://host/a?size=1', 'mock://host/b?time=0&size_post=1'],
                     ['mock://host/c?size=1', 'mock://host/d?time=1&size_post=1']],
           'options': {'parallel': 1}}
    proc = subprocess.Popen([GFAL_PY, '-c', GFAL_RUNNER, 'copy'], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    first = proc.stdout.readline()
    assert json.loads(first.decode()) == gfal_ok()
    assert proc.poll() is None             # still copying the second file
    rest = proc.stdout.read()
    assert proc.wait() == 0 and json.loads(rest.decode()) == gfal_ok()


@pytest.mark.once
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


@pytest.mark.once
def test_gfal_timeout_option_everywhere(tmp_path):
    base = 'file://%s/' % tmp_path
    rc, lines, _ = gfal_run('mkdir', {'base': base, 'dirs': ['d'], 'options': {'timeout': 5}})
    assert rc == 0 and lines == [gfal_ok()]
    rc, lines, _ = gfal_run('rename', {'base': base, 'files': [['d', 'e']], 'options': {'timeout': 5}})
    assert rc == 0 and (tmp_path / 'e').is_dir()
    rc, lines, _ = gfal_run('remove', {'base': base, 'dirs': ['e'], 'options': {'timeout': 5}})
    assert rc == 0 and not (tmp_path / 'e').exists()


@pytest.mark.once
def test_gfal_through_the_command_line_front_end(tmp_path):
    """`python3 alien.py gfal TYPE JOB.json` and `... gfal TYPE -` (stdin), as operators run it."""
    job = tmp_path / 'job.json'
    job.write_text(json.dumps({'dirs': ['file://%s/a/b' % tmp_path]}))
    p = run_cli(['gfal', 'MKDIR', str(job)], python=GFAL_PY)
    assert (p.returncode, p.stdout) == (0, '{"Reason": "OK", "Code": 0}\n') and (tmp_path / 'a' / 'b').is_dir()
    p = run_cli(['gfal', 'list', '-'], python=GFAL_PY, input=json.dumps({'files': ['file://%s/a' % tmp_path]}))
    assert p.returncode == 0 and list(json.loads(p.stdout)) == ['file://%s/a' % tmp_path, 'file://%s/a/b' % tmp_path]
    p = run_cli(['gfal', 'copy', '-'], python=GFAL_PY, input='{not json')
    assert p.returncode == 2 and json.loads(p.stdout)['Code'] == 1 and p.stderr == ''


@pytest.mark.once
@pytest.mark.parametrize('var', ['X509_USER_PROXY_SRC', 'X509_USER_PROXY_DST', 'X509_USER_PROXY'])
def test_gfal_credential_file_missing_or_unreadable_is_a_job_error(tmp_path, var):
    (tmp_path / 'a').write_text('A')
    (tmp_path / 'nocert.pem').write_text('-----BEGIN RSA PRIVATE KEY-----\n')
    (tmp_path / 'dir.pem').mkdir()
    good = _gfal_cred_files(tmp_path, 'good.pem')[0]
    job = {'files': [['3.1', 'file://%s/a' % tmp_path, 'file://%s/out/a' % tmp_path]]}
    for bad, message in (('missing.pem', 'cannot read the credential file: No such file or directory'),
                         ('dir.pem', 'cannot read the credential file: Is a directory'),
                         ('nocert.pem', 'the credential file holds no PEM certificate')):
        env = {k: v for k, v in os.environ.items() if not k.startswith('X509_USER_PROXY')}
        env.update({'X509_USER_PROXY_SRC': good, 'X509_USER_PROXY_DST': good})
        env.pop(var, None)
        env[var] = str(tmp_path / bad)
        if var == 'X509_USER_PROXY':        # read by COPY only for a side without its own
            del env['X509_USER_PROXY_DST']
        rc, lines, err = gfal_run('copy', job, env=env)
        assert (rc, err) == (2, '') and lines == [{'Reason': '%s=%s: %s' % (var, tmp_path / bad, message),
                                                   'Code': 1, 'id': ''}]
        assert not (tmp_path / 'out').exists()          # nothing was touched
    # a LIST reads X509_USER_PROXY only
    env = dict(os.environ, X509_USER_PROXY=str(tmp_path / 'missing.pem'))
    rc, lines, _ = gfal_run('list', {'files': [['7.0', 'file://%s' % tmp_path]]}, env=env)
    assert rc == 2 and lines[0]['id'] == '' and 'X509_USER_PROXY=' in lines[0]['Reason']
    env = dict(os.environ, X509_USER_PROXY_SRC=str(tmp_path / 'missing.pem'))
    env.pop('X509_USER_PROXY', None)
    rc, lines, _ = gfal_run('list', {'files': [['7.0', 'file://%s' % tmp_path]]}, env=env)
    assert rc == 0 and lines[0]['Code'] == 0


def _davs_request(site, method='PROPFIND', path='/', proxy=None, cadir=None):
    """One HTTPS request with Python's own ssl and http.client (independent of gfal2) -> status."""
    import http.client
    ctx = ssl.create_default_context(capath=cadir)
    if proxy:
        ctx.load_cert_chain(proxy)
    conn = http.client.HTTPSConnection('127.0.0.1', site['port'], context=ctx, timeout=10)
    try:
        conn.request(method, path, headers={'Depth': '1'})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# ---- WebDAV over HTTPS (davs://) on two sites with their own CAs, root:// with TLS ----
@pytest.fixture(scope='session')
def gfal_davs():
    """Two WebDAV sites, each trusting only its own CA, and site a's TLS-only root:// SE
    (testgrid/davs.py); started for the session, stopped at its end."""
    from testgrid import davs
    workdir = os.path.join(REPO, '.testgrid-pytest-davs')
    state = davs.start(workdir)
    yield state
    davs.stop(workdir)


@pytest.mark.once
def test_gfal_davs_sites_each_trust_only_their_own_ca(gfal_davs):
    """The test grid's WebDAV sites are what the gfal tests rely on."""
    certdir = gfal_davs['certdir']
    for name, other in (('a', 'b'), ('b', 'a')):
        site = gfal_davs['sites'][name]
        assert site['url'].startswith('davs://127.0.0.1:') and site['dn'] != gfal_davs['sites'][other]['dn']
        assert _davs_request(site, proxy=site['proxy'], cadir=certdir) == 207
        assert _davs_request(site, cadir=certdir) == 403                     # no certificate
        with pytest.raises((ssl.SSLError, ConnectionError)):                 # the other site's CA
            _davs_request(site, proxy=gfal_davs['sites'][other]['proxy'], cadir=certdir)
        with pytest.raises(ssl.SSLError):                                    # the client checks the host too
            _davs_request(site, proxy=site['proxy'], cadir=gfal_davs['sites'][other]['cadir'])
        assert os.stat(site['proxy']).st_mode & 0o077 == 0
    site = gfal_davs['sites']['a']
    assert _davs_request(site, proxy=site['proxies']['stranger'], cadir=certdir) == 403   # own CA, unmapped DN
    assert _davs_request(site, proxy=site['proxies']['reader'], cadir=certdir) == 207
    assert _davs_request(site, 'MKCOL', '/rw/by-reader/', proxy=site['proxies']['reader'], cadir=certdir) == 403
    assert _davs_request(site, 'MKCOL', '/rw/by-writer/', proxy=site['proxies']['writer'], cadir=certdir) == 201
    assert _davs_request(site, proxy=site['proxies']['writer'], cadir=certdir) == 403     # only /rw/
    assert _davs_request(site, path='/rw/', proxy=site['proxies']['writer'], cadir=certdir) == 207


@pytest.fixture
def davs_dir(gfal_davs, request):
    """A directory name for one test on each site (and the TLS SE), not created:
    {site: (URL ending in '/', local path)}."""
    name = 't_%s_%d' % (re.sub(r'\W', '_', request.node.name)[:50], time.time() * 1e6)
    found = dict((s, (rec['url'] + name + '/', os.path.join(rec['datadir'], name)))
                 for s, rec in gfal_davs['sites'].items())
    found['tls'] = (gfal_davs['tls']['url'] + name + '/', os.path.join(gfal_davs['tls']['datadir'], name))
    return found


def gfal_davs_env(davs, **creds):
    """A job's environment for the WebDAV sites: X509_CERT_DIR with both sites' CAs, as
    the pdm worker builds it, and the X509_USER_PROXY* given: 'a' (site a's user),
    'a:reader' (another of its users, testgrid/davs.py ROLES) or a file."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith('X509_'))
    env['X509_CERT_DIR'] = davs['certdir']
    for var, value in creds.items():
        site, _, role = value.partition(':')
        env[var] = davs['sites'][site]['proxies'][role or 'user'] if site in davs['sites'] else value
    return env


@pytest.mark.once
@pytest.mark.parametrize('site', ['a', 'b'])
def test_gfal_davs_every_job_type(gfal_davs, davs_dir, tmp_path, site):
    url, path = davs_dir[site]
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY=site)
    top = gfal_tree(str(tmp_path / 'tree'))
    rels = ['a.txt', '.hidden', 'sub/f1', 'sub/deep/f2']
    data = dict((rel, open(os.path.join(top, rel), 'rb').read()) for rel in rels)
    # MKDIR: parents created, an existing directory is fine
    rc, lines, _ = gfal_run('mkdir', {'base': url, 'dirs': [['5.1', 'tree/sub/deep'], ['5.2', 'tree/empty'],
                                                          ['5.3', 'tree/sub']]}, env=env)
    assert rc == 0 and lines == [gfal_ok('5.1'), gfal_ok('5.2'), gfal_ok('5.3')]
    assert os.path.isdir(os.path.join(path, 'tree', 'sub', 'deep'))
    # COPY up, each file's adler32 compared by gfal2 with the server's
    files = [['3.%d' % i, 'file://%s/%s' % (top, rel), url + 'tree/' + rel] for i, rel in enumerate(rels)]
    rc, lines, err = gfal_run('copy', {'files': files, 'options': {'checksum': 'adler32'}}, env=env)
    assert rc == 0 and lines == [gfal_ok(f[0]) for f in files], lines
    assert sorted(_gfal_monitor_sources(err)) == sorted(f[1] for f in files)
    for rel in rels:
        assert open(os.path.join(path, 'tree', rel), 'rb').read() == data[rel]
    # LIST depth 1, 2, -1; the checksums are the server's own
    root = url + 'tree'
    for depth, algo, keys in ((1, 'adler32', [root]),
                              (2, 'md5', [root, root + '/empty', root + '/sub']),
                              (-1, 'adler32', [root, root + '/empty', root + '/sub', root + '/sub/deep'])):
        rc, lines, _ = gfal_run('list', {'files': [['7.0', root]], 'options': {'depth': depth, 'checksum': algo}},
                                env=env)
        assert rc == 0 and lines[0]['Code'] == 0, lines
        listing = lines[0]['Listing']
        assert sorted(listing) == sorted(keys) and list(listing)[0] == root
        if depth == -1:
            assert list(listing).index(root + '/sub') + 1 == list(listing).index(root + '/sub/deep')
        assert listing.get(root + '/empty', []) == []
        for key, entries in listing.items():
            for e in entries:
                rel = (key[len(root) + 1:] + '/' + e['name']).lstrip('/')
                assert list(e)[:11] == GFAL_STAT_KEYS
                if rel in data:
                    assert os.path.stat.S_ISREG(e['st_mode']) and e['st_size'] == len(data[rel])
                    want = ('%08x' % zlib.adler32(data[rel]) if algo == 'adler32'
                            else hashlib.md5(data[rel]).hexdigest())
                    assert e[algo] == want, (rel, e)
                else:
                    assert os.path.stat.S_ISDIR(e['st_mode']) and algo not in e
    # a file as the root: listed under its parent
    rc, lines, _ = gfal_run('list', {'files': [root + '/sub/f1']}, env=env)
    assert rc == 0 and [e['name'] for e in lines[0][root + '/sub']] == ['f1']
    # RENAME (parents created), a missing source fails that entry only
    rc, lines, _ = gfal_run('rename', {'base': url, 'files': [['6.1', 'tree/a.txt', 'tree/moved/a.txt'],
                                                             ['6.2', 'tree/nope', 'tree/x']]}, env=env)
    assert rc == 1 and lines[0] == gfal_ok('6.1') and lines[1]['Code'] == 1 and lines[1]['id'] == '6.2'
    assert open(os.path.join(path, 'tree', 'moved', 'a.txt'), 'rb').read() == data['a.txt']
    # COPY down, md5 compared with the server's
    rc, lines, err = gfal_run('copy', {'files': [['3.9', root + '/moved/a.txt', 'file://%s/back/a.txt' % tmp_path]],
                                       'options': {'checksum': 'md5'}}, env=env)
    assert rc == 0 and lines == [gfal_ok('3.9')] and (tmp_path / 'back' / 'a.txt').read_bytes() == data['a.txt']
    assert _gfal_monitor_sources(err) == [root + '/moved/a.txt']
    # REMOVE: the files, then the directories (a directory with something in it stays)
    rc, lines, _ = gfal_run('remove', {'base': root + '/', 'files': [['4.1', 'moved/a.txt'], ['4.2', '.hidden'],
                                                                     ['4.3', 'sub/f1'], ['4.4', 'sub/deep/f2'],
                                                                     ['4.5', 'nope'], ['4.6', 'sub']],
                                       'dirs': [['4.7', 'sub'], ['4.8', 'sub/deep'], ['4.9', 'sub/'],
                                                ['4.10', 'empty'], ['4.11', 'moved']]}, env=env)
    assert rc == 1 and [l['Code'] for l in lines] == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0], lines
    assert os.listdir(os.path.join(path, 'tree')) == []


def _davs_log_mark(davs):
    return dict((s, os.path.getsize(rec['log'])) for s, rec in davs['sites'].items())


def _davs_log_since(davs, mark, site):
    with open(davs['sites'][site]['log'], errors='replace') as f:
        f.seek(mark[site])
        return f.read()


def _gfal_upload(davs, site, pairs):
    """Put local files on a site with a COPY job (its own user's credential)."""
    rc, lines, err = gfal_run('copy', {'files': [['file://%s' % src, dst] for src, dst in pairs]},
                              env=gfal_davs_env(davs, X509_USER_PROXY=site))
    assert rc == 0, (lines, err)


@pytest.mark.once
@pytest.mark.parametrize('site', ['a', 'b'])
def test_gfal_davs_third_party_copy_within_a_site(gfal_davs, davs_dir, tmp_path, site):
    """Within one site the copy is third-party: gfal2's default tries pull first; copy_mode
    asks for pull, push or streamed only. The site's TPC log says which mode ran."""
    url, path = davs_dir[site]
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY=site)
    payload = os.urandom(300000)
    (tmp_path / 'src').write_bytes(payload)
    _gfal_upload(gfal_davs, site, [(tmp_path / 'src', url + 'src')])
    for mode, event in ((None, 'PULL_START'), ('pull', 'PULL_START'), ('push', 'PUSH_START'), ('streamed', None)):
        mark = _davs_log_mark(gfal_davs)
        options = {'checksum': 'md5'}
        if mode:
            options['copy_mode'] = mode
        dst = url + 'tpc/%s' % mode
        rc, lines, err = gfal_run('copy', {'files': [['3.1', url + 'src', dst]], 'options': options}, env=env)
        assert rc == 0 and lines == [gfal_ok('3.1')], (mode, lines)
        assert open(os.path.join(path, 'tpc', str(mode)), 'rb').read() == payload
        assert _gfal_monitor_sources(err) == [url + 'src']
        tpc = [l for l in _davs_log_since(gfal_davs, mark, site).splitlines() if '_START' in l]
        assert [l.split('event=')[1].split(',')[0] for l in tpc] == ([event] if event else []), (mode, tpc)


@pytest.mark.once
def test_gfal_davs_cross_site_copy_with_two_credentials(gfal_davs, davs_dir, tmp_path):
    """A -> B with X509_USER_PROXY_SRC (site a's user) and _DST (site b's), as the pdm worker
    runs it. The sites' TPC agents trust only their own CA, so gfal2 tries pull (b's agent
    cannot check a's certificate) and push (nor a's b's) and streams each file through the
    client: a GET from a with a's credential, a PUT to b with b's."""
    (url_a, path_a), (url_b, path_b) = davs_dir['a'], davs_dir['b']
    sizes = [0, 1, 4096, 1 << 20, 3 * 1000 * 1000 + 7]
    for i, size in enumerate(sizes):
        (tmp_path / ('f%d' % i)).write_bytes(os.urandom(size))
    _gfal_upload(gfal_davs, 'a', [(tmp_path / ('f%d' % i), url_a + 'out/f%d' % i) for i in range(len(sizes))])
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b')
    files = [['3.%d' % i, url_a + 'out/f%d' % i, url_b + 'in/f%d' % i] for i in range(len(sizes))]
    mark = _davs_log_mark(gfal_davs)
    rc, lines, err = gfal_run('copy', {'files': files, 'options': {'checksum': 'adler32'}}, env=env)
    assert rc == 0 and lines == [gfal_ok(f[0]) for f in files], lines
    for i in range(len(sizes)):
        assert open(os.path.join(path_b, 'in', 'f%d' % i), 'rb').read() == (tmp_path / ('f%d' % i)).read_bytes()
    assert sorted(_gfal_monitor_sources(err)) == sorted(f[1] for f in files)
    # b's agent tried to pull each file and could not verify site a's host certificate
    pulls = [l for l in _davs_log_since(gfal_davs, mark, 'b').splitlines() if 'TPC_PullRequest' in l]
    assert sum('PULL_START' in l for l in pulls) == len(sizes) and not any('TRANSFER_SUCCESS' in l for l in pulls)
    assert any('SSL peer certificate' in l for l in pulls)
    # and back, B -> A, with the credentials the other way round, one file at a time
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='b', X509_USER_PROXY_DST='a')
    back = [['4.%d' % i, f[2], url_a + 'back/f%d' % i] for i, f in enumerate(files)]
    rc, lines, err = gfal_run('copy', {'files': back, 'options': {'checksum': 'md5', 'parallel': 1}}, env=env)
    assert rc == 0 and lines == [gfal_ok(f[0]) for f in back], lines
    assert sorted(os.listdir(os.path.join(path_a, 'back'))) == ['f%d' % i for i in range(len(sizes))]
    # third-party only, between the sites: refused file by file, nothing at the destination
    for mode in ('pull', 'push'):
        rc, lines, _ = gfal_run('copy', {'files': [['5.1', files[2][1], url_b + mode + '/f']],
                                         'options': {'copy_mode': mode}}, env=gfal_davs_env(
            gfal_davs, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b'))
        assert rc == 1 and lines[0]['Code'] == 1 and lines[0]['id'] == '5.1', lines
        assert not os.path.exists(os.path.join(path_b, mode, 'f'))


@pytest.mark.once
def test_gfal_davs_one_endpoint_on_both_sides_with_two_credentials(gfal_davs, davs_dir, tmp_path):
    """Source and destination on one server with different credentials: gfal2 binds them by
    URL prefix, so the server's root gets the destination's and each file's own URL its
    side's. Site a's reader may read but not write, its writer write (and read) only under
    /rw/: each mode works only if every request (and every macaroon request of a
    third-party copy) carries the right credential."""
    url, path = davs_dir['a']
    site = gfal_davs['sites']['a']
    out_url = site['url'] + 'rw/' + url[len(site['url']):]
    out_path = os.path.join(site['datadir'], 'rw', os.path.basename(path))
    payload = os.urandom(100000)
    (tmp_path / 'src').write_bytes(payload)
    _gfal_upload(gfal_davs, 'a', [(tmp_path / 'src', url + 'src')])
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='a:reader', X509_USER_PROXY_DST='a:writer')
    for mode in (None, 'pull', 'push', 'streamed'):
        options = {'copy_mode': mode} if mode else {}
        rc, lines, _ = gfal_run('copy', {'files': [['3.1', url + 'src', out_url + '%s/f' % mode]],
                                         'options': options}, env=env)
        assert rc == 0 and lines == [gfal_ok('3.1')], (mode, lines)
        assert open(os.path.join(out_path, str(mode), 'f'), 'rb').read() == payload
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='a:writer', X509_USER_PROXY_DST='a:reader')
    rc, lines, _ = gfal_run('copy', {'files': [['3.2', url + 'src', out_url + 'swapped/f']]}, env=env)
    assert rc == 1 and lines[0]['Code'] == 1 and '403' in lines[0]['Reason'], lines
    assert not os.path.exists(os.path.join(out_path, 'swapped', 'f'))


@pytest.mark.once
def test_gfal_davs_cross_site_copy_with_one_credential_fails_file_by_file(gfal_davs, davs_dir, tmp_path):
    (url_a, _), (url_b, path_b) = davs_dir['a'], davs_dir['b']
    (tmp_path / 'f').write_bytes(b'x' * 1000)
    _gfal_upload(gfal_davs, 'a', [(tmp_path / 'f', url_a + 'f%d' % i) for i in range(3)])
    files = [['3.%d' % i, url_a + 'f%d' % i, url_b + 'in/f%d' % i] for i in range(3)]
    b_root, a_root = alien.gfal_endpoint(url_b), alien.gfal_endpoint(url_a)
    proxy_a = gfal_davs['sites']['a']['proxy']
    for creds, note in (
            ({'X509_USER_PROXY_SRC': 'a'},
             '[credential for destination %s: no credential (X509_USER_PROXY_DST and X509_USER_PROXY unset)]' % b_root),
            ({'X509_USER_PROXY': 'a'}, 'destination %s: X509_USER_PROXY=%s' % (b_root, proxy_a)),
            ({'X509_USER_PROXY_DST': 'b'}, 'source %s: no credential (X509_USER_PROXY_SRC and X509_USER_PROXY unset)'
             % a_root)):
        rc, lines, _ = gfal_run('copy', {'files': files}, env=gfal_davs_env(gfal_davs, **creds))
        assert rc == 1 and [(l['id'], l['Code']) for l in lines] == [(f[0], 1) for f in files], (creds, lines)
        assert all(note in l['Reason'] for l in lines), (creds, lines)
        assert not os.path.exists(path_b) or os.listdir(path_b) in ([], ['in']) and \
            not os.listdir(os.path.join(path_b, 'in'))


@pytest.mark.once
def test_gfal_davs_refused_client_certificate(gfal_davs, davs_dir, tmp_path):
    (url_a, _), (url_b, path_b) = davs_dir['a'], davs_dir['b']
    (tmp_path / 'f').write_bytes(b'payload')
    _gfal_upload(gfal_davs, 'a', [(tmp_path / 'f', url_a + 'f')])
    a_root = alien.gfal_endpoint(url_a)
    # site b's credential at site a: refused in the TLS handshake (b's CA is unknown to a)
    proxy_b = gfal_davs['sites']['b']['proxy']
    rc, lines, _ = gfal_run('list', {'files': [['7.0', url_a]]}, env=gfal_davs_env(gfal_davs, X509_USER_PROXY='b'))
    assert rc == 1 and lines[0]['Code'] == 1 and lines[0]['id'] == '7.0'
    assert lines[0]['Reason'].endswith('[credential for %s: X509_USER_PROXY=%s]' % (a_root, proxy_b)), lines
    # a certificate of site a's CA whose DN site a does not know: HTTP 403
    stranger = gfal_davs['sites']['a']['proxies']['stranger']
    rc, lines, _ = gfal_run('mkdir', {'dirs': [['5.1', url_a + 'new']]}, env=gfal_davs_env(gfal_davs, X509_USER_PROXY=stranger))
    assert rc == 1 and '403' in lines[0]['Reason'] and 'X509_USER_PROXY=%s' % stranger in lines[0]['Reason']
    # the credentials swapped: gfal2 asks the destination first (does the file exist?), which
    # refuses; nothing reaches it
    rc, lines, _ = gfal_run('copy', {'files': [['3.1', url_a + 'f', url_b + 'f']]},
                            env=gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='b', X509_USER_PROXY_DST='a'))
    assert rc == 1 and lines[0]['Reason'].endswith('[credential for destination %s: X509_USER_PROXY_DST=%s]' % (
        alien.gfal_endpoint(url_b), gfal_davs['sites']['a']['proxy'])), lines
    assert not os.path.exists(os.path.join(path_b, 'f'))


@pytest.mark.once
def test_gfal_davs_checksum_mismatch_leaves_no_destination_file(gfal_davs, davs_dir, tmp_path):
    (url_a, path_a), (url_b, path_b) = davs_dir['a'], davs_dir['b']
    data = b'checked bytes\n' * 100
    (tmp_path / 'f').write_bytes(data)
    right = '%08x' % zlib.adler32(data)
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='a')
    rc, lines, err = gfal_run('copy', {'files': [['3.1', 'file://%s/f' % tmp_path, url_a + 'bad'],
                                                 ['3.2', 'file://%s/f' % tmp_path, url_a + 'good']],
                                       'options': {'checksum': 'adler32:deadbeef'}}, env=env)
    assert rc == 1 and [l['Code'] for l in lines] == [1, 1] and all('deadbeef' in l['Reason'] for l in lines)
    assert not os.path.exists(path_a) or os.listdir(path_a) == []
    assert _gfal_monitor_sources(err) == []
    rc, lines, _ = gfal_run('copy', {'files': [['3.3', 'file://%s/f' % tmp_path, url_a + 'good']],
                                     'options': {'checksum': 'adler32:' + right.upper()}}, env=env)
    assert rc == 0 and open(os.path.join(path_a, 'good'), 'rb').read() == data
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b')
    rc, lines, _ = gfal_run('copy', {'files': [['3.4', url_a + 'good', url_b + 'bad']],
                                     'options': {'checksum': 'md5:' + '0' * 32}}, env=env)
    assert rc == 1 and lines[0]['Code'] == 1 and '0' * 32 in lines[0]['Reason'].lower(), lines
    assert not os.path.exists(os.path.join(path_b, 'bad'))


def _gfal_copy_and_kill(davs, job, env, victim, watch):
    """Run a COPY job; SIGKILL site `victim`'s server once the file `watch` (a local path
    on the destination) holds 16 MiB; start it again. -> ({id: Code}, exit status)."""
    from testgrid import davs as davs_mod
    killed = False
    proc = subprocess.Popen([GFAL_PY, '-c', GFAL_RUNNER, 'copy'], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(watch) and os.path.getsize(watch) > (16 << 20):
                davs_mod.kill_server(davs['workdir'], victim)
                killed = True
                break
            time.sleep(0.005)
        out = proc.stdout.read()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        davs_mod.start_server(davs['workdir'], victim)
    assert killed, 'the large file was never seen being written'
    lines = [json.loads(l) for l in out.decode().splitlines()]
    assert [l['id'] for l in lines] == [f[0] for f in job['files']]
    return dict((l['id'], l['Code']) for l in lines), proc.returncode


@pytest.mark.once
def test_gfal_davs_server_dies_mid_copy(gfal_davs, davs_dir, tmp_path):
    """A server is killed (SIGKILL) while a large file goes through it: that file and the
    later ones it holds fail (Code 1), the others go on, and no half-written file is left: the destination
    keeps a file only once its upload was closed (gfal2 removes what it could not finish;
    a server killed while writing drops the file when it starts again)."""
    (url_a, path_a), (url_b, path_b), (url_t, path_t) = davs_dir['a'], davs_dir['b'], davs_dir['tls']
    small = os.urandom(50000)
    (tmp_path / 'small').write_bytes(small)
    os.makedirs(path_a)
    for name in ('big', 'small'):                  # on site a itself: a sparse file reads fast
        with open(os.path.join(path_a, name), 'wb') as f:
            f.write(small) if name == 'small' else f.truncate(768 << 20)
    gfal_chown_tree(path_a)
    local = 'file://%s/small' % tmp_path
    # 1. the source dies: site a, while its big file streams to site b
    plan = [url_a + 'small', local, url_a + 'small', local, url_a + 'big', local, url_a + 'small', local]
    job = {'files': [['3.%d' % i, src, url_b + 'f%d' % i] for i, src in enumerate(plan)], 'options': {'parallel': 1}}
    codes, rc = _gfal_copy_and_kill(gfal_davs, job, gfal_davs_env(
        gfal_davs, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b'), 'a', os.path.join(path_b, 'f4'))
    assert rc == 1 and [codes['3.%d' % i] for i in range(len(plan))] == [0, 0, 0, 0, 1, 0, 1, 0], codes
    for (ident, src, dst) in job['files']:
        on_b = os.path.join(path_b, dst.rsplit('/', 1)[1])
        if src == local:
            assert codes[ident] == 0 and open(on_b, 'rb').read() == small, ident
        elif codes[ident]:
            assert not os.path.exists(on_b), ident               # nothing half-written
        else:
            assert open(on_b, 'rb').read() == small
    # 2. the destination dies: site b, while a big file is written to it; the TLS SE goes on
    with open(str(tmp_path / 'big'), 'wb') as f:
        f.truncate(768 << 20)
    plan = [url_b, url_t, url_b, 'big', url_t, url_b, url_t]
    job = {'files': [['4.%d' % i, 'file://%s/%s' % (tmp_path, 'big' if dst == 'big' else 'small'),
                      (url_b if dst == 'big' else dst) + 'g%d' % i] for i, dst in enumerate(plan)],
           'options': {'parallel': 1}}
    codes, rc = _gfal_copy_and_kill(gfal_davs, job, gfal_davs_env(gfal_davs, X509_USER_PROXY_DST='b'),
                                    'b', os.path.join(path_b, 'g3'))
    assert rc == 1 and [codes['4.%d' % i] for i in range(len(plan))] == [0, 0, 0, 1, 0, 1, 0], codes
    for (ident, src, dst) in job['files']:
        name = dst.rsplit('/', 1)[1]
        if dst.startswith(url_t):
            assert codes[ident] == 0 and open(os.path.join(path_t, name), 'rb').read() == small
        elif codes[ident]:
            assert not os.path.exists(os.path.join(path_b, name)), ident
        else:
            assert open(os.path.join(path_b, name), 'rb').read() == small


@pytest.mark.once
def test_gfal_davs_timestamps_and_make_dirs(gfal_davs, davs_dir, tmp_path):
    url, path = davs_dir['a']
    env = gfal_davs_env(gfal_davs, X509_USER_PROXY='a')
    (tmp_path / 'f').write_text('old file')
    os.utime(str(tmp_path / 'f'), (1000000000, 1234567890))
    # to davs://: WebDAV cannot set a modification time; the copy succeeds with a warning
    rc, lines, err = gfal_run('copy', {'files': [['file://%s/f' % tmp_path, url + 'f']],
                                       'options': {'preserve_timestamp': True}}, env=env)
    warnings = [l for l in err.splitlines() if l.startswith('WARNING')]
    assert rc == 0 and len(warnings) == 1 and 'davs:// destination' in warnings[0] and url + 'f' in warnings[0]
    server_mtime = int(os.stat(os.path.join(path, 'f')).st_mtime)
    assert server_mtime != 1234567890
    # from davs:// to file://: the local copy gets the server's modification time
    rc, lines, err = gfal_run('copy', {'files': [[url + 'f', 'file://%s/back' % tmp_path]],
                                       'options': {'preserve_timestamp': True}}, env=env)
    assert rc == 0 and err.count('WARNING') == 0
    assert int(os.stat(str(tmp_path / 'back')).st_mtime) == server_mtime
    # make_dirs true: the directories are made first (MKCOL); false: none is made by the
    # client, but XrdHttp makes a PUT's missing parents itself (as xrootd does for root://)
    for opt, sub in ((True, 'made/by/client/f'), (False, 'made/by/server/f')):
        rc, lines, _ = gfal_run('copy', {'files': [['file://%s/f' % tmp_path, url + sub]],
                                         'options': {'make_dirs': opt}}, env=env)
        assert rc == 0 and open(os.path.join(path, sub)).read() == 'old file'


@pytest.mark.once
def test_gfal_roots_on_an_se_that_requires_tls(gfal_davs, davs_dir, tmp_path):
    url, path = davs_dir['tls']            # roots://127.0.0.1:PORT//name/
    plain = 'root' + url[len('roots'):]
    data = os.urandom(200000)
    (tmp_path / 'f').write_bytes(data)
    env = gfal_davs_env(gfal_davs)
    # encrypt: root:// is rewritten to roots://; a roots:// URL is used as it is
    rc, lines, err = gfal_run('copy', {'files': [['3.1', 'file://%s/f' % tmp_path, plain + 'enc'],
                                                 ['3.2', 'file://%s/f' % tmp_path, url + 'tls']],
                                       'options': {'encrypt': True, 'checksum': 'adler32'}}, env=env)
    assert rc == 0 and lines == [gfal_ok('3.1'), gfal_ok('3.2')], lines
    assert all(open(os.path.join(path, n), 'rb').read() == data for n in ('enc', 'tls'))
    rc, lines, _ = gfal_run('list', {'files': [url], 'options': {'checksum': 'adler32'}}, env=env)
    assert rc == 0 and sorted((e['name'], e['adler32']) for e in lines[0][url]) == \
        [(n, '%08x' % zlib.adler32(data)) for n in ('enc', 'tls')]
    rc, lines, _ = gfal_run('copy', {'files': [[url + 'tls', 'file://%s/back' % tmp_path]],
                                     'options': {'encrypt': True}}, env=env)
    assert rc == 0 and (tmp_path / 'back').read_bytes() == data
    # a client that cannot verify the SE's certificate gets no connection at all
    env['X509_CERT_DIR'] = gfal_davs['sites']['b']['cadir']
    rc, lines, _ = gfal_run('copy', {'files': [['file://%s/f' % tmp_path, url + 'unverified']]}, env=env)
    assert rc == 1 and 'TLS' in lines[0]['Reason'] and not os.path.exists(os.path.join(path, 'unverified'))


def pdm_worker_read(stdout, ids=None):
    """Read a job's stdout by the pdm Worker's rules (../shared/spec/gfal-jobs-reference.md
    section 1, StdOutDispatcher.handle_read of ic-hep/pdm): every line is a JSON object
    with an `id`; `domain` -> a transfer event, `transferred` -> monitoring, `Code` -> the
    result of element `id` (id "" = the whole job failed: the rest is not read), its
    `Listing` keys taken apart with urlsplit; anything else is an unknown dictionary.
    With `ids` (the job's element ids), a result must be for an element still waiting
    (the Worker pops its token: a KeyError for an unknown or a second result) and every
    element must have one. A KeyError or a non-JSON line here is what would stop the
    real Worker."""
    from urllib.parse import urlsplit
    results, job_failed = {}, None
    waiting = None if ids is None else set(ids)
    for line in stdout.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        ident = obj['id']
        if 'domain' in obj:
            '%s -- %s -- %s' % (obj['domain'], obj['stage'], obj['desc'])
        elif 'transferred' in obj:
            pass
        elif 'Code' in obj:
            if ident == '':
                job_failed = obj['Code']
                break
            for root in obj.get('Listing', {}):
                urlsplit(root).path
            if waiting is not None:
                waiting.remove(ident)
            results[ident] = (obj['Code'], obj.get('Listing'))
        else:
            raise AssertionError('unknown dictionary type: %s' % line)
    assert job_failed is not None or not waiting, 'elements without a result: %s' % waiting
    return results, job_failed


@pytest.mark.once
def test_gfal_davs_jobs_read_under_the_pdm_worker_rules(gfal_davs, davs_dir, tmp_path):
    """Every line of every job kind on the WebDAV sites, read as the pdm Worker reads
    them (pdm_worker_read, in the issue-10 section): element ids as it makes them."""
    (url_a, _), (url_b, _) = davs_dir['a'], davs_dir['b']
    (tmp_path / 'f').write_bytes(b'pdm')
    two = gfal_davs_env(gfal_davs, X509_USER_PROXY_SRC='a', X509_USER_PROXY_DST='b')
    one_a = gfal_davs_env(gfal_davs, X509_USER_PROXY='a')
    jobs = [
        ('mkdir', {'files': [], 'dirs': [['2.1', url_a + 'd'], ['2.2', url_a + 'd/e']]}, one_a, {'2.1': 0, '2.2': 0}),
        ('copy', {'files': [['3.1', 'file://%s/f' % tmp_path, url_a + 'd/f'],
                            ['3.2', 'file://%s/missing' % tmp_path, url_a + 'd/g']]}, one_a, {'3.1': 0, '3.2': 1}),
        ('list', {'files': [['1.0', url_a + 'd']], 'options': {'depth': -1}}, one_a, {'1.0': 0}),
        ('copy', {'files': [['3.3', url_a + 'd/f', url_b + 'x/f'], ['3.4', url_a + 'd/nope', url_b + 'x/g']],
                  'options': {'overwrite': False}}, two, {'3.3': 0, '3.4': 1}),
        ('copy', {'files': [['3.5', url_a + 'd/f', url_b + 'y/f']]}, gfal_davs_env(gfal_davs, X509_USER_PROXY='a'),
         {'3.5': 1}),
        ('rename', {'files': [['4.1', url_a + 'd/f', url_a + 'd/f2']]}, one_a, {'4.1': 0}),
        ('list', {'files': [['1.1', url_a + 'nothing']]}, one_a, {'1.1': 1}),
        ('remove', {'files': [['5.1', url_a + 'd/f2']], 'dirs': [['5.2', url_a + 'd/e/'], ['5.3', url_a + 'd/']]},
         one_a, {'5.1': 0, '5.2': 0, '5.3': 0}),
    ]
    for jobtype, job, env, expected in jobs:
        proc = subprocess.run([GFAL_PY, '-c', GFAL_RUNNER, jobtype], input=json.dumps(job).encode(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
        results, job_failed = pdm_worker_read(proc.stdout.decode(), expected)
        assert job_failed is None and dict((k, v[0]) for k, v in results.items()) == expected, (jobtype, proc)
        assert proc.returncode == (1 if 1 in expected.values() else 0)
        if jobtype == 'list' and not expected['1.0' if '1.0' in expected else '1.1']:
            assert list(results['1.0'][1]) == [url_a + 'd', url_a + 'd/e']
    # a credential file that is not there: one line for the whole job, nothing done
    env = dict(two, X509_USER_PROXY_DST=str(tmp_path / 'gone.pem'))
    proc = subprocess.run([GFAL_PY, '-c', GFAL_RUNNER, 'copy'], env=env, timeout=60,
                                input=json.dumps({'files': [['3.9', url_a + 'd/f', url_b + 'z/f']]}).encode(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert (proc.returncode,) + pdm_worker_read(proc.stdout.decode(), ['3.9']) == (2, {}, 1)


# ===== hostile names and payloads (issue 10): bounded parsing, terminal-safe output, per-file name refusal =====


def test_gfal_every_job_kind_reads_under_the_pdm_worker_rules(tmp_path):
    base = 'file://%s' % tmp_path
    (tmp_path / 'a').write_text('A')
    (tmp_path / 'd').mkdir()
    jobs = [
        ('list', {'files': [['1.0', base + '/d']]}, {'1.0': 0}),
        ('list', {'files': [['1.1', base + '/missing']]}, {'1.1': 1}),
        ('mkdir', {'files': [], 'dirs': [['2.1', base + '/new'], ['2.2', base + '/a/under_a_file']]},
         {'2.1': 0, '2.2': 1}),
        ('copy', {'files': [['3.1', base + '/a', base + '/b'], ['3.2', base + '/missing', base + '/c']]},
         {'3.1': 0, '3.2': 1}),
        ('rename', {'files': [['4.1', base + '/b', base + '/b2'], ['4.2', base + '/missing', base + '/x']]},
         {'4.1': 0, '4.2': 1}),
        ('remove', {'files': [['5.1', base + '/b2'], ['5.2', base + '/missing']], 'dirs': [['5.3', base + '/new']]},
         {'5.1': 0, '5.2': 1, '5.3': 0}),
    ]
    for jobtype, job, expected in jobs:
        proc = subprocess.run([GFAL_PY, '-c', GFAL_RUNNER, jobtype], input=json.dumps(job).encode(),
                              capture_output=True, timeout=60)
        results, job_failed = pdm_worker_read(proc.stdout.decode())
        assert job_failed is None and {k: v[0] for k, v in results.items()} == expected, (jobtype, proc)
        assert proc.returncode == (1 if 1 in expected.values() else 0)
    # job errors: one line, id "", exit 2 -- every kind of them
    for jobtype, text in (('copy', '{not json'), ('copy', '{"files": []}'), ('list', '{"options": {"x": 1}}'),
                          ('mkdir', '{"dirs": []}'), ('chmod', '{}'), ('list', '[' * 100000),
                          ('remove', '{"files": [[1, 2, 3, 4]]}')):
        proc = subprocess.run([GFAL_PY, '-c', GFAL_RUNNER, jobtype], input=text.encode(),
                              capture_output=True, timeout=60)
        results, job_failed = pdm_worker_read(proc.stdout.decode())
        assert (proc.returncode, results, job_failed) == (2, {}, 1), (jobtype, text, proc)
