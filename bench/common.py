"""Shared pieces of the benchmarks: the test grid, the two clients, measuring a
cold process (wall time and its own peak RSS through wait4)."""
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from testgrid import grid  # noqa: E402

ALIEN = [sys.executable, os.path.join(REPO, 'alien.py')]
REFERENCE = [os.environ.get('ALIENPY_REFERENCE', os.path.join(REPO, '.venv-ref', 'bin', 'alien.py'))]


def start_grid(name='.testgrid-bench'):
    state = grid.start(os.path.join(REPO, name))
    env = dict(os.environ, **state['env'])
    env.pop('ALIENPY_DEBUG', None)
    return state, env


def measure(cmd, env, stdout=subprocess.DEVNULL):
    """(wall seconds, peak RSS in MiB, exit code, CPU seconds) of one cold run of cmd.
    The CPU time (user + system) is the client's own work: the service's time
    and the waiting for it are not in it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, 'waitstatus_to_exitcode') else status >> 8
    return wall, usage.ru_maxrss / 1024.0, proc.returncode, usage.ru_utime + usage.ru_stime


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
