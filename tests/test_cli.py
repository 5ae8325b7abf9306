"""The command line and the interactive shell against the test grid."""
import json
import os
import re
import subprocess
import sys
import time

import pexpect
import pytest

import alien
from testgrid import tools
from conftest import (
    ALIEN, CLIENT_CASES, PROMPT, REPO, cpx, grid_dir, one_line_error, other_python, run_cli,
    shell_cmd, shell_end, spawn_shell, write)


# ===== installation: the pip command, command mode and shell on every interpreter =====


@pytest.mark.once
def test_pip_install_exposes_the_alien_py_command(tmp_path, cenv, grid_state):
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    p = subprocess.run([str(venv / 'bin' / 'pip'), 'install', '-q', '--disable-pip-version-check', REPO],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(venv / 'bin' / 'alien.py'), 'version'], capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 0 and 'alien.py version: %s' % alien.VERSION in p.stdout, p.stderr
    assert str(venv) in p.stdout  # the installed module ran, not this checkout's
    # the reference client's commands, from its packaging metadata: one launcher under each name
    ref = os.path.join(REPO, '.venv-ref', 'lib', 'python3.11', 'site-packages', 'alienpy-1.7.0.dist-info',
                       'entry_points.txt')
    names = [line.split('=')[0].strip() for line in open(ref) if '=' in line]
    assert len(names) == 23 and 'alien_cp' in names and 'alien-token-init' in names
    launcher = open(os.path.join(REPO, 'packaging', 'alien.py')).read()
    for name in names:
        assert open(str(venv / 'bin' / name)).read().split('\n', 1)[1] == launcher.split('\n', 1)[1], name
    p = subprocess.run([str(venv / 'bin' / 'alien_cmd'), 'exit 0 plain'], capture_output=True, text=True,
                       cwd=str(tmp_path))
    assert (p.returncode, p.stdout) == (0, 'plain\n'), p
    for name in ('alien_pwd', 'alien_home'):
        p = subprocess.run([str(venv / 'bin' / name)], capture_output=True, text=True, cwd=str(tmp_path), env=cenv)
        assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\n'), (name, p)
    p = subprocess.run([str(venv / 'bin' / 'alien-token-info')], capture_output=True, text=True,
                       cwd=str(tmp_path), env=cenv)
    assert p.returncode == 0 and 'jalien' in p.stdout, p   # the token the commands above fetched


@pytest.mark.once
@pytest.mark.parametrize('version', tools.OTHER_VERSIONS)
def test_command_mode_and_shell_on(version, cenv, grid_state):
    """A command-mode session and the shell under a pty on that interpreter (built-in
    websocket: the interpreter's site-packages has no websocket-client)."""
    py = other_python(version)
    env = dict(cenv)
    env.pop('ALIENPY_TRANSPORT', None)
    home = grid_state['home']
    p = run_cli(['whoami; pwd; ls -l; stat /no/such'], env=env, python=py)
    assert p.returncode != 0 and 'Traceback' not in p.stderr, p.stderr
    assert p.stdout.startswith('jalien\n' + home + '\n'), p.stdout
    assert p.stderr.count('\n') == 1, p.stderr
    p = run_cli(['pwd', '-json'], env=env, python=py)
    assert p.returncode == 0 and json.loads(p.stdout)['results'][0]['pwd'] == home, p.stdout + p.stderr
    p = run_cli(['stat', '/no/such'], env=env, python=py)
    assert one_line_error(p) and p.returncode == run_cli(['stat', '/no/such'], env=env).returncode
    child = pexpect.spawn(py, [ALIEN], env=env, encoding='utf-8', timeout=30)
    child.expect_exact(':' + home + ' >')
    child.sendline('cd ..; pwd')
    child.expect_exact(home.rstrip('/').rsplit('/', 1)[0] + '/\r\n')
    child.sendline('exit')
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# ===== command mode: chains, exit codes, JSON output =====


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
    assert run_cli(['mkdir -p jsonout/d'], env=cenv).returncode == 0
    p = run_cli(['ll -json ' + grid_state['home'] + 'jsonout'], env=cenv)  # a client-side alias passes -json on
    assert json.loads(p.stdout)['results'][0]['permissions'].startswith(('d', '-'))
    p = run_cli(['-json', 'pwd'], env=cenv)
    assert json.loads(p.stdout)['results'][0]['pwd'] == grid_state['home']
    env = dict(cenv, ALIENPY_JSON='1')
    p = run_cli(['version'], env=env)  # a client-side command has no reply dict
    assert p.returncode == 0 and 'no JSON reply to print' in p.stderr


def test_ls_aliases(cenv, grid_state):
    run_cli(['mkdir -p lsal/.hidden lsal/vis'], env=cenv)
    base = grid_state['home'] + 'lsal/'
    assert run_cli(['ls ' + base], env=cenv).stdout == 'vis/\n'
    assert sorted(run_cli(['la ' + base], env=cenv).stdout.split()) == ['.hidden/', 'vis/']
    assert run_cli(['ll ' + base], env=cenv).stdout.startswith('drwx')
    assert '.hidden/' in run_cli(['lla ' + base], env=cenv).stdout


# ===== the shell: prompt, history, completion, aliases, cwd =====


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
    assert shell_cmd(p, 'whoam\t') == ['No such file or directory : Command [whoam] not found!']  # no completion
    shell_end(p)
    assert not os.path.exists(os.path.join(cenv['HOME'], '.alienpy_history'))


def test_shell_history_is_bounded(cenv):
    hist = os.path.join(cenv['HOME'], '.alienpy_history')
    with open(hist, 'w') as f:
        f.write(''.join('old %d\n' % i for i in range(alien.HISTORY_SIZE + 700)))
    p = spawn_shell(cenv)
    shell_cmd(p, '!true newest')
    shell_end(p)
    lines = open(hist).read().splitlines()
    assert len(lines) == alien.HISTORY_SIZE and lines[-1] == '!true newest'


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
    p.send('\x15')  # Ctrl-U: drop the line (a Ctrl-C in the middle of a completion waits for the next key)
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
    p.send('ls %stabdir_\t\t' % grid_state['home'])  # two candidates: listed by their names
    p.expect(r'\n *tabdir_sp\\ ace/ +tabdir_unique/\s*\r\n' + PROMPT)
    p.send('\x15')
    run_cli(['touch %stabdir_unique/inner_file' % grid_state['home']], env=cenv)
    p.send('ls ../tabdir_unique/inner\t\t')  # ls: files and directories
    p.expect(r'inner/ +inner_file')
    p.send('\x15')
    p.send('cd ../tabdir_unique/inner\t')  # cd: directories only, so a single candidate
    p.expect(re.escape('tabdir_unique/inner/'))
    p.send('\x15')
    p.send('ls file:%s/localf\t' % local)  # a local path
    p.expect('localfile_abc.txt ')
    p.send('\x15')
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
    assert shell_cmd(p, 'cd -; pwd') == [grid_state['home']]
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


# ===== client-side commands: editors, pagers, raw JSON =====


@pytest.mark.parametrize('editor', ['vi', 'vim', 'nano', 'mcedit'])
def test_named_editor_commands(cpenv, grid_state, tmp_path, editor):
    """vi/vim/nano/mcedit force that editor (here a stand-in script of that name on PATH)."""
    g = grid_dir(grid_state, 'named-' + editor)
    f = write(tmp_path / 'doc.txt', b'one\n')
    assert cpx(cpenv, 'file:' + f, g + 'doc.txt@disk:1').returncode == 0
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    write(bindir / editor, ('#!/bin/sh\necho "by %s" >> "$1"\n' % editor).encode())
    os.chmod(str(bindir / editor), 0o755)
    env = dict(cpenv, PATH='%s:%s' % (bindir, cpenv['PATH']), EDITOR='/bin/false', VISUAL='')
    p = run_cli([editor, g + 'doc.txt@disk:1'], env=env, cwd=env['PWD'], quote=True)
    assert p.returncode == 0, p
    assert run_cli(['cat', g + 'doc.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True).stdout == 'one\nby %s\n' % editor
    p = run_cli([editor], env=env, cwd=env['PWD'], quote=True)  # no LFN: usage error, one line
    assert p.returncode != 0 and one_line_error(p), p


def test_more_less_and_logout(cpenv, grid_state, tmp_path):
    g = grid_dir(grid_state, 'pagers')
    f = write(tmp_path / 'p.txt', b'paged\n')
    assert cpx(cpenv, 'file:' + f, g + 'p.txt@disk:1').returncode == 0
    for pager in ('more', 'less'):
        p = run_cli([pager, g + 'p.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True)  # not a terminal: printed like cat
        assert (p.returncode, p.stdout) == (0, 'paged\n'), p
        p = run_cli([pager, g + 'missing.txt'], env=cpenv, cwd=cpenv['PWD'], quote=True)
        assert p.returncode == 2 and one_line_error(p), p
    assert run_cli(['logout 3'], env=cpenv).returncode == 3
    p = run_cli(['logout x'], env=cpenv)
    assert p.returncode == 22 and one_line_error(p), p


def test_jsonraw_prints_the_reply_as_received(cenv):
    p = run_cli(['pwd'], env=dict(cenv, ALIENPY_JSONRAW='1'))
    assert p.returncode == 0 and '\\/localhost\\/localdomain' in p.stdout  # the service escapes slashes
    assert json.loads(p.stdout)['results'][0]['message'].startswith('/localhost/')


# ===== the command line: entry points, command files, -debug/-json anywhere =====


def test_argv0_dispatch_runs_the_verb(cenv, grid_state, tmp_path):
    for name in ('alien_pwd', 'alien_home'):
        link = tmp_path / name
        link.symlink_to(ALIEN)
        p = subprocess.run([sys.executable, str(link)], env=cenv, capture_output=True, text=True, timeout=60)
        assert (p.returncode, p.stdout, p.stderr) == (0, grid_state['home'] + '\n', ''), p
    link = tmp_path / 'alien_stat'
    link.symlink_to(ALIEN)
    p = subprocess.run([sys.executable, str(link), '/nonexistent'], env=cenv, capture_output=True, text=True)
    assert p.returncode == 2 and one_line_error(p), p


def test_command_file(cenv, grid_state, tmp_path):
    f = tmp_path / 'cmds.txt'
    f.write_text('# set up\n\nmkdir -p h13cmdfile\ncd h13cmdfile\n  # the check\npwd; whoami\nstat nothere\n')
    p = run_cli([str(f)], env=cenv)
    assert p.returncode == 2 and p.stdout == grid_state['home'] + 'h13cmdfile/\njalien\n', p
    f.write_text('stat nothere\npwd\n')
    p = run_cli([str(f)], env=cenv)
    assert p.returncode == 0 and p.stdout == grid_state['home'] + '\n'
    f.write_text('pwd\nexit 5 stderr bye\npwd\n')
    p = run_cli([str(f)], env=cenv)
    assert (p.returncode, p.stdout, p.stderr) == (5, grid_state['home'] + '\n', 'bye\n')


def test_debug_and_json_anywhere(cenv, grid_state, tmp_path):
    log = tmp_path / 'dbg.log'
    p = run_cli(['pwd', '-debugfile', str(log)], env=cenv)
    assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\n'), p
    assert '"command": "pwd"' in log.read_text()
    assert oct(os.stat(str(log)).st_mode & 0o777) == oct(0o600)
    p = run_cli(['-debug', 'whoami'], env=cenv)
    assert (p.returncode, p.stdout) == (0, 'jalien\n')
    assert os.path.exists(os.path.join(cenv['HOME'], 'alien_py.log'))
    p = run_cli(['pwd; whoami', '-json'], env=cenv)   # the whole run, both commands
    assert p.returncode == 0 and p.stdout.count('"metadata"') == 2, p.stdout


def test_arguments_are_joined_and_split_like_the_reference(cenv, grid_state):
    home = grid_state['home']
    p = run_cli(['mkdir -p h13join/a; touch h13join/a/x.root; touch h13join/a/y.txt; touch "h13join/my file"'],
                env=cenv)
    assert p.returncode == 0, p.stderr
    p = run_cli(['find', home + 'h13join .root'], env=cenv)   # a path and a pattern in one argument
    assert p.returncode == 0 and p.stdout.split() == [home + 'h13join/a/x.root'], p
    p = run_cli(["stat 'h13join/my file'"], env=cenv)           # a name with a space, quoted inside
    assert p.returncode == 0 and 'my file' in p.stdout, p
    p = run_cli(['ls', 'h13join/a', ';', 'pwd'], env=cenv)     # a lone ; separates commands
    assert p.stdout.split() == ['x.root', 'y.txt', home], p


def test_time_and_exit_and_version(cenv, grid_state):
    p = run_cli(['time', 'pwd'], env=cenv)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines[0] == grid_state['home'], p
    assert re.match(r'^time: \d+\.\d{3} ms, requests 1, logins 1$', lines[1]), p   # a cold pwd costs one of each
    p = run_cli(['time 2 pwd'], env=cenv)      # the service repeats and times the command itself
    assert p.returncode == 0 and p.stdout.count(grid_state['home']) >= 2 and 'time:' not in p.stdout, p
    p = run_cli(['time'], env=cenv)
    assert p.returncode == 22 and one_line_error(p)
    p = run_cli(['time stat /nonexistent'], env=cenv)   # a failure: no timing line
    assert p.returncode == 2 and one_line_error(p)
    p = run_cli(['exit 3 see you'], env=cenv)
    assert (p.returncode, p.stdout, p.stderr) == (3, '', 'see you\n')
    p = run_cli(['exit 0 done'], env=cenv)
    assert (p.returncode, p.stdout, p.stderr) == (0, 'done\n', '')
    p = run_cli(['version'], env=cenv)
    keys = [line.split(':')[0] for line in p.stdout.splitlines()]
    assert keys == ['alien.py version', 'alien.py location', 'script location', 'Interpreter', 'Python version',
                    'XRootD version', 'XRootD path'], p.stdout
    from XRootD import client as xrd
    assert 'XRootD version: %s\n' % xrd.__version__ in p.stdout


# ===== start-up: modules loaded, fast exit =====


@pytest.mark.once
def test_pwd_loads_no_module_it_does_not_need(cenv):
    """The start-up path of `python3 alien.py pwd` imports nothing beyond what the
    connection needs: the IDNA codec, calendar, time.strptime and the HTTP, XRootD
    and gfal2 modules stay out (each costs milliseconds of every start)."""
    cenv = dict(cenv)
    cenv.pop('ALIENPY_TRANSPORT', None)           # the built-in websocket: -S hides site-packages
    run_cli(['pwd'], env=cenv)                    # the first run fetches the token
    # -S: what site and .pth files of this interpreter import is not alien.py's doing
    p = subprocess.run([sys.executable, '-S', '-X', 'importtime', ALIEN, 'pwd'], env=cenv,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip().endswith('/'), p.stderr[-500:]
    loaded = {line.rsplit('|', 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith('import time:')}
    assert 'ssl' in loaded and 'json' in loaded
    for name in ('encodings.idna', 'calendar', '_strptime', 'http.client', 'XRootD', 'gfal2', 'tempfile',
                 'subprocess', 'urllib.parse'):
        assert name not in loaded, name


def test_fast_exit_flushes_output_and_keeps_exit_codes(cenv):
    """leave(): os._exit after main() must lose neither output nor exit code."""
    many = ';'.join(['pwd'] * 300)
    p = run_cli([many], env=cenv)
    assert p.returncode == 0 and p.stdout.count('\n') == 300
    p = run_cli(['stat /no/such/file'], env=cenv)
    assert p.returncode != 0 and 'No such file' in p.stderr
    p = run_cli(['pwd'], env=dict(cenv, JALIEN_TOKEN_CERT=open(cenv['X509_USER_CERT']).read(),
                                   JALIEN_TOKEN_KEY=open(cenv['X509_USER_KEY']).read()))
    assert p.returncode == 0
    assert not [n for n in os.listdir(cenv['TMPDIR']) if n.endswith('.pem') and '_' in n and n.startswith(('tokencert', 'tokenkey', 'cert', 'key'))]
