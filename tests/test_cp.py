"""cp against the test grid: uploads, downloads, verification, archive members."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import alien
from conftest import (
    ALIEN, REPO, _rc_entries, _rc_files, _tg_call, _tg_ok, _tg_ws, cpx, grid_dir, h13_debug_requests,
    one_line_error, run_cli, write)


# ===== round trips, recursion, naming =====


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
    p = run_cli(['stat', g + 'one'], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert hashlib.md5(b'x').hexdigest() in p.stdout
    assert not [n for n in os.listdir(str(out)) if 'alienpy-part' in n]
    # %ALIEN is the home directory; -y 2 reads from both replicas at once (metalink)
    rel = g[len(grid_state['home']):]
    p = cpx(cpenv, '-y', '2', '%ALIEN/' + rel + 'ünï cødé ☃.dat', 'file:%s/y.dat' % out)
    assert p.returncode == 0 and (out / 'y.dat').read_bytes() == files['ünï cødé ☃.dat'], p
    # cat prints the content; a relative LFN is expanded against the cwd
    p = run_cli(['cd %s; cat "with space.txt"' % g], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert (p.returncode, p.stdout) == (0, 'spaces\n'), p
    p = run_cli(['less', g + 'with space.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True)      # not a terminal: printed like cat
    assert (p.returncode, p.stdout) == (0, 'spaces\n'), p
    p = run_cli(['cat', g + 'missing.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 2 and one_line_error(p), p
    assert not [n for n in os.listdir(cpenv['TMPDIR']) if n.startswith('alienpy-')]   # temp files removed


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
    # -dst DIR: several sources, each below the sources' common directory
    p = cpx(cpenv, '-dst', 'file:%s/dstmode' % tmp_path, g + 'a.log', g + 'sub/c.log', g + 'sub/deep')
    assert p.returncode == 0 and '3/3 files copied' in p.stdout, p
    assert sorted(os.path.relpath(os.path.join(r, f), str(tmp_path / 'dstmode'))
                  for r, _, fs in os.walk(str(tmp_path / 'dstmode')) for f in fs) == \
        ['a.log', 'sub/c.log', 'sub/deep/d.txt']
    # client-side filters on the listing (find -f fields)
    assert get('-exclude', 'sub/', g, '') == ['.hidden', 'a.log', 'b.root']
    assert get('-exclude_re', r'\.(log|root)$', g, '') == ['.hidden', 'sub/deep/d.txt']
    assert get('-maxdepth', 0, '-minsize', 6, '-maxsize', 6, g, '') == ['b.root']   # contents are the names
    assert get('-mindepth', 2, '-user', 'jalien', g, '') == ['sub/deep/d.txt']
    p = cpx(cpenv, '-min-ctime', int(time.time() * 1000) + 3600000, g, 'file:%s/none/' % tmp_path)
    assert p.returncode == alien.EX_ENOMSG and 'no files found' in p.stderr, p      # nothing that new
    # dry run: the plan, nothing copied
    p = cpx(cpenv, '-dryrun', '-glob', '*.log', g, 'file:%s/dry/' % tmp_path)
    assert p.returncode == 0 and p.stdout.count(' -> ') == 2 and not os.path.exists(str(tmp_path / 'dry')), p
    # recursive upload with a filter and -parent
    p = cpx(cpenv, '-name', 'ext_log', '-parent', 1, 'file:%s/sub/' % src, g + 'up/')
    assert p.returncode == 0, p
    p = run_cli(['find', g + 'up/', '*'], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.stdout.split() == [g + 'up/sub/c.log'], p
    p = cpx(cpenv, '-exclude_re', 'log', '-maxdepth', 0, 'file:%s/sub/' % src, g + 'up2/')
    assert p.returncode == 0, p
    assert run_cli(['find', g + 'up2/', '*'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout.split() == [g + 'up2/myfile_run12.root']
    p = cpx(cpenv, '-select', '[', g, 'file:%s/bad/' % tmp_path)
    assert p.returncode == alien.EX_USAGE and one_line_error(p), p


# ===== specifiers, usage errors, fail-over, upload routing =====


SE1, SE2 = 'LOCALHOST::JTESTSITE::FIRSTSE', 'LOCALHOST::JTESTSITE::SECONDSE'


def test_cp_input_file_specifiers_and_overwrite(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'in')
    a = write(tmp_path / 'a.txt', b'aaa')
    b = write(tmp_path / 'b c.txt', b'bbb')
    lst = write(tmp_path / 'list.txt', ('# uploads\n\nfile:%s %sa.txt@disk:1,%s\n"file:%s" "%sb c.txt@disk:1,!%s"\n'
                                       'a b c\n' % (a, g, SE2, b, g, SE2)).encode())
    p = cpx(cpenv, '-input', lst)
    assert p.returncode == 0 and '2/2 files copied' in p.stdout and 'skipped' in p.stderr, p
    where = run_cli(['whereis', g + 'a.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout
    assert SE2 in where and SE1 not in where
    where = run_cli(['whereis', g + 'b c.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout
    assert SE1 in where and SE2 not in where
    # identical destination: skipped; -f copies again; different content replaces it
    p = cpx(cpenv, 'file:' + a, g + 'a.txt')
    assert p.returncode == 0 and '1 already present' in p.stdout, p
    p = cpx(cpenv, '-f', 'file:' + a, g + 'a.txt')
    assert p.returncode == 0 and '1/1 files copied' in p.stdout, p
    write(tmp_path / 'a.txt', b'new content')
    p = cpx(cpenv, 'file:' + a, g + 'a.txt')
    assert p.returncode == 0 and '1/1 files copied' in p.stdout, p
    assert run_cli(['cat', g + 'a.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout == 'new content\n'
    assert '.alienpy-part' not in run_cli(['ls', '-a', g], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout
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


def replica_file(grid_state, env, lfn, se):
    """Path on disk of the replica of lfn on se."""
    p = run_cli(['whereis', lfn], env=env, cwd=env['PWD'], quote=True)
    for line in p.stdout.splitlines():
        if se in line:
            pfn = line.split('pfn =>')[1].strip()
            rel = pfn.split('//', 2)[2]
            datadir = [s for s in grid_state['ses'] if s['name'] == se][0]['datadir']
            return os.path.join(datadir, rel)
    raise AssertionError('no replica of %s on %s: %s' % (lfn, se, p.stdout))


@pytest.mark.parametrize('size', [300000, 5 * 2 ** 20 + 1000])   # XRootD's copy, our streamed download
def test_cp_download_fails_over_and_detects_corruption(cpenv, grid_state, tmp_path, size):
    from testgrid import grid
    g = grid_dir(grid_state, 'fo%d' % size)
    data = os.urandom(size)
    f = write(tmp_path / 'f.bin', data)
    assert cpx(cpenv, 'file:' + f, g + 'f.bin@disk:2').returncode == 0
    out = tmp_path / 'out'
    grid.stop_se(grid_state['workdir'], SE1)
    try:
        p = cpx(cpenv, g + 'f.bin', 'file:%s/' % out)
        assert p.returncode == 0 and (out / 'f.bin').read_bytes() == data, p
    finally:
        grid.start_se(grid_state['workdir'], SE1)
    # one corrupted replica: the other one is delivered
    r1 = replica_file(grid_state, cpenv, g + 'f.bin', SE1)
    with open(r1, 'r+b') as fh:
        fh.seek(1000)
        fh.write(b'CORRUPT')
    p = cpx(cpenv, '-f', g + 'f.bin', 'file:%s/second.bin' % out)
    assert p.returncode == 0 and (out / 'second.bin').read_bytes() == data, p
    # both corrupted: nothing delivered, an existing file kept, exit code non-zero
    r2 = replica_file(grid_state, cpenv, g + 'f.bin', SE2)
    with open(r2, 'r+b') as fh:
        fh.seek(5)
        fh.write(b'CORRUPT')
    write(out / 'kept.bin', b'old')
    for dst in ('new.bin', 'kept.bin'):
        p = cpx(cpenv, g + 'f.bin', 'file:%s/%s' % (out, dst))
        assert p.returncode == 1 and ('CheckSum' in p.stderr or 'md5 mismatch' in p.stderr), p
        assert '0/1 files copied' in p.stderr, p
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
        where = run_cli(['whereis', g + 'one.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout
        assert SE2 in where and SE1 not in where
        # -norecovery: no second booking, so nothing stored and no catalogue entry
        p = cpx(cpenv, '-norecovery', 'file:' + f, g + 'norec.txt@disk:1,' + SE1)
        assert p.returncode == 1 and run_cli(['stat', g + 'norec.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).returncode == 2, p
        p = cpx(cpenv, '-strictspec', 'file:' + f, g + 'strict.txt@disk:1,' + SE2)
        assert p.returncode == 0, p
        # two replicas wanted, only one SE left: stored once, with a notice
        p = cpx(cpenv, 'file:' + f, g + 'two.txt')
        assert p.returncode == 0 and '1 of 2 replicas' in p.stderr, p
        grid.stop_se(grid_state['workdir'], SE2)
        p = cpx(cpenv, 'file:' + f, g + 'none.txt')
        assert p.returncode == 1 and 'Connection' in p.stderr and '0/1 files copied' in p.stderr, p
        assert run_cli(['stat', g + 'none.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).returncode == 2
    finally:
        grid.start_se(grid_state['workdir'], SE1)
        grid.start_se(grid_state['workdir'], SE2)
    grid.set_faults(grid_state['workdir'], {'commit': 'refuse'})
    try:
        p = cpx(cpenv, 'file:' + f, g + 'refused.txt')
    finally:
        grid.set_faults(grid_state['workdir'], None)
    assert p.returncode == 1 and 'commit refused' in p.stderr, p
    assert run_cli(['stat', g + 'refused.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).returncode == 2


def test_without_xrootd_cp_says_what_to_install(cpenv, grid_state, tmp_path):
    code = ('import sys, runpy; sys.modules["XRootD"] = None; sys.argv = ["alien.py"] + sys.argv[1:]; '
            'runpy.run_path(%r, run_name="__main__")' % ALIEN)
    f = write(tmp_path / 'f.txt', b'x')
    p = subprocess.run([sys.executable, '-c', code, 'cp', 'file:' + f, grid_state['home']], env=cpenv,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and one_line_error(p) and 'pip install xrootd' in p.stderr, p
    p = subprocess.run([sys.executable, '-c', code, 'pwd'], env=cpenv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == grid_state['home'] + '\n', p


# ===== without optional packages, cold start =====


def test_bare_copy_without_any_package_talks_to_the_grid(cenv, grid_state, tmp_path):
    """A curl'd alien.py on a worker node with no packages: -I -S hides site-packages."""
    copy = tmp_path / 'alien.py'
    shutil.copy(ALIEN, str(copy))
    cenv = {k: v for k, v in cenv.items() if k != 'ALIENPY_TRANSPORT'}  # no packages: our own websocket
    p = subprocess.run([sys.executable, '-I', '-S', str(copy), 'pwd; whoami'], env=cenv,
                       capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\njalien\n'), p.stderr
    p = subprocess.run([sys.executable, '-I', '-S', str(copy), 'cp', '/x', 'file:/tmp/x'], env=cenv,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and one_line_error(p) and 'pip install xrootd' in p.stderr, p


def test_cold_cp_of_an_absolute_path_sends_no_pwd(cenv, grid_state, tmp_path):
    src = tmp_path / 'abs.dat'
    src.write_bytes(b'abs')
    lfn = grid_state['home'] + 'abs_%d.dat' % os.getpid()
    log = tmp_path / 'debug.log'
    p = run_cli(['cp', '-quiet', 'file:%s' % src, lfn], env=dict(cenv, ALIENPY_DEBUG='1', ALIENPY_DEBUG_FILE=str(log)))
    assert p.returncode == 0, p.stderr
    sent = [json.loads(line.split(' request ', 1)[1])['command'] for line in log.read_text().splitlines()
            if ' request ' in line]
    assert 'pwd' not in sent and sent[0] == 'stat', sent


# ===== the reference's options, re-runs, Ctrl-C =====


def test_cp_reference_options_on_the_grid(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'h13opts')
    src = tmp_path / 'src'
    write(src / 'a.txt', b'a' * 100)
    write(src / 'b.txt', b'b' * 200)
    write(src / 'run.sh', b'#!/bin/sh\necho hi\n')
    log = str(tmp_path / 'dbg.log')
    p = run_cli(['cp', '-v', '-s', '-c', '-w', '-wh', '-d', '-xrdcp', '-cksum', '-a', '-ratethreshold', '1000000000', '-retry', '1', '-fastcheck', '-skipmd5', '-debugfile', log, 'file:' + str(src / 'a.txt'), 'file:' + str(src / 'b.txt'), 'file:' + str(src / 'run.sh'), g], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 0 and '3/3 files copied' in p.stdout, p
    notes = p.stderr.splitlines()
    assert len(notes) == 2 and '-skipmd5' in notes[0] and '-fastcheck' in notes[1], p.stderr
    access = [r['options'] for r in h13_debug_requests(log) if r['command'] == 'access']
    specs = {o[o.index('write-once') + 1].rsplit('/', 1)[1]: o[-1] for o in access if 'write-once' in o}
    assert specs == {'a.txt': 'disk:2', 'b.txt': 'disk:2', 'run.sh': 'disk:4'}, access
    p = run_cli(['cp', '-tpc', g + 'a.txt', 'file:' + str(tmp_path / 'x')], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 1 and one_line_error(p) and '-tpc' in p.stderr
    p = run_cli(['cp', g + 'a.txt', g + 'b.txt', 'file:' + str(tmp_path / 'nodir')], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 22 and one_line_error(p)
    out = tmp_path / 'out'
    p = run_cli(['cp', '-http', '-site', 'JTestSite', '-e', 'b*t', '-debugfile', log, g, 'file:%s/' % out], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 0 and '2/2 files copied' in p.stdout, p
    assert sorted(os.listdir(str(out))) == ['a.txt', 'run.sh']   # the content of g/
    reqs = h13_debug_requests(log)
    assert [r['options'] for r in reqs if r['command'] == 'setSite'][:1] == [['JTestSite']]
    assert all('-u' in r['options'] for r in reqs if r['command'] == 'access')
    # -site only wraps the copy: -json gives the per-file states as without it
    p = run_cli(['-json', 'cp', '-site', 'JTestSite', g + 'a.txt', 'file:%s/' % out], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 0 and [r['state'] for r in json.loads(p.stdout)['results']] == ['present'], p
    p = run_cli(['cp', g + 'a.txt', 'file:' + str(tmp_path / 'y')], env=dict(cpenv, XRD_CPRETRY='x'), cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 22 and one_line_error(p) and 'XRD_CPRETRY' in p.stderr


def test_cp_rerun_skips_by_xattrs_and_reverifies_changed_bytes(cpenv, grid_state, tmp_path, monkeypatch):
    g = grid_dir(grid_state, 'h13x')
    src = tmp_path / 'src'
    for i in range(3):
        write(src / ('f%d' % i), os.urandom(1000 + i))
    assert cpx(cpenv, 'file:%s/' % src, g).returncode == 0
    out = tmp_path / 'out'
    p = cpx(cpenv, g, 'file:%s/' % out)
    assert p.returncode == 0 and '3/3 files copied' in p.stdout, p
    f0 = out / 'f0'
    x = {k: os.getxattr(str(f0), k).decode() for k in os.listxattr(str(f0))}
    assert x['user.lfn'] == g + 'f0' and x['user.size'] == '1000' and len(x['user.guid']) == 36
    assert x['user.md5'] == hashlib.md5((src / 'f0').read_bytes()).hexdigest()
    # in this process, to see that nothing is hashed and nothing is asked for access
    env = {k: v for k, v in cpenv.items()}
    monkeypatch.chdir(cpenv['PWD'])
    hashed = []
    real_md5 = alien.md5_file
    monkeypatch.setattr(alien, 'md5_file', lambda path, *a: hashed.append(path) or real_md5(path, *a))
    s = alien.Session(environ=env)
    try:
        r = s.run('cp -quiet %s file:%s/' % (g, out))
        assert r.exitcode == 0 and hashed == [], (r, hashed)
        # same size, new bytes and a new mtime: hashed, found wrong, copied again
        f0.write_bytes(os.urandom(1000))
        r = s.run('cp %s file:%s/' % (g, out))
        assert r.exitcode == 0 and '1/3 files copied' in r.out and '2 already present' in r.out, r
        assert hashed == [str(f0)]
        assert f0.read_bytes() == (src / 'f0').read_bytes()
    finally:
        s.close()


def _interrupted(env, attempt, tries=3):
    """SIGINT a copy once it has started -> (proc, stdout, stderr, where). attempt() gives
    (command, started, where) for a fresh destination. A copy that ended on its own before
    the signal (exit 0: a loaded machine let it finish) proves nothing about Ctrl-C, so it
    is tried again, up to tries times."""
    for _ in range(tries):
        cmd, started, where = attempt()
        proc = subprocess.Popen(cmd, env=env, cwd=env['PWD'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        while proc.poll() is None and not started():
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            break
    return proc, out, err, where


def test_ctrl_c_ends_a_copy_with_its_summary(cpenv, grid_state, service_back, tmp_path):
    from testgrid import grid
    files = _rc_files(tmp_path / 'src', 40)
    grid.set_faults(service_back, {'commit': 'delay:0.05'})

    def attempt():
        g = grid_dir(grid_state, 'ctrlc')
        return ([sys.executable, ALIEN, 'cp', '-json', 'file:%s/' % (tmp_path / 'src'), g + '@disk:1'],
                lambda: len(_rc_entries(grid_state, g)) >= 5, g)
    proc, out, err, g = _interrupted(cpenv, attempt)
    assert proc.returncode == 130 and 'cp: interrupted' in err and 'not attempted' in err.splitlines()[-1], err
    rows = json.loads(out)['results']
    assert len(rows) == len(files) and set(r['state'] for r in rows) <= {'copied', 'failed', 'not attempted'}
    copied = sorted(r['dst'] for r in rows if r['state'] == 'copied')
    assert copied and sorted(_rc_entries(grid_state, g)) == copied  # nothing counted that is not there, and back


# ===== large files: the streamed, verified download =====


def _stream_job(env, lfn, target, md5=None):
    """A CopyJob reading lfn's first replica into target, as cp_download makes it."""
    s = alien.Session(environ=env)
    try:
        r = s.request('access', ['read', lfn], nomsg=True).results[0]
    finally:
        s.close()
    return alien.CopyJob(alien.grid_url(r['url'], r['envelope']), target, int(r['size']), md5 or r['md5'], 1, None)


def test_streamed_download_puts_many_chunks_in_order_and_checks_the_md5(cpenv, grid_state, tmp_path, monkeypatch):
    g = grid_dir(grid_state, 'stream')
    data = os.urandom(5 * 2 ** 20 + 12345)
    assert cpx(cpenv, 'file:' + write(tmp_path / 'f.bin', data), g + 'f.bin@disk:1').returncode == 0
    monkeypatch.setattr(alien, 'STREAM_CHUNK', 2 ** 19 + 3)   # 11 reads, 3 in flight, the last one short
    monkeypatch.setattr(alien, 'STREAM_READS', 3)
    alien._stream_download(_stream_job(cpenv, g + 'f.bin', str(tmp_path / 'out')), {}, None)
    assert (tmp_path / 'out').read_bytes() == data
    # a wrong md5 is found once every byte is hashed, before anyone renames the file
    with pytest.raises(alien.AlienError, match='md5 mismatch'):
        alien._stream_download(_stream_job(cpenv, g + 'f.bin', str(tmp_path / 'bad'), '0' * 32), {}, None)
    # the target is private and fresh: never written through an existing name
    with pytest.raises(alien.AlienError, match='File exists'):
        alien._stream_download(_stream_job(cpenv, g + 'f.bin', str(tmp_path / 'out')), {}, None)
    assert (tmp_path / 'out').read_bytes() == data


def _file_size_limit(limit):
    def apply():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_streamed_download_write_error_tries_the_other_replica_and_leaves_nothing(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'efbig')
    data = os.urandom(6 * 2 ** 20)
    assert cpx(cpenv, 'file:' + write(tmp_path / 'f.bin', data), g + 'f.bin@disk:2').returncode == 0
    out = tmp_path / 'out'
    out.mkdir()
    p = run_cli(['cp', g + 'f.bin', 'file:%s/' % out], env=cpenv, cwd=cpenv['PWD'],
                preexec_fn=_file_size_limit(2 ** 20))
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p
    err = [line for line in p.stderr.splitlines() if 'cannot write' in line]
    assert len(err) == 1 and err[0].count('File too large') == 2 and SE1 in err[0] and SE2 in err[0], p.stderr
    assert os.listdir(str(out)) == []   # no destination, no temp file


def _vr_corrupt(grid_state, cpenv, lfn, se):
    with open(replica_file(grid_state, cpenv, lfn, se), 'r+b') as fh:
        fh.seek(100)
        fh.write(b'CORRUPT')


def _vr_first_se(cpenv, lfn):
    s = alien.Session(environ=cpenv)
    try:
        return s.request('access', ['read', lfn], nomsg=True).results[0]['se']
    finally:
        s.close()


def _vr_upload(cpenv, grid_state, tmp_path, name, n, spec='@disk:2'):
    """n files of ~10 KiB uploaded into a fresh grid directory -> (dir, {name: bytes})."""
    g = grid_dir(grid_state, name)
    files = {'f%02d.bin' % i: os.urandom(10240 + i) for i in range(n)}
    for k, v in files.items():
        write(tmp_path / name / k, v)
    p = cpx(cpenv, 'file:%s/' % (tmp_path / name), g + spec)
    assert p.returncode == 0, p
    return g, files


# ===== many small downloads without a CopyProcess (VerifiedRead) =====


def test_small_download_md5_mismatch_is_never_renamed_and_the_other_replica_is_read(cpenv, grid_state, tmp_path):
    g, files = _vr_upload(cpenv, grid_state, tmp_path, 'vrmd5', 8)
    for k in ('f00.bin', 'f01.bin', 'f02.bin'):   # the replica read first is bad
        _vr_corrupt(grid_state, cpenv, g + k, _vr_first_se(cpenv, g + k))
    for se in (SE1, SE2):                          # both replicas of f03 are bad
        _vr_corrupt(grid_state, cpenv, g + 'f03.bin', se)
    out = tmp_path / 'out'
    write(out / 'f03.bin', b'an older copy')
    p = cpx(cpenv, '-f', g, 'file:%s/' % out)
    assert p.returncode == 1 and '7/8 files copied' in p.stderr, p
    bad = [line for line in p.stderr.splitlines() if 'f03.bin' in line]
    assert len(bad) == 1 and bad[0].count('md5 mismatch') == 2 and SE1 in bad[0] and SE2 in bad[0], p.stderr
    assert (out / 'f03.bin').read_bytes() == b'an older copy'   # never replaced by bad bytes
    for k, v in files.items():
        if k != 'f03.bin':
            assert (out / k).read_bytes() == v, k
            assert os.getxattr(str(out / k), 'user.md5').decode() == hashlib.md5(v).hexdigest()
    assert sorted(os.listdir(str(out))) == sorted(files)       # no part file left


def test_small_download_se_down_uses_the_other_replica_and_a_lone_replica_fails(cpenv, grid_state, tmp_path):
    from testgrid import grid
    g, files = _vr_upload(cpenv, grid_state, tmp_path, 'vrdown', 6)
    lone = write(tmp_path / 'lone.bin', os.urandom(3000))
    assert cpx(cpenv, 'file:' + lone, g + 'lone.bin@disk:1,' + SE1).returncode == 0
    out = tmp_path / 'out'
    grid.stop_se(grid_state['workdir'], SE1)
    try:
        t0 = time.monotonic()
        p = cpx(cpenv, '-retry', '1', g, 'file:%s/' % out)
        took = time.monotonic() - t0
    finally:
        grid.start_se(grid_state['workdir'], SE1)
    assert p.returncode == 1 and '6/7 files copied' in p.stderr and took < 30, (took, p)
    line = [x for x in p.stderr.splitlines() if 'lone.bin' in x]
    assert len(line) == 1 and SE1 in line[0], p.stderr
    assert sorted(os.listdir(str(out))) == sorted(files)
    for k, v in files.items():
        assert (out / k).read_bytes() == v, k


def test_ctrl_c_during_many_small_downloads_leaves_no_part_file(cpenv, grid_state, service_back, tmp_path):
    from testgrid import grid
    g, files = _vr_upload(cpenv, grid_state, tmp_path, 'vrintr', 40, '@disk:1')
    outs = []

    def attempt():
        out = tmp_path / ('out%d' % len(outs))
        outs.append(out)
        return ([sys.executable, ALIEN, 'cp', '-json', '-T', '4', g, 'file:%s/' % out],
                lambda: os.path.isdir(str(out)) and len([n for n in os.listdir(str(out)) if 'part' not in n]) >= 3,
                out)
    grid.set_faults(service_back, {'access': 'delay:0.05'})
    try:
        proc, out_text, err, out = _interrupted(cpenv, attempt)
    finally:
        grid.set_faults(service_back, None)
    assert proc.returncode == 130 and 'not attempted' in err.splitlines()[-1], err
    rows = json.loads(out_text)['results']
    copied = sorted(os.path.basename(r['dst']) for r in rows if r['state'] == 'copied')
    assert copied and sorted(os.listdir(str(out))) == copied, (err, rows)  # no part file, nothing half-written
    for k in copied:
        assert (out / k).read_bytes() == files[k]


ZIP_MEMBERS = {'stored.bin': os.urandom(20000),                        # ZIP_STORED
               'deflated.txt': b'job output line, compressible\n' * 2000,   # ZIP_DEFLATED
               'bad.txt': b'the catalogue md5 of this member is wrong\n' * 50}


@pytest.fixture
def zip_members(cpenv, grid_state, tmp_path):
    """A real zip uploaded with alien.py cp (2 replicas) and its members registered
    -> (archive LFN, {member: LFN}); bad.txt is registered with a wrong md5."""
    import zipfile
    from testgrid import grid
    z = str(tmp_path / 'root_archive.zip')
    with zipfile.ZipFile(z, 'w') as w:
        for name, data in ZIP_MEMBERS.items():
            w.writestr(name, data, zipfile.ZIP_STORED if name.endswith('.bin') else zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(z) as r:
        assert {i.filename: i.compress_type for i in r.infolist()} == {
            'stored.bin': zipfile.ZIP_STORED, 'deflated.txt': zipfile.ZIP_DEFLATED, 'bad.txt': zipfile.ZIP_DEFLATED}
    archive = grid_dir(grid_state, 'zip%d' % int(time.time() * 1e6)) + 'root_archive.zip'
    p = cpx(cpenv, 'file:' + z, archive + '@disk:2')
    assert p.returncode == 0, p
    lfns = grid.register_archive(grid_state['workdir'], archive, md5s={'bad.txt': '0' * 32})
    assert sorted(lfns) == sorted(ZIP_MEMBERS)
    return archive, lfns


# ===== zip archive members, the upload pipeline, access pacing =====


def test_archive_members_whereis_and_access_point_at_the_archive(zip_members, grid_state):
    archive, lfns = zip_members
    with _tg_ws(grid_state) as c:
        arch = _tg_ok(_tg_call(c, 'whereis', [archive]))
        aguid = _tg_ok(_tg_call(c, 'lfn2guid', [archive]))[0]['guid']
        lfn = lfns['stored.bin']
        data = ZIP_MEMBERS['stored.bin']
        st = _tg_ok(_tg_call(c, 'stat', [lfn]))[0]
        mguid = st['guid']
        assert (st['size'], st['md5']) == (str(len(data)), hashlib.md5(data).hexdigest()) and mguid != aguid
        link = 'guid:///%s?ZIP=stored.bin' % aguid
        assert _tg_ok(_tg_call(c, 'whereis', [lfn])) == [
            {'message': 'the file stored.bin is in\n\n\t SE => ArchiveMember%s pfn => %s' % (' ' * 11, link),
             'seNumber': '0', 'seName': 'ArchiveMember', 'pfn': link}]
        resolved = _tg_ok(_tg_call(c, 'whereis', ['-r', lfn]))
        assert len(arch) == 2 and [(r['seName'], r['seNumber'], r['pfn']) for r in resolved] == \
            [(r['seName'], r['seNumber'], r['pfn'] + '?ZIP=stored.bin') for r in arch]
        assert resolved[0]['message'].startswith('the file stored.bin is in\n\n\t SE => ')
        rows = _tg_ok(_tg_call(c, 'access', ['read', lfn]))
        assert [r['url'] for r in rows] == [r['pfn'] + '#stored.bin' for r in arch]
        for r in rows:
            assert (r['size'], r['md5'], r['guid'], r['nSEs']) == (str(len(data)), hashlib.md5(data).hexdigest(),
                                                                  mguid, '2')
        # the archive itself is unchanged: its own replicas, no member suffix
        assert all('#' not in r['url'] for r in _tg_ok(_tg_call(c, 'access', ['read', archive])))
        assert _tg_ok(_tg_call(c, 'whereis', ['-r', archive])) == arch
        assert _tg_ok(_tg_call(c, 'stat', ['-v', lfn]))[0]['replicas'] == {'ArchiveMember': link}
        # a member registered twice is refused, and nothing changes
        from testgrid import grid
        with pytest.raises(ValueError):
            grid.register_archive(grid_state['workdir'], archive)
        assert _tg_ok(_tg_call(c, 'stat', [lfn]))[0]['guid'] == mguid
        # rm of a member: its entry and link only; rm of the archive leaves members dangling
        _tg_ok(_tg_call(c, 'rm', [lfns['deflated.txt']]))
        assert len(_tg_ok(_tg_call(c, 'access', ['read', lfn]))) == 2
        _tg_ok(_tg_call(c, 'rm', [archive]))
        gone = _tg_call(c, 'access', ['read', lfn])
        assert gone['metadata']['exitcode'] == '77' and 'No read PFNs' in gone['metadata']['error'], gone


@pytest.mark.parametrize('how', [[], ['-noxrdzip'], ['-y', '2']], ids=['xrdcl-unzip', 'noxrdzip', 'y2'])
def test_cp_archive_member_downloads_exactly_the_member(zip_members, cpenv, tmp_path, how):
    """Default: XRootD's copy reads the member out of the archive replica
    (xrdcl.unzip; with -y 2 too, one replica at a time: XRootD's several-replica
    copy of a deflated member hung now and then); -noxrdzip: the whole archive is
    fetched and the member extracted and md5-checked locally."""
    _archive, lfns = zip_members
    out = tmp_path / 'out'
    tmp_before = sorted(os.listdir(cpenv['TMPDIR']))     # the token files
    for name in ('stored.bin', 'deflated.txt'):
        p = cpx(cpenv, *(how + [lfns[name], 'file:%s/%s' % (out, name)]))
        assert p.returncode == 0, p
        assert (out / name).read_bytes() == ZIP_MEMBERS[name], name
        assert os.getxattr(str(out / name), 'user.md5').decode() == hashlib.md5(ZIP_MEMBERS[name]).hexdigest()
    # no archive, no part file, no extraction temp file, nothing in TMPDIR
    assert sorted(os.listdir(str(out))) == ['deflated.txt', 'stored.bin']
    assert sorted(os.listdir(cpenv['TMPDIR'])) == tmp_before and os.listdir(cpenv['PWD']) == []


def test_cp_archive_members_with_names_xrootd_cannot_carry(cpenv, grid_state, tmp_path):
    """XRootD takes xrdcl.unzip=NAME verbatim up to the next '&' and decodes no
    %-escapes (checked with xrdcp): a member named with '&' is fetched through
    its whole archive and unzipped locally; '#', ' ' and '%' ride in the URL."""
    import zipfile
    from testgrid import grid
    members = {'a&b.txt': b'ampersand\n' * 300, 'h#x.txt': b'hash\n' * 300,
               's p.txt': b'space\n' * 300, 'p%41.txt': b'percent\n' * 300}
    z = str(tmp_path / 'odd.zip')
    with zipfile.ZipFile(z, 'w') as w:
        for name, data in members.items():
            w.writestr(name, data, zipfile.ZIP_DEFLATED)
    archive = grid_dir(grid_state, 'zipodd%d' % int(time.time() * 1e6)) + 'odd.zip'
    assert cpx(cpenv, 'file:' + z, archive).returncode == 0
    lfns = grid.register_archive(grid_state['workdir'], archive)
    out = tmp_path / 'out'
    tmp_before = sorted(os.listdir(cpenv['TMPDIR']))
    for name, data in members.items():
        p = cpx(cpenv, lfns[name], 'file:%s/%s' % (out, name))
        assert p.returncode == 0, (name, p)
        assert (out / name).read_bytes() == data, name
        assert os.getxattr(str(out / name), 'user.md5').decode() == hashlib.md5(data).hexdigest()
    assert sorted(os.listdir(str(out))) == sorted(members)
    assert sorted(os.listdir(cpenv['TMPDIR'])) == tmp_before


@pytest.mark.parametrize('how', [[], ['-noxrdzip']], ids=['xrdcl-unzip', 'noxrdzip'])
def test_cp_archive_member_with_a_wrong_catalogue_md5_fails_and_leaves_nothing(zip_members, cpenv, tmp_path, how):
    _archive, lfns = zip_members
    out = tmp_path / 'out'
    out.mkdir()
    tmp_before = sorted(os.listdir(cpenv['TMPDIR']))
    p = cpx(cpenv, *(how + [lfns['bad.txt'], 'file:%s/bad.txt' % out]))
    # cp's failure report: one line for the file, then the summary
    lines = p.stderr.splitlines()
    assert p.returncode == 1 and p.stdout == '' and len(lines) == 2 and 'Traceback' not in p.stderr, p
    assert lfns['bad.txt'] in lines[0] and ('md5' in lines[0] or 'CheckSum' in lines[0]), p.stderr
    assert lines[1].startswith('cp: 0/1 files copied'), p.stderr
    assert os.listdir(str(out)) == [] and sorted(os.listdir(cpenv['TMPDIR'])) == tmp_before


def _bytes_on_an_se(grid_state, data):
    """True when a file holding exactly data is in some SE's data directory."""
    for se in grid_state['ses']:
        for root, _dirs, names in os.walk(se['datadir']):
            for n in names:
                p = os.path.join(root, n)
                try:
                    if os.path.getsize(p) == len(data) and open(p, 'rb').read() == data:
                        return True
                except OSError:
                    pass
    return False


def test_upload_transfers_a_file_while_the_next_one_is_hashed(cpenv, grid_state, tmp_path, monkeypatch):
    src = tmp_path / 'src'
    first, second = os.urandom(5 * 2 ** 20), os.urandom(5 * 2 ** 20 + 1)
    write(src / 'a.bin', first)
    write(src / 'b.bin', second)
    g = grid_dir(grid_state, 'md5ahead')
    real = alien.md5_and_size
    seen = []

    def hash_b_late(path, *a, **kw):
        if path.endswith('b.bin'):      # a.bin is booked and transferred meanwhile
            deadline = time.monotonic() + 30
            while not _bytes_on_an_se(grid_state, first) and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append(_bytes_on_an_se(grid_state, first))
        return real(path, *a, **kw)
    monkeypatch.setattr(alien, 'md5_and_size', hash_b_late)
    monkeypatch.chdir(cpenv['PWD'])
    s = alien.Session(environ=dict(cpenv))
    try:
        r = s.run('cp -quiet file:%s/ %s@disk:1' % (src, g))
    finally:
        s.close()
    assert r.exitcode == 0 and seen == [True], (r, seen)
    p = run_cli(['ls -l ' + g], env=cpenv, cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 0 and 'a.bin' in p.stdout and 'b.bin' in p.stdout, p


def test_download_asks_for_access_only_while_few_transfers_wait(cpenv, grid_state, tmp_path):
    """Backpressure: cp asks for more `access` only while fewer than CP_BACKLOG
    downloads wait to start (made tiny here), so a long listing never queues
    thousands of jobs with their envelopes; every file still arrives intact."""
    g, files = _vr_upload(cpenv, grid_state, tmp_path, 'backlog', 12, spec='')
    out = tmp_path / 'out'
    code = ("import sys; sys.path.insert(0, %r); import alien\n"
            "alien.CP_BACKLOG, alien.REQUEST_WINDOW = 4, 2\n"
            "seen, pipe = [0], []\n"
            "submit = alien.CopyPipeline.submit\n"
            "def watched(self, jobs):\n"
            "    pipe[:] = [self]\n"
            "    submit(self, jobs)\n"
            "    seen[0] = max(seen[0], self.queued())\n"
            "alien.CopyPipeline.submit = watched\n"
            # the first transfer waits, in a thread of its own, until more are queued: however quick
            # the transfers or slow the service, the backlog fills up to its bound
            "import threading, time\n"
            "start = alien.VerifiedRead.start\n"
            "def held(self):\n"
            "    def later():\n"
            "        end = time.monotonic() + 10\n"
            "        while pipe[0].queued() < alien.CP_BACKLOG and time.monotonic() < end:\n"
            "            time.sleep(0.01)\n"
            "        start(self)\n"
            "    alien.VerifiedRead.start = start\n"
            "    threading.Thread(target=later).start()\n"
            "alien.VerifiedRead.start = held\n"
            "code = alien.main(['cp', '-quiet', '-T', '1', %r, 'file:%s/'])\n"
            "sys.stderr.write('MAXQ %%d\\n' %% seen[0])\n"
            "sys.exit(code)\n" % (REPO, g, out))
    p = subprocess.run([sys.executable, '-c', code], env=cpenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # one transfer at a time, the first held: without the bound all 11 others would queue
    assert 4 <= int(p.stderr.split('MAXQ ')[1].split()[0]) <= 4 + 2 - 1, p.stderr
    for k, v in files.items():
        assert (out / k).read_bytes() == v
