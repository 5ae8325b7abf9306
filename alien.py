#!/usr/bin/env python3
"""alien.py - command-line client for the ALICE grid (JAliEn central services).

One self-contained module, standard library only at import time, Python 3.6+.
Optional packages are imported lazily by the commands that need them:
XRootD (PyPI ``xrootd``) for cp and the file commands, gfal2 (Debian
``python3-gfal2``) for ``alien.py gfal ...``, ``websocket-client`` as an
alternative transport (ALIENPY_TRANSPORT=websocket-client).

Embedding (batch wrappers)::

    import alien
    s = alien.Session()
    r = s.run('ls -l /alice/')      # -> Result(exitcode, out, err, results)
"""

import base64
import hashlib
import json
import os
import re
import shlex
import socket
import ssl
import struct
import sys
import tempfile
import time

VERSION = '0.1.0'

# ==========================================================================
# Configuration: environment, defaults, exit codes
# ==========================================================================

DEFAULT_HOST = 'alice-jcentral.cern.ch'
DEFAULT_PORT = 8097
WS_PATH = '/websocket/json'

# Exit codes (documented in the README).
EX_OK = 0
EX_GENERIC = 1
EX_ENOENT = 2
EX_EIO = 5
EX_EINVAL = 22
EX_ENOMSG = 42
EX_USAGE = 64
EX_EMPTY_REPLY = 70
EX_NOTCONN = 107
EX_UNAUTHORIZED = 129


def env_flag(name, environ=None):
    """True when the environment variable is set to anything but '', 0, false, no."""
    value = (os.environ if environ is None else environ).get(name, '')
    return value.strip().lower() not in ('', '0', 'false', 'no', 'off')


class AlienError(Exception):
    """Every error alien.py reports: a one-line message and an exit code."""

    def __init__(self, message, exitcode=EX_GENERIC):
        super().__init__(message)
        self.exitcode = exitcode


class Result(object):
    """Outcome of one command: what the shell prints and the exit code."""
    __slots__ = ('exitcode', 'out', 'err', 'results', 'metadata')

    def __init__(self, exitcode=0, out='', err='', results=None, metadata=None):
        self.exitcode = exitcode
        self.out = out
        self.err = err
        self.results = results if results is not None else []
        self.metadata = metadata if metadata is not None else {}

    def __repr__(self):
        return 'Result(exitcode=%r, out=%r, err=%r)' % (self.exitcode, self.out, self.err)


# ==========================================================================
# Credentials and TLS
# ==========================================================================


# ==========================================================================
# WebSocket (RFC 6455), synchronous client
# ==========================================================================


# ==========================================================================
# JCentral session: requests, replies, session state
# ==========================================================================


class Session(object):
    """A JCentral session. Connects lazily on the first server request.

    request(command, options) -> Result of one server command (raw reply in
    .results/.metadata); run(line) -> Result of a command line ('a; b').
    State mirrored from every reply: user, cwd, home, prevdir.
    """

    def __init__(self, environ=None):
        self.environ = dict(os.environ if environ is None else environ)
        self.user = ''
        self.cwd = ''
        self.home = ''
        self.prevdir = ''


# ==========================================================================
# Paths: grid and local path expansion (pure functions)
# ==========================================================================


# ==========================================================================
# Transfers: cp over XRootD (imported lazily)
# ==========================================================================


# ==========================================================================
# gfal jobs: alien.py gfal list|remove|copy|rename|mkdir (gfal2 imported lazily)
# ==========================================================================


# ==========================================================================
# Commands: one registry maps command names to handlers
# ==========================================================================

COMMANDS = {}


class Command(object):
    __slots__ = ('name', 'handler', 'usage', 'connect')

    def __init__(self, name, handler, usage, connect):
        self.name = name
        self.handler = handler
        self.usage = usage
        self.connect = connect


def command(*names, **kw):
    """Register handler(session, args) -> Result under one or more names.

    usage: the help text; connect=False for commands that never need the
    central service (the session then stays unconnected).
    """
    def deco(fn):
        for name in names:
            COMMANDS[name] = Command(name, fn, kw.get('usage', fn.__doc__ or ''), kw.get('connect', True))
        return fn
    return deco


# -- transfer commands (cp, cat, edit, ...) --

# -- gfal commands --

# -- credential commands --

# -- shell commands --


# ==========================================================================
# Interactive shell
# ==========================================================================


# ==========================================================================
# main()
# ==========================================================================


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return 0


if __name__ == '__main__':
    sys.exit(main())
