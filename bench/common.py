"""Shared pieces of the benchmarks: the test grid, the two clients, measuring a
cold process (wall time and its own peak RSS through wait4)."""
import contextlib
import os
import statistics
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from testgrid import grid, tools  # noqa: E402

ALIEN = [sys.executable, os.path.join(REPO, 'alien.py')]
REFERENCE = [tools.tool('alienpy')]   # where .ci/setup installs it, never PATH


def installed_command():
    """alien.py installed from this checkout into .venv-this (pip install .), run as
    the installed `alien.py` command, the way the reference client is run."""
    venv = os.path.join(REPO, '.venv-this')
    pip = os.path.join(venv, 'bin', 'pip')
    if not os.path.exists(pip):
        subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
    subprocess.run([pip, 'install', '-q', '--disable-pip-version-check', '--no-deps', '--force-reinstall', REPO],
                   check=True)
    return [os.path.join(venv, 'bin', 'alien.py')]


def timed(cmd, env, cwd=None):
    """Wall seconds of one run of cmd; a failure ends the benchmark with its output."""
    import time
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit('FAILED (%d): %s\n%s' % (p.returncode, ' '.join(cmd)[:300], p.stdout[-2000:]))
    return wall


def finish(scratch, workdir):
    """Remove the scratch directory, stop and remove the benchmark's grid."""
    import shutil
    shutil.rmtree(scratch, ignore_errors=True)
    grid.stop(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def start_grid(name='.testgrid-bench'):
    state = grid.start(os.path.join(REPO, name))
    env = dict(os.environ, **state['env'])
    env.pop('ALIENPY_DEBUG', None)
    return state, env


# Linux counts in a child's peak RSS (ru_maxrss) the memory of the process it was
# forked from, so a large benchmark process would raise every figure. A minimal
# interpreter forks the client instead, as /usr/bin/time does, and reports it.
_REPORTER = (
    "import os, sys, time\n"
    "out = sys.argv[1]\n"
    "t0 = time.perf_counter()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "wall = time.perf_counter() - t0\n"
    "code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)\n"
    "open(out, 'w').write('%f %d %d %f' % (wall, ru.ru_maxrss, code, ru.ru_utime + ru.ru_stime))\n")


def measure(cmd, env, stdout=subprocess.DEVNULL):
    """(wall seconds, peak RSS in MiB, exit code, CPU seconds) of one cold run of cmd.
    The CPU time (user + system) is the client's own work: the service's time
    and the waiting for it are not in it."""
    import tempfile
    with tempfile.NamedTemporaryFile('r') as report:
        subprocess.run([sys.executable, '-S', '-c', _REPORTER, report.name] + list(cmd), env=env,
                       stdout=stdout, stderr=subprocess.DEVNULL, check=True)
        wall, rss, code, cpu = report.read().split()
    return float(wall), int(rss) / 1024.0, int(code), float(cpu)


def compare(label, runs, commands, env):
    """Alternate the commands `runs` times; print and return the medians."""
    samples = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            wall, rss, rc, cpu = measure(cmd, env)
            if rc != 0:
                raise SystemExit('%s: %s exited %d' % (label, ' '.join(cmd), rc))
            samples[name].append((wall, rss, cpu))
    medians = {}
    print('%s (median of %d cold runs)' % (label, runs))
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        rss = statistics.median(v[1] for v in values)
        cpu = statistics.median(v[2] for v in values)
        medians[name] = (wall, rss, cpu)
        print('  %-28s wall %8.3f s   peak RSS %7.1f MiB   client CPU %7.3f s' % (name, wall, rss, cpu))
    names = list(commands)
    if len(names) == 2:
        (w0, r0, c0), (w1, r1, c1) = medians[names[0]], medians[names[1]]
        print('  ratio %s / %s: wall %.2fx, peak RSS %.2fx, client CPU %.2fx'
              % (names[0], names[1], w0 / w1, r0 / r1, c0 / c1))
    return medians


@contextlib.contextmanager
def fresh_grid(name, scratch_prefix='bench-'):
    """A fresh test grid under REPO/name and a scratch directory -> (state, env, scratch);
    both are removed afterwards."""
    import shutil
    import tempfile
    workdir = os.path.join(REPO, name)
    state = grid.start(workdir, fresh=True)
    env = dict(os.environ, **state['env'])
    env.pop('ALIENPY_DEBUG', None)
    env['ALIENPY_NO_STAGGER'] = '1'
    scratch = tempfile.mkdtemp(prefix=scratch_prefix)
    try:
        yield state, env, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        grid.stop(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
