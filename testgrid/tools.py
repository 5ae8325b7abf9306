"""Where the tests, benchmarks and fuzzers find the programs they run.

One lookup for every external program: each name maps to the place where
``.ci/setup`` puts it, never to whatever happens to be on ``PATH``. A program
installed globally by hand earlier (``pip install alienpy``) therefore cannot
stand in for a missing install step: a missing program is an error that names
the ``.ci/setup`` step providing it.

    from testgrid import tools
    tools.tool('alienpy')        # -> path, or raises tools.MissingTool
    tools.missing()              # -> [(name, step), ...] for a session-start check
    tools.restrict_path()        # PATH = system directories only, for the test session
"""

import glob
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'

_APT = '.ci/setup: apt-get install %s'
_PIP = '.ci/setup: .venv/bin/python -m pip install -r .ci/requirements-test.txt (%s, for %s)'
_REF = '.ci/setup: python3 -m venv .venv-ref && .venv-ref/bin/pip install alienpy==1.7.0'


def _venv_ref(name):
    return os.path.join(REPO, '.venv-ref', 'bin', name)


def _beside_interpreter(name):
    """Where pip puts NAME's script for this interpreter (its venv, or its prefix)."""
    import sysconfig
    return os.path.join(sysconfig.get_path('scripts'), name)


# name -> (candidate paths, in order; the .ci/setup step that provides it)
TOOLS = {
    'alienpy': (lambda: [os.environ.get('ALIENPY_REFERENCE') or _venv_ref('alien.py')], _REF),
    'alienpy-python': (lambda: [_venv_ref('python3')], _REF),
    'xrootd': (lambda: ['/usr/bin/xrootd'], _APT % 'xrootd-server'),
    'xrdcp': (lambda: ['/usr/bin/xrdcp'], _APT % 'xrootd-client'),
    'xrdfs': (lambda: ['/usr/bin/xrdfs'], _APT % 'xrootd-client'),
    'openssl': (lambda: ['/usr/bin/openssl'], _APT % 'openssl'),
    'tmux': (lambda: ['/usr/bin/tmux'], _APT % 'tmux'),
    'git': (lambda: ['/usr/bin/git'], _APT % 'git'),
    # gfal2 exists only as Debian's python3-gfal2, built for the system interpreter
    'gfal-python': (lambda: ['/usr/bin/python3'],
                    _APT % 'python3-gfal2 gfal2-plugin-file gfal2-plugin-xrootd gfal2-plugin-http'),
    'gfal-ls': (lambda: ['/usr/bin/gfal-ls'], _APT % 'gfal2-util-scripts python3-gfal2-util'),
    'gfal-copy': (lambda: ['/usr/bin/gfal-copy'], _APT % 'gfal2-util-scripts python3-gfal2-util'),
    'vermin': (lambda: [_beside_interpreter('vermin')], _PIP % ('vermin', sys.executable)),
}


class MissingTool(AssertionError):
    """A program the tests need is not where .ci/setup puts it (a test failure, never a skip)."""


def _find(name):
    candidates, step = TOOLS[name]
    for path in candidates():
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path, step
    return None, step


def tool(name):
    """Absolute path of program NAME as .ci/setup installs it; MissingTool otherwise."""
    path, step = _find(name)
    if path is None:
        raise MissingTool('%s is missing (looked in %s); it comes from %s'
                          % (name, ', '.join(p for p in TOOLS[name][0]() if p), step))
    return path


def missing():
    """[(name, step)] of every program .ci/setup should have installed but did not."""
    return [(name, _find(name)[1]) for name in sorted(TOOLS) if _find(name)[0] is None]


def restrict_path(environ=os.environ):
    """Reduce PATH to the system directories, so a test that looks a program up by
    name finds only what the distribution's packages (apt, in .ci/setup) put there,
    and nothing pip or a user installed into another directory by hand."""
    environ['PATH'] = SYSTEM_PATH
    return environ


# ---- other interpreters (pyenv in the machine image) --------------------------
PYENV_VERSIONS = ('3.6', '3.7', '3.8', '3.9', '3.10', '3.11', '3.12', '3.13')
# the interpreter running the suite covers its own version
OTHER_VERSIONS = tuple(v for v in PYENV_VERSIONS if v != '%d.%d' % sys.version_info[:2])


def interpreter(version):
    """Path of CPython VERSION ('3.6') from the machine image's pyenv, or from the
    system; None when this machine has none."""
    root = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')
    found = sorted(glob.glob(os.path.join(root, 'versions', version + '.*', 'bin', 'python' + version)),
                   key=lambda p: [int(x) for x in p.split('/versions/')[1].split('/')[0].split('.')
                                  if x.isdigit()])
    if found:
        return found[-1]
    for d in SYSTEM_PATH.split(':'):
        p = os.path.join(d, 'python' + version)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def test_venv(version):
    """The python of .venv-pyXY, the test venv .ci/setup makes for CPython VERSION."""
    py = os.path.join(REPO, '.venv-py' + version.replace('.', ''), 'bin', 'python')
    if not os.access(py, os.X_OK):
        raise MissingTool('%s is missing; it comes from .ci/setup (a venv with pytest for python%s)'
                          % (os.path.relpath(py, REPO), version))
    return py
