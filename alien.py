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

import collections  # noqa: E402  (stdlib; kept in this section so merges stay clean)
import errno  # noqa: E402
import stat as stat_mod  # noqa: E402
import threading  # noqa: E402

GFAL_JOB_TYPES = ('list', 'remove', 'copy', 'rename', 'mkdir')
GFAL_USAGE = 'gfal list|remove|copy|rename|mkdir [JOB.json | -]'

# Options each job type accepts (anything else is a job error: nothing is done).
GFAL_OPTIONS = {
    'list': ('depth', 'checksum', 'timeout'),
    'remove': ('timeout',),
    'rename': ('timeout',),
    'mkdir': ('timeout',),
    'copy': ('make_dirs', 'parent', 'checksum', 'encrypt', 'preserve_timestamp',
             'overwrite', 'nbstreams', 'timeout', 'parallel'),
}
GFAL_TOP_KEYS = ('base', 'files', 'dirs', 'options')

# COPY defaults. make_dirs: True as in the pdm worker (its parent option), so the
# per-file jobs it produced for a directory tree work unchanged. parallel: chosen
# by bench/gfal_bench.py (see docs-gfal.md).
GFAL_DEFAULT_PARALLEL = 16
GFAL_MAX_PARALLEL = 64
GFAL_MKDIR_MODE = 0o755

GFAL_MISSING_HINT = (
    'gfal2 Python bindings are not importable by this interpreter (%s): install the '
    'distribution package python3-gfal2 (apt-get install python3-gfal2; EL: dnf install '
    'python3-gfal2) plus the plugins for your protocols (gfal2-plugin-file, '
    'gfal2-plugin-xrootd, gfal2-plugin-gridftp, gfal2-plugin-http), and run alien.py with '
    'the interpreter they are built for, e.g. /usr/bin/python3 alien.py gfal ...')

GFAL_STAT_KEYS = ('st_dev', 'st_ino', 'st_mode', 'st_nlink', 'st_uid', 'st_gid',
                  'st_size', 'st_atime', 'st_mtime', 'st_ctime')

# Encryption of the data channel, by scheme: schemes whose channel is encrypted
# anyway, schemes upgraded to their TLS twin, schemes with no network at all.
GFAL_ENCRYPTED_SCHEMES = ('roots', 'xroots', 'https', 'davs', 'sftp', 's3s', 'gsiftp')
GFAL_TLS_TWIN = {'root': 'roots', 'xroot': 'xroots'}
GFAL_LOCAL_SCHEMES = ('file',)

_GFAL_SCHEME_RE = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')
_GFAL_CHECKSUM_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,31}$')


class GfalJobError(Exception):
    """The job as a whole is unusable: one error line, exit 2, nothing done."""


class GfalJob(object):
    """A validated job: type, entries and options with defaults filled in.

    entries: list of tuples (id, kind, url) for list/remove/mkdir (kind 'file'
    or 'dir') and (id, 'file', src, dst) for copy/rename; id is None for
    wiki-style entries.
    """
    __slots__ = ('type', 'entries', 'options')

    def __init__(self, jobtype, entries, options):
        self.type = jobtype
        self.entries = entries
        self.options = options


def gfal_scheme(url):
    """Lowercase scheme of 'scheme://...', or '' when the string has none."""
    m = _GFAL_SCHEME_RE.match(url)
    return m.group(1).lower() if m else ''


def gfal_join_url(base, path):
    """Absolute URL of an entry: as is when it has a scheme, else joined onto base."""
    if gfal_scheme(path):
        return path
    if not base:
        raise GfalJobError('relative path %s needs a "base" URL' % json.dumps(path))
    head = base[:-1] if base.endswith('/') and not base.endswith('://') else base
    return head + '/' + path.lstrip('/')


def gfal_job_type(word):
    """Normalised job type from the command-line word (case-insensitive)."""
    jobtype = (word or '').strip().lower()
    if jobtype not in GFAL_JOB_TYPES:
        raise GfalJobError('unknown job type %s: expected one of %s' % (
            json.dumps(word), ', '.join(t.upper() for t in GFAL_JOB_TYPES)))
    return jobtype


def gfal_load_json(text):
    """The job document (a JSON object) from the input text."""
    if not text.strip():
        raise GfalJobError('empty input: expected a JSON job object')
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise GfalJobError('invalid JSON: %s' % e)
    if not isinstance(doc, dict):
        raise GfalJobError('the job must be a JSON object, not %s' % _gfal_json_type(doc))
    return doc


def _gfal_json_type(value):
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, list):
        return 'a list'
    return 'an object'


def _gfal_is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _gfal_url(value, where, base):
    if not isinstance(value, str):
        raise GfalJobError('%s: a path must be a string, not %s' % (where, _gfal_json_type(value)))
    if not value.strip():
        raise GfalJobError('%s: empty path' % where)
    return gfal_join_url(base, value)


def _gfal_id(value, where):
    if isinstance(value, str) or _gfal_is_int(value):
        return value
    raise GfalJobError('%s: an id must be a string or an integer, not %s' % (
        where, _gfal_json_type(value)))


def gfal_parse_entry(entry, pair, base, where):
    """One entry -> (id, url) when pair is False, (id, src, dst) when True.

    Single-path jobs: "path" or ["ID", "path"]. Pair jobs: ["src", "dst"] or
    ["ID", "src", "dst"].
    """
    if pair:
        if isinstance(entry, list) and len(entry) == 2:
            return (None, _gfal_url(entry[0], where, base), _gfal_url(entry[1], where, base))
        if isinstance(entry, list) and len(entry) == 3:
            return (_gfal_id(entry[0], where), _gfal_url(entry[1], where, base),
                    _gfal_url(entry[2], where, base))
        raise GfalJobError('%s: expected ["src", "dst"] or ["id", "src", "dst"], got %s' % (
            where, _gfal_short(entry)))
    if isinstance(entry, str):
        return (None, _gfal_url(entry, where, base))
    if isinstance(entry, list) and len(entry) == 2:
        return (_gfal_id(entry[0], where), _gfal_url(entry[1], where, base))
    raise GfalJobError('%s: expected "path" or ["id", "path"], got %s' % (where, _gfal_short(entry)))


def _gfal_short(value):
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + '...'


def gfal_parse_job(jobtype, doc):
    """Validate a job document (already parsed JSON) -> GfalJob. Raises GfalJobError."""
    for key in doc:
        if key not in GFAL_TOP_KEYS:
            raise GfalJobError('unknown key %s in the job (expected %s)' % (
                json.dumps(key), ', '.join(GFAL_TOP_KEYS)))
    base = doc.get('base')
    if base is not None:
        if not isinstance(base, str) or not gfal_scheme(base):
            raise GfalJobError('"base" must be a URL with a scheme (e.g. root://host//path/), got %s'
                               % _gfal_short(base))
    lists = {}
    for key in ('files', 'dirs'):
        value = doc.get(key, [])
        if not isinstance(value, list):
            raise GfalJobError('"%s" must be a list, not %s' % (key, _gfal_json_type(value)))
        lists[key] = value
    options = gfal_check_options(jobtype, doc.get('options', {}) if 'options' in doc else {})

    files, dirs = lists['files'], lists['dirs']
    entries = []
    if jobtype == 'list':
        if len(files) + len(dirs) != 1:
            raise GfalJobError('LIST takes exactly one entry in "files" or "dirs", got %d'
                               % (len(files) + len(dirs)))
        key = 'files' if files else 'dirs'
        ident, url = gfal_parse_entry((files or dirs)[0], False, base, key + '[0]')
        entries.append((ident, 'dir' if key == 'dirs' else 'file', url))
    elif jobtype in ('copy', 'rename'):
        if dirs:
            raise GfalJobError('%s takes its pairs in "files"; "dirs" must be empty' % jobtype.upper())
        if not files:
            raise GfalJobError('no files to %s: "files" is empty' % jobtype)
        for i, entry in enumerate(files):
            ident, src, dst = gfal_parse_entry(entry, True, base, 'files[%d]' % i)
            entries.append((ident, 'file', src, dst))
    elif jobtype == 'mkdir':
        if files:
            raise GfalJobError('MKDIR takes its directories in "dirs"; "files" must be empty')
        if not dirs:
            raise GfalJobError('no directories to create: "dirs" is empty')
        for i, entry in enumerate(dirs):
            ident, url = gfal_parse_entry(entry, False, base, 'dirs[%d]' % i)
            entries.append((ident, 'dir', url))
    else:  # remove: every file, then every directory
        if not files and not dirs:
            raise GfalJobError('nothing to remove: "files" and "dirs" are empty')
        for key, kind in (('files', 'file'), ('dirs', 'dir')):
            for i, entry in enumerate(lists[key]):
                ident, url = gfal_parse_entry(entry, False, base, '%s[%d]' % (key, i))
                entries.append((ident, kind, url))
    return GfalJob(jobtype, entries, options)


def gfal_check_options(jobtype, options):
    """Validate the options of a job type -> dict with every default filled in."""
    if not isinstance(options, dict):
        raise GfalJobError('"options" must be a JSON object, not %s' % _gfal_json_type(options))
    allowed = GFAL_OPTIONS[jobtype]
    for key in options:
        if key not in allowed:
            raise GfalJobError('unknown option %s for %s (accepted: %s)' % (
                json.dumps(key), jobtype.upper(), ', '.join(allowed)))

    def boolean(name, default):
        value = options.get(name, default)
        if not isinstance(value, bool):
            raise GfalJobError('option %s must be true or false, not %s' % (name, _gfal_short(value)))
        return value

    def integer(name, default, low):
        value = options.get(name, default)
        if value is None and default is None:
            return None
        if not _gfal_is_int(value) or (low is not None and value < low):
            raise GfalJobError('option %s must be an integer%s, not %s' % (
                name, '' if low is None else ' >= %d' % low, _gfal_short(value)))
        return value

    out = {'timeout': integer('timeout', None, 1)}
    if jobtype == 'list':
        depth = integer('depth', -1, None)
        out['depth'] = -1 if depth < 0 else depth
        out['checksum'] = _gfal_checksum_option(options.get('checksum'), False)
    elif jobtype == 'copy':
        make_dirs = boolean('make_dirs', True)
        parent = boolean('parent', make_dirs)
        if 'make_dirs' in options and 'parent' in options and make_dirs != parent:
            raise GfalJobError('options make_dirs and parent (its alias) disagree')
        out['make_dirs'] = parent if 'parent' in options else make_dirs
        out['checksum'] = _gfal_checksum_option(options.get('checksum'), True)
        out['encrypt'] = boolean('encrypt', False)
        out['preserve_timestamp'] = boolean('preserve_timestamp', False)
        out['overwrite'] = boolean('overwrite', False)
        out['nbstreams'] = integer('nbstreams', None, 1)
        parallel = integer('parallel', GFAL_DEFAULT_PARALLEL, 1)
        if parallel > GFAL_MAX_PARALLEL:
            raise GfalJobError('option parallel must be at most %d, not %d' % (GFAL_MAX_PARALLEL, parallel))
        out['parallel'] = parallel
    return out


def _gfal_checksum_option(value, with_value):
    """checksum option -> None or (algorithm, expected value or '').

    LIST: an algorithm name. COPY: "ALG" (source checked against destination)
    or "ALG:VALUE" (both also checked against VALUE); true means adler32.
    """
    if value is None or value is False:
        return None
    if value is True and with_value:
        return ('adler32', '')
    if not isinstance(value, str):
        raise GfalJobError('option checksum must be an algorithm name such as "adler32", not %s'
                           % _gfal_short(value))
    algo, sep, expected = value.partition(':')
    if sep and not with_value:
        raise GfalJobError('option checksum must be an algorithm name such as "adler32", not %s'
                           % json.dumps(value))
    if not _GFAL_CHECKSUM_RE.match(algo) or algo == 'name' or algo.startswith('st_'):
        raise GfalJobError('option checksum: %s is not an algorithm name (e.g. adler32, md5, crc32)'
                           % json.dumps(algo))
    if sep and not re.match(r'^[0-9A-Fa-f]+$', expected):
        raise GfalJobError('option checksum: expected value %s is not hexadecimal' % json.dumps(expected))
    return (algo, expected.lower())


def gfal_encrypted_url(url):
    """The URL to use when encryption is asked, or raise ValueError with the reason.

    Local files need none (nothing crosses a network); root/xroot become
    roots/xroots; encrypted protocols (and gsiftp, with DCAU on) stay as they are.
    """
    scheme = gfal_scheme(url)
    if scheme in GFAL_LOCAL_SCHEMES or scheme in GFAL_ENCRYPTED_SCHEMES:
        return url
    if scheme in GFAL_TLS_TWIN:
        return GFAL_TLS_TWIN[scheme] + url[len(scheme):]
    raise ValueError('encrypt: the %s:// protocol cannot encrypt the data channel (%s); not copied'
                     % (scheme, url))


def gfal_local_path(url):
    """Filesystem path of a file:// URL (file:///p or file://localhost/p), else None."""
    if gfal_scheme(url) != 'file':
        return None
    rest = url[len('file://'):]
    if rest.startswith('localhost/'):
        rest = rest[len('localhost'):]
    return rest if rest.startswith('/') else None


def gfal_parent_url(url):
    """(parent URL, name) of a URL: 'root://h//d/f' -> ('root://h//d', 'f')."""
    m = _GFAL_SCHEME_RE.match(url)
    start = m.end() if m else 0
    slash = url.find('/', start)
    if slash < 0:
        return url, ''
    head, path = url[:slash], url[slash:]
    trimmed = path.rstrip('/') or path
    cut = trimmed.rfind('/')
    parent, name = trimmed[:cut + 1], trimmed[cut + 1:]
    return head + (parent.rstrip('/') or parent), name


def gfal_child_url(parent, name):
    return parent + name if parent.endswith('/') else parent + '/' + name


def gfal_result(ok, reason='OK', ident=None):
    """One result line as a dict: Reason, Code (0/1), id when the entry carried one."""
    line = {'Reason': reason if not ok else 'OK', 'Code': 0 if ok else 1}
    if ident is not None:
        line['id'] = ident
    return line


def gfal_monitor_line(src, elapsed, transferred, average):
    return 'MONITOR src: %s [%4d] %.2fMB (%.2fKB/s)' % (
        src, int(elapsed), transferred / 1048576.0, average / 1024.0)


def gfal_error_text(exc):
    """A one-line Reason from a gfal2.GError or any exception."""
    text = getattr(exc, 'message', None) or str(exc) or exc.__class__.__name__
    text = text.replace('\x00', '').strip()
    return ' '.join(text.split()) if '\n' in text else text


class _GfalOutput(object):
    """Serialised, flushed line output on stdout (JSON) and stderr (text)."""

    def __init__(self, stdout, stderr):
        self.stdout = stdout
        self.stderr = stderr
        self.lock = threading.Lock()
        self.broken = False      # the reader went away: stop writing, exit 1

    def _write(self, stream, text):
        with self.lock:
            if self.broken:
                return
            try:
                stream.write(text)
                stream.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True

    def json(self, obj):
        self._write(self.stdout, json.dumps(obj) + '\n')

    def err(self, text):
        self._write(self.stderr, text + '\n')


# dirent d_type (DT_DIR, DT_REG, DT_LNK) -> st_mode file-type bits
_GFAL_DTYPE_MODE = {4: stat_mod.S_IFDIR, 8: stat_mod.S_IFREG, 10: stat_mod.S_IFLNK}


def _gfal_stat_dict(st, name):
    entry = {}
    for key in GFAL_STAT_KEYS:
        entry[key] = int(getattr(st, key))
    entry['name'] = name
    return entry


def _gfal_context(gfal2, options):
    ctx = gfal2.creat_context()
    if options.get('timeout'):
        ctx.set_opt_integer('CORE', 'NAMESPACE_TIMEOUT', options['timeout'])
    try:
        if options.get('encrypt'):
            ctx.set_opt_boolean('GRIDFTP PLUGIN', 'DCAU', True)
        # One file per filecopy call: without this the xrootd plugin sets up a
        # copy process for 20 parallel jobs each time (about 30 % more CPU per file).
        ctx.set_opt_integer('XROOTD PLUGIN', 'PARALLEL_COPIES', 1)
    except Exception:   # options of plugins that are not installed: nothing to tune
        pass
    return ctx


def _gfal_read_dir(ctx, dir_url):
    """(name, stat, d_type) of every entry of a directory, in server order.

    Remote: opendir/readpp, one round trip for names and stats. file://: listdir
    and a stat per entry, which the file plugin does faster than readpp, and
    where a dangling symlink is listed with its own lstat instead of failing
    the whole listing (readpp follows links and raises ENOENT).
    """
    if gfal_scheme(dir_url) == 'file':
        found = []
        for name in ctx.listdir(dir_url):
            if name in ('.', '..'):
                continue
            child = gfal_child_url(dir_url, name)
            try:
                st = ctx.stat(child)
            except Exception as e:
                if getattr(e, 'code', None) not in (errno.ENOENT, errno.ELOOP):
                    raise
                st = ctx.lstat(child)
            found.append((name, st, 0))
        return found
    found = []
    handle = ctx.opendir(dir_url)
    while True:
        dirent, st = handle.readpp()
        if dirent is None:
            break
        found.append((dirent.d_name, st, getattr(dirent, 'd_type', 0)))
    return found


def _gfal_do_list(gfal2, ctx, url, options):
    """The listing dict of one LIST entry (raises on any error: no partial listing)."""
    depth, checksum = options['depth'], options['checksum']
    algo = checksum[0] if checksum else None

    def entry(st, name, entry_url, d_type=0):
        d = _gfal_stat_dict(st, name)
        if not stat_mod.S_IFMT(d['st_mode']) and d_type in _GFAL_DTYPE_MODE:
            # XRootD's dirlist stat carries permission bits only: take the type from the dirent
            d['st_mode'] |= _GFAL_DTYPE_MODE[d_type]
        if algo and stat_mod.S_ISREG(d['st_mode']):
            d[algo] = ctx.checksum(entry_url, algo).lower()
        return d

    root_stat = ctx.stat(url)
    if not stat_mod.S_ISDIR(root_stat.st_mode):
        parent, name = gfal_parent_url(url)
        return collections.OrderedDict([(parent, [entry(root_stat, name, url)])])
    listing = collections.OrderedDict()
    seen = set([(int(root_stat.st_dev), int(root_stat.st_ino))])
    stack = [(url, 1)]
    while stack:
        dir_url, level = stack.pop()
        entries, subdirs = [], []
        for name, st, d_type in _gfal_read_dir(ctx, dir_url):
            if name in ('.', '..'):
                continue
            child = gfal_child_url(dir_url, name)
            d = entry(st, name, child, d_type)
            entries.append(d)
            if stat_mod.S_ISDIR(d['st_mode']):
                # a directory seen before (a symlink loop on file://) is listed, not entered
                ident = (d['st_dev'], d['st_ino'])
                if not d['st_ino'] or ident not in seen:
                    seen.add(ident)
                    subdirs.append(child)
        listing[dir_url] = entries
        if depth == -1 or level < depth:
            for child in reversed(subdirs):
                stack.append((child, level + 1))
    return listing


class _GfalParentDirs(object):
    """Destination directories already created in this job (make_dirs).

    Creating each distinct parent once, instead of letting gfal2 check and
    create it for every file (create_parent), saves two round trips per file.
    A parent that cannot be made here is left to gfal2 (create_parent), so
    its own error message is reported.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.state = {}

    def ensure(self, ctx, url):
        parent = gfal_parent_url(url)[0]
        with self.lock:
            known = self.state.get(parent)
            if known is None:
                try:
                    ctx.mkdir_rec(parent, GFAL_MKDIR_MODE)
                    known = True
                except Exception:
                    known = False
                self.state[parent] = known
        return known


def _gfal_copy_one(gfal2, ctx, options, src, dst, out, parents=None):
    """Copy one file; returns None on success or the failure Reason."""
    try:
        if options['encrypt']:
            src_url, dst_url = gfal_encrypted_url(src), gfal_encrypted_url(dst)
        else:
            src_url, dst_url = src, dst
    except ValueError as e:
        return str(e)
    params = ctx.transfer_parameters()
    params.overwrite = options['overwrite']
    params.create_parent = options['make_dirs']
    if options['make_dirs'] and parents is not None and parents.ensure(ctx, dst_url):
        params.create_parent = False
    if options['nbstreams']:
        params.nbstreams = options['nbstreams']
    if options['timeout']:
        params.timeout = options['timeout']
    if options['checksum']:
        params.set_checksum(gfal2.checksum_mode.both, options['checksum'][0], options['checksum'][1])

    def monitor(_src, _dst, average, _instant, transferred, elapsed):
        out.err(gfal_monitor_line(src, elapsed, transferred, average))

    params.monitor_callback = monitor
    started = time.time()
    ctx.filecopy(params, src_url, dst_url)
    elapsed = time.time() - started

    src_path, dst_path = gfal_local_path(src_url), gfal_local_path(dst_url)
    src_st = None
    if options['preserve_timestamp']:
        if dst_path is None:
            out.err('WARNING: preserve_timestamp: the %s:// destination does not allow setting '
                    'the modification time; %s keeps the copy time' % (gfal_scheme(dst_url), dst))
        else:
            src_st = os.stat(src_path) if src_path is not None else ctx.stat(src_url)
            os.utime(dst_path, (int(src_st.st_atime), int(src_st.st_mtime)))
    # The summary line: gfal2 calls the monitor only for long transfers.
    try:
        if src_st is not None:
            size = src_st.st_size
        elif src_path is not None:
            size = os.stat(src_path).st_size
        elif dst_path is not None:
            size = os.stat(dst_path).st_size
        else:
            size = ctx.stat(dst_url).st_size
    except Exception:
        size = 0
    out.err(gfal_monitor_line(src, elapsed, size, size / elapsed if elapsed > 0 else 0))
    return None


def _gfal_run_entry(gfal2, ctx, job, entry, out, parents=None):
    """Run one REMOVE/MKDIR/RENAME/COPY entry -> result dict (never raises)."""
    ident = entry[0]
    try:
        if job.type == 'copy':
            reason = _gfal_copy_one(gfal2, ctx, job.options, entry[2], entry[3], out, parents)
            if reason is not None:
                return gfal_result(False, reason, ident)
        elif job.type == 'rename':
            ctx.rename(entry[2], entry[3])
        elif job.type == 'mkdir':
            ctx.mkdir_rec(entry[2], GFAL_MKDIR_MODE)
        elif entry[1] == 'dir':
            ctx.rmdir(entry[2])
        else:
            ctx.unlink(entry[2])
    except Exception as e:   # gfal2.GError above all, but no entry may crash the job
        return gfal_result(False, gfal_error_text(e), ident)
    return gfal_result(True, 'OK', ident)


def _gfal_run_parallel(gfal2, job, out, workers):
    """COPY entries on `workers` threads (one gfal2 context each).

    Results are printed in input order, each as soon as it and all before it
    are done. Returns the number of failed entries.
    """
    entries = job.entries
    parents = _GfalParentDirs()
    results = [None] * len(entries)
    state = {'next': 0, 'printed': 0, 'failed': 0}
    lock = threading.Lock()

    def flush_ready():
        # called with lock held
        while state['printed'] < len(entries) and results[state['printed']] is not None:
            line = results[state['printed']]
            out.json(line)
            if line['Code']:
                state['failed'] += 1
            state['printed'] += 1

    def worker():
        ctx = None
        while True:
            with lock:
                index = state['next']
                if index >= len(entries):
                    return
                state['next'] += 1
            if ctx is None:
                try:
                    ctx = _gfal_context(gfal2, job.options)
                except Exception as e:
                    result = gfal_result(False, gfal_error_text(e), entries[index][0])
                    with lock:
                        results[index] = result
                        flush_ready()
                    continue
            result = _gfal_run_entry(gfal2, ctx, job, entries[index], out, parents)
            with lock:
                results[index] = result
                flush_ready()

    threads = [threading.Thread(target=worker, name='gfal-copy-%d' % i) for i in range(workers)]
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return state['failed']


def gfal_run_job(gfal2, job, out):
    """Run a validated job with gfal2; prints results; returns the exit status 0/1."""
    if job.type == 'list':
        ident, _kind, url = job.entries[0]
        try:
            ctx = _gfal_context(gfal2, job.options)
            listing = _gfal_do_list(gfal2, ctx, url, job.options)
        except Exception as e:
            out.json(gfal_result(False, gfal_error_text(e), ident))
            return 1
        if ident is None:
            out.json(listing)
        else:
            out.json(collections.OrderedDict([('Reason', 'OK'), ('Code', 0), ('id', ident),
                                              ('Listing', listing)]))
        return 0
    workers = min(job.options.get('parallel', 1), len(job.entries)) if job.type == 'copy' else 1
    if workers > 1:
        return 1 if _gfal_run_parallel(gfal2, job, out, workers) else 0
    failed = 0
    parents = _GfalParentDirs() if job.type == 'copy' else None
    try:
        ctx = _gfal_context(gfal2, job.options)
    except Exception as e:
        ctx, context_error = None, gfal_error_text(e)
    for entry in job.entries:
        if ctx is None:
            result = gfal_result(False, context_error, entry[0])
        else:
            result = _gfal_run_entry(gfal2, ctx, job, entry, out, parents)
        out.json(result)
        failed += result['Code']
    return 1 if failed else 0


def _gfal_import():
    """Import gfal2 (only here); GfalJobError naming the package when missing."""
    try:
        import gfal2
    except ImportError:
        raise GfalJobError(GFAL_MISSING_HINT % (sys.executable or 'python3'))
    return gfal2


def gfal_main(args, stdin=None, stdout=None, stderr=None):
    """alien.py gfal TYPE [JOB.json|-]: run a worker job; returns the exit status.

    0: every entry succeeded; 1: at least one failed; 2: job error (one JSON
    error line on stdout, nothing done).
    """
    stdin = sys.stdin if stdin is None else stdin
    out = _GfalOutput(sys.stdout if stdout is None else stdout, sys.stderr if stderr is None else stderr)
    args = list(args)
    if args and args[0] in ('-h', '--help', 'help'):
        out.stdout.write('usage: alien.py %s\n' % GFAL_USAGE)
        out.stdout.flush()
        return 0
    try:
        if not args or len(args) > 2:
            raise GfalJobError('usage: alien.py %s' % GFAL_USAGE)
        jobtype = gfal_job_type(args[0])
        source = args[1] if len(args) == 2 else '-'
        if source == '-':
            text = stdin.read()
        else:
            try:
                with open(source, 'rb') as f:
                    text = f.read().decode('utf-8')
            except (OSError, UnicodeDecodeError) as e:
                raise GfalJobError('cannot read the job file %s: %s' % (source, e))
        job = gfal_parse_job(jobtype, gfal_load_json(text))
        gfal2 = _gfal_import()
    except GfalJobError as e:
        out.json(gfal_result(False, str(e)))
        return 2
    status = gfal_run_job(gfal2, job, out)
    return 1 if out.broken else status


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

@command('gfal', connect=False, usage='usage: alien.py ' + GFAL_USAGE + """
Run a GridPP worker job (JSON on stdin or in JOB.json) with gfal2; one JSON
result line per entry on stdout, COPY progress (MONITOR lines) on stderr.
Exit 0: all entries OK, 1: some failed, 2: job error. Needs gfal2's Python
bindings (python3-gfal2): run it with the system interpreter, /usr/bin/python3.""")
def cmd_gfal(session, args):
    return Result(gfal_main(args))

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
