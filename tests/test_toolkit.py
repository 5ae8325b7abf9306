"""The other commands against the test grid: catalogue, jobs, storage, outside services."""
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import alien
from testgrid.tools import tool
from conftest import (
    ALIEN, ConnectProxy, LoopbackProxy, _TG_DIR, _gj_job, client_env, cpx, grid_dir, h13_debug_requests,
    one_line_error, run_cli, write)


# ===== the catalogue: large listings, edit, find2, toXml, run/exec =====


def test_large_listing_printed_identically_and_compactly(cenv, grid_state):
    from testgrid import grid
    d = grid_state['home'] + 'big2000/'
    grid.populate(grid_state['workdir'], d, 2000)
    p = run_cli(['ls -l ' + d], env=cenv)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) == 2000 and lines[0].endswith('file_000000.dat')
    s = alien.Session(environ=cenv)  # the embedding API keeps full result dicts
    try:
        r = s.run('ls ' + d)
        assert r.results[0] == {'message': 'file_000000.dat'} and r.out.splitlines() == [
            l.split()[-1] for l in lines]
    finally:
        s.close()


def test_edit_keeps_a_backup_and_restores_it_on_failure(cpenv, grid_state, tmp_path):
    from testgrid import grid
    g = grid_dir(grid_state, 'edit')
    f = write(tmp_path / 'doc.txt', b'line one\n')
    assert cpx(cpenv, 'file:' + f, g + 'doc.txt').returncode == 0
    editor = write(tmp_path / 'ed.sh', b'#!/bin/sh\necho "added by editor" >> "$1"\n')
    os.chmod(editor, 0o755)
    env = dict(cpenv, EDITOR=editor, VISUAL='')
    p = run_cli(['edit', g + 'doc.txt@disk:1'], env=env, cwd=env['PWD'], quote=True)
    assert p.returncode == 0 and 'Uploaded' in p.stdout, p
    assert run_cli(['cat', g + 'doc.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout == 'line one\nadded by editor\n'
    assert run_cli(['cat', g + 'doc.txt~'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout == 'line one\n'
    assert run_cli(['whereis', g + 'doc.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout.count('SE =>') == 1
    # unchanged: nothing uploaded
    p = run_cli(['edit', g + 'doc.txt'], env=dict(cpenv, EDITOR='true'), cwd=cpenv['PWD'], quote=True)
    assert p.returncode == 0 and 'unchanged' in p.stdout, p
    # upload refused: the previous version is back under its name
    grid.set_faults(grid_state['workdir'], {'commit': 'refuse'})
    try:
        p = run_cli(['edit', g + 'doc.txt'], env=env, cwd=env['PWD'], quote=True)
    finally:
        grid.set_faults(grid_state['workdir'], None)
    assert p.returncode == 1 and 'restored' in p.stderr and one_line_error(p), p
    assert run_cli(['cat', g + 'doc.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout == 'line one\nadded by editor\n'
    kept = p.stderr.split('edited copy kept at ')[1].split(';')[0]
    assert open(kept).read().endswith('added by editor\nadded by editor\n')
    shutil.rmtree(os.path.dirname(kept), ignore_errors=True)


def test_find2_filters_and_xml(cenv, f2dir, tmp_path, dialect):
    d = f2dir
    hour_ago = str(int(time.time()) - 3600)     # find -f ctime: seconds from 2021, ms from newer services
    names = lambda p: [l[len(d):] for l in p.stdout.splitlines()]  # noqa: E731
    for args, want in [([d], ['a/b/r.md', 'a/x.py', 'l.txt', 's.sh']),
                       (['-name', 'ext_md', d], ['a/b/r.md']),
                       (['-glob', '*.py', d], ['a/x.py']),
                       ([d + 'a/*.py'], ['a/x.py']),
                       (['-select', '.*/[ls][.].*', d], ['l.txt', 's.sh']),
                       (['-minsize', '1000', d], ['a/x.py']),
                       (['-maxsize', '100', '-exclude', 'l.', d], ['s.sh']),
                       (['-maxdepth', '0', d], ['l.txt', 's.sh']),
                       (['-mindepth', '2', d], ['a/b/r.md']),
                       (['-exclude_re', '^a/', '-user', 'jalien', '-v', d], ['l.txt', 's.sh']),
                       (['-min-ctime', hour_ago, '-maxdepth', '0', d], ['l.txt', 's.sh']),
                       (['-max-ctime', hour_ago, d], None),
                       (['-user', 'nobody', '-minsize', '0', d + 'a/'], None)]:
        p = run_cli(['find2'] + args, env=cenv)
        if want is None:
            assert p.returncode == 2 and one_line_error(p) and 'no file under' in p.stderr, (args, p)
        else:
            assert p.returncode == 0 and names(p) == want, (args, p)
    out = tmp_path / 'coll.xml'
    p = run_cli(['find2', '-minsize', '50', '-x', 'file:%s' % out, d], env=cenv)
    assert p.returncode == 0 and names(p) == ['a/b/r.md', 'a/x.py'], p
    import xml.etree.ElementTree as ET
    files = [e.find('file').attrib for e in ET.parse(str(out)).getroot().iter('event')]
    assert [f['lfn'] for f in files] == [d + 'a/b/r.md', d + 'a/x.py']
    assert files[1]['size'] == '2700' and files[1]['md5'] == hashlib.md5(b'print(1)\n' * 300).hexdigest()
    assert files[1]['guid'] and files[1]['owner'] == 'jalien' and files[1]['turl'] == 'alien://' + d + 'a/x.py'
    made = time.mktime(time.strptime(files[1]['ctime'], '%Y-%m-%d %H:%M:%S')) - time.timezone    # UTC
    assert abs(made - time.time()) < 600, files[1]['ctime']
    for args, code, words in [([], 22, 'give one directory'), ([d, d], 22, 'give one directory'),
                              (['-bogus', d], 22, 'unknown option'), (['-x', 'alien:/c.xml', d], 22, 'written locally'),
                              (['-x', str(tmp_path / 'no' / 'dir.xml'), d], 5, 'cannot write'),
                              (['/no/such/dir'], 2, 'find2'), (['-name', 'bogus_x', d], 22, '-name')]:
        p = run_cli(['find2'] + args, env=cenv)
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)
    assert not os.path.exists(str(tmp_path / 'no'))


@pytest.mark.once
def test_toxml_local_and_file_targets(cenv, tmp_path):
    import xml.etree.ElementTree as ET
    a, b = write(tmp_path / 'a.root', b'aaa'), write(tmp_path / 'sub' / 'b.root', b'bbbb')
    lst = tmp_path / 'list.txt'
    lst.write_text('%s\n\n# comment\nfile:%s\n' % (a, b))
    out = tmp_path / 'out.xml'
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:9')      # -local needs no service
    p = run_cli(['toXml', '-local', '-x', 'file:%s' % out, 'file:' + a, b], env=env)
    assert p.returncode == 0 and p.stdout == out.read_text(), p.stderr
    files = [e.find('file').attrib for e in ET.parse(str(out)).getroot().iter('event')]
    assert [f['lfn'] for f in files] == ['file://' + a, 'file://' + b] and files[1]['size'] == '4'
    p = run_cli(['toXml', '-local', '-l', str(lst)], env=env)
    assert p.returncode == 0 and [f.attrib['turl'] for f in ET.fromstring(p.stdout).iter('file')] == \
        ['file://' + a, 'file://' + b]
    p = run_cli(['toXml', '-local', '-i', a, str(tmp_path / 'missing')], env=env)
    assert p.returncode == 0 and len(list(ET.fromstring(p.stdout).iter('file'))) == 1
    for args, code, words in [
            (['-local', str(tmp_path / 'missing')], 2, 'No such file'),
            (['-local', '-a', '-x', str(out), a], 22, 'appending'),
            (['-local'], 22, 'no files given'),
            (['-local', 'alien:/x/y'], 22, 'is a grid file'),
            (['-local', '-x', 'alien:/x.xml', a], 22, 'written locally'),
            (['-local', str(tmp_path / 'sub')], 22, 'not a regular file'),
            (['-local', '-l', str(tmp_path / 'nolist')], 2, 'cannot read'),
            (['-a', a], 22, '-a appends'),
            (['-local', '-zz', a], 22, 'unknown option')]:
        p = run_cli(['toXml'] + args, env=env)
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)


def test_toxml_from_the_service_into_a_local_file(cenv, f2dir, tmp_path):
    d = f2dir
    out = tmp_path / 'o.xml'
    p = run_cli(['toXml', '-x', 'file:%s' % out, d + 'l.txt', d + 's.sh'], env=cenv)
    assert p.returncode == 0 and out.read_text() == p.stdout.rstrip('\n'), p.stderr
    assert out.read_text().startswith('<?xml') and out.read_text().count('<event ') == 2
    for args, code, words in [(['-a', '-x', 'file:%s' % out, d + 'l.txt'], 22, 'not to a local file'),
                              ([d + 'missing'], 2, 'No such file')]:
        p = run_cli(['toXml'] + args, env=cenv)
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)
    assert out.read_text().count('<event ') == 2     # untouched by the failures


def test_run_and_exec(cenv, f2dir, tmp_path):
    d = f2dir
    tmp = cenv['TMPDIR']
    p = run_cli(['run', 'cat', d + 'l.txt'], env=cenv)
    assert (p.returncode, p.stdout) == (0, 'line\n' * 3), p.stderr
    p = run_cli(['run', 'grep', '-c', 'print(1)', 'alien:' + d + 'a/x.py', '-force'], env=cenv)
    assert (p.returncode, p.stdout) == (0, '300\n'), p.stderr
    p = run_cli(['run -noout cmp alien:%sl.txt alien:%sa/x.py' % (d, d)], env=cenv)
    assert p.returncode == 1 and 'differ' in p.stdout, p            # cmp's own exit code
    p = run_cli(['exec', d + 's.sh', 'one', 'two'], env=cenv)
    assert (p.returncode, p.stdout) == (3, 'script: one two\n'), p.stderr
    p = run_cli(["run sh -c 'exit 7' %sl.txt" % d], env=cenv)   # quoted: the words are joined and split again
    assert p.returncode == 7
    for args, code, words in [(['run'], 64, 'usage'), (['run', 'cat'], 64, 'usage'), (['exec'], 64, 'usage'),
                              (['run', 'cat', d + 'missing'], 2, 'no such file'),
                              (['exec', d + 'missing'], 2, 'no such file'),
                              (['run', 'no-such-program-13', d + 'l.txt'], 127, 'command not found'),
                              (['exec', d + 'l.txt'], 126, 'cannot run')]:
        p = run_cli(args, env=cenv)
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)
    assert not [n for n in os.listdir(tempfile.gettempdir()) + os.listdir(tmp) if n.startswith('alienpy-run-')]


@contextlib.contextmanager
def _gj_faults(jcentral=None, http=None):
    from testgrid import grid
    grid.set_faults(_TG_DIR, jcentral)
    grid.set_http_faults(_TG_DIR, http)
    try:
        yield
    finally:
        grid.set_faults(_TG_DIR, None)
        grid.set_http_faults(_TG_DIR, None)


# ===== jobs and outside services (CCDB, MonALISA, HTTP GET) =====


def test_submit_ps_trace_and_jobinfo(grid_state, cenv, tg_dir, tmp_path, dialect):
    from testgrid import grid
    jobid = _gj_job(cenv, tg_dir, tmp_path)
    trace = grid.run_job(_TG_DIR, int(jobid), status='DONE', start=1700000000)
    assert '1700000005 [state     ]: Job state transition from INSERTING to WAITING' in trace
    p = run_cli(['ps', '-trace', jobid], env=cenv)
    first = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(1700000005))
    assert p.returncode == 0 and p.stdout.startswith(first) and not re.search(r'(?m)^[0-9]{10} \[', p.stdout)
    p = run_cli(['ps', '-trace', jobid, '-json'], env=cenv)       # JSON: the reply untouched
    assert p.returncode == 0 and json.loads(p.stdout)['results'][0]['trace'] == trace
    p = run_cli(['jobInfo', jobid, '-trace', '-proc'], env=cenv)
    assert p.returncode == 0, p.stderr
    assert re.search(r'(?m)^%s +0 +DONE +jalien +myjob.sh$' % jobid, p.stdout)
    for words in ('WorkerNode: wn01.jtestsite.localdomain', 'Workdir: /tmp/alien-job-%s' % jobid,
                  'State info:', 'Trace info:', 'Proc info:', 'Job state transition from SAVING to DONE'):
        assert words in p.stdout
    p = run_cli(['jobInfo', jobid, '-unixtime'], env=cenv)
    assert '1700000005 Job state transition' in p.stdout and 'Trace info:' not in p.stdout
    p = run_cli(['jobInfo', '-jdl', jobid], env=cenv)
    assert json.loads(p.stdout)['Executable'] == grid_state['home'] + 'bin/myjob.sh'
    p = run_cli(['jobInfo', jobid, '-json'], env=cenv)
    row = json.loads(p.stdout)['results'][0]
    assert row['trace']['wn'] == 'wn01.jtestsite.localdomain' and row['jdl']['TTL'] == '300'
    assert (row['id'], row['owner']) == (jobid, 'jalien')      # the newer keys, whatever the service wrote
    # the 2021 service refuses the combined `ps -j ID -trace -jdl`: the rows, traces and JDLs apart
    log = tmp_path / 'ps.log'
    run_cli(['-debugfile', str(log), 'jobInfo', jobid], env=cenv)
    sent = [r['options'] for r in h13_debug_requests(str(log)) if r['command'] == 'ps']
    assert sent == [['-nomsg', '-j', jobid, '-trace', '-jdl']] + {
        '2021': [['-nomsg', '-j', jobid], ['-nomsg', '-trace', jobid], ['-nomsg', '-jdl', jobid]], '2024': []}[dialect]
    p = run_cli(['jobInfo', '-h'], env=cenv)
    assert p.returncode == 0 and p.stdout.startswith('jobInfo ID[,ID...]')
    for bad, code in (('jobInfo abc', 64), ('jobInfo 1 -bogus', 64), ('jobInfo 999', 2)):
        p = run_cli([bad], env=cenv)
        assert p.returncode == code and one_line_error(p), (bad, p)
    with _gj_faults({'ps': 'exception'}):
        p = run_cli(['jobInfo', jobid], env=cenv)
    assert p.returncode == 121 and one_line_error(p)


def test_submit_checks(cenv, tg_dir, tmp_path, dialect):
    p = run_cli(['submit', 'file:%s' % (tmp_path / 'x.jdl')], env=cenv)
    assert p.returncode == 22 and one_line_error(p) and 'cp ' in p.stderr
    p = run_cli(['submit'], env=cenv)
    assert p.returncode == 64 and one_line_error(p)
    p = run_cli(['submit -h'], env=cenv)
    assert p.returncode == 0 and p.stdout.startswith('submit JDL')
    p = run_cli(['cd %s; submit missing.jdl' % tg_dir], env=cenv)
    assert p.returncode == 2 and tg_dir + 'missing.jdl' in p.stderr      # expanded before sending
    p = run_cli(['submit -json %smissing.jdl' % tg_dir], env=cenv)
    assert json.loads(p.stdout)['metadata']['exitcode'] == '2'


def test_getce_and_sitejobs(grid_state, cenv, tg_dir, tmp_path, dialect):
    from testgrid import grid
    jobid = _gj_job(cenv, tg_dir, tmp_path)
    grid.run_job(_TG_DIR, int(jobid), ce='ALICE::JTestSite::SecondCE', status='RUNNING')
    if dialect == '2021':     # no listCEs before JAliEn 1.8: nothing to list, nothing to map a site to
        for line in ('getCE', 'siteJobs JTestSite'):
            p = run_cli([line], env=cenv)
            assert p.returncode == 2 and one_line_error(p) and 'JAliEn before 1.8' in p.stderr, (line, p)
        return
    p = run_cli(['getCE'], env=cenv)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines[0].split() == ['Name', 'Host', 'State', 'Type', 'R', 'W', 'TTL', 'Partitions']
    assert len(lines) == 4 and lines[2].split()[:3] == ['JTestSite::SecondCE', 'secondce.jtestsite.localdomain', 'locked']
    p = run_cli(['getCE -name jtestsite -part pdc08'], env=cenv)
    assert p.returncode == 0 and [l.split()[0] for l in p.stdout.splitlines()[1:]] == ['JTestSite::SecondCE']
    p = run_cli(['getCE', '-host', 'othersite', '-json'], env=cenv)
    assert [c['ceName'] for c in json.loads(p.stdout)['results']] == ['ALICE::OtherSite::CE']
    assert run_cli(['getCE -h'], env=cenv).stdout.startswith('getCE ')
    for bad, code in (('getCE -name', 64), ('getCE extra', 64), ('getCE -name nosuchce', 2),
                      ('siteJobs', 64), ('siteJobs nosuchsite', 2), ('siteJobs jtest -bogus', 64)):
        p = run_cli([bad], env=cenv)
        assert p.returncode == code and one_line_error(p), (bad, p)
    p = run_cli(['siteJobs JTestSite'], env=cenv)
    assert p.returncode == 0 and re.search(r'(?m)^%s +0 +RUNNING +jalien +myjob.sh$' % jobid, p.stdout)
    p = run_cli(['siteJobs jtestsite -running -id'], env=cenv)
    assert jobid in p.stdout.split()
    p = run_cli(['siteJobs jtestsite -status done -id'], env=cenv)
    assert p.returncode == 0 and jobid not in p.stdout.split()
    p = run_cli(['siteJobs OtherSite -json'], env=cenv)
    assert p.returncode == 0 and json.loads(p.stdout)['results'] == []
    assert run_cli(['siteJobs -h'], env=cenv).stdout.startswith('siteJobs SITE')
    with _gj_faults({'listCEs': 'refuse'}):
        for line in ('getCE', 'siteJobs jtestsite'):
            p = run_cli([line], env=cenv)
            assert p.returncode == 13 and one_line_error(p), p


def test_quota_with_and_without_a_job_quota(cenv, dialect):
    from testgrid import grid
    p = run_cli(['quota'], env=cenv)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith('Quota report for user : jalien\nJob quota :\t\t\tnone (No jobs quota found')
    assert re.search(r'Number of files :\t\t[0-9]+/1000000 --> ', p.stdout)
    grid.set_job_quota(_TG_DIR, 'jalien', {'running': 3, 'waiting': 2, 'maxUnfinishedJobs': 100,
                                           'totalRunningTimeLast24h': 5400, 'maxTotalRunningTime': 36000})
    try:
        p = run_cli(['quota jalien'], env=cenv)
        assert 'Unfinished jobs(R + W / Max):\t\t3 + 2 / 100 --> 5.00% used' in p.stdout
        assert 'Running time (last 24h) used/max:\t1.50/10.00(h) --> 15.00% used' in p.stdout
        p = run_cli(['quota', '-json'], env=cenv)
        row = json.loads(p.stdout)['results'][0]
        assert row['maxUnfinishedJobs'] == '100' and row['maxNbFiles'] == '1000000'
    finally:
        grid.set_job_quota(_TG_DIR, 'jalien', None)
    assert run_cli(['quota -h'], env=cenv).stdout.startswith('quota [USER]')
    for bad, code in (('quota a b', 64), ('quota set x', 64), ('quota nosuchuser', 126)):
        p = run_cli([bad], env=cenv)
        assert p.returncode == code and one_line_error(p), (bad, p)
    for faults, code in (({'fquota': 'exception'}, 121), ({'jquota': 'refuse'}, 13)):
        with _gj_faults(faults):
            p = run_cli(['quota'], env=cenv)
        assert p.returncode == code and one_line_error(p), p


@pytest.mark.once
def test_ccdb_browse_history_report_and_run(cenv, grid_state, tmp_path):
    env = client_env(grid_state, tmp_path, outside_proxy=False)
    p = run_cli(['ccdb', '/'], env=env, timeout=30)
    assert (p.returncode, p.stdout) == (0, 'GLO/\nRCT/\nTPC/\n'), p.stderr
    p = run_cli(['ccdb', 'TPC/Calib/PadGainFull', '-history', '-limit', '2', '-unixtime'], env=env)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines[0].startswith('Filename') and len(lines) == 3
    assert lines[1].split()[:3] == ['PadGainFull.root', 'o2::tpc::CalDet<float>', '"1700172800000"']
    p = run_cli(['ccdb', 'GLO/Config/GRPECS', '-run', '523897', '-json'], env=env)
    doc = json.loads(p.stdout)
    assert [o['runNumber'] for o in doc['results']] == ['523897'] and '/1700086460000' in doc['metadata']['url']
    p = run_cli(['ccdb', '-report', 'TPC'], env=env)
    assert p.returncode == 0 and p.stdout.splitlines()[1].split()[:5] == ['TPC/Calib', '0', '0', 'B', '4']
    p = run_cli(["ccdb TPC/Calib/PadGainFull -header 'X-Test: 1'"], env=env)  # quoted: argv is joined
    assert p.returncode == 0 and p.stdout.count('PadGainFull.root') == 1
    with open(os.path.join(_TG_DIR, 'http.log')) as f:
        log = f.read().splitlines()
    assert 'GET /latest/TPC/Calib/PadGainFull HTTP/1.1' in log[-1] and '"X-Test": "1"' in log[-1]
    assert '"Accept": "application/json"' in log[-1] and '"Browse-Limit": "10"' in log[-1]
    assert run_cli(['ccdb', '-h'], env=env).stdout.startswith('ccdb [-host URL]')


@pytest.mark.once
def test_ccdb_get_is_verified_and_atomic(cenv, grid_state, tmp_path):
    env = client_env(grid_state, tmp_path, outside_proxy=False)
    dst = tmp_path / 'snap'
    p = run_cli(['ccdb', 'TPC/Calib/PadGainFull', '-get', '-dst', str(dst)], env=env)
    target = dst / 'TPC/Calib/PadGainFull/PadGainFull.root'
    assert p.returncode == 0 and str(target) in p.stdout, p.stderr
    data = target.read_bytes()
    assert data.startswith(b'TPC/Calib/PadGainFull version 2\n')   # after the stand-in's dead first replica
    obj = json.loads(run_cli(['ccdb', 'TPC/Calib/PadGainFull', '-json'], env=env).stdout)['results'][0]
    rest = alien.ccdb_download_urls(alien.service_base(env['ALIENPY_CCDB']), obj)[-1]   # 303 to the bytes
    assert alien.http_get(rest, env)[1] == data
    p = run_cli(['ccdb', 'TPC/Calib/PadGainFull', '-history', '-mirror', '-dst', str(dst)], env=env)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3
    props = list(dst.glob('TPC/Calib/PadGainFull/*/*.properties'))
    assert len(props) == 3 and 'OriginalFileName=PadGainFull.root' in props[0].read_text()
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')      # a destination below a file cannot be created, even by root
    p = run_cli(['ccdb', 'TPC/Calib/PadGainFull', '-get', '-dst', str(blocker / 'sub')], env=env)
    assert p.returncode == 5 and one_line_error(p) and 'cannot create' in p.stderr, p
    # a download cut half-way leaves neither a part file nor a changed destination
    target.write_bytes(b'keep me')
    with open(os.path.join(_TG_DIR, 'http-faults.json'), 'w') as f:
        json.dump({'ccdb-download': 'cut'}, f)
    try:
        p = run_cli(['ccdb', 'TPC/Calib/PadGainFull', '-get', '-dst', str(dst)], env=env)
    finally:
        os.unlink(os.path.join(_TG_DIR, 'http-faults.json'))
    assert p.returncode == 42 and one_line_error(p) and 'cut' in p.stderr, p
    assert target.read_bytes() == b'keep me'
    assert not [f for f in os.listdir(str(target.parent)) if 'alienpy-part' in f]


@pytest.mark.once
@pytest.mark.parametrize('fault,code,words', [
    ('404', 2, 'HTTP 404'), ('500', 121, 'HTTP 500'), ('garbage', 42, 'not JSON'),
    ('hang', 107, 'no answer within 1 s'), ('drop', 107, 'ccdb'),
])
def test_ccdb_failing_service_is_one_line(cenv, grid_state, tmp_path, fault, code, words):
    with _gj_faults(http={'ccdb': fault}):
        p = run_cli(['ccdb', 'TPC'], env=client_env(grid_state, tmp_path, outside_proxy=False, ALIENPY_HTTP_TIMEOUT='1'), timeout=30)
    assert p.returncode == code and one_line_error(p) and words in p.stderr, p


@pytest.mark.once
def test_ccdb_wrong_arguments_and_unreachable_host(cenv, grid_state, tmp_path):
    env = client_env(grid_state, tmp_path, outside_proxy=False)
    for args in (['ccdb'], ['ccdb', 'a', 'b'], ['ccdb', '-limit', 'x', 'A'], ['ccdb', '-get', '-mirror', 'A'],
                 ['ccdb', '-run', '1', '-objtime', '1700000000000', 'A'], ['ccdb', '-header', 'nocolon', 'A'],
                 ['ccdb', '-bogus', 'A']):
        p = run_cli(args, env=env)
        assert p.returncode == 64 and one_line_error(p), (args, p)
    p = run_cli(['ccdb', '-host', '127.0.0.1:1', 'TPC'], env=env)
    assert p.returncode == 107 and one_line_error(p) and '127.0.0.1:1' in p.stderr
    p = run_cli(['ccdb', '-host', 'nosuchhost.invalid', 'TPC'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'resolve' in p.stderr
    p = run_cli(['ccdb', 'A', '-run', '999'], env=env)
    assert p.returncode == 2 and one_line_error(p)


@pytest.mark.once
def test_queryml_table_text_json_and_failures(cenv, grid_state, tmp_path):
    env = client_env(grid_state, tmp_path, outside_proxy=False)
    p = run_cli(['queryML', '*/*/jobs/RUNNING_jobs'], env=env)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines[0].split() == ['Farm', 'Cluster', 'Node', 'Parameter', 'Timestamp', 'Value']
    assert len(lines) == 3 and lines[1].split()[0] == 'JTestSite' and lines[1].split()[-1] == '42'
    assert time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(1700000000)) in lines[1]
    p = run_cli(['queryML', 'text', '/-60000/-1/JTestSite/*/storage/*'], env=env)
    assert (p.returncode, p.stdout) == (0, 'JTestSite/Site_Jobs_Summary/storage/used_GB\t1700000240000\t1250.5\n')
    p = run_cli(['queryML', 'xml', 'OtherSite/*/*/WAITING_jobs'], env=env)
    assert p.stdout.startswith('<results><result Farm="OtherSite"')
    p = run_cli(['queryML', '-json', 'nosuchfarm'], env=env)
    assert p.returncode == 0 and json.loads(p.stdout)['results'] == []
    assert run_cli(['queryML', '-h'], env=env).stdout.startswith('queryML [-host URL]')
    for args in (['queryML'], ['queryML', 'a', 'b'], ['queryML', '-host']):
        p = run_cli(args, env=env)
        assert p.returncode == 64 and one_line_error(p), (args, p)
    for fault, code in (('404', 2), ('500', 121), ('garbage', 42), ('hang', 107)):
        with _gj_faults(http={'monalisa': fault}):
            p = run_cli(['queryML', 'x'], env=dict(env, ALIENPY_HTTP_TIMEOUT='1'), timeout=30)
        assert p.returncode == code and one_line_error(p), (fault, p)
    p = run_cli(['queryML', '-host', 'http://127.0.0.1:1/rest/', 'x'], env=env)
    assert p.returncode == 107 and one_line_error(p)


@pytest.mark.once
def test_http_proxy_is_used_unless_no_proxy(cenv, grid_state, tmp_path):
    """The HTTP GET goes through http_proxy (here a dead one: 107 naming the proxy port)
    and no_proxy exempts the service, like the websocket's https_proxy/no_proxy."""
    env = client_env(grid_state, tmp_path, outside_proxy=False, http_proxy='http://127.0.0.1:1')
    p = run_cli(['queryML', 'x'], env=env)
    assert p.returncode == 107 and one_line_error(p) and '127.0.0.1:1' in p.stderr, p
    p = run_cli(['queryML', 'x'], env=dict(env, no_proxy='127.0.0.1'))
    assert p.returncode == 0, p.stderr


@pytest.mark.once
def test_https_get_verifies_the_server_and_tunnels_through_https_proxy(cenv, tmp_path, grid_state):
    """An HTTPS MonALISA (the grid's host certificate, checked against X509_CERT_DIR),
    reached through an https_proxy CONNECT tunnel like the websocket."""
    from testgrid import httpsvc
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(grid_state['pki']['host_cert'], grid_state['pki']['host_key'])
    srv = httpsvc.serve('monalisa', 0, _TG_DIR, tls=tls)
    proxy = ConnectProxy()
    try:
        url = 'https://127.0.0.1:%d/rest/' % srv.server_address[1]
        env = client_env(grid_state, tmp_path, outside_proxy=False, https_proxy='127.0.0.1:%d' % proxy.port)
        p = run_cli(['queryML', '-host', url, 'OtherSite/*/*/RUNNING_jobs'], env=env)
        assert p.returncode == 0 and p.stdout.splitlines()[1].split()[0] == 'OtherSite', p
        assert proxy.lines == ['CONNECT 127.0.0.1:%d HTTP/1.1' % srv.server_address[1]]
        p = run_cli(['queryML', '-host', url.replace('127.0.0.1', 'localhost'), 'x'],
                    env=dict(env, X509_CERT_DIR=str(grid_state['workdir'])))   # no CA there
        assert p.returncode == 107 and one_line_error(p) and 'TLS' in p.stderr, p
    finally:
        proxy.close()
        srv.shutdown()
        srv.server_close()


class _GjForwardProxy(LoopbackProxy):
    """A plain HTTP forward proxy: takes 'GET http://host:port/path' and forwards the
    request with the path only."""

    def handle(self, client, lines):
        m = re.match(r'^GET http://([^/:]+):([0-9]+)(/\S*) (HTTP/1\.[01])$', lines[0])
        rest = [l for l in lines[1:] if l and not l.startswith('Proxy-')] + ['Connection: close']
        with socket.create_connection((m.group(1), int(m.group(2)))) as up:
            up.sendall(('GET %s %s\r\n%s\r\n\r\n' % (m.group(3), m.group(4), '\r\n'.join(rest))).encode())
            while True:
                data = up.recv(65536)
                if not data:
                    break
                client.sendall(data)
        client.close()


@pytest.mark.once
def test_http_get_through_a_plain_http_proxy(cenv, grid_state, tmp_path):
    proxy = _GjForwardProxy()
    try:
        env = client_env(grid_state, tmp_path, outside_proxy=False, http_proxy='http://u:p%%40ss@127.0.0.1:%d' % proxy.port)
        p = run_cli(['ccdb', 'TPC/Calib/PadGainFull'], env=env)
        assert p.returncode == 0 and 'PadGainFull.root' in p.stdout, p
        assert proxy.lines == ['GET %slatest/TPC/Calib/PadGainFull HTTP/1.1' % alien.service_base(cenv['ALIENPY_CCDB'])]
        assert proxy.auth == ['Proxy-Authorization: Basic %s' % base64.b64encode(b'u:p@ss').decode()]
    finally:
        proxy.close()


@pytest.mark.parametrize('line', ['jobInfo 1', 'getCE', 'siteJobs jtestsite', 'quota'])
def test_job_helpers_when_the_service_drops_the_connection(cenv, line, dialect):
    """Read-only helpers are sent again once on a new connection; a service that drops
    every time is one line, exit 107."""
    with _gj_faults({'ps': 'drop', 'listCEs': 'drop', 'jquota': 'drop', 'fquota': 'drop'}):
        p = run_cli([line], env=dict(cenv, ALIENPY_CONNECT_TRIES='1'), timeout=60)
    assert p.returncode == 107 and one_line_error(p), p


def test_job_and_ccdb_helpers_print_what_the_reference_prints(grid_state, cenv, tg_dir, tmp_path, dialect):
    """The same command lines through alienpy 1.7.0 and alien.py against the test grid
    (its listCEs, ps, CCDB): identical stdout and exit code where no deviation is
    documented. Proves the stand-ins answer in the shapes the reference expects."""
    from testgrid import grid
    jobid = _gj_job(cenv, tg_dir, tmp_path)
    grid.run_job(_TG_DIR, int(jobid), ce='ALICE::OtherSite::CE', status='DONE', start=1700000000)
    ccdb = cenv['ALIENPY_CCDB']
    lines = ['ps -trace %s' % jobid, 'submit %snonexistent.jdl' % tg_dir, 'ccdb -host %s /' % ccdb,
             'ccdb -host %s TPC/Calib/PadGainFull -history' % ccdb,
             'ccdb -host %s TPC/Calib/PadGainFull -history -unixtime -limit 2' % ccdb]
    # listCEs came after 2021; the reference's siteJobs -id reads the 2021 key `id ` and its
    # table the newer `id`: each fails on one dialect (README, deviations), so only the table here
    if dialect == '2024':
        lines += ['getCE', 'getCE -name second', 'siteJobs othersite']
    env = client_env(grid_state, tmp_path, outside_proxy=False, ALIENPY_NO_CWD_RESTORE='1')
    for line in lines:
        ref = subprocess.run([tool('alienpy'), line], env=env, capture_output=True, text=True, timeout=60)
        ours = run_cli([line], env=env)
        assert (ours.returncode, ours.stdout) == (ref.returncode, ref.stdout), (line, ref, ours)
        assert ours.stdout or ours.returncode, line     # not vacuous


def _usage_errors(env, cases):
    """Each (line, exit code): one line on stderr, nothing printed. In one in-process
    session (the command-line path of an error is the same for every command)."""
    session = alien.Session(environ=env)
    try:
        for line, code in cases:
            r = session.run(line)
            assert (r.exitcode, r.out) == (code, '') and r.err and '\n' not in r.err, (line, r)
    finally:
        session.close()


# ===== storage: pfn, pfn-status, lfn2uri, getSE, SEqos, xrd_*, checkAddr =====


def test_getse_and_seqos(store, grid_state, dialect):
    env, _ = store
    ses = grid_state['ses']
    p = run_cli(['getSE'], env=env)
    assert p.returncode == 0, p
    assert p.stdout.splitlines() == ['%-6s%-32s127.0.0.1:%d' % (se['number'], se['original'], se['port']) for se in ses]
    p = run_cli(['getSE 2'], env=env)
    assert p.stdout == '%-32s127.0.0.1:%d\n' % (ses[1]['original'], ses[1]['port']), p
    assert run_cli(['getSE -srv firstse'], env=env).stdout == '127.0.0.1:%d\n' % ses[0]['port']
    assert run_cli(['getSE -id SECONDSE'], env=env).stdout == '2\n'
    assert run_cli(['getSE -name jtestsite'], env=env).stdout.splitlines() == [se['original'] for se in ses]
    reply = json.loads(run_cli(['getSE -json first'], env=env).stdout)
    assert reply['metadata']['exitcode'] == '0' and [r['seName'] for r in reply['results']] == [ses[0]['original']]
    assert reply['results'][0]['endpointUrl'] == ses[0]['url']
    p = run_cli(['getSE -h'], env=env)
    assert p.returncode == 0 and p.stdout.startswith('getSE [-id | -name | -srv] [LABEL]')
    _usage_errors(env, (('getSE nosuch', 2), ('getSE -x first', 64), ('getSE -id -srv first', 64), ('getSE a b', 64)))
    # SEqos: the QoS tags of each matching SE
    p = run_cli(['SEqos', 'secondse', 'first'], env=env)
    assert p.stdout.splitlines() == ['%-32sdisk,legooutput' % ses[1]['original'], '%-32sdisk' % ses[0]['original']]
    reply = json.loads(run_cli(['SEqos -json second'], env=env).stdout)
    assert [r['qos'] for r in reply['results']] == ['disk,legooutput']
    assert run_cli(['SEqos -h'], env=env).stdout.startswith('SEqos SE...')
    _usage_errors(env, (('SEqos', 64), ('SEqos nosuch', 2), ('SEqos -v first', 64)))


def test_pfn(store, dialect):
    env, lfn = store
    where = json.loads(run_cli(['whereis -json ' + lfn], env=env).stdout)['results']
    p = run_cli(['pfn', lfn], env=env)
    assert p.returncode == 0 and p.stdout.splitlines() == [w['pfn'] for w in where] and len(where) == 2, p
    reply = json.loads(run_cli(['pfn', '-json', lfn], env=env).stdout)
    assert [r['pfn'] for r in reply['results']] == [w['pfn'] for w in where]
    assert run_cli(['pfn -h'], env=env).stdout.startswith('pfn LFN')
    p = run_cli(['pfn'], env=env)
    assert p.returncode == 64 and one_line_error(p), p
    _usage_errors(env, (('pfn a b', 64), ('pfn -q x', 64), ('pfn %s.missing' % lfn, 2)))


def _se_of(pfn, grid_state):
    """The test SE a replica URL points at (the catalogue's replica order is not the SEs')."""
    return next(se for se in grid_state['ses'] if pfn.startswith('root://127.0.0.1:%d/' % se['port']))


def _on_se(pfns, grid_state, i):
    return next(u for u in pfns if _se_of(u, grid_state) is grid_state['ses'][i])


def _se_down(grid_state, index):
    """Stop one SE; returns the function that restarts it."""
    from testgrid import grid
    name = grid_state['ses'][index]['name']
    grid.stop_se(grid_state['workdir'], name)
    return lambda: grid.start_se(grid_state['workdir'], name)


def test_pfn_status_each_replica_and_a_stopped_se(store, grid_state, dialect):
    env, lfn = store
    pfns = run_cli(['pfn', lfn], env=env).stdout.split()
    p = run_cli(['pfn-status', lfn], env=env)
    assert p.returncode == 0 and p.stderr == '', p
    assert p.stdout.splitlines() == sum([['LFN: ' + lfn, '%s\t\tSize: 13\tR/W status:1/1' % u] for u in pfns], [])
    p = run_cli(['pfn-status -v ' + pfns[1]], env=env)  # a PFN: no LFN line
    assert p.returncode == 0 and p.stdout.startswith(pfns[1] + '\t\tSize: 13') and 'IS DIR/OTHER/OFFLINE: 0/0/0' in p.stdout
    rows = json.loads(run_cli(['pfn-status -json ' + lfn], env=env).stdout)['results']
    assert [(r['pfn'], r['ok'], r['online'], r['size'], r['is_readable']) for r in rows] == \
        [(u, True, True, 13, True) for u in pfns]
    assert [r['se'] for r in rows] == [_se_of(u, grid_state)['name'] for u in pfns]
    assert run_cli(['pfn-status -h'], env=env).stdout.startswith('pfn-status [-v]')
    _usage_errors(env, (('pfn-status', 64), ('pfn-status -x ' + lfn, 64), ('pfn-status -timeout 0 ' + lfn, 64),
                        ('pfn-status %s.missing' % lfn, 2)))
    restart = _se_down(grid_state, 0)
    try:
        p = run_cli(['pfn-status', lfn], env=env)
        rows = json.loads(run_cli(['pfn-status', '-json', lfn], env=env).stdout)['results']
    finally:
        restart()
    lines = p.stdout.splitlines()   # LFN line, replica line, per replica, in the catalogue's order
    down = pfns.index(_on_se(pfns, grid_state, 0))
    assert p.returncode == 5 and p.stderr == 'pfn-status: 1 of 2 replicas failed the check\n', p
    assert lines[2 * down + 1].startswith(pfns[down] + '\t\tMessage: ') and 'Status/Code/ErrNo:' in lines[2 * down + 1], lines
    assert lines[3 - 2 * down] == '%s\t\tSize: 13\tR/W status:1/1' % pfns[1 - down]
    assert [r['ok'] for r in rows] == [i != down for i in range(2)] and rows[down]['message']
    assert run_cli(['pfn-status', lfn], env=env).returncode == 0  # the SE is back


class SilentServer(object):
    """A TCP listener that accepts connections and never answers (an SE that hangs)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        for s in self.held + [self.sock]:
            s.close()


def _against_silent_server(env, line):
    """(CompletedProcess, seconds, port) of a command line aimed at a SilentServer (line % port)."""
    silent = SilentServer()
    try:
        t0 = time.monotonic()
        p = run_cli([line % silent.port], env=env)
        return p, time.monotonic() - t0, silent.port
    finally:
        silent.close()


@pytest.mark.once   # a PFN: XRootD only, no websocket
def test_pfn_status_timeout(store):
    env, _ = store
    p, took, port = _against_silent_server(env, 'pfn-status -timeout 1 root://127.0.0.1:%d//some/file')
    assert p.returncode == 5 and 'Message: [ERROR] Operation expired' in p.stdout, p
    assert took < 10, took


def test_lfn2uri(store, grid_state, tmp_path, dialect):
    env, lfn = store
    import ast
    p = run_cli(['lfn2uri', lfn], env=env)
    urls = [ast.literal_eval(line) for line in p.stdout.splitlines()]
    assert p.returncode == 0 and len(urls) == 2, p
    pfns = run_cli(['pfn', lfn], env=env).stdout.split()
    assert [u.split('?')[0] for u in urls] == pfns
    assert all('?xrd.wantprot=unix&authz=-----BEGIN' in u for u in urls)
    second = grid_state['ses'][1]['name']
    on_second = _on_se(pfns, grid_state, 1)
    p = run_cli(['lfn2uri %s@%s strict' % (lfn, second)], env=env)  # access -f: only that SE
    assert [ast.literal_eval(l).split('?')[0] for l in p.stdout.splitlines()] == [on_second], p
    p = run_cli(['lfn2uri', lfn + '@!' + grid_state['ses'][0]['name']], env=env)
    assert [ast.literal_eval(l).split('?')[0] for l in p.stdout.splitlines()] == [on_second], p
    reply = json.loads(run_cli(['lfn2uri -json ' + lfn], env=env).stdout)
    assert [r['url'] for r in reply['results']] == pfns and all(r['envelope'] for r in reply['results'])
    # meta: a metalink of every replica in the current directory
    p = run_cli(['lfn2uri', lfn, 'meta'], env=env, cwd=str(tmp_path))
    meta = tmp_path / 'two.txt.meta4'
    assert p.returncode == 0 and p.stdout == '%s\n' % meta, p
    text = meta.read_text()
    assert '<size>13</size>' in text and text.count('<url>') == 2 and all(u in text for u in pfns)
    assert [n for n in os.listdir(str(tmp_path)) if 'two.txt' in n] == ['two.txt.meta4']  # no temp file left
    # write: upload URLs for a local file (booked, nothing in the catalogue until a commit)
    local = tmp_path / 'up.txt'
    local.write_bytes(b'to upload\n')
    target = lfn.rsplit('/', 1)[0] + '/booked.txt'
    p = run_cli(['lfn2uri %s %s write' % (target, local)], env=env)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2, p     # disk:2 by default
    assert run_cli(['stat', target], env=env).returncode == 2
    assert run_cli(['lfn2uri -h'], env=env).stdout.startswith('lfn2uri LFN[@SPECS]')
    _usage_errors(env, (('lfn2uri', 64), ('lfn2uri %s meta write' % lfn, 64), ('lfn2uri a b c', 64),
                        ('lfn2uri %s %s upload' % (target, tmp_path / 'nope'), 2), ('lfn2uri -z ' + lfn, 64),
                        ('lfn2uri %s.missing' % lfn, 77)))


def test_xrd_ping_config_stats(store, grid_state, dialect):
    env, _ = store
    ses = grid_state['ses']
    p = run_cli(['xrd_ping -c 2 firstse SECONDSE'], env=env)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines[0] == 'XRootD ping(s): 2 time(s) to:', p
    assert [l[:32].rstrip() for l in lines[1:]] == [se['original'] for se in ses]
    assert all(re.match(r'^.{32} rtt min/avg/max/mdev \(ms\) = [0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+$', l) for l in lines[1:])
    rows = json.loads(run_cli(['xrd_ping -json -c 2 1'], env=env).stdout)['results']
    assert len(rows) == 1 and rows[0]['ok'] and len(rows[0]['rtt_ms']) == 2
    assert rows[0]['endpointUrl'] == '127.0.0.1:%d' % ses[0]['port']
    p = run_cli(['xrd_config -v 127.0.0.1:%d' % ses[1]['port']], env=env)  # a host:port of an SE: its name
    assert p.returncode == 0, p
    assert re.match(r'^Site/XrdVer: %s/v\S+ ; TPC status: 1 ; role: server ; CMS: ' % re.escape(ses[1]['original']),
                    p.stdout), p
    assert 'Chksum type: 0:adler32' in p.stdout
    rows = json.loads(run_cli(['xrd_config -json -a'], env=env).stdout)['results']
    assert [r['seName'] for r in rows] == [se['original'] for se in ses] and all(r['role'] == 'server' for r in rows)
    p = run_cli(['xrd_stats', 'first'], env=env)
    stats = json.loads(p.stdout)
    assert p.returncode == 0 and stats['pgm'] == 'xrootd' and stats['site'] == ses[0]['original'], p
    assert stats['stats']['info']['port'] == str(ses[0]['port']) and 'link' in stats['stats']
    p = run_cli(['xrd_stats -compact first'], env=env)
    assert p.stdout.count('\n') == 1 and json.loads(p.stdout)['seName'] == ses[0]['original']
    p = run_cli(['xrd_stats -xmlraw first'], env=env)
    assert p.stdout.startswith('<statistics ') and p.stdout.count('\n') == 1
    assert run_cli(['xrd_stats -xml first'], env=env).stdout.startswith('<?xml version="1.0" ?>\n<statistics')
    rows = json.loads(run_cli(['xrd_stats -json second'], env=env).stdout)['results']
    assert rows[0]['stats']['info']['port'] == str(ses[1]['port'])
    p = run_cli(['xrd_ping -h; xrd_config -h; xrd_stats -h'], env=env)
    firsts = [l for l in p.stdout.splitlines() if l.startswith('xrd_')]
    assert [l.split()[0] for l in firsts] == ['xrd_ping', 'xrd_config', 'xrd_stats'] and p.returncode == 0, p
    _usage_errors(env, [(line % name, code) for name in ('xrd_ping', 'xrd_config', 'xrd_stats')
                        for line, code in (('%s', 64), ('%s nosuch', 2), ('%s -q first', 64),
                                           ('%s -timeout x first', 64))] + [('xrd_ping -c 0 first', 64)])


def test_xrd_probes_se_down_and_timeout(store, grid_state):
    env, _ = store
    ses = grid_state['ses']
    restart = _se_down(grid_state, 1)
    try:
        ping = run_cli(['xrd_ping -c 1 first second'], env=env)
        config = run_cli(['xrd_config first second'], env=env)
        stats = run_cli(['xrd_stats -json second'], env=env)
    finally:
        restart()
    lines = ping.stdout.splitlines()
    assert ping.returncode == 5 and ping.stderr == 'xrd_ping: no answer from %s\n' % ses[1]['original'], ping
    assert 'rtt min/avg/max/mdev' in lines[1] and lines[2] == '%-32s [FATAL] Connection error' % ses[1]['original']
    assert config.returncode == 5 and config.stdout.splitlines()[0].startswith('Site/XrdVer: ' + ses[0]['original'])
    assert config.stdout.splitlines()[1].startswith(ses[1]['original']) and 'error' in config.stdout.splitlines()[1]
    reply = json.loads(stats.stdout)
    assert stats.returncode == 5 and reply['metadata']['exitcode'] == '5' and reply['results'][0]['ok'] is False
    assert run_cli(['xrd_ping -c 1 second'], env=env).returncode == 0  # the SE is back
    p, took, port = _against_silent_server(env, 'xrd_ping -c 1 -timeout 1 127.0.0.1:%d')
    assert p.returncode == 5 and p.stdout.splitlines()[1] == '%-32s [ERROR] Operation expired' % (
        '127.0.0.1:%d' % port), p
    assert took < 10, took


def test_storage_commands_without_xrootd(store):
    env, lfn = store
    code = ('import sys, runpy; sys.modules["XRootD"] = None; sys.argv = ["alien.py"] + sys.argv[1:]; '
            'runpy.run_path(%r, run_name="__main__")' % ALIEN)
    for args in (['pfn-status', lfn], ['xrd_ping', 'first'], ['xrd_config', 'first'], ['xrd_stats', 'first']):
        p = subprocess.run([sys.executable, '-c', code] + args, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and one_line_error(p), p
        assert p.stderr.startswith('%s needs the XRootD Python bindings: pip install xrootd' % args[0])
    p = subprocess.run([sys.executable, '-c', code, 'getSE', '1'], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith('localhost::JTestSite::firstse'), p


@pytest.mark.once   # TCP and TLS, never the websocket
def test_checkaddr(cenv, grid_state):
    port = int(cenv['ALIENPY_JCENTRAL_PORT'])
    p = run_cli(['checkAddr'], env=cenv)  # the endpoint alien.py would use
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and p.stderr == '', p
    assert lines[0] == '127.0.0.1:%d resolves to 127.0.0.1' % port
    assert re.match(r'^127\.0\.0\.1:%d +TCP OK [0-9.]+ ms   TLS OK [0-9.]+ ms$' % port, lines[1]), lines
    # every address of a name, IPv4 and IPv6 alike, each tried on its own
    addrs = [i[4][0] for i in alien.interleave_addresses(
        socket.getaddrinfo('localhost', port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP))]
    p = run_cli(['checkAddr localhost %d' % port], env=dict(cenv, ALIENPY_NETWORKSTACK='ipv4'))
    rows = json.loads(run_cli(['checkAddr -json localhost:%d' % port], env=cenv).stdout)['results']
    assert [r['address'] for r in rows] == addrs and p.stdout.startswith('localhost:%d resolves to %s\n'
                                                                         % (port, ', '.join(addrs))), p
    for r in rows:
        assert r['family'] == ('IPv6' if ':' in r['address'] else 'IPv4')
        if r['address'] == '127.0.0.1':   # the service listens there; the host cert names localhost
            assert (r['tcp'], r['tls'], r['error']) == ('OK', 'OK', ''), r
    assert run_cli(['checkAddr -h'], env=cenv).stdout.startswith('checkAddr [-timeout S] [HOST[:PORT]')
    p = run_cli(['checkAddr no-such-host.invalid'], env=cenv)
    assert p.returncode == 107 and one_line_error(p), p
    _usage_errors(cenv, (('checkAddr localhost x', 22), ('checkAddr localhost:99x', 22), ('checkAddr -q', 64),
                         ('checkAddr a b c', 64)))
    # nothing listening: TCP fails; a silent server: TLS times out; a wrong host name: TLS refuses
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    free = closed.getsockname()[1]
    closed.close()
    p = run_cli(['checkAddr 127.0.0.1:%d' % free], env=cenv)
    assert p.returncode == 107 and 'TCP FAIL' in p.stdout and p.stderr.startswith('checkAddr: 1 of 1 addresses'), p
    silent = SilentServer()
    try:
        p = run_cli(['checkAddr -timeout 1 127.0.0.1:%d' % silent.port], env=cenv)
    finally:
        silent.close()
    assert p.returncode == 107 and 'TCP OK' in p.stdout and 'TLS FAIL' in p.stdout and 'timed out' in p.stdout, p
    p = run_cli(['checkAddr 127.0.0.1:%d' % port], env=dict(cenv, ALIENPY_JCENTRAL='127.0.0.2'))
    assert p.returncode == 0, p  # an explicit HOST wins over the configured endpoint
    # behind https_proxy: the tunnel alien.py would use is checked too, and decides the exit code
    proxy = ConnectProxy()
    try:
        p = run_cli(['checkAddr'], env=dict(cenv, https_proxy='http://127.0.0.1:%d' % proxy.port))
    finally:
        proxy.close()
    assert p.returncode == 0 and re.search(r'^via https_proxy 127\.0\.0\.1:%d +TCP OK [0-9.]+ ms   TLS OK'
                                           % proxy.port, p.stdout, re.M), p
    assert proxy.lines == ['CONNECT 127.0.0.1:%d HTTP/1.1' % port]
    refusing = ConnectProxy(refuse=True)
    try:
        p = run_cli(['checkAddr'], env=dict(cenv, https_proxy='http://127.0.0.1:%d' % refusing.port))
    finally:
        refusing.close()
    assert p.returncode == 107 and '403 Forbidden' in p.stdout, p
    assert p.stderr == 'checkAddr: 127.0.0.1 through the proxy failed\n', p


@pytest.mark.parametrize('fault,line,code', [
    ({'listSEs': 'exception'}, 'getSE first', 121),
    ({'whereis': 'exception'}, 'pfn {lfn}', 121),
    ({'whereis': 'drop'}, 'pfn-status {lfn}', 107),
    ({'listSEs': 'refuse'}, 'SEqos first', 13),
    ({'listSEs': 'exception'}, 'xrd_ping first', 121),
    ({'access': 'refuse'}, 'lfn2uri {lfn}', 77),
])
def test_storage_commands_when_the_service_fails(store, grid_state, fault, line, code, dialect):
    env, lfn = store
    from testgrid import grid
    grid.set_faults(grid_state['workdir'], fault)
    try:
        p = run_cli([line.format(lfn=lfn)], env=env)
    finally:
        grid.set_faults(grid_state['workdir'], None)
    assert p.returncode == code and one_line_error(p), p
