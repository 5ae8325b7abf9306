"""Against the reference client (alienpy from PyPI): same commands, same replies."""
import hashlib
import os
import re
import subprocess
import sys
import tempfile

import pytest

from testgrid.tools import tool
from conftest import ALIEN, _TG_DIR, run_cli, write

CONFORMANCE_LINES = [
    'pwd', 'whoami', 'ls', 'ls -l conf', 'ls -a conf', 'ls -l -a conf/', 'ls conf/sub', 'ls /nonexistent', 'ls -z',
    'stat conf/f1', 'stat /no/such', 'find conf f', 'find conf .txt', 'find -r conf f[0-9]', 'type conf/f1',
    'type conf', 'listSEs', 'whereis conf/f1', 'cd conf; pwd; ls', 'cd /nonexistent', 'cd conf/f1',
    'mkdir -p conf/new/deep; ls conf/new; rmdir conf/new/deep; rmdir conf/new; ls conf',
    'mkdir conf/x/y', 'touch conf/t; ls conf; rm conf/t; ls conf', 'rm conf/missing',
    'mv conf/f1 conf/f1b; ls conf; mv conf/f1b conf/f1', 'rmdir conf', 'commandlist', 'whoami -v',
]


def _normalize_times(text):
    """Times masked, and colour codes removed: off a terminal alien.py drops the colours
    the service puts in listSEs/xrdstat (README), the reference prints them."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', text)
    return re.sub(r'[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d', 'MMM DD HH:MM', text)


# ===== line-by-line conformance =====


@pytest.mark.once  # what is printed, not how it travels: the websocket-client pass re-ran it for 45 s
def test_conformance_with_the_reference_client(cenv, grid_state):
    """The same command lines through alienpy 1.7.0 and alien.py: identical stdout and
    exit codes (proves the test grid speaks the protocol the reference client expects)."""
    reference = tool('alienpy')
    home = grid_state['home']
    setup = ('mkdir -p {h}conf/sub; touch {h}conf/f1; touch {h}conf/f2.txt; touch {h}conf/.hidden'
             .format(h=home))
    assert run_cli([setup], env=cenv).returncode == 0
    env = dict(cenv, ALIENPY_NO_CWD_RESTORE='1')
    mismatches, seen = [], {}
    for line in CONFORMANCE_LINES:
        ref = subprocess.run([reference, line], env=env, capture_output=True, text=True, timeout=60)
        ours = run_cli([line], env=env)
        seen[line] = (ours.returncode, ours.stdout)
        if (_normalize_times(ref.stdout), ref.returncode) != (_normalize_times(ours.stdout), ours.returncode):
            mismatches.append((line, ref.returncode, ref.stdout[:300], ours.returncode, ours.stdout[:300]))
        assert 'Traceback' not in ours.stderr
    assert mismatches == []
    # not vacuous: real listings and real errors were compared
    assert seen['ls -l conf'][0] == 0 and 'f2.txt' in seen['ls -l conf'][1] and 'sub/' in seen['ls -l conf'][1]
    assert seen['ls /nonexistent'][0] == 2 and seen['ls -z'][0] == 22 and seen['rm conf/missing'][0] != 0
    assert seen['find conf .txt'][1] == home + 'conf/f2.txt\n'


CP_WORDS = 'own progress and summary lines (the files that arrive are compared below)'


# ===== reference-style invocations through both clients =====


# One row per invocation: (arguments, comparison, reason, extra environment).
#   'same'          exit code and stdout identical (after _compat_normalize)
#   'code'          exit codes identical; the printed text differs, for the reason given
#   ('deviation', N)  a deliberate difference listed in the README: alien.py exits N
# Placeholders: {d} a grid directory with a/x.py a/b/r.md l.txt s.sh, {mine} a local
# and {gmine} a grid directory of the client running the case, {local} a local
# directory with a.root, {expired} an expired user certificate, {cert}/{key} the user's.
# A row's arguments go to the program as they are (one argv element each); prog
# names the program to run as ('alien.py', or an entry point such as 'alien_ls').
OWN_WORDS = 'our own wording (same facts, same exit code)'

COMPAT_CASES = [
    # credential tools
    (['cert-info'], 'same', '', {}),
    (['token-info'], 'same', '', {}),
    (['cert-verify'], 'code', OWN_WORDS + '; names the CA location used', {}),
    (['token-verify'], 'code', OWN_WORDS + '; names the CA location used', {}),
    (['cert-verify'], ('deviation', 1), 'the reference drops an expired user certificate before checking it '
     "and answers 2 'File >>>  <<< not found'; alien.py checks the file and says it expired (1, as for every "
     'chain that does not verify)', {'X509_USER_CERT': '{expired}'}),
    (['certkey-match'], 'code', OWN_WORDS, {}),
    (['tokenkey-match'], 'code', OWN_WORDS, {}),
    (['certkey-match'], 'code', OWN_WORDS + ' (42: they do not match)', {'X509_USER_KEY': '{expired_key}'}),
    (['cert-info'], 'code', OWN_WORDS + ' (2: no such file)', {'X509_USER_CERT': '{mine}/none.pem'}),
    # find2 and its client-side filters
    (['find2', '{d}'], 'same', '', {}),
    (['find2', '-name', 'ext_md', '{d}'], 'same', '', {}),
    (['find2', '-glob', '*.py', '{d}'], 'same', '', {}),
    (['find2', '{d}a/*.py'], 'same', '', {}),
    (['find2', '-select', '.*/l[.]txt$', '{d}'], 'same', '', {}),
    (['find2', '-minsize', '1000', '{d}'], 'same', '', {}),
    (['find2', '-maxsize', '100', '{d}'], 'same', '', {}),
    (['find2', '-maxdepth', '0', '{d}'], 'same', '', {}),
    (['find2', '-mindepth', '1', '{d}'], 'same', '', {}),
    (['find2', '-exclude', 'a/', '{d}'], 'same', '', {}),
    (['find2', '-exclude_re', '^a/.*py$', '{d}'], 'same', '', {}),
    (['find2', '-user', 'jalien', '-v', '{d}'], 'same', '', {}),
    (['find2', '-min-ctime', '1000000000', '{d}'], 'same', '', {}),
    (['find2', '{d}nothere/'], 'code', OWN_WORDS + ' (2: nothing found)', {}),
    # run and exec: download, run here, clean up
    (['run', 'cat', '{d}l.txt'], 'same', '', {}),
    (['run', 'cat', 'alien:{d}l.txt', 'alien:{d}s.sh'], 'same', '', {}),
    (['exec', '{d}s.sh', 'one', 'two'], 'same', '', {}),
    (['run', 'wc', '-c', '{d}l.txt'], 'code', "the local copy's name: alien.py keeps the file's own name "
     '(in a private temp directory, removed after the run); the reference names it after the whole LFN '
     'and leaves it in $TMPDIR', {}),
    (['run', 'cat', '{d}missing'], ('deviation', 2), 'a missing LFN is ENOENT (2) as for cat and cp; the '
     'reference answers 1 to every failed download', {}),
    # toXml: the service's collection, also into a local file; -local: collections of local files
    (['toXml', '{d}l.txt', '{d}a/x.py'], 'same', '', {}),
    (['toXml', '-i', '-x', 'file:{mine}/s.xml', '{d}l.txt', '{d}none'], 'same', '', {}),
    (['toXml', '{d}none'], 'code', 'the service error, printed as our one line', {}),
    (['toXml', '-local', 'file:{local}/a.root'], 'code', "the collection has the service's toXml layout "
     "(attribute order, <info> line); the reference pretty-prints its own", {}),
    (['toXml', '-local', '-x', 'file:{mine}/c.xml', '{local}/a.root'], 'code', 'as above', {}),
    # cp (the reference's options)
    (['cp', 'file:{local}/a.root', '{gmine}up/a.root'], 'code', 'own progress and summary lines', {}),
    (['cp', '{d}l.txt', 'file:{mine}/dl/'], 'code', 'own progress and summary lines', {}),
    (['cp', '-glob', '*.md', '{d}', 'file:{mine}/g/'], 'code', 'own progress and summary lines', {}),
    (['cp', '-f', '-T', '2', '-retry', '1', '-timeout', '60', '{d}a/', 'file:{mine}/t/'], 'code', CP_WORDS, {}),
    (['cp', '{d}', 'file:{mine}/whole/'], 'code', CP_WORDS, {}),
    (['cp', '{d}a', 'file:{mine}/noslash/'], 'code', CP_WORDS, {}),
    (['cp', '-parent', '1', '{d}a/b/r.md', 'file:{mine}/par/'], 'code', CP_WORDS, {}),
    (['cp', '-parent', '2', '{d}a/', 'file:{mine}/par2/'], 'code', CP_WORDS, {}),
    (['cp', '-rmprefix', '3', '{d}a/', 'file:{mine}/rmp/'], 'code', CP_WORDS, {}),
    (['cp', '-dst', 'file:{mine}/dst/', '{d}l.txt', '{d}a/x.py'], 'code', CP_WORDS, {}),
    (['cp', '-input', '{mine}/in.txt'], 'code', CP_WORDS, {}),
    (['cp', '-select', '.*md$', '{d}', 'file:{mine}/sel/'], 'code', CP_WORDS, {}),
    (['cp', '-name', 'ext_py', '{d}', 'file:{mine}/nm/'], 'code', CP_WORDS, {}),
    (['cp', '-exclude', 'a/', '-exclude_re', '^s', '{d}', 'file:{mine}/ex/'], 'code', CP_WORDS, {}),
    (['cp', '-minsize', '1000', '{d}', 'file:{mine}/ms/'], 'code', CP_WORDS, {}),
    (['cp', '-maxdepth', '0', '-user', 'jalien', '{d}', 'file:{mine}/md/'], 'code', CP_WORDS, {}),
    (['cp', '-l', '1', '{d}a/', 'file:{mine}/l1/'], 'code', CP_WORDS, {}),
    (['cp', '-S', '2', '-chunks', '2', '-chunksz', '1048576', '-y', '2', '{d}l.txt', 'file:{mine}/tun/'],
     'code', CP_WORDS, {}),
    (['cp', '-cksum', '-f', '{d}l.txt', 'file:{mine}/ck/'], 'code', CP_WORDS, {}),
    (['cp', '-dryrun', '{d}l.txt', 'file:{mine}/dry/'], 'code', CP_WORDS + '; both copy nothing', {}),
    (['cp', '-j', '5', '{d}', 'file:{mine}/j/'], 'code', CP_WORDS + ' (42: no file of job 5)', {}),
    (['cp', '{d}missing', 'file:{mine}/m'], 'code', CP_WORDS + ' (2: no such source)', {}),
    (['cp', '-norecovery', '-strictspec', 'file:{local}/a.root', '{gmine}ss/a.root@disk:1'], 'code', CP_WORDS, {}),
    (['cp', '-T', 'x', '{d}l.txt', 'file:{mine}/tx/'], ('deviation', 22), 'a bad option value is EINVAL (22) with '
     'one line; the reference exits 1', {}),
    (['cp', '-bogus', '{d}l.txt', 'file:{mine}/b/'], ('deviation', 22), 'an option cp does not know is refused '
     '(22): the reference silently ignores it, so a mistyped option changes what is copied unnoticed', {}),
    (['cp', '-v', '-fastcheck', '-skipmd5', '-ratethreshold', '1000000000', '-s', '-c', '-w', '-wh', '-d', '-xrdcp',
      '-a', '-cksum', '-strictspec', '-norecovery', '{d}l.txt', 'file:{mine}/o1/'], 'code',
     'own progress and summary lines; -skipmd5/-fastcheck get a notice on stderr', {}),
    (['cp', '-noxrdzip', '-http', '-site', 'JTestSite', '-S', '2', '-chunks', '2', '-chunksz', '65536', '-y', '2',
      '{d}l.txt', 'file:{mine}/o2/'], 'code', 'own progress and summary lines', {}),
    (['cp', '-parent', '1', '-rmprefix', '1', '-l', '5', '-o', '0', '-name', 'ext_py', '{d}', 'file:{mine}/o3/'],
     'code', 'own progress and summary lines', {}),
    (['cp', '{d}l.txt', 'file:{mine}/o5/'], 'code', 'own progress and summary lines',
     {'XRD_CPRETRY': '3', 'XRD_CPTIMEOUT': '60', 'XRD_CPCHUNKSIZE': '65536', 'XRD_CPPARALLELCHUNKS': '2'}),
    (['cp', '-tpc', '{d}l.txt', 'file:{mine}/o6/'], 'code', OWN_WORDS + ' (1: refused)', {}),
    (['cp', '{d}l.txt', '{d}s.sh', 'file:{mine}/o7/'], 'code', 'both exit 0, but the reference copies only the '
     'last source (it takes the last two arguments); alien.py copies each into the directory', {}),
    # entry points and the command line
    (['{d}'], 'same', '', {}, 'alien_ls'),
    ([], 'same', '', {}, 'alien_pwd'),
    (['{d}l.txt'], 'same', '', {}, 'alien_stat'),
    (['{d}l.txt'], 'same', '', {}, 'alien_whereis'),
    ([], 'same', '', {}, 'alien-token-info'),
    (['find', '{d} .txt'], 'same', '', {}),                          # joined, then split again
    (['find {d} .md'], 'same', '', {}),
    (['{local}/cmds.txt'], 'same', '', {}),                          # a command file
    (['pwd', '-debug'], 'same', '', {}),
    (['whoami', '-debugfile', '{mine}/debug.log'], 'same', '', {}),
    (['ls', '-json', '{d}'], 'code', 'the JSON layout (sorted keys, indent 2)', {}),
    (['time', 'pwd'], 'code', 'the timing line in our own words', {}),
    (['exit', '3', 'bye'], 'same', '', {}),
    (['exit', '0', 'bye'], 'code', 'the reference prints MSG on stderr even with code 0 (it compares the text '
     "'0' with the number 0); alien.py prints it on stdout", {}),
    (['version'], 'code', 'our own lines (no version date/hash: one file, no build)', {}),
]


def _compat_normalize(text, values):
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, '{%s}' % name)
    text = re.sub(r'date="[^"]*" timestamp="\d+"', 'date="D" timestamp="T"', text)   # XML collections
    return _normalize_times(text)


@pytest.mark.once
def test_compatibility_with_the_reference_client(cenv, grid_state, f2dir, tmp_path):
    """Reference-style invocations through alienpy 1.7.0 and alien.py on the test grid."""
    from concurrent.futures import ThreadPoolExecutor
    from testgrid import grid
    expired, expired_key = grid.make_user_cert(_TG_DIR, 'expired13c', expired=True)
    local = tmp_path / 'local'
    write(local / 'a.root', b'root data\n' * 10)
    write(local / 'cmds.txt', b'whoami\npwd\nls /nonexistent\n')   # no comment lines: the reference has none
    base = dict(cenv, ALIENPY_NO_CWD_RESTORE='1', ALIENPY_NO_STAGGER='1')
    assert run_cli(['pwd'], env=base).returncode == 0            # one token, shared by both clients
    clients = {'ref': tool('alienpy'), 'ours': ALIEN}
    work = {}
    for name in clients:
        mine = tmp_path / name
        mine.mkdir()
        (mine / 'in.txt').write_text('# cp -input\n%sl.txt file:%s/inp/l.txt\n' % (f2dir, mine))
        work[name] = {'d': f2dir, 'local': str(local), 'mine': str(mine), 'expired': expired,
                      'expired_key': expired_key, 'gmine': '%s_%s/' % (f2dir.rstrip('/'), name),
                      'cert': cenv.get('X509_USER_CERT', ''), 'key': cenv.get('X509_USER_KEY', '')}

    def one(name, case):
        args, _how, _why, extra = case[:4]
        prog = case[4] if len(case) > 4 else 'alien.py'
        v = work[name]
        argv = [a.format(**v) for a in args]
        env = dict(base, **dict((k, x.format(**v)) for k, x in extra.items()))
        if name == 'ref':
            # the reference's run/cat name their temp file after the LFN in $TMPDIR: cases
            # running at once on the same LFN would share it
            env['TMPDIR'] = tempfile.mkdtemp(dir=str(tmp_path))
            exe = clients['ref'] if prog == 'alien.py' else os.path.join(os.path.dirname(clients['ref']), prog)
            cmd = [exe] + argv
        else:
            exe = ALIEN
            if prog != 'alien.py':
                exe = os.path.join(v['mine'], prog)
                if not os.path.lexists(exe):
                    os.symlink(ALIEN, exe)
            cmd = [sys.executable, exe] + argv
        return run_cli([], program=cmd, env=env, cwd=v['mine'], timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(case, pool.submit(one, 'ref', case), pool.submit(one, 'ours', case)) for case in COMPAT_CASES]
        runs = [(case, f1.result(), f2.result()) for case, f1, f2 in futures]
    problems = []
    for case, ref, ours in runs:
        args, how, why = case[:3]
        assert 'Traceback' not in ours.stderr, (args, ours.stderr)
        if how == 'same':
            a = (ref.returncode, _compat_normalize(ref.stdout, work['ref']))
            b = (ours.returncode, _compat_normalize(ours.stdout, work['ours']))
            ok = a == b
        elif how == 'code':
            assert why, args
            ok = ref.returncode == ours.returncode
        else:
            assert why and how[0] == 'deviation', args
            ok = ours.returncode == how[1] and ref.returncode != how[1]
        if not ok:
            problems.append((args, how, ref.returncode, ref.stdout[-300:], ref.stderr[-300:],
                             ours.returncode, ours.stdout[-300:], ours.stderr[-300:]))
    assert problems == []
    # not vacuous: both clients did the work
    by_args = dict((' '.join(case[0]), (ref, ours)) for case, ref, ours in runs)
    ref, ours = by_args['find2 -name ext_md {d}']
    assert ours.stdout == ref.stdout == f2dir + 'a/b/r.md\n'
    ref, ours = by_args['exec {d}s.sh one two']
    assert ref.returncode == ours.returncode == 3 and ours.stdout == 'script: one two\n'
    assert os.path.getsize(os.path.join(work['ours']['mine'], 'c.xml')) > 0
    files = [_compat_normalize(open(os.path.join(work[n]['mine'], 's.xml')).read(), work[n]) for n in work]
    assert files[0] == files[1] and 'lfn="{d}l.txt"' in files[0]
    assert open(os.path.join(work['ours']['mine'], 't', 'x.py'), 'rb').read() == b'print(1)\n' * 300
    # the same files arrived, under the same names, for every copy above
    trees = []
    for name in clients:
        top = work[name]['mine']
        trees.append(sorted((os.path.relpath(os.path.join(r, f), top), hashlib.md5(open(os.path.join(r, f), 'rb')
                                                                                  .read()).hexdigest())
                            for r, _d, fs in os.walk(top) for f in fs
                            if r != top and os.path.relpath(r, top) not in ('b', 'o7')))
    # b/: the -bogus deviation; o7/: several sources, of which the reference copies only the last
    assert trees[0] == trees[1] and len(trees[1]) > 25, trees
    assert ('rmp/j/jalien/%s/a/x.py' % f2dir.rstrip('/').rsplit('/', 1)[1]) in [t[0] for t in trees[1]]
    uploads = [run_cli(['find2', work[name]['gmine']], env=base).stdout.replace(work[name]['gmine'], '')
               for name in clients]
    assert uploads[0] == uploads[1] == 'ss/a.root\nup/a.root\n'


# ===== the storage commands =====


def test_storage_conformance_with_the_reference_client(store, dialect):
    """Where alien.py keeps the reference's output shape, both clients print the same."""
    env, lfn = store
    env = dict(env, ALIENPY_NO_CWD_RESTORE='1')
    lines = ['getSE', 'getSE 2', 'getSE -srv first', 'getSE -name jtestsite', 'SEqos second first',
             'pfn ' + lfn, 'pfn-status ' + lfn, 'pfn-status -v ' + lfn, 'xrd_config first', 'xrd_config -v second']
    chain = '; '.join(lines)   # one process per client: both print each command's output in turn
    ref = subprocess.run([tool('alienpy'), chain], env=env, capture_output=True, text=True, timeout=120)
    ours = run_cli([chain], env=env, timeout=120)
    assert (ours.returncode, ours.stdout) == (ref.returncode, ref.stdout), (ref, ours)
    assert ours.returncode == 0 and ours.stderr == '' and len(ours.stdout.splitlines()) == 23, ours
