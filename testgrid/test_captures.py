"""The test grid's replies against the captured bytes of the real services."""
import hashlib
import json
import os
import re

import pytest

from conftest import REPO, _gj_job, _tg_call, _tg_dialect, _tg_ok, _tg_ws, _tg_xrdcp


# The test grid's own tests talk to it with their own clients (websockets, xrdcp, alienpy)
# or run alien.py only to exercise the grid: the client's transport is not what they test.
pytestmark = pytest.mark.once


# -- the service's two dialects: the captured replies, request by request --
# testgrid/captures/ (copies of the shared specs jcentral-replies.md, 2021, and jcentral-replies-2024.md) hold the raw
# replies of two real services to about 100 requests. The corpus test rebuilds their
# fixture on a grid of its own (one SE like theirs, a fresh catalogue: the job gets the
# captured id), replays every request under its dialect and compares the replies
# structurally: the same metadata and row keys in the same order, the same exit code,
# the same texts once the values that differ by nature (GUIDs, times, envelopes, ports,
# the certificate's DN, the build) are normalised; values of the grid rather than of the
# code base are normalised per command in _CX_GRID_VALUES, with the reason (also in
# testgrid/README.md, "The corpus test"). No entry is left out.
_CX_DIR = os.path.join(REPO, '.testgrid-corpus')


# the captured files: job.jdl (37 B in 2021, 90 B in 2024; /bin/date is no grid file, its
# submit fails), job2.jdl (87 B in 2024; the 2021 job's stored JDL shows its attributes)
_CX_JOB_JDL = 'Executable = "/bin/date";\n'

_CX_SPEC = {'2021': 'jcentral-replies-2021.md', '2024': 'jcentral-replies-2024.md'}


def _cx_corpus(dialect):
    """[(section, title, request dict, reply text)] of a dialect's capture file."""
    path = os.path.join(REPO, 'testgrid', 'captures', _CX_SPEC[dialect])
    with open(path) as f:
        text = f.read()
    out, section, title = [], '', ''
    for m in re.finditer(r'^(#+) ([^\n]*)$|^```json\n(.*?)\n```', text, re.M | re.S):
        if m.group(1) == '#':
            section = m.group(2)
        elif m.group(1):
            title = m.group(2).strip('`')
        else:
            req, _, reply = m.group(3).partition('\n')
            out.append((section, title, json.loads(req), reply))
    return out


# Names in the captures' homes that the fixture made; the others are other tests' folders.
_CX_HOME = {'2021': {'specdemo'}, '2024': {'specdemo', 'bin'}}


# keys whose value is the capture's own (certificate, build host): compared for presence only
_CX_OWN_VALUES = {'certificate_dn', 'compiled_by'}


# command -> (why, [(pattern, replacement)]): values of the grid, not of the code base,
# normalised on both sides before the comparison
_CX_GRID_VALUES = {
    'listSEs': ('capacity, used space and file count are the accounting of each SE', [
        (r'(\t *\d+(?:\.\d+)? [KMGTPX]?B){3} +\d+\t', '\t<SPACE>\t'),
        (r'^\d+$', '<N>')]),
    'fquota': ('the captured counters stayed 0 while the account held files (the real quota table is '
                    'refreshed in the background); the test grid counts the catalogue', [
        (r'^\d+$', '<N>'), (r'(totalSize\t: )\d+(?:\.\d+)? [KMGTPX]?B', '\\1<SIZE>'), (r'(nbFiles\t: )\d+', '\\1<N>')]),
    'testSE': ('free and used space of the SE host, and the accounting of the SE', [
        (r'((?:Free|Used|Chunk): +)\d+(?:\.\d+)? [KMGTPX]?B', '\\1<SIZE>'),
        (r'((?:seUsedSpace|seNumFiles)\t: )\d+', '\\1<N>')]),
}

_CX_VOLATILE = [(re.compile(p, re.S), r) for p, r in (
    (r'-----BEGIN SEALED CIPHER-----\n[A-Za-z0-9+=\n-]+\n-----END SEALED CIPHER-----\n'
     r'-----BEGIN SEALED ENVELOPE-----\n[A-Za-z0-9+=\n-]+\n-----END SEALED ENVELOPE-----', '<ENVELOPE>'),
    (r'\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b', '<GUID>'),
    (r'\b[0-9a-f]{2}(?::[0-9a-f]{2}){5}\b', '<NODE>'),              # the GUID's node
    (r'\b[0-9a-f]{40}\b', '<HASH>'),                                 # the build's git hash
    (r'root://(?:localhost|127\.0\.0\.1):\d+//(?:tmp/?)?', 'root://<SE>/'),
    (r'/\d\d/\d{5}/<GUID>', '/<NN>/<NNNNN>/<GUID>'),                   # replica path: from the GUID
    (r'\b(dir|entryId)="\d+"', r'\1="<ID>"'),                           # catalogue row ids
    (r'root://(?:localhost|127\.0\.0\.1):\d+', 'root://<SE>'),
    (r'\b[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d [A-Z]{3,4} \d{4}\b', '<DATE>'),
    (r'\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b', '<DATETIME>'),
    (r'\b\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d\b', '<DMYHM>'),
    (r'\b[A-Z][a-z]{2} \d\d \d\d:\d\d\b', '<MDHM>'),
    (r'\b(?!188875706)[12]\d{12}\b', '<T13>'), (r'\b(?!188875706)[12]\d{9}\b', '<T10>'),   # unix ms / s
    (r'time=\d+(?:\.\d+)? ms', 'time=<MS> ms'), (r'time \d+ ms', 'time <MS> ms'),
    (r'= [0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+ ms', '= <RTT> ms'), (r'hostname : \S+', 'hostname : <HOST>'),
    (r'msec:\t\t\d+/\d+', 'msec:\t\t<MS>/<MS>'),
    (r'CN=localhost(?:\.localdomain)?\b', 'CN=<HOST>'), (r'(Compiled at: <DMYHM> @ )\S+', r'\1<HOST>'),
    (r'(Path: +|seStoragePath\t: )/(tmp)?', r'\1<PATH>'),              # the SE's storage path
)]


def _cx_norm(value, command=''):
    if not isinstance(value, str):
        return value
    for rx, rep in _CX_VOLATILE:
        value = rx.sub(rep, value)
    for p, rep in _CX_GRID_VALUES.get(command, ('', ()))[1]:
        value = re.sub(p, rep, value)
    return value


def _cx_differences(dialect, title, captured, got):
    """What differs between a captured reply and ours (a list of texts, empty: they match)."""
    command = title.split()[0]
    try:
        want = json.loads(captured)
    except ValueError:
        return [] if captured == got else ['not the same text: %r' % got]
    try:
        have = json.loads(got)
    except ValueError:
        return ['our reply is not JSON: %r' % got[:200]]
    diffs = []
    if list(want) != list(have):
        diffs.append('top keys %s, captured %s' % (list(have), list(want)))
    wm, hm = want.get('metadata', {}), have.get('metadata', {})
    if list(wm) != list(hm):
        diffs.append('metadata keys %s, captured %s' % (list(hm), list(wm)))
    for k in wm:
        if k in hm and _cx_norm(wm[k], command) != _cx_norm(hm[k], command):
            diffs.append('metadata %s %r, captured %r' % (k, hm[k], wm[k]))
    wr, hr = want.get('results', []), have.get('results', [])
    if title in ('ls', 'ls -l'):   # the captures' homes hold other tests' folders
        wr = [r for r in wr if r.get('name', '').rstrip('/') in _CX_HOME[dialect]]
        hr = [r for r in hr if r.get('name', '').rstrip('/') in _CX_HOME[dialect]]
    if len(wr) != len(hr):
        diffs.append('%d rows, captured %d' % (len(hr), len(wr)))
    for i, (w, h) in enumerate(zip(wr, hr)):
        if list(w) != list(h):
            diffs.append('row %d keys %s, captured %s' % (i, list(h), list(w)))
        for k in w:
            if k in h and k not in _CX_OWN_VALUES and _cx_norm(w[k], command) != _cx_norm(h[k], command):
                diffs.append('row %d %s:\n  ours     %r\n  captured %r' % (i, k, _cx_norm(h[k], command),
                                                                         _cx_norm(w[k], command)))
    return diffs


_CX_JOB2_JDL = {'2021': 'Executable = "~/bin/myjob.sh";\nSplit = "production:1-2";\n'
                        'SplitArguments = "#alien_counter#";\nOutputFile = {\n"stdout@disk=1"\n};\nTTL = 300;\n',
                '2024': 'Executable = "~/bin/myjob.sh";\nSplit = "production:1-2";\nTTL = 300;\n'}


def _cx_put(conn, lfn, data):
    """Upload data to lfn on the grid's one SE (access, xrdcp, commit), as any client does."""
    md5 = hashlib.md5(data).hexdigest()
    rep = _tg_ok(_tg_call(conn, 'access', ['-s', str(len(data)), '-m', md5, 'write-once', lfn, 'disk:1']))[0]
    src = os.path.join(_CX_DIR, 'upload.tmp')
    with open(src, 'wb') as f:
        f.write(data)
    _tg_xrdcp(src, rep['url'] + '?authz=' + rep['envelope'])
    _tg_ok(_tg_call(conn, 'commit', [rep['envelope'], str(len(data)), lfn, '755', '0', rep['url'], rep['se'],
                                     rep['guid'], md5]))


def _cx_sized(text, size):
    """JDL text padded with a comment line to exactly size bytes (the captures' file sizes)."""
    pad = size - len(text) - 3
    assert pad >= 0
    return (text + '# ' + '-' * pad + '\n').encode()


def _cx_job(conn, dialect, home):
    _tg_ok(_tg_call(conn, 'mkdir', ['-p', home + 'bin']))
    _cx_put(conn, home + 'bin/myjob.sh', b'#!/bin/sh\necho hello\n')
    jdl = _CX_JOB2_JDL[dialect].encode() if dialect == '2021' else _cx_sized(_CX_JOB2_JDL[dialect], 87)
    _cx_put(conn, home + 'specdemo/job2.jdl', jdl)
    res = _tg_ok(_tg_call(conn, 'submit', [home + 'specdemo/job2.jdl']))
    assert res[0]['jobId'] == '1888757065', res


@pytest.mark.parametrize('dialect', ['2021', '2024'])
def test_replies_match_the_captured_corpus(dialect):
    from testgrid import grid
    corpus = _cx_corpus(dialect)
    assert len(corpus) > 80
    state = grid.start(_CX_DIR, fresh=True, se_count=1)
    try:
        grid.set_service(_CX_DIR, {'dialect': dialect})
        home = state['home']
        found = {}
        with _tg_ws(state) as c:
            _tg_ok(_tg_call(c, 'mkdir', ['-p', home + 'specdemo/sub']))
            _cx_put(c, home + 'specdemo/h.txt', b'hello\n')
            _cx_put(c, home + 'specdemo/job.jdl', _cx_sized(_CX_JOB_JDL, {'2021': 37, '2024': 90}[dialect]))
            if dialect == '2024':       # the 2024 capture ran after the submit
                _cx_job(c, dialect, home)
            guid = _tg_ok(_tg_call(c, 'lfn2guid', [home + 'specdemo/h.txt']))[0]['guid']
            section = corpus[0][0]
            for sec, title, req, reply in corpus:
                if sec != section:       # 2021: "Job commands (after one submit)"
                    _cx_job(c, dialect, home)
                    section = sec
                if req['command'] == 'guid2lfn':     # the captured h.txt's GUID is ours
                    req = dict(req, options=[guid])
                c.send(json.dumps(req))
                got = c.recv(timeout=30)
                diffs = _cx_differences(dialect, title, reply, got)
                if diffs:
                    found['%s [%s]' % (title, sec[:12])] = diffs
        assert not found, '\n'.join('%s:\n  %s' % (t, '\n  '.join(d)) for t, d in found.items())
    finally:
        grid.stop(_CX_DIR)


# The 2021 JCentral's exact replies (../shared/spec/jcentral-replies.md), job id as {id}.
_GJ_SPEC = {
    ('ps', ('-j', '{id}')): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0","error":"","user":"jalien"},"results":[{"owner ":"jalien","id ":"{id}","split":"0","priority":"0","status":"INSERTING","name":"myjob.sh","message":"    jalien {id}    0    I                          myjob.sh"}]}',
    ('ps', ('-trace', '{id}')): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"61","error":"No data available : No trace information for {id}","user":"jalien"},"results":[]}',
    ('masterjob', ('{id}',)): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0","error":"","user":"jalien"},"results":[{"message":"Checking the masterjob {id}\\nThe job {id} is in status: INSERTING\\nIt has the following subjobs:\\n\\nIn total, there are 0 subjobs"}]}',
    ('masterjob', ('1',)): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0","error":"","user":"jalien"},"results":[]}',
    ('jquota', ('list',)): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"61","error":"No data available : No jobs quota found for user jalien","user":"jalien"},"results":[]}',
    ('ps', ('-l',)): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"22","error":"Invalid argument : Option l requires an argument","user":"jalien"},"results":[]}',
    ('ps', ('-s', 'I,W')): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0","error":"","user":"jalien"},"results":[]}',
    ('quota', ()): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"2","error":"No such file or directory : Command [quota] not found!","user":"jalien"},"results":[]}',
    ('submit', ('-h',)): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0","error":"","user":"jalien"},"results":[{"message":"\\nusage: submit   <URL>\\n\\n                    <URL> => <LFN>\\n                    <URL> => file:\\/\\/\\/<local path>"}]}',
    ('ps', ('-h',)): '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0","error":"","user":"jalien"},"results":[{"message":"\\nusage: ps   [-options]\\n\\noptions:\\n                    -F l | -Fl | -L        :  long output format\\n                    -f <flags|status>      :  any number of (long or short) upper case job states, or \'a\' for all, \'r\' for running states, \'f\' for failed, \'d\' for done, \'s\' for queued\\n                    -u <userlist>        \\n                    -s <sitelist>        \\n                    -n <nodelist>        \\n                    -m <masterjoblist>   \\n                    -o <sortkey>         \\n                    -j <jobidlist>       \\n                    -l <query-limit>     \\n\\n                    -M                     :  show only masterjobs\\n                    -X                     :  active jobs in extended format\\n                    -A                     :  select all owned jobs of you\\n                    -W                     :  select all jobs which are waiting for execution of you\\n                    -E                     :  select all jobs which are in error state of you\\n                    -a                     :  select jobs of all users\\n                    -b                     :  do only black-white output\\n                    -jdl <jobid>           :  display the job jdl\\n                    -trace <jobid> <tag>*  :  display the job trace information\\n                    -id                    :  only list the matching job IDs, for batch processing (implies -b)"}]}',
}


# ===== the job commands: byte for byte =====


def test_job_replies_are_the_captured_service_bytes(grid_state, cenv, tg_dir, tmp_path):
    jobid = _gj_job(cenv, tg_dir, tmp_path)
    with _tg_dialect('2021'), _tg_ws(grid_state) as c:
        for (cmd, opts), expected in _GJ_SPEC.items():
            c.send(json.dumps({'command': cmd, 'options': [o.replace('{id}', jobid) for o in opts]}))
            assert c.recv(timeout=10) == expected.replace('{id}', jobid), (cmd, opts)
        # a submit reply, byte for byte (the new id in blue, key jobId)
        c.send(json.dumps({'command': 'submit', 'options': [tg_dir + 'job2.jdl', '7']}))
        new = str(int(jobid) + 1)
        assert c.recv(timeout=10) == (
            '{"metadata":{"currentdir":"\\/localhost\\/localdomain\\/user\\/j\\/jalien\\/","exitcode":"0",'
            '"error":"","user":"jalien"},"results":[{"message":"Submitting %s\\nYour new job ID is '
            '\\u001B[34m%s\\u001B[0m","jobId":"%s"}]}' % (tg_dir.replace('/', '\\/') + 'job2.jdl', new, new))
        # the newer service's combined form: 2021 takes -jdl for the job ID of -trace
        r = _tg_call(c, 'ps', ['-j', jobid, '-trace', '-jdl'])
        assert (r['metadata']['exitcode'], r['metadata']['error'], r['results']) == (
            '22', "Invalid argument : Cannot parse argument '-jdl' of option trace", [])
        r = _tg_call(c, 'ps', ['-trace', jobid, '-jdl'])
        assert (r['metadata']['exitcode'], r['metadata']['error']) == ('22', 'Invalid argument : Option jdl requires an argument')
        r = _tg_call(c, 'listCEs')
        assert r['metadata']['error'] == 'No such file or directory : Command [listCEs] not found!'
    with _tg_ws(grid_state) as c:    # the newer service
        r = _tg_call(c, 'listCEs')
        assert _tg_ok(r) and {'ceName', 'host', 'status', 'type', 'maxRunning', 'maxQueued', 'TTL',
                              'partitions', 'message'} <= set(r['results'][0])
        r = _tg_call(c, 'ps', ['-j', jobid, '-trace', '-jdl'])
        assert r['metadata']['exitcode'] == '61' and r['results'][0]['id'] == jobid
        assert 'Executable = "%sbin/myjob.sh";' % grid_state['home'] in r['results'][0]['jdl']
