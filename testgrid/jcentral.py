"""JCentral-compatible websocket service of the local test grid.

Speaks the protocol of ../shared/spec/jcentral-protocol.md on
``wss://127.0.0.1:PORT/websocket/json``: TLS 1.2, a client certificate signed
by the grid CA is mandatory, its DN is mapped to a user (unmapped DN: HTTP 401
on the upgrade). One JSON request per text frame, one JSON reply per request,
all values strings. Catalogue in SQLite (testgrid/catalogue.py), data on the
grid's xrootd storage elements.

Run: ``python3 -m testgrid.jcentral --workdir DIR --port N`` (grid.py does it).

Fault injection: ``<workdir>/faults.json`` is read at every request (missing
file = no faults). It maps a command name, or ``"*"`` for every command, to
an action:

``"refuse"``
    fail with the command's natural refusal: commit -> 53 ``Invalid request
    descriptor : Nothing was registered``; access -> 77 ``File descriptor in
    bad state : No <type> PFNs``; token -> 1; anything else -> 13
    ``Permission denied``.
``"exception"``
    exit code 121 ``Remote I/O error : <command> failed with an exception``.
``"drop"``
    close the TCP connection without any reply.
``"drop-after"``
    execute the command (a commit is registered), then close the TCP connection
    without the reply: the client cannot know what happened.
``"empty"``
    reply with an empty text frame.
``"delay:SECONDS"``
    sleep before executing the command normally.
``{"exitcode": N, "error": "text"}``
    reply with exactly that exit code and error, no results; with
    ``"results": [{...}, ...]`` also those result rows (e.g. a hostile
    ``{"message": "\u001b]0;title\u0007"}``).
``{"raw": "text"}``
    reply with exactly that text, whatever it is (deeply nested JSON, not
    JSON at all, a reply not in the JCentral format).

A string action may be prefixed with ``"nth:N:"`` (only the N-th request of that
command, counted from when faults.json was last written, gets it) or ``"once:"``
(= ``"nth:1:"``): ``{"commit": "nth:3:drop-after"}`` cuts the connection after
the third commit was registered, and only then.

Besides command names, the key ``"idle_timeout"`` (seconds, default 900) sets
after how long a silent session is closed with code 1013 "Session timed out";
it is read while waiting for the next request.

Example: ``{"commit": "refuse"}`` makes every commit fail with 53.

Behaviour: ``<workdir>/service.json`` (``grid.set_service``; missing = the defaults)
says how the service behaves, like a real one of a given code base would:

``"dialect"``
    ``"2024"`` (default: JAliEn 1.8.6, ../shared/spec/jcentral-replies-2024.md) or
    ``"2021"`` (../shared/spec/jcentral-replies.md). Read when a connection opens:
    one connection speaks one dialect. What differs is gathered in testgrid/dialects.py;
    the command handlers shape their rows with it (``s.dialect``).
``"handoff"``
    seconds the endpoint waits for a command before it reads the next message
    (default 1.0, the real value; tests may scale it down). Always on: every session
    has one commander, and a message that arrives while a command runs past the
    hand-off races with it exactly as on the real service (see "the real endpoint").
``"throttle"``
    true: the 2024 per-user throttle (class Throttle; 2024 dialect only), with
    ``"throttle_scale"`` (default 1.0, scales its sleeps and its 5-minute decay) and
    ``"throttle_start"`` (the count a certificate subject starts from, default 0).
``"cost_ms"``
    ``{command: ms}``: what each command costs the service after it has read its
    arguments (a real one spends about 6 ms on ``access`` and on ``commit``).
``"queue_delay"``, ``"work_delay"``
    ``[min, max]`` seconds: a random delay of every command before it reads its
    arguments (queueing, throttling) / while it runs; ``"seed"`` seeds them.
"""

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import posixpath
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = 'testgrid'

from testgrid import catalogue as cat_mod  # noqa: E402
from testgrid import dialects  # noqa: E402
from testgrid import jobs as jobs_mod  # noqa: E402
from testgrid.pki import HOST_SUBJECT, PKI, USER_SUBJECT  # noqa: E402

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.server import serve  # noqa: E402

SERVER_VERSION = '1.9.9-testgrid'
GRID_SITE = 'JTestSite'        # the site of the grid's SEs and CEs, every session's close site

EPERM, ENOENT, EIO, EACCES, EEXIST, ENOTDIR, EISDIR, EINVAL, ENOTEMPTY = 1, 2, 5, 13, 17, 20, 21, 22, 39
ENOSYS, EBADR, EBADFD, ENOKEY, EREMOTEIO = 38, 53, 77, 126, 121
STRERROR = {
    ENOENT: 'No such file or directory', EIO: 'Input/output error', EACCES: 'Permission denied',
    EEXIST: 'File exists', ENOTDIR: 'Not a directory', EISDIR: 'Is a directory',
    EINVAL: 'Invalid argument', ENOTEMPTY: 'Directory not empty',
    EBADR: 'Invalid request descriptor', EBADFD: 'File descriptor in bad state',
    EREMOTEIO: 'Remote I/O error', EPERM: 'Operation not permitted', ENOSYS: 'Function not implemented',
    ENOKEY: 'Required key not available', 3: 'No such process',
}

GLOBAL_FLAGS = {'-nokeys', '-nomsg', '-silent'}
HELP_FLAGS = {'-h', '--h', '-help', '--help'}


class CmdError(Exception):
    def __init__(self, code, detail, results=None):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.results = results or []

    @property
    def error(self):
        if self.code in STRERROR:
            return '%s : %s' % (STRERROR[self.code], self.detail) if self.detail else STRERROR[self.code]
        return self.detail


class Drop(Exception):
    """Close the connection without replying."""


def parse_opts(args, flags='', valued=''):
    """Split args into (set of flags, dict of valued options, positional list).

    flags/valued: space-separated option names without the dash. An unknown
    option (including one with a space inside, e.g. "-l /") gives EINVAL
    "<name> is not a recognized option". Clusters of one-letter flags
    ("-la") are accepted like the server's option parser does.
    """
    flags = set(flags.split())
    valued = set(valued.split())
    got, vals, pos = set(), {}, []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a.startswith('-') and len(a) > 1 and not _is_number(a):
            name = a.lstrip('-')
            if name in flags:
                got.add(name)
            elif name in valued:
                if i >= len(args):
                    raise CmdError(EINVAL, 'Option %s requires an argument' % name)
                vals[name] = args[i]
                i += 1
            elif name and all(c in flags for c in name) and a.count('-') == 1:
                got.update(name)
            else:
                raise CmdError(EINVAL, '%s is not a recognized option' % name)
        else:
            pos.append(a)
    return got, vals, pos


def _is_number(a):
    try:
        float(a)
        return True
    except ValueError:
        return False


_TIME_CACHE = {}


def fmt_time(ms):
    """Java 'MMM dd HH:mm' in local time (cached per minute: listings repeat times)."""
    minute = ms // 60000
    r = _TIME_CACHE.get(minute)
    if r is None:
        if len(_TIME_CACHE) > 100000:
            _TIME_CACHE.clear()
        r = _TIME_CACHE[minute] = time.strftime('%b %d %H:%M', time.localtime(minute * 60))
    return r


_PERM_CACHE = {}


def perm_string(entry):
    key = (entry['type'], entry['perm'])
    r = _PERM_CACHE.get(key)
    if r is None:
        bits = ''
        for digit in entry['perm'][-3:].rjust(3, '0'):
            d = int(digit)
            bits += ('r' if d & 4 else '-') + ('w' if d & 2 else '-') + ('x' if d & 1 else '-')
        r = _PERM_CACHE[key] = ('d' if entry['type'] == 'd' else '-') + bits
    return r


def human_size(n):
    n = float(n)
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if n < 1024 or unit == 'TB':
            return ('%d %s' % (n, unit)) if unit == 'B' else ('%.2f %s' % (n, unit))
        n /= 1024


def make_envelope(tail=''):
    """An opaque access envelope laid out like the real one: two armoured blocks of
    76-column base64 (with '-' for '/'), a final newline, then the dialect's tail."""
    def block(n):
        b64 = base64.b64encode(os.urandom(n)).decode().replace('/', '-')
        return '\n'.join(b64[i:i + 76] for i in range(0, len(b64), 76))
    return ('-----BEGIN SEALED CIPHER-----\n%s\n-----END SEALED CIPHER-----\n-----BEGIN SEALED ENVELOPE-----\n'
            '%s\n-----END SEALED ENVELOPE-----\n%s' % (block(129), block(885), tail))


def dn_oneline(subject):
    """getpeercert() subject -> '/C=CH/O=JAliEn/CN=jalien'."""
    short = {'countryName': 'C', 'organizationName': 'O', 'organizationalUnitName': 'OU',
             'commonName': 'CN', 'stateOrProvinceName': 'ST', 'localityName': 'L',
             'emailAddress': 'emailAddress'}
    parts = []
    for rdn in subject:
        for k, v in rdn:
            parts.append('%s=%s' % (short.get(k, k), v))
    return '/' + '/'.join(parts)


def dn_rfc(oneline):
    """'/C=CH/O=JAliEn/CN=jalien' -> 'CN=jalien, O=JAliEn, C=CH'."""
    return ', '.join(reversed([p for p in oneline.split('/') if p]))


class Grid:
    """Shared state of the service: catalogue, storage elements, configuration."""

    def __init__(self, workdir, config):
        self.workdir = workdir
        self.config = config
        self.cat = cat_mod.Catalogue(os.path.join(workdir, 'catalogue.sqlite'))
        self.cat.init_tree()
        self.lock = threading.RLock()
        self.pki = PKI(workdir)
        self.ses = config['ses']
        self.users = {USER_SUBJECT: 'jalien'}
        self.users.update(config.get('users', {}))
        self.faults_path = os.path.join(workdir, 'faults.json')
        self.service_path = os.path.join(workdir, 'service.json')
        self.fault_counts = {}   # (faults.json mtime, command) -> requests seen (nth:N:)
        self.log_path = os.path.join(workdir, 'jcentral.log')
        self.log_lock = threading.Lock()
        self.throttle = Throttle()
        self.rng = random.Random(self.service().get('seed'))   # the random delays of service.json

    def user_for_dn(self, dn):
        if dn in self.users:
            return self.users[dn]
        m = re.match(r'^/C=CH/O=JAliEn/OU=token/CN=([A-Za-z0-9_.-]+)$', dn)
        if m and m.group(1) in self.users.values():
            return m.group(1)
        return None

    def faults(self):
        return _read_json(self.faults_path)

    def service(self):
        """The behaviour settings of service.json (see the module's docstring)."""
        return _read_json(self.service_path)

    def fault_applies(self, cmd, action):
        """The action without its nth:N:/once: prefix, or None when this request is
        not the one it is meant for."""
        m = re.match(r'^(?:nth:(\d+):|(once):)(.*)$', action)
        if not m:
            return action
        n = int(m.group(1) or 1)
        try:
            key = (os.stat(self.faults_path).st_mtime_ns, cmd)
        except OSError:
            return None
        with self.lock:
            seen = self.fault_counts[key] = self.fault_counts.get(key, 0) + 1
        return m.group(3) if seen == n else None

    def idle_timeout(self):
        """Seconds of silence after which a session is closed (1013 "Session timed out").

        900 like the real server; faults.json key "idle_timeout" overrides it."""
        try:
            return float(self.faults().get('idle_timeout', 900))
        except (TypeError, ValueError, AttributeError):
            return 900.0

    def log(self, text):
        with self.log_lock:
            with open(self.log_path, 'a') as f:
                f.write('%s %s\n' % (time.strftime('%H:%M:%S'), text))

    def se_by_name(self, name):
        for se in self.ses:
            if se['name'].lower() == name.lower():
                return se
        return None


def _read_json(path):
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class Session:
    """One websocket connection: user, current directory, command dispatch."""

    def __init__(self, grid, user, dn, cert, peer):
        self.g = grid
        self.dialect = str(grid.service().get('dialect', dialects.DEFAULT))
        # the throttle's key: X500Principal.getName(), RFC 2253 ('CN=jalien,O=JAliEn,C=CH');
        # training and hyperloop certificates are exempt; the 2021 service has no throttle
        self.subject = ','.join(reversed([p for p in dn.split('/') if p]))
        self.throttled = self.dialect == '2024' and not self.subject.startswith(('OU=alitrain,', 'OU=alihyperloop,'))
        self.drop_connection = lambda: None
        self.cat = grid.cat
        self.user = user
        self.dn = dn
        self.cert = cert
        self.peer = peer
        self.home = cat_mod.home_of(user)
        self.cwd = self.home
        self.want_keys = self.want_msg = True
        self.shaped = False

    # -- request handling ---------------------------------------------------------
    def parse(self, text):
        """One request frame -> ('run', (command, args, text)) for the commander, ('reply', text)
        for what the endpoint answers itself at once, ('close', None) for a request
        without a command (an empty frame, then a close); Drop for options not a list."""
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            return 'reply', self.refusal(dialects.INVALID_JSON[self.dialect])
        if 'command' not in req:
            return 'close', None
        opts = req.get('options', [])
        if opts is None:
            opts = []
        if not isinstance(opts, list):
            raise Drop()
        cmd = str(req['command'])
        args = [o if isinstance(o, str) else json.dumps(o) if isinstance(o, (dict, list))
                else str(o).lower() if isinstance(o, bool) else str(o) for o in opts]
        if cmd == 'cp':
            return 'reply', self.refusal(dialects.CP_REFUSED)
        return 'run', (cmd, args, text)

    def execute(self, cm, line):
        """JAliEnCOMMander.execute: run one command line and print it into the commander's
        writer, field by field, if the writer is still set (a run whose writer another run
        cleared prints nothing: "client went away")."""
        cmd, args, _text = line
        if cm.out is not None:
            cm.out.set_return_code(0, '')
        nokeys = nomsg = helpme = False
        rest = []
        for a in args:
            if a == '-nokeys':
                nokeys = True
            elif a == '-nomsg':
                nomsg = True
            elif a == '-silent' or a.startswith('-debug='):
                pass
            elif a in HELP_FLAGS:
                helpme = True
            elif a.startswith('-pwd='):
                d = self.resolve(a[5:])
                e = self.cat.get(d)
                if e is not None and e['type'] == 'd':
                    self.cwd = e['lfn']
            else:
                rest.append(a)
        if helpme:
            nomsg = False
        # big listings shape their rows themselves (no keys / no message): see shaped
        self.want_keys, self.want_msg, self.shaped = not nokeys, not nomsg, False
        try:
            code, error, results = self.run(cmd, rest, helpme)
        except RawReply as r:     # fault injection: exactly this text on the output stream
            cm.stream.append(r.text)
            return
        except EmptyReply:
            return
        if self.shaped and not (nokeys and nomsg):
            results, nokeys, nomsg = results, False, False
        rows = []
        for r in results:
            if nokeys:
                r = {'message': r['message']} if 'message' in r else {}
            if nomsg:
                r = {k: v for k, v in r.items() if k != 'message'}
            if nokeys and nomsg:
                continue
            rows.append(r)
        yield_between = len(rows) <= 64   # a concurrent run may print between two fields
        for r in rows:
            for k, v in r.items():
                w = cm.out
                if w is None:
                    return
                w.field(k, v)
                if yield_between:
                    time.sleep(0)
            w = cm.out
            if w is None:
                return
            w.next_result()
        w = cm.out
        if w is None:
            return
        w.set_return_code(code, error)
        w.meta.update(user=self.user, currentdir=self.cwd)
        w.flush(cm.stream)

    def before_execute(self):
        """What a run does before it reads its arguments: the 2024 per-user throttle,
        then the configured queueing delay (service.json "queue_delay")."""
        conf = self.g.service()
        if conf.get('throttle') and self.throttled:
            self.g.throttle.sleep(self.subject, 1, conf)
        _sleep_range(conf.get('queue_delay'), self.g.rng)

    def run(self, cmd, args, helpme):
        """(exitcode, error, results) of one command."""
        fault = self.g.faults()
        action = fault.get(cmd, fault.get('*'))
        if isinstance(action, str):
            action = self.g.fault_applies(cmd, action)
        if action is not None and action != 'drop-after':
            res = self.apply_fault(cmd, action, args)
            if res is not None:
                return res
        fn = self.command(cmd)
        if fn is None:
            return ENOENT, '%s : Command [%s] not found!' % (STRERROR[ENOENT], cmd), []
        conf = self.g.service()
        cost = (conf.get('cost_ms') or {}).get(cmd) if isinstance(conf.get('cost_ms'), dict) else None
        if cost:     # what the real service spends on the command (catalogue, booking)
            time.sleep(float(cost) / 1000.0)
        _sleep_range(conf.get('work_delay'), self.g.rng)
        if helpme:
            return 0, '', [{'message': self.help(fn, cmd)}]
        try:
            self.pending_error = None
            with self.g.lock:
                results = fn(self, args)
            if action == 'drop-after':
                raise Drop()
            if self.pending_error:   # an error code set next to results, like the Java commander
                code, detail = self.pending_error
                return code, CmdError(code, detail).error, results or []
            return 0, '', results or []
        except CmdError as e:
            return e.code, e.error, e.results
        except Drop:
            raise
        except Exception as e:  # a bug or bad input: the server reports 121
            self.g.log('EXCEPTION in %s %r: %r' % (cmd, args, e))
            return EREMOTEIO, '%s : %s' % (STRERROR[EREMOTEIO], e), []

    def apply_fault(self, cmd, action, args):
        if isinstance(action, dict):
            if 'raw' in action:
                raise RawReply(str(action['raw']))
            return int(action.get('exitcode', 1)), str(action.get('error', '')), list(action.get('results', []))
        action = str(action)
        if action == 'refuse':
            if cmd == 'commit':
                return EBADR, '%s : Nothing was registered' % STRERROR[EBADR], []
            if cmd == 'access':
                kind = 'write' if any(a.startswith('write') for a in args) else 'read'
                return EBADFD, '%s : No %s PFNs' % (STRERROR[EBADFD], kind), []
            if cmd == 'token':
                return 1, 'Operation not permitted : token generation refused', []
            return EACCES, '%s : %s refused by fault injection' % (STRERROR[EACCES], cmd), []
        if action == 'exception':
            return EREMOTEIO, '%s : %s failed with an exception' % (STRERROR[EREMOTEIO], cmd), []
        if action == 'drop':
            raise Drop()
        if action == 'empty':
            raise EmptyReply()
        if action.startswith('delay:'):
            time.sleep(float(action.split(':', 1)[1]))
        return None

    # -- what the dialect decides ------------------------------------------------------
    def refusal(self, error):
        """Reply text of a request refused before any command runs (not JSON, cp)."""
        return java_json({'metadata': dialects.refusal_metadata(self.dialect, error, self.cwd, self.user),
                          'results': []})

    def command(self, name):
        """The handler of a server command, None when this dialect's service has none."""
        fn = COMMANDS.get(name)
        return fn if fn is not None and dialects.has_command(self.dialect, name) else None

    def help(self, fn, name):
        """`name -h`: the captured text of this dialect (testgrid/dialects.py), else the
        handler's docstring (one starting with a newline is the exact help)."""
        doc = dialects.help_text(name, self.dialect)
        if doc is None:
            doc = fn.__doc__ or name
            doc = doc.rstrip() if doc.startswith('\n') else doc.strip()
        return doc

    def ctime(self, e):
        return dialects.ctime(self.dialect, e['ctime'])

    def colour(self, code, text):
        return dialects.colour(self.dialect, code, text)

    # -- paths ------------------------------------------------------------------------
    def resolve(self, p):
        """Absolute normalised LFN of p (no trailing '/' except for '/')."""
        p = re.sub(r'^alien:(//)?', '', p)
        if p == '~' or p.startswith('~/'):
            p = self.home + p[1:]
        elif not p.startswith('/'):
            p = self.cwd + p
        p = posixpath.normpath(p)
        if p.startswith('//'):
            p = p[1:]
        return p

    def lookup(self, p):
        return self.cat.get(self.resolve(p))

    def require(self, p):
        e = self.lookup(p)
        if e is None:
            raise CmdError(ENOENT, p)
        return e

    def can_write(self, dir_entry):
        return dir_entry['owner'] == self.user

    def dir_for_write(self, lfn, create=False):
        """Parent directory entry of lfn, checked for write permission."""
        parent_path = posixpath.dirname(lfn.rstrip('/')) or '/'
        parent = self.cat.get(parent_path)
        if parent is None:
            if not create:
                raise CmdError(ENOENT, parent_path)
            anc = parent_path
            while self.cat.get(anc) is None:
                anc = posixpath.dirname(anc)
            if not self.can_write(self.cat.get(anc)):
                raise CmdError(EACCES, 'Cannot write to %s' % lfn)
            parent = self.cat.mkdirs(parent_path + '/', self.user)
        if parent['type'] != 'd':
            raise CmdError(ENOTDIR, parent_path)
        if not self.can_write(parent):
            raise CmdError(EACCES, 'Cannot write to %s' % lfn)
        return parent

    def se_path(self, se, pfn):
        """Local file of a replica pfn on one of our SEs (or None)."""
        m = re.match(r'^root://[^/]+/(/.*)$', pfn)
        if not m or se is None:
            return None
        return os.path.join(se['datadir'], m.group(1).lstrip('/'))

    def read_text(self, e):
        """The content of a catalogue file from its first readable replica on our SEs
        (None when there is none)."""
        for r in self.cat.replicas(e['guid']):
            path = self.se_path(self.g.se_by_name(r['se']), r['pfn'])
            if path:
                try:
                    with open(path, 'rb') as f:
                        return f.read().decode('utf-8', 'replace')
                except OSError:
                    continue
        return None

    # -- entry formatting ---------------------------------------------------------------
    def ls_row(self, e, long, classify, guid):
        """One ls result; only the parts the client asked for (want_keys / want_msg)."""
        name = e['name'] if e['lfn'] != '/' else '/'
        slash = '/' if classify and e['type'] == 'd' else ''   # -F: on the path too (sub//)
        name += slash
        r = {}
        if long and self.want_keys:     # key order of the real services
            r.update(permissions=perm_string(e), user=e['owner'], group=e['gowner'],
                     size=str(e['size']), ctime=self.ctime(e))
        if self.want_keys:
            r.update(name=name, path=e['lfn'] + slash)
        if guid and e['type'] == 'f' and self.want_keys:
            r['guid'] = e['guid']
        if self.want_msg:
            if long:
                msg = '%s   %8s %8s %12d %s    %s' % (perm_string(e), e['owner'], e['gowner'],
                                                     e['size'], fmt_time(e['ctime']), name)
            else:
                msg = name
            if guid and e['type'] == 'f' and not long:
                msg = '%s   %s' % (e['guid'], msg)
            r['message'] = msg
        return r


class RawReply(Exception):
    """Fault injection: reply with exactly this text."""

    def __init__(self, text):
        super().__init__('raw reply')
        self.text = text


_JAVA_ESCAPE = re.compile('[\x7f-\x9f\u2000-\u20ff\ud800-\udfff]')
_JSON_ESCAPE = re.compile(r'\\(u[0-9a-f]{4}|.)')


def java_json(obj):
    """JSON text laid out like the Java service's (../shared/spec/jcentral-replies.md):
    no spaces, '/' escaped as '\\/', control characters as upper-case \\uXXXX, other
    non-ASCII characters as they are (lone surrogates escaped: the frame must be UTF-8)."""
    text = json.dumps(obj, separators=(',', ':'), ensure_ascii=False)
    text = _JSON_ESCAPE.sub(lambda m: '\\u' + m.group(1)[1:].upper() if m.group(1)[0] == 'u'
                            else m.group(0), text)
    text = _JAVA_ESCAPE.sub(lambda m: '\\u%04X' % ord(m.group(0)), text)
    return text.replace('/', '\\/')


class EmptyReply(Exception):
    pass


COMMANDS = {}


def command(name):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


@command('pwd')
def c_pwd(s, args):
    """pwd: print the current directory"""
    parse_opts(args)
    return [{'pwd': s.cwd, 'message': s.cwd}]


@command('cd')
def c_cd(s, args):
    """cd [dir]: change the current directory (no argument: home)"""
    _, _, pos = parse_opts(args)
    if not pos:
        s.cwd = s.home
        return []
    e = s.lookup(pos[0])
    if e is None:
        raise CmdError(ENOENT, pos[0])
    if e['type'] != 'd':
        raise CmdError(ENOTDIR, pos[0])
    s.cwd = e['lfn']
    return []


def _glob_entries(s, arg):
    """Entries matching arg when its last component holds * or ? (else None)."""
    base = posixpath.basename(arg.rstrip('/'))
    if '*' not in base and '?' not in base:
        return None
    parent = s.cat.get(posixpath.dirname(s.resolve(arg)) or '/')
    if parent is None or parent['type'] != 'd':
        return []
    return [dict(r) for r in s.cat.children(parent) if fnmatch.fnmatchcase(r['name'], base)]


def _ls_messages(s, d, long, classify, hidden):
    """Message-only rows of a directory listing (what clients ask for with -nokeys),
    straight from plain tuples: large listings are served several times faster."""
    rows = s.cat.db.execute('SELECT name, type, perm, owner, gowner, size, ctime FROM entries'
                            ' WHERE parent = ? ORDER BY name', (d['id'],))
    out = []
    for name, type_, perm, owner, gowner, size, ctime in rows:
        if not hidden and name.startswith('.'):
            continue
        if classify and type_ == 'd':
            name += '/'
        if long:
            name = '%s   %8s %8s %12d %s    %s' % (perm_string({'type': type_, 'perm': perm}), owner, gowner,
                                                  size, fmt_time(ctime), name)
        out.append({'message': name})
    return out


@command('ls')
def c_ls(s, args):
    """ls [-l] [-a] [-F] [-b] [-c] [-H] [paths...]"""
    flags, _, pos = parse_opts(args, 'l a F b c H')
    s.shaped = True
    long = 'l' in flags or 'H' in flags
    classify = 'F' in flags
    out, missing = [], []
    for p in pos or [s.cwd]:
        globbed = _glob_entries(s, p)
        if globbed is not None:
            if not globbed:
                missing.append(p)
            entries = globbed
        else:
            e = s.lookup(p)
            if e is None:
                missing.append(p)
                continue
            if e['type'] == 'd' and s.want_msg and not s.want_keys and not flags & {'b', 'c'}:
                out.extend(_ls_messages(s, e, long, classify, 'a' in flags))
                continue
            if e['type'] == 'd':
                entries = s.cat.children(e, as_dict=True)
            else:
                entries = [e]
        for e in entries:
            if 'a' not in flags and e['name'].startswith('.'):
                continue
            if 'c' in flags:
                r = {'name': e['lfn'], 'path': e['lfn']} if s.want_keys else {}
                if s.want_msg:
                    r['message'] = e['lfn']
                out.append(r)
            else:
                out.append(s.ls_row(e, long, classify, 'b' in flags))
    if missing:
        raise CmdError(ENOENT, ' '.join(missing), out)
    return out


@command('mkdir')
def c_mkdir(s, args):
    """mkdir [-p] dir...: create directories (-p: with parents, no error if existing)"""
    flags, _, pos = parse_opts(args, 'p s d')
    if not pos:
        raise CmdError(EINVAL, 'No directory name given')
    for p in pos:
        lfn = s.resolve(p)
        e = s.cat.get(lfn)
        if e is not None:
            if e['type'] != 'd':
                raise CmdError(EEXIST, p)
            continue          # an existing directory: exit 0, silent (both code bases)
        with s.cat.tx():
            parent_path = posixpath.dirname(lfn) or '/'
            parent = s.cat.get(parent_path)
            if parent is None and 'p' not in flags:
                raise CmdError(ENOENT, 'Could not create directory: %s' % lfn)
            parent = s.dir_for_write(lfn, create=True)
            s.cat.insert(parent, lfn + '/', 'd', s.user)
    return []


@command('rmdir')
def c_rmdir(s, args):
    """rmdir dir...: remove empty directories"""
    _, _, pos = parse_opts(args, 'p')
    for p in pos:
        e = s.require(p)
        if e['type'] != 'd':
            raise CmdError(ENOTDIR, p)
        if s.cat.has_children(e):
            raise CmdError(ENOTEMPTY, p)
        if s.cwd.startswith(e['lfn']):
            raise CmdError(EINVAL, 'Cannot delete the directory you are in')
        s.dir_for_write(e['lfn'])
        with s.cat.tx():
            s.cat.delete_subtree(e)
    return []


@command('rm')
def c_rm(s, args):
    """rm [-f] [-r] lfn...: remove files (-r: directories recursively)"""
    flags, _, pos = parse_opts(args, 'f r R i v s')
    recursive = 'r' in flags or 'R' in flags
    if not pos:
        raise CmdError(EINVAL, 'No file to remove')
    for p in pos:
        targets = _glob_entries(s, p)
        if targets is None:
            e = s.lookup(p)
            targets = [e] if e is not None else []
        if not targets:
            if 'f' in flags:
                continue
            raise CmdError(EIO, 'Failed to remove [%s]' % s.resolve(p))
        for e in targets:
            if e['type'] == 'd':
                if not recursive:
                    raise CmdError(EISDIR, '%s is a directory, use -r' % e['lfn'])
                if s.cwd.startswith(e['lfn']):
                    raise CmdError(EINVAL, 'Cannot delete the directory you are in')
            s.dir_for_write(e['lfn'])
            with s.cat.tx():
                orphans = s.cat.delete_subtree(e)
            for r in orphans:
                path = s.se_path(s.g.se_by_name(r['se']), r['pfn'])
                if path:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
    return []


@command('mv')
def c_mv(s, args):
    """mv src dst: rename or move into an existing directory"""
    _, _, pos = parse_opts(args)
    if len(pos) != 2:
        raise CmdError(EINVAL, 'mv needs a source and a destination')
    src = s.lookup(pos[0])
    if src is None:    # the 2021 service failed inside, the newer one says so
        if s.dialect == '2021':
            raise CmdError(EREMOTEIO, 'java.lang.NullPointerException')
        raise CmdError(EINVAL, 'Source cannot be found')
    s.dir_for_write(src['lfn'])
    dst_path = s.resolve(pos[1])
    d = s.cat.get(dst_path)
    if d is not None and d['type'] == 'd':
        dst_path = posixpath.join(d['lfn'], src['name'])
        if s.cat.get(dst_path) is not None:
            raise CmdError(EEXIST, dst_path)
    elif d is not None:
        raise CmdError(EEXIST, pos[1])
    if src['type'] == 'd' and (dst_path + '/').startswith(src['lfn']):
        raise CmdError(EINVAL, 'Cannot move a directory into itself')
    new_parent = s.dir_for_write(dst_path)
    new_lfn = dst_path + ('/' if src['type'] == 'd' else '')
    with s.cat.tx():
        s.cat.move(src, new_parent, new_lfn)
    if s.cwd.startswith(src['lfn']) and src['type'] == 'd':
        s.cwd = new_lfn + s.cwd[len(src['lfn']):]
    return []


@command('touch')
def c_touch(s, args):
    """touch lfn...: create empty files or update their time"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'No file name given')
    for p in pos:
        lfn = s.resolve(p)
        e = s.cat.get(lfn)
        with s.cat.tx():
            if e is not None:
                s.cat.db.execute('UPDATE entries SET ctime = ? WHERE id = ?',
                                 (cat_mod.now_ms(), e['id']))
                continue
            parent = s.dir_for_write(lfn)
            s.cat.insert(parent, lfn, 'f', s.user, size=0, md5=cat_mod.EMPTY_MD5,
                         guid=str(uuid.uuid1()))
    return []


def java_date(ms):
    """Java's Date.toString(): 'Tue Dec 01 10:44:29 UTC 2026'."""
    return time.strftime('%a %b %d %H:%M:%S %Z %Y', time.localtime(ms / 1000.0))


def guid_origin(guid, fallback_ms):
    """(creation time in ms, node 'xx:xx:...') of a version-1 GUID (stat shows them)."""
    try:
        u = uuid.UUID(guid)
    except ValueError:
        u = None
    if u is None or u.version != 1:
        return fallback_ms, '00:00:00:00:00:00'
    return (u.time - 0x01b21dd213814000) // 10000, ':'.join('%02x' % b for b in u.node.to_bytes(6, 'big'))


@command('stat')
def c_stat(s, args):
    """stat [-v] lfn...: details of catalogue entries"""
    flags, _, pos = parse_opts(args, 'v')
    if not pos:
        raise CmdError(EINVAL, 'No file name given')
    out, missing = [], []
    for p in pos:
        e = s.lookup(p)
        if e is None:
            missing.append(p)
            continue
        t = 'f' if e['type'] == 'f' else 'd'
        changed = e['ctime'] // 1000 * 1000          # the catalogue keeps seconds
        lines = ['File: %s' % e['lfn'], 'Type: %s' % t, 'Owner: %s:%s' % (e['owner'], e['gowner']),
                 'Permissions: %s' % e['perm'],
                 'Last change: %s.0 (%d)' % (time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(changed / 1000)),
                                             changed)]
        # 2021 names the path "file", the newer service "lfn"
        r = {'message': '', ('file' if s.dialect == '2021' else 'lfn'): e['lfn'], 'type': t,
             'owner': e['owner'], 'gowner': e['gowner'], 'perm': e['perm'], 'ctime': s.ctime(e)}
        if t == 'f':
            r.update(size=str(e['size']), md5=e['md5'])
            lines += ['Size: %d (%s)' % (e['size'], java_size(e['size'])), 'MD5: %s' % e['md5']]
            if e['guid']:
                made, node = guid_origin(e['guid'], e['ctime'])
                r.update(guid=e['guid'], mtime=str(made))
                lines += ['GUID: %s' % e['guid'], '\tGUID created on %s (%d) by %s' % (java_date(made), made, node)]
            if 'v' in flags:
                reps = s.cat.replicas(e['guid'])
                r['replicas'] = {x['se']: x['pfn'] for x in reps}
                for x in reps:
                    lines.append('\t%s\t%s' % (x['se'], x['pfn']))
        r['message'] = '\n'.join(lines)
        out.append(r)
    if missing:
        raise CmdError(ENOENT, ' '.join(missing), out)
    return out


@command('type')
def c_type(s, args):
    """type lfn: file or directory"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'No file name given')
    e = s.require(pos[0])
    word = 'file' if e['type'] == 'f' else 'directory'
    return [{'lfn': e['lfn'], 'type': word, 'message': word}]


FIND_FIELDS = ('lfn', 'size', 'md5', 'ctime', 'type', 'owner', 'gowner', 'perm', 'guid')


@command('find')
def c_find(s, args):
    """find [-a] [-s] [-d] [-f] [-r] [-c] [-w] [-j JOBID] [-l LIMIT] [-o OFFSET] dir pattern"""
    newer = s.dialect != '2021'     # -c, -S SITE, -e PATTERN and -x - came after 2021
    flags, vals, pos = parse_opts(args, 'a s d f r w y z' + ' c' * newer, 'j l o x' + ' S e' * newer)
    for name in 'ljo':
        if not re.match(r'^-?[0-9]+$', vals.get(name, '0')):
            raise CmdError(EINVAL, "Cannot parse argument '%s' of option %s" % (vals[name], name))
    if len(pos) == 1 and '*' in pos[0]:
        full = s.resolve(pos[0])
        head, _, tail = full.partition('*')
        base = head[:head.rfind('/') + 1]
        pos = [base, full[len(base):]]
    if len(pos) < 2:
        raise CmdError(EINVAL, 'find needs a directory and a pattern')
    base = s.lookup(pos[0])
    if base is None:
        raise CmdError(ENOENT, pos[0])
    if base['type'] != 'd':
        raise CmdError(ENOTDIR, pos[0])
    pattern = pos[1]
    limit = int(vals['l']) if 'l' in vals else None
    offset = int(vals.get('o', 0))
    if 'r' in flags:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise CmdError(EINVAL, 'Invalid regular expression %s: %s' % (pattern, e)) from None
        match = lambda lfn, rel: rx.search(lfn) is not None  # noqa: E731
    else:
        pieces = [re.escape(x) for x in pattern.split('*')]
        rx = re.compile('.*'.join(pieces), re.S)
        match = lambda lfn, rel: rx.search(rel) is not None  # noqa: E731
        if not pattern.strip('*'):
            match = None                                      # '*': everything
    root = base['lfn']
    n0 = len(root)
    hidden = 'a' not in flags
    jobid = vals.get('j') if vals.get('j', '0') != '0' else None     # 0: no job filter
    exclude = re.compile('.*'.join(re.escape(x) for x in vals['e'].split('*')), re.S) if 'e' in vals else None
    found = []
    for row in s.cat.subtree(root, order='s' not in flags):
        lfn = row[3]
        if row[4] == 'd' and 'd' not in flags:
            continue
        rel = lfn[n0:]
        if hidden and ('/.' in '/' + rel):
            continue
        if jobid is not None and row[12] != jobid:
            continue
        if match is not None and not match(lfn, rel):
            continue
        if exclude is not None and exclude.search(rel):
            continue
        found.append(row)
    if offset:
        found = found[offset:]
    if limit is not None:
        found = found[:limit]
    if 'x' in vals:   # -x -: the collection on screen; -x LFN: written there (not by the test grid)
        if vals['x'] != '-' or not newer:
            return []
        return [{'message': xml_collection(s, [dict(zip(cat_mod.COLUMNS, r)) for r in found if r[4] == 'f'],
                                           ' '.join(args))}]
    out = []
    s.shaped = True
    full_fields = 'f' in flags and s.want_keys
    keys, msgs = s.want_keys, s.want_msg
    for row in found:
        lfn = row[3]
        if full_fields:
            r = {'lfn': lfn, 'size': str(row[8]), 'md5': row[9], 'ctime': dialects.ctime(s.dialect, row[10]),
                 'type': row[4], 'owner': row[5], 'gowner': row[6], 'perm': row[7],
                 'guid': row[11], 'name': row[2], 'jobid': row[12]}
        elif keys:
            r = {'lfn': lfn}
        else:
            r = {}
        if msgs:
            if 'w' in flags:
                e = dict(zip(cat_mod.COLUMNS, row))
                r['message'] = '%s   %8s %8s %12d %s     %s' % (
                    perm_string(e), e['owner'], e['gowner'], e['size'], fmt_time(e['ctime']),
                    lfn)
            else:
                r['message'] = lfn
        out.append(r)
    if 'c' in flags and s.want_msg:
        out.append({'message': 'Found %d maching entries' % len(out)})
    return out


@command('whoami')
def c_whoami(s, args):
    """whoami [-v]: the user this connection is mapped to"""
    parse_opts(args, 'v')
    exp = ''
    if s.cert and s.cert.get('notAfter'):
        exp = str(int(ssl.cert_time_to_seconds(s.cert['notAfter'])))
    r = {'username': s.user, 'role': s.user, 'roles': '%s,vobox' % s.user, 'message': s.user,
         'certificate_expires': exp, 'certificate_dn': dn_rfc(s.dn)}
    if s.dialect != '2021':
        r['connected_from'] = s.peer
    r['homedir'] = s.home
    return [r]


@command('whereis')
def c_whereis(s, args):
    """whereis [-g] [-r] [-l] lfn: replicas of a file"""
    flags, _, pos = parse_opts(args, 'g r l s')
    if not pos:
        raise CmdError(EINVAL, 'No file name given')
    e = s.lookup(pos[0])
    if e is None:
        raise CmdError(ENOENT, pos[0])
    if e['type'] != 'f':
        raise CmdError(EINVAL, 'The path you indicated is not a file: %s' % pos[0])
    reps = s.cat.replicas(e['guid'])
    if 'r' in flags:    # -r: an archive member's link becomes the archive's replicas
        reps = [dict(r, pfn=r['pfn'] + '?ZIP=' + r['member'] if r['member'] else r['pfn'])
                for r in s.cat.resolve_links(reps)]
    out = []
    # key order of the real service: the header line opens the first result's message
    for i, r in enumerate(reps):
        se = s.g.se_by_name(r['se'])
        line = '\t %-30s pfn => %s' % ('SE => ' + r['se'], r['pfn'])
        row = {}
        if i == 0:
            row['message'] = 'the file %s is in\n\n%s' % (pos[0].rsplit('/', 1)[-1], line)
        row.update(seNumber=str(se['number']) if se else '0', seName=r['se'])
        if i:
            row['message'] = line
        row['pfn'] = r['pfn']
        out.append(row)
    return out


def _parse_specs(s, specs):
    wanted, excluded, count = [], set(), None
    for item in specs:
        for sp in item.split(','):
            sp = sp.strip()
            if not sp:
                continue
            if sp.lower().startswith('disk:') or sp.lower().startswith('tape:'):
                try:
                    count = int(sp.split(':', 1)[1])
                except ValueError:
                    raise CmdError(EINVAL, 'Invalid storage specifier %s' % sp) from None
            elif sp.startswith('!'):
                excluded.add(sp[1:].lower())
            else:
                se = s.g.se_by_name(sp)
                if se is not None and se not in wanted:
                    wanted.append(se)
    return wanted, excluded, count


@command('access')
def c_access(s, args):
    """access [-s SIZE] [-m MD5] [-j JOBID] read|write-once|write LFN [SE specifiers]"""
    flags, vals, pos = parse_opts(args, 'f u', 's m j')
    if len(pos) < 2:
        raise CmdError(EINVAL, 'access needs an access type and an LFN')
    kind, path = pos[0], pos[1]
    lfn = s.resolve(path)
    if kind == 'read':
        e = s.cat.get(lfn)
        # an archive member is read from the archive's replicas: URL#member
        reps = s.cat.resolve_links(s.cat.replicas(e['guid'])) if e is not None and e['type'] == 'f' else []
        if not reps:
            raise CmdError(EBADFD, 'No read PFNs')
        if len(pos) > 2:
            wanted, excluded, _ = _parse_specs(s, pos[2:])
            names = [w['name'].lower() for w in wanted]
            reps = [r for r in reps if r['se'].lower() not in excluded]
            if 'f' in flags:   # -f: only the SEs the specs name
                reps = [r for r in reps if r['se'].lower() in names]
            reps.sort(key=lambda r: 0 if r['se'].lower() in names else 1)
            if not reps:
                raise CmdError(EBADFD, 'No read PFNs')
        return [_access_row(s, r['pfn'] + ('#' + r['member'] if r['member'] else ''), r['se'], e['guid'],
                            len(reps), e['md5'], e['size'],
                            'u' in flags) for r in reps]
    if not kind.startswith('write'):
        raise CmdError(EINVAL, 'Unknown access type %s' % kind)
    try:
        size = int(vals.get('s', 0))
    except ValueError:
        raise CmdError(EINVAL, 'Invalid size %s' % vals['s']) from None
    md5 = vals.get('m', '')
    existing = s.cat.get(lfn)
    if existing is not None:
        # write-once never adds to an existing LFN; plain "write" books more replicas
        # of the very same file (same size and md5), on SEs that do not hold one yet
        if kind == 'write-once' or existing['type'] != 'f':
            raise CmdError(EBADFD, 'No write PFNs')
        if (size and size != existing['size']) or (md5 and md5 != existing['md5']):
            raise CmdError(EINVAL, 'You seem to want to write a different file from the '
                                   'existing one in the catalogue')
        s.dir_for_write(lfn)
    else:
        _check_creatable(s, lfn)
    wanted, excluded, count = _parse_specs(s, pos[2:])
    if count is None:
        count = len(wanted) if wanted else 2
    count = max(count, len(wanted))
    if existing is not None:
        excluded |= {r['se'].lower() for r in s.cat.replicas(existing['guid'])}
    avail = [se for se in wanted if se['name'].lower() not in excluded]
    avail += [se for se in s.g.ses if se not in avail and se['name'].lower() not in excluded]
    chosen = avail[:count]
    if not chosen:
        raise CmdError(EBADFD, 'No write PFNs')
    guid = existing['guid'] if existing is not None else str(uuid.uuid1())
    if existing is not None:
        size, md5 = size or existing['size'], md5 or existing['md5']
    h = int(hashlib.md5(guid.encode()).hexdigest()[:8], 16)
    rel = '%02d/%05d/%s' % (h % 16, (h >> 4) % 100000, guid)
    out = []
    now = cat_mod.now_ms()
    with s.cat.tx():
        for se in chosen:
            url = 'root://127.0.0.1:%d//%s' % (se.get('public_port') or se['port'], rel)
            row = _access_row(s, url, se['name'], guid, len(chosen), md5 or None, size, write=True)
            s.cat.db.execute('INSERT INTO bookings VALUES (?,?,?,?,?,?,?,?)',
                             (row['envelope'], lfn, guid, se['name'], url, size, md5, now))
            _prepare_se_dir(se, rel)
            out.append(row)
    return out


def _access_row(s, url, se_name, guid, nses, md5, size, urlencoded=False, write=False):
    """One replica of an access reply, keys in the real service's order; md5 is
    null in a write reply made without -m, like the real service's. The newer
    service appends its traffic marks (scitag flow, EOS application) to the envelope."""
    env = make_envelope(dialects.envelope_tail(s.dialect, write))
    if urlencoded:   # -u: the envelope urlencoded (our SEs have no http endpoint)
        from urllib.parse import quote
        env = quote(env, safe='')
    msg = '%s\nSE: %s (needs encrypted envelopes)\nEncrypted envelope:\n%s' % (url, se_name, env)
    return {'message': msg.rstrip('\n'), 'envelope': env, 'url': url, 'guid': guid,
            'se': se_name, 'tags': '[disk]', 'nSEs': str(nses), 'md5': md5, 'size': str(size)}


def _check_creatable(s, lfn):
    anc = posixpath.dirname(lfn) or '/'
    while s.cat.get(anc) is None:
        anc = posixpath.dirname(anc)
    e = s.cat.get(anc)
    if e['type'] != 'd':
        raise CmdError(ENOTDIR, anc)
    if not s.can_write(e):
        raise CmdError(EACCES, 'Cannot write to %s' % lfn)


def _prepare_se_dir(se, rel):
    """Create the replica's parent directories on the SE, owned by the server user."""
    d = os.path.join(se['datadir'], os.path.dirname(rel))
    if os.path.isdir(d):
        return
    top = se['datadir']
    os.makedirs(d, exist_ok=True)
    uid, gid = se.get('uid'), se.get('gid')
    if uid is not None and os.geteuid() == 0:
        p = d
        while p != top and p.startswith(top):
            try:
                os.chown(p, uid, gid)
            except OSError:
                pass
            p = os.path.dirname(p)


@command('commit')
def c_commit(s, args):
    """commit ENVELOPE SIZE LFN PERM EXPIRE URL SE GUID MD5: register an uploaded replica.

    Like the real service (JAliEnCommandcommit + registerEncryptedEnvelope): what is
    registered is the booking the envelope stands for, under the booking's LFN, with
    the size and md5 of this request; the LFN argument is only echoed as `path`."""
    pos = list(args)   # positional only: the envelope itself starts with dashes
    echo = pos[2] if len(pos) > 2 else ''
    nothing = CmdError(EBADR, 'Nothing was registered')
    nothing.results = [{'path': echo, 'lfn': '0', 'pfn': pos[5] if len(pos) > 5 else '',
                        'message': '%s 0' % echo}]
    if not pos:
        raise nothing
    md5 = pos[8] if len(pos) > 8 else ''
    b = s.cat.db.execute('SELECT * FROM bookings WHERE envelope = ?', (pos[0],)).fetchone()
    if b is None:
        raise nothing
    try:
        size = int(pos[1])
    except (IndexError, ValueError):
        size = b['size']
    lfn = b['lfn']
    perm = pos[3] if len(pos) > 3 and re.match(r'^[0-7]{3,4}$', pos[3]) else '755'
    md5 = md5 or b['md5']
    with s.cat.tx():
        e = s.cat.get(lfn)
        if e is None:
            parent = s.dir_for_write(lfn, create=True)
            e = s.cat.insert(parent, lfn, 'f', s.user, perm=perm[-3:], size=size, md5=md5,
                             guid=b['guid'])
        elif e['guid'] != b['guid']:
            raise nothing
        s.cat.db.execute('INSERT OR REPLACE INTO replicas VALUES (?,?,?)',
                         (b['guid'], b['se'], b['pfn']))
        s.cat.db.execute('DELETE FROM bookings WHERE envelope = ?', (pos[0],))
    return [{'path': echo, 'lfn': '1', 'pfn': b['pfn'], 'message': '%s 1' % echo}]


def java_size(n):
    """lazyj Format.size(): 1024-based, 'B', 'KB', ... with the server's rounding."""
    d, units = abs(float(n)), ['B', 'K', 'M', 'G', 'T', 'P', 'X']
    u = 0
    while d > 1024 and u < len(units) - 1:
        d /= 1024
        u += 1
    if d < 10:
        txt = repr(round(d, 3))
    elif d < 100:
        txt = repr(round(d, 2))
    elif d < 1000:
        txt = repr(round(d, 1))
    else:
        txt = str(int(d))
    if '.' in txt:
        txt = txt.rstrip('0').rstrip('.')
    if n < 0 and txt != '0':
        txt = '-' + txt
    unit = units[u] if units[u] == 'B' else units[u] + 'B'
    return '%s %s' % (txt, unit)


SE_TOTAL_SPACE = 100 * 1024 ** 3   # what every test SE announces


def se_original_name(se):
    """The SE name as written in LDAP (listSEs, xrdstat text); replicas carry it upper-case."""
    return se.get('original') or se['name']


@command('listSEs')
def c_listses(s, args):
    """
listSEs: print all (or a subset) of the defined SEs with their details
usage: listSEs   [-qos filter,by,qos] [-s] [SE name] [SE name] ...

options:
                    -qos                   :  filter the SEs by the given QoS classes. Comma separate entries for 'AND', pass multiple -qos options for an 'OR'
                    -s                     :  print summary information"""
    qos_sets, rest = [], []
    it = iter(args)
    for a in it:   # -qos may be given several times (OR of the AND-lists)
        if a.lstrip('-') == 'qos' and a.startswith('-'):
            value = next(it, None)
            if value is None:
                raise CmdError(EINVAL, 'Option qos requires an argument')
            tags = set(t for t in re.split(r'[ ,;]+', value) if t)
            if tags:
                qos_sets.append(tags)
        else:
            rest.append(a)
    flags, _, names = parse_opts(rest, 's')
    ses = []
    for se in sorted(s.g.ses, key=lambda x: x['name'].lower()):
        if names and not any(n.lower() == se['name'].lower() for n in names):
            continue
        qos = se.get('qos', ['disk'])
        if qos_sets and not any(q <= set(qos) for q in qos_sets):
            continue
        ses.append((se, qos))
    width = max([len(se_original_name(se)) for se, _ in ses] or [0])
    qos_width = max([sum(len(q) for q in qos) + 2 * (len(qos) - 1) for _, qos in ses] or [0])
    lines = [' ' * width + '\t\t                Capacity\t  \t\t\t\t\tDemote',
             'SE name'.rjust(width) + '\t ID\t   Total  \t    Used  \t    Free      File count\t'
             '   Read   Write\t' + 'QoS'.ljust(qos_width) + '\t  Endpoint URL']
    colors = {'disk': '32', 'tape': '34', 'legooutput': '33', 'legoinput': '33'}
    out, sums = [], [0, 0, 0, 0]
    for se, qos in ses:
        used, count = s.cat.db.execute(
            'SELECT COALESCE(SUM(e.size), 0), COUNT(*) FROM replicas r JOIN entries e'
            ' ON e.guid = r.guid WHERE r.se = ?', (se['name'],)).fetchone()
        total = SE_TOTAL_SPACE
        free = total - used if used <= total else 0
        for i, v in enumerate((total, used, free, count)):
            sums[i] += v
        qos_text = ', '.join(s.colour(colors.get(q, '31'), q) for q in qos)
        qos_text += ' ' * (qos_width - (sum(len(q) for q in qos) + 2 * (len(qos) - 1)))
        lines.append('%s\t%3d\t%8s\t%8s\t%8s%16d\t% .4f % .4f\t%s\t  %s' % (
            se_original_name(se).rjust(width), se['number'], java_size(total), java_size(used),
            java_size(free), count, 0.0, 0.0, qos_text, se['url']))
        out.append({'message': '\n'.join(lines), 'seName': se_original_name(se),
                    'seNumber': str(se['number']), 'totalSpace': str(total), 'usedSpace': str(used),
                    'freeSpace': str(free), 'fileCount': str(count), 'demoteRead': '0.0',
                    'demoteWrite': '0.0', 'qos': ','.join(qos), 'endpointUrl': se['url']})
        lines = []
    if 's' in flags and len(ses) > 1:
        out.append({'message': '\n' + ('TOTAL: %d SEs' % len(ses)).rjust(width) + '\t \t%8s\t%8s\t%8s%16d files' % (
            java_size(sums[0]), java_size(sums[1]), java_size(sums[2]), sums[3])})
    elif not ses:
        out.append({'message': '\n'.join(lines)})
    return out


def _xrootd(s, program, *args):
    """(ok, output or the last error line) of one run of the grid's xrdfs or xrdcp, as
    the real service runs such checks. The service lock is released meanwhile: a
    silent SE must not stall the other sessions."""
    from testgrid.tools import tool
    import subprocess
    env = dict(os.environ, XRD_CONNECTIONRETRY='1', XRD_REQUESTTIMEOUT='10', XRD_TIMEOUTRESOLUTION='1')
    s.g.lock.release()
    try:
        p = subprocess.run([tool(program)] + list(args), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, '%s %s timed out' % (program, args[0])
    finally:
        s.g.lock.acquire()
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip() or '%s failed' % program).splitlines()
        return False, lines[-1]
    return True, p.stdout.strip()


def _xrdstat_replica(s, pfn):
    """(ok, detail) of a metadata check of one replica on its SE over XRootD."""
    m = re.match(r'^(root://[^/]+)/(/.*)$', pfn)
    if not m:
        return False, 'not an XRootD URL: %s' % pfn
    return _xrootd(s, 'xrdfs', m.group(1), 'stat', m.group(2))


@command('xrdstat')
def c_xrdstat(s, args):
    """
usage: xrdstat   [-d [-i]] [-v] [-p PID,PID,...] [-s SE1,SE2,...] [-c] <filename1> [<or UUID>] ...

options:
                    -d                     :  Check by physically downloading each replica and checking its content. Without this a stat (metadata) check is done only.
                    -i                     :  When downloading each replica, ignore `stat` calls and directly try to fetch the content.
                    -s                     :  Comma-separated list of SE names to restrict the checking to. Default is to check all replicas.
                    -c                     :  Print the full command line in case of errors.
                    -v                     :  More details on the status.
                    -p                     :  Comma-separated list of job IDs to check the input data of
                    -o                     :  Only show the online status (for files with tape replicas in particular)
                    -O                     :  Request the file to be brought online
                    -4                     :  Force IPv4 usage on all commands
                    -6                     :  Force IPv6 usage on all commands"""
    flags, vals, pos = parse_opts(args, 'd i c v o O 4 6', 's p')
    if not pos:
        raise CmdError(EINVAL, 'No file name given')
    only = None
    if 's' in vals:
        only = set(n.lower() for n in re.split(r'[,;]', vals['s']) if n)
    out = []
    for path in pos:
        e = s.lookup(path)
        if e is None or e['type'] != 'f':
            raise CmdError(ENOENT, 'This LFN does not exist in the catalogue: %s' % path)
        header = 'Checking the replicas of %s' % e['lfn']
        for r in s.cat.replicas(e['guid']):
            se = s.g.se_by_name(r['se'])
            if only is not None and r['se'].lower() not in only:
                continue
            ok, detail = _xrdstat_replica(s, r['pfn'])
            line = '\t%s\t%s\t%s' % (se_original_name(se).ljust(20) if se else '(unknown SE)', r['pfn'],
                                      s.colour('32', 'OK') if ok else s.colour('31', 'ERR'))
            if 'v' in flags:
                line += '\n' + detail
            msg = header + '\n' + line if header else line
            header = ''
            out.append({'message': msg, 'seName': r['se'], 'seNumber': str(se['number']) if se else '0',
                        'pfn': r['pfn'], 'status': 'ok' if ok else 'error'})
    return out


@command('token')
def c_token(s, args):
    """token [-v DAYS] [-u USER] [-t TYPE] [-jobid ID] [-hostname FQDN] [-f]: a new token"""
    _, vals, _ = parse_opts(args, 'f', 'v u t jobid hostname')
    try:
        days = int(vals.get('v', 1))
    except ValueError:
        raise CmdError(EINVAL, 'Invalid validity %s' % vals['v']) from None
    days = max(1, min(days, 30))
    cert, key, subject, expires = s.g.pki.issue_token(s.user, days)
    msg = 'DN: %s\nExpires: %s\n%s%s' % (subject, expires, cert, key)
    return [{'tokencert': cert, 'tokenkey': key, 'message': msg.rstrip('\n')}]


@command('version')
def c_version(s, args):
    """version: server version"""
    parse_opts(args)
    tag, git_hash, built = dialects.BUILD[s.dialect]
    return [{'message': 'JAliEn tag: %s\nGit hash: %s\nCompiled at: %s @ testgrid' % (
                 tag, git_hash, time.strftime('%d %b %Y %H:%M', time.localtime(built / 1000))),
             'tag': tag, 'git_hash': git_hash, 'compiled_at': str(built), 'compiled_by': 'testgrid'}]


@command('time')
def c_time(s, args):
    """time N COMMAND [ARGS]: run COMMAND N times; its messages and the timing"""
    if len(args) < 2 or not args[0].isdigit() or int(args[0]) < 1:
        raise CmdError(EINVAL, 'time needs a repeat count and a command')
    n, cmd = int(args[0]), args[1]
    fn = s.command(cmd)
    if fn is None or cmd == 'time':
        raise CmdError(ENOENT, 'Command [%s] not found!' % cmd)
    msgs, rows, t0 = [], [], time.monotonic()
    for _ in range(n):
        rows = fn(s, list(args[2:])) or []
        msgs += [r['message'] for r in rows if 'message' in r]
    ms = (time.monotonic() - t0) * 1000
    msgs.append('"%s" with #%d tries,\tavr/total msec:\t\t%d/%d' % (cmd, n, ms / n, ms))
    # one row: the fields of the last run's first row, all the messages and the timing
    row = {k: v for k, v in (rows[0] if rows else {}).items() if k != 'message'}
    row['message'] = '\n'.join(msgs)
    return [row]


@command('toXml')
def c_toxml(s, args):
    """toXml [-i] lfn...: the XML collection of files (printed; -x/-a/-l, which write to
    or read from the catalogue, are not offered by the test grid)"""
    flags, vals, pos = parse_opts(args, 'i a', 'x l')
    if 'x' in vals or 'l' in vals or 'a' in flags:
        raise CmdError(EINVAL, 'toXml -x/-a/-l are not offered by the test grid')
    if not pos:
        raise CmdError(EINVAL, 'toXml needs at least one LFN')
    entries = []
    for p in pos:
        e = s.lookup(p)
        if e is None or e['type'] != 'f':
            if 'i' in flags:
                continue
            raise CmdError(ENOENT, p)
        entries.append(e)
    return [{'message': xml_collection(s, entries, ' '.join(args))}]


def xml_collection(s, entries, command):
    """The XML collection text of catalogue entries (toXml, find -x -)."""
    from xml.sax.saxutils import quoteattr
    lines = ['<?xml version="1.0"?>', '<alien>', '  <collection name="tempCollection">']
    for n, e in enumerate(entries, 1):
        attrs = (('name', e['name']), ('aclId', ''), ('broken', '0'),
                 ('ctime', time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['ctime'] / 1000.0))),
                 ('dir', str(e['parent'])), ('entryId', str(e['id'])), ('expiretime', ''), ('gowner', e['gowner']),
                 ('guid', e['guid'] or ''), ('guidtime', ''), ('jobid', e['jobid'] or ''), ('lfn', e['lfn']),
                 ('md5', e['md5'] or ''), ('owner', e['owner']), ('perm', e['perm']), ('replicated', '0'),
                 ('size', str(e['size'])), ('turl', 'alien://' + e['lfn']), ('type', 'f'))
        lines += ['    <event name="%d">' % n,
                  '      <file %s />' % ' '.join('%s=%s' % (k, quoteattr(str(v))) for k, v in attrs),
                  '    </event>']
    now = time.time()
    lines += ['    <info command=%s creator=%s date="%s" timestamp="%d" />'
              % (quoteattr(command), quoteattr(s.user), java_date(now * 1000), int(now * 1000)),
              '  </collection>', '</alien>']
    return '\n'.join(lines)


@command('md5sum')
def c_md5sum(s, args):
    """md5sum lfn...: catalogue md5 of files"""
    _, _, pos = parse_opts(args)
    out = []
    for p in pos:
        e = s.require(p)
        if e['type'] != 'f':
            raise CmdError(EISDIR, p)
        out.append({'message': '%s\t%s' % (e['md5'], e['lfn'])})
    return out


@command('lfn2guid')
def c_lfn2guid(s, args):
    """lfn2guid lfn: the GUID of a file"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'No file name given')
    e = s.require(pos[0])
    if e['type'] != 'f':
        raise CmdError(EISDIR, pos[0])
    return [{'lfn': e['lfn'], 'type': 'f', 'message': '%-80s%s' % (e['lfn'], e['guid']), 'guid': e['guid']}]


@command('guid2lfn')
def c_guid2lfn(s, args):
    """guid2lfn guid: the LFN of a GUID"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'No GUID given')
    row = s.cat.db.execute('SELECT lfn FROM entries WHERE guid = ? LIMIT 1',
                           (pos[0].lower(),)).fetchone()
    if row is None:
        raise CmdError(ENOENT, pos[0])
    return [{'guid': pos[0], 'message': '%-40s%s' % (pos[0], row[0]), 'lfn': row[0]}]


@command('setSite')
def c_setsite(s, args):
    """setSite SITE: site affinity (remembered for the session, no other effect here)"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument')
    was, s.site = getattr(s, 'site', GRID_SITE), pos[0]
    return [{'message': 'Setting close site to %s (was %s)' % (s.site, was)}]


@command('commandlist')
def c_commandlist(s, args):
    """commandlist: the commands this server knows"""
    names = sorted(set(n for n in COMMANDS if s.command(n)) | {'cp'})
    out = [{'message': '\n'.join(names), 'commandlist': names[0]}]
    out += [{'commandlist': n} for n in names[1:]]
    return out


# -- more commands of the real services (../shared/spec/jcentral-replies*.md) ----------------
# Replies as captured where the captures show them; otherwise testgrid/README.md says what
# the test grid chose.

def _file_entry(s, p):
    e = s.require(p)
    if e['type'] != 'f':
        raise CmdError(EISDIR, p)
    return e


def _text_of(s, e):
    text = s.read_text(e)
    if text is None:
        raise CmdError(EIO, 'Could not read %s' % e['lfn'])
    return text


def _point(x):
    """A number as the Java service prints a double: at most two decimals, no trailing zeros."""
    return ('%.2f' % x).rstrip('0').rstrip('.')


@command('du')
def c_du(s, args):
    """du [-ncs] path...: disk space used below directories"""
    flags, _, pos = parse_opts(args, 'n c s')
    size_text = (lambda n: '%d bytes' % n) if 'n' in flags else java_size
    out = []
    for p in pos or [s.cwd]:
        e = s.require(p)
        rows = [e] if e['type'] == 'f' else [e] + [dict(zip(cat_mod.COLUMNS, r)) for r in s.cat.subtree(e['lfn'])]
        folders = sum(1 for r in rows if r['type'] == 'd')
        phys = [0, 0, 0, 0]     # files, size of all replicas, replicas, size of one replica
        logical = [0, 0]        # files without a physical replica (archive members): count, size
        for r in rows:
            if r['type'] != 'f':
                continue
            reps = [x for x in s.cat.replicas(r['guid']) if x['se'] != cat_mod.ARCHIVE_SE]
            if not reps and s.cat.replicas(r['guid']):
                logical[0] += 1
                logical[1] += r['size']
                continue
            phys[0] += 1
            phys[1] += r['size'] * len(reps)
            phys[2] += len(reps)
            phys[3] += r['size']
        path = s.resolve(p)
        msg = ['%s' % path, '  Folders: %d' % folders,
               '  Files: %d of an apparent size of %s, of which:' % (phys[0] + logical[0], size_text(phys[3] + logical[1])),
               '  - physical files: %d files of %s with %d replicas (avg %s replicas/file), size of one replica: %s'
               % (phys[0], size_text(phys[1]), phys[2], _point(phys[2] / phys[0]) if phys[0] else '0',
                  size_text(phys[3]))]
        if logical[0]:
            msg.append('  - logical files: %d files of %s' % (logical[0], size_text(logical[1])))
        out += [{'message': '\n'.join(msg)},
                {'entry': path, 'folders': str(folders), 'physical_files_count': str(phys[0]),
                 'physical_files_size': str(phys[1]), 'physical_files_replicas': str(phys[2]),
                 'physical_files_one_replica_size': str(phys[3]), 'logical_files_count': str(logical[0]),
                 'logical_files_size': str(logical[1])}]
    return out


@command('df')
def c_df(s, args):
    """df: not implemented by the services"""
    raise CmdError(ENOSYS, '')


@command('cat')
def c_cat(s, args):
    """cat lfn...: the content of grid files"""
    _, _, pos = parse_opts(args)
    out = []
    for p in pos:
        text = _text_of(s, _file_entry(s, p)).rstrip('\n')
        out.append({'value': text, 'message': text})
    return out


@command('grep')
def c_grep(s, args):
    """grep [-i] PATTERN lfn...: the lines of grid files that match a regular expression"""
    flags, _, pos = parse_opts(args, 'i')
    if len(pos) < 2:
        raise CmdError(EINVAL, 'Command requires a pattern and a file')
    try:
        rx = re.compile(pos[0], re.I if 'i' in flags else 0)
    except re.error as e:
        raise CmdError(EINVAL, 'Invalid pattern %s: %s' % (pos[0], e)) from None
    out = []
    for p in pos[1:]:
        lines = [x for x in _text_of(s, _file_entry(s, p)).splitlines() if rx.search(x)]
        if lines:
            out.append({'message': '\n'.join(lines)})
    return out


def _owned_entries(s, paths):
    entries = [s.require(p) for p in paths]
    for e in entries:
        if e['owner'] != s.user:
            raise CmdError(EACCES, 'Not the owner of %s' % e['lfn'])
    return entries


@command('chmod')
def c_chmod(s, args):
    """chmod MODE lfn...: change the permissions (octal) of catalogue entries"""
    _, _, pos = parse_opts(args)
    if len(pos) < 2 or not re.match(r'^[0-7]{3,4}$', pos[0]):
        raise CmdError(EINVAL, 'Command requires an octal mode and at least one file')
    with s.cat.tx():
        for e in _owned_entries(s, pos[1:]):
            s.cat.db.execute('UPDATE entries SET perm = ? WHERE id = ?', (pos[0][-3:], e['id']))
    return []


@command('chown')
def c_chown(s, args):
    """chown USER[:GROUP] lfn...: change the owner of catalogue entries"""
    _, _, pos = parse_opts(args)
    if len(pos) < 2:
        raise CmdError(EINVAL, 'Command requires an owner and at least one file')
    user, _, group = pos[0].replace('.', ':').partition(':')
    if user not in set(s.g.users.values()):
        raise CmdError(EINVAL, 'No such user: %s' % user)
    with s.cat.tx():
        for e in _owned_entries(s, pos[1:]):
            s.cat.db.execute('UPDATE entries SET owner = ?, gowner = ? WHERE id = ?', (user, group or user, e['id']))
    return []


@command('showTagValue')
def c_showtagvalue(s, args):
    """showTagValue path: the metadata tags of a directory (none here)"""
    _, _, pos = parse_opts(args, 't c')
    return [{'message': '%s\n  no tags defined for this path' % s.require(p)['lfn'].rstrip('/')} for p in pos]


@command('listFilesFromCollection')
def c_listfilesfromcollection(s, args):
    """listFilesFromCollection [-z] [-s] collection: the LFNs of an XML collection"""
    _, _, pos = parse_opts(args, 'z s' + ' t' * (s.dialect != '2021'))
    for p in pos:
        e = s.lookup(p)
        raise CmdError(EREMOTEIO, ('No such LFN "%s"' if e is None else '%s is not a collection') % s.resolve(p))
    raise CmdError(EINVAL, 'Command requires an argument')


@command('lfnexpiretime')
def c_lfnexpiretime(s, args):
    """lfnexpiretime [-options] lfn...: expiry times of LFNs (accepted; nothing expires here)"""
    _, _, pos = parse_opts(args, 'r a e', 'd w m y')
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument', [{'message': s.help(c_lfnexpiretime, 'lfnexpiretime')}])
    for p in pos:
        s.require(p)
    return []


@command('changeDiff')
def c_changediff(s, args):
    """changeDiff lfn: the differences between a file and its backup (lfn~)"""
    import difflib
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument')
    new = _file_entry(s, pos[0])
    old = s.lookup(new['lfn'] + '~')
    if old is None:
        raise CmdError(ENOENT, new['lfn'] + '~')
    diff = difflib.unified_diff(_text_of(s, old).splitlines(), _text_of(s, new).splitlines(),
                                old['lfn'], new['lfn'], lineterm='')
    return [{'message': '\n'.join(diff)}]


@command('packages')
def c_packages(s, args):
    """packages [-platform P] [-all]: software packages (the test grid has none; the options: newer service)"""
    newer = s.dialect != '2021'
    parse_opts(args, 'all' * newer, 'platform' * newer)
    return []


@command('mirror')
def c_mirror(s, args):
    """mirror [-g] [-try N] [-r SE] [-S SPECS] lfn [SE]: one more replica of a file. The test
    grid copies the bytes between its SEs at once (the real service queues a transfer)."""
    _, vals, pos = parse_opts(args, 'g', 'try S' + ' r' * (s.dialect != '2021'))     # -r SE: a move (newer)
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument')
    e = _file_entry(s, pos[0])
    targets = [s.g.se_by_name(n) for n in ([pos[1]] if len(pos) > 1 else vals.get('S', '').split(',')) if n]
    if not targets or None in targets:
        raise CmdError(EINVAL, 'No such SE: %s' % (pos[1] if len(pos) > 1 else vals.get('S', '')))
    have = {r['se'].lower(): r for r in s.cat.replicas(e['guid'])}
    source = next((s.se_path(s.g.se_by_name(r['se']), r['pfn']) for r in have.values()
                   if s.se_path(s.g.se_by_name(r['se']), r['pfn'])), None)
    for se in targets:
        if se['name'].lower() in have or source is None:
            continue
        h = int(hashlib.md5(e['guid'].encode()).hexdigest()[:8], 16)
        rel = '%02d/%05d/%s' % (h % 16, (h >> 4) % 100000, e['guid'])
        _prepare_se_dir(se, rel)
        dst = os.path.join(se['datadir'], rel)
        import shutil
        shutil.copyfile(source, dst)
        if se.get('uid') is not None and os.geteuid() == 0:
            os.chown(dst, se['uid'], se['gid'])
        with s.cat.tx():
            s.cat.db.execute('INSERT OR REPLACE INTO replicas VALUES (?,?,?)', (
                e['guid'], se['name'], 'root://127.0.0.1:%d//%s' % (se.get('public_port') or se['port'], rel)))
    moved = have.get(vals.get('r', '').lower())    # -r SE: a move, that replica goes once there is another
    if moved is not None and len(s.cat.replicas(e['guid'])) > 1:
        with s.cat.tx():
            s.cat.db.execute('DELETE FROM replicas WHERE guid = ? AND se = ?', (e['guid'], moved['se']))
        path = s.se_path(s.g.se_by_name(moved['se']), moved['pfn'])
        if path and os.path.exists(path):
            os.unlink(path)
    return []


@command('listSEDistance')
def c_listsedistance(s, args):
    """listSEDistance [-site SITE] [-read|-write] [lfn]: the SEs sorted by distance from a site"""
    parse_opts(args, 'read write', 'site qos')
    return [{'message': '%40s\t(read: %6.3f,  write: %6.3f,  distance: %6.3f)' % (se['name'], 0, 0, 0)}
            for se in sorted(s.g.ses, key=lambda x: x['number'])]


@command('testSE')
def c_testse(s, args):
    """testSE [-v] [-c] [-t] [-e] SE...: test an SE the way the central services use it"""
    _, _, pos = parse_opts(args, 'v c t e a')
    out = []
    for name in pos:
        se = s.g.se_by_name(name)
        if se is None:
            raise CmdError(EINVAL, 'No such SE: %s' % name)
        base = 'root://127.0.0.1:%d' % (se.get('public_port') or se['port'])
        probe = os.path.join(s.g.workdir, 'testSE-%s.txt' % uuid.uuid4())
        with open(probe, 'w') as f:
            f.write('testSE %s\n' % name)
        bad, good = s.colour('31;40', 'NOT OK'), s.colour('32', 'expected')
        lines = [se['name']]
        for what, authz in (('Open', ''), ('Authenticated', '?authz=' + make_envelope())):
            url = '%s//testSE/%s%s' % (base, os.path.basename(probe), authz)
            wrote = _xrootd(s, 'xrdcp', '--nopbar', '--force', probe, url)[0]
            read = wrote and _xrootd(s, 'xrdcp', '--nopbar', '--force', url, probe + '.back')[0]
            gone = wrote and _xrootd(s, 'xrdfs', base, 'rm', '/testSE/' + os.path.basename(probe))[0]
            if what == 'Open':
                lines += ['  Open write test: ' + ('could write,  (%s), please check authorization configuration' % bad
                                                   if wrote else 'cannot write (%s)' % good),
                          '  Open read test: ' + ('reading worked (%s) please check authorization configuration' % bad
                                                  if read else 'cannot read (%s)' % good),
                          '  Open delete test: ' + ('delete worked (%s)' % bad if gone else 'cannot delete (%s)' % good)]
            else:
                lines += ['  Authenticated write test: ' + ('could write (%s)' % good if wrote else 'cannot write (%s)' % bad),
                          '  Authenticated read: ' + ('file read back ok (%s)' % good if read else 'cannot read (%s)' % bad),
                          '  Authenticated delete: ' + ('delete worked ok (%s)' % good if gone else 'cannot delete (%s)' % bad)]
        for f in (probe, probe + '.back'):
            if os.path.exists(f):
                os.unlink(f)
        ok, space = _xrootd(s, 'xrdfs', base, 'spaceinfo', '/')
        info = dict(re.findall(r'(?m)^([A-Za-z ]+):\s+(\d+)$', space)) if ok else {}
        num = lambda k: int(info.get(k, 0))   # noqa: E731
        lines += ['  Space information:', 'Path:  /', 'Total: %s (LDAP setting: %d)' % (java_size(num('Total')),
                                                                                       num('Total') // 1024),
                  'Free:  %s' % java_size(num('Free')), 'Used:  %s' % java_size(num('Used')),
                  'Chunk: %s' % java_size(num('Largest free chunk')),
                  'Version: Xrootd %s' % _xrootd(s, 'xrdfs', base, 'query', 'config', 'version')[1]]
        used, count = s.cat.db.execute(
            'SELECT COALESCE(SUM(e.size), 0), COUNT(*) FROM replicas r JOIN entries e ON e.guid = r.guid'
            ' WHERE r.se = ?', (se['name'],)).fetchone()
        lines += ['  LDAP information:', 'SE: seName: %s' % se['name'], 'seNumber\t: %d' % se['number'],
                  'seVersion\t: 0', 'qos\t: [%s]' % ', '.join(se.get('qos', ['disk'])), 'seioDaemons\t: %s' % base,
                  'seStoragePath\t: /', 'seSize:\t: 0', 'seUsedSpace\t: %d' % used, 'seNumFiles\t: %d' % count,
                  'seMinSize\t: 0', 'seType\t: %s' % ('File' if s.dialect == '2021' else 'disk'),
                  'exclusiveUsers\t: []', 'seExclusiveRead\t: []', 'seExclusiveWrite\t: []', 'options:\t{}']
        out.append({'message': '\n'.join(lines)})
    return out


@command('listTransfer')
def c_listtransfer(s, args):
    """listTransfer [-list N] [-status S] [-user U] [-id N]: transfers (mirror copies at once here)"""
    parse_opts(args, 'verbose master summary all_status jdl', 'list status user id')
    head = 'TransferId\t   Status\t   User\t\tDestination      \tSize\t\tAttempts'
    return [{'message': head + ('\n\nTotal: 0 transfers' if s.dialect == '2021' else '\tFile name')}]


def _roles(s, user):
    return [user, 'vobox']


def _account(s, args):
    _, _, pos = parse_opts(args)
    user = pos[0] if pos else s.user
    if user not in set(s.g.users.values()):
        raise CmdError(ENOKEY, 'No such account name: %s' % user)
    return user


@command('whois')
def c_whois(s, args):
    """whois [-s] [-f] account: the roles and certificate subjects of an account"""
    user = _account(s, [a for a in args if a not in ('-s', '-f')])
    # the account's user DNs, and the grid's host certificate (the vobox role), like the captured LDAP
    subjects = sorted(dn for dn, u in s.g.users.items() if u == user) + [HOST_SUBJECT]
    roles = ', '.join(_roles(s, user))
    return [{'message': 'Username: %s\n  Roles: %s\n  Subject: \n    %s' % (user, roles, '\n    '.join(subjects)),
             'username': user, 'roles': roles, 'subject': ', '.join(subjects)}]


@command('groups')
def c_groups(s, args):
    """groups [account]: the groups of an account"""
    user = _account(s, args)
    return [{'message': 'User: %s, main group: %s\nMember of groups: %s' % (
        user, user, ''.join(r + ' ' for r in _roles(s, user)))}]


@command('user')
def c_user(s, args):
    """user account: switch to another role of yours (only your own account here)"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument')
    if pos[0] not in _roles(s, s.user) or pos[0] == 'vobox':
        raise CmdError(EACCES, 'Switching user %s failed' % pos[0])
    return [{'homedir': s.home}]


MOTD = ('\nAliEn Service Message: All is well in the Grid world. Enjoy!\n\nProject links:\n'
        '\tDocumentation: https://jalien.docs.cern.ch/\n\tBug reporting: https://alice.its.cern.ch/jira/projects/JAL/\n'
        '\tOperational issues: alice-analysis-operations@cern.ch')


@command('motd')
def c_motd(s, args):
    """motd: the message of the day"""
    parse_opts(args)
    return [{'message': MOTD}]


@command('uuid')
def c_uuid(s, args):
    """uuid guid|lfn...: decode version-1 GUIDs (creation time and node)"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument', [{'message': s.help(c_uuid, 'uuid')}])
    out = []
    for p in pos:
        e = s.lookup(p) if '/' in p else None
        guid = e['guid'] if e is not None else p
        try:
            uuid.UUID(guid)
        except ValueError:
            raise CmdError(EINVAL, '%s is neither a UUID nor a file' % p) from None
        made, node = guid_origin(guid, 0)
        out.append({'message': '%s : created on %s (%d) by %s' % (guid, java_date(made), made, node),
                    'uuid': guid, 'uuidtime': str(made), 'mac': node})
    return out


@command('ping')
def c_ping(s, args):
    """ping [-c COUNT] [-s MS]: round trips to the service's back end, a pause between them"""
    _, vals, _ = parse_opts(args, '', 'c s')
    try:
        count, pause = max(1, int(vals.get('c', 3))), max(0, int(vals.get('s', 1000)))
    except ValueError:
        raise CmdError(EINVAL, 'count and pause are numbers') from None
    lines, times, t0 = ['Sending %d messages with a pause of %d ms between them' % (count, pause)], [], time.monotonic()
    for i in range(count):
        if i:
            s.g.lock.release()     # the pause blocks this session only
            try:
                time.sleep(pause / 1000.0)
            finally:
                s.g.lock.acquire()
        t = time.perf_counter()
        s.cat.db.execute('SELECT 1').fetchone()
        times.append((time.perf_counter() - t) * 1000)
        lines.append('reply from localhost: time=%r ms' % round(times[-1], 3))
    avg = sum(times) / count
    mdev = (sum((x - avg) ** 2 for x in times) / count) ** 0.5
    lines += ['%d packets transmitted, time %d ms' % (count, (time.monotonic() - t0) * 1000),
              'rtt min/avg/max/mdev = %s ms' % '/'.join(repr(round(x, 3)) for x in (min(times), avg, max(times), mdev)),
              '', 'Central service endpoint information:', '  hostname : %s' % socket.gethostname()]
    return [{'message': '\n'.join(lines)}]


@command('timing')
def c_timing(s, args):
    """timing [on|off]: the service's own command timing (reported, not measured here)"""
    _, _, pos = parse_opts(args)
    if pos:
        s.timing = pos[0] in ('on', 'true', '1')
    on = getattr(s, 'timing', False)
    return [{'message': 'Command timing is %s' % ('enabled' if on else 'disabled'), 'timing': str(on).lower()}]


@command('echo')
def c_echo(s, args):
    """echo words...: the words back (newer service)"""
    return [{'message': ' '.join(args)}]


@command('guidinfo')
def c_guidinfo(s, args):
    """guidinfo guid...: what the catalogue knows about GUIDs (newer service)"""
    _, _, pos = parse_opts(args)
    if not pos:
        raise CmdError(EINVAL, 'Command requires an argument')
    out = []
    for g in pos:
        row = s.cat.db.execute('SELECT * FROM entries WHERE guid = ? LIMIT 1', (g.lower(),)).fetchone()
        if row is None:
            raise CmdError(ENOENT, 'No such GUID: %s' % g)
        made, node = guid_origin(row['guid'], row['ctime'])
        reps = s.cat.replicas(row['guid'])
        out.append({'message': 'GUID: %s\nOwner: %s:%s\nPermissions: %s\nSize: %d (%s)\nMD5: %s\nCreated: %s (%d) by %s\n'
                               'Replicas: %s' % (row['guid'], row['owner'], row['gowner'], row['perm'], row['size'],
                                                 java_size(row['size']), row['md5'], java_date(made), made, node,
                                                 ', '.join(r['se'] for r in reps) or 'none'),
                    'guid': row['guid'], 'owner': row['owner'], 'gowner': row['gowner'], 'perm': row['perm'],
                    'size': str(row['size']), 'md5': row['md5'], 'ctime': str(made),
                    'replicas': ','.join(r['se'] for r in reps)})
    return out


@command('archiveList')
def c_archivelist(s, args):
    """archiveList archive...: the members of zip archives (newer service)"""
    _, _, pos = parse_opts(args)
    out = []
    for p in pos:
        e = _file_entry(s, p)
        rows = s.cat.db.execute('SELECT e.lfn, e.size, r.pfn FROM replicas r JOIN entries e ON e.guid = r.guid'
                                ' WHERE r.se = ? AND r.pfn LIKE ? ORDER BY e.lfn',
                                (cat_mod.ARCHIVE_SE, 'guid:///%s?ZIP=%%' % e['guid'])).fetchall()
        for lfn, size, pfn in rows:
            out.append({'message': '%s\t%d\t%s' % (pfn.split('?ZIP=', 1)[1], size, lfn), 'member': pfn.split('?ZIP=', 1)[1],
                        'size': str(size), 'lfn': lfn})
    return out


def c_admins_only(s, args):
    """CMD ...: administrators only (resyncLDAP, optimiserLogs, setCEstatus; newer service)"""
    raise CmdError(EPERM, 'Only administrators can do it')


for _name in ('resyncLDAP', 'optimiserLogs', 'setCEstatus'):
    command(_name)(c_admins_only)


# job, CE and quota commands (listCEs ps masterjob submit jquota fquota ...): testgrid/jobs.py
jobs_mod.register(command, CmdError, human_size, STRERROR)


# -- server -------------------------------------------------------------------------------

# -- the real endpoint: one commander per session, a 1 s hand-off ---------------------------
# alien/websockets/WebsocketEndpoint.java and alien/shell/commands/JAliEnCOMMander.java:
# for every message the endpoint sets the session's single commander to the new arguments
# and output writer and submits it to an executor, then waits for it at most 1 s. A command
# still running then gets its reply later, from another thread, while the endpoint reads the
# next message: that message's setLine overwrites the arguments (a run that has not read
# them yet, e.g. one sleeping in the throttle, runs the newer request) and submits the
# commander again; all runs print into one writer and one output stream, which whichever
# reply goes out first sends and resets.

def _sleep_range(spec, rng):
    """Sleep a uniformly random time from [min, max] seconds (service.json delays)."""
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        lo, hi = float(spec[0]), float(spec[1])
        if hi > 0:
            time.sleep(lo + (hi - lo) * rng.random())


class Writer:
    """The session's one JSONPrintWriter: fields go into the current row, next_result()
    closes it, flush() writes one JSON document to the output stream and clears all."""

    def __init__(self):
        self.rows, self.row, self.meta = [], None, {}

    def field(self, key, value):
        if self.row is None:
            self.row = {}
        self.row[key] = value

    def next_result(self):
        if self.row is not None:
            self.rows.append(self.row)
            self.row = None

    def set_return_code(self, code, error):
        self.meta['exitcode'], self.meta['error'] = str(code), error

    def flush(self, stream):
        self.next_result()
        meta = self.meta
        doc = {'results': self.rows}
        if meta:
            doc = {'metadata': {k: meta[k] for k in ('currentdir', 'exitcode', 'error', 'user') if k in meta},
                   'results': self.rows}
        stream.append(java_json(doc))
        self.rows, self.meta = [], {}


class Commander:
    """JAliEnCOMMander of one session: status 1 while a run may be going, out the writer
    runs print into (None once any run ended), arg the line the next run to start reads."""

    def __init__(self, sess):
        self.sess = sess
        self.cond = threading.Condition()
        self.status = 0
        self.out = None
        self.arg = None
        self.kill = False
        self.writer = Writer()
        self.stream = []          # the session's ByteArrayOutputStream

    def set_line(self, out, arg):
        with self.cond:
            if self.kill:
                self.status = 0
                self.cond.notify_all()
                return
            self.out, self.arg = out, arg
            if out is None or arg is None:
                self.status = 0
                self.cond.notify_all()
                return
            self.status = 1
        threading.Thread(target=self.run, name='CommandExecutor', daemon=True).start()

    def run(self):
        line = None
        try:
            self.sess.before_execute()
            line = self.arg          # read only now: a newer setLine may have replaced it
            if line is not None:
                self.sess.execute(self, line)
        except Drop:
            self.sess.g.log('drop connection after %.200s' % (line[2] if line else ''))
            self.sess.drop_connection()
        except Exception as e:      # never kills the service
            self.sess.g.log('EXCEPTION in a run: %r' % (e,))
        finally:
            with self.cond:
                self.out = None
                self.status = 0
                self.cond.notify_all()

    def wait(self, timeout):
        """waitForCommand(oneShot=True): one wait of at most timeout -> finished."""
        with self.cond:
            if self.status == 1:
                self.cond.wait(timeout)
            return self.status == 0

    def wait_done(self):
        with self.cond:
            while self.status == 1:
                self.cond.wait(1.0)

    def shutdown(self):
        with self.cond:
            self.out = self.arg = None
            self.kill = True
            self.status = 0
            self.cond.notify_all()


class Throttle:
    """The 2024 per-user rate limit (JAliEnCOMMander.incrementCommandCount): per
    certificate subject a login adds 10, a command and a logout 1; once DECAY_TIME has
    passed since the last halving, the next increment halves every count; a command
    whose count is above 100 first sleeps (count - 100) ms. service.json "throttle_scale"
    scales the sleep and the decay time alike (tests), "throttle_start" is the count a
    subject starts from."""

    DECAY_TIME = 300.0

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.next_swap = None

    def add(self, subject, delta, conf):
        scale = float(conf.get('throttle_scale') or 1.0)
        with self.lock:
            now = time.monotonic()
            if self.next_swap is None:
                self.next_swap = now + self.DECAY_TIME * scale
            if subject not in self.counts:
                self.counts[subject] = int(conf.get('throttle_start') or 0)
            self.counts[subject] += delta
            value = self.counts[subject]
            if now > self.next_swap:
                for k in self.counts:
                    self.counts[k] //= 2
                self.next_swap = now + self.DECAY_TIME * scale
            return value

    def sleep(self, subject, delta, conf):
        value = self.add(subject, delta, conf)
        if value > 100:
            time.sleep((value - 100) / 1000.0 * float(conf.get('throttle_scale') or 1.0))


def make_ssl_context(host_cert, host_key, ca_file):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca_file)
    ctx.load_cert_chain(host_cert, host_key)
    return ctx


def _drop(connection):
    """Close the TCP connection without a word."""
    try:
        connection.socket.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.socket.close()


def build_server(grid, port, host_cert, host_key, host='127.0.0.1'):
    ctx = make_ssl_context(host_cert, host_key, grid.pki.ca_cert)

    def identify(connection):
        cert = connection.socket.getpeercert() or {}
        dn = dn_oneline(cert.get('subject', ()))
        return cert, dn, grid.user_for_dn(dn)

    def process_request(connection, request):
        path = request.path.split('?', 1)[0]
        if path != '/websocket/json':   # the text endpoint /websocket/plain is not offered
            return connection.respond(404, 'Not found\n')
        cert, dn, user = identify(connection)
        if user is None:
            grid.log('401 for DN %s' % dn)
            return connection.respond(401, 'Unauthorized: certificate DN %s is not mapped\n'
                                      % dn)
        return None

    def handler(connection):
        cert, dn, user = identify(connection)
        peer = connection.remote_address[0] if connection.remote_address else ''
        sess = Session(grid, user, dn, cert, peer)
        cm = Commander(sess)
        send_lock = threading.Lock()
        dropped = []

        def drop():     # fault injection: the connection ends here, nothing more is read
            dropped.append(True)
            _drop(connection)
        sess.drop_connection = drop
        grid.log('connect %s as %s from %s' % (dn, user, peer))
        conf = grid.service()
        if conf.get('throttle') and sess.throttled:
            grid.throttle.add(sess.subject, 10, conf)    # the login
        handoff = float(conf.get('handoff', 1.0))

        def send(text):
            try:
                with send_lock:
                    connection.send(text)
            except ConnectionClosed:
                pass

        def return_result():
            with send_lock:      # WSMessageHandler.returnResult: send the stream, then reset it
                text = ''.join(cm.stream)
                del cm.stream[:]
                try:
                    connection.send(text)
                except ConnectionClosed:
                    pass

        def late_result():
            cm.wait_done()
            return_result()

        try:
            while True:
                idle = grid.idle_timeout()
                try:
                    msg = connection.recv(timeout=idle)
                except TimeoutError:
                    grid.log('idle for %s s: closing' % idle)
                    connection.close(1013, 'Session timed out')
                    return
                except ConnectionClosed:
                    return
                if dropped:
                    return
                if isinstance(msg, bytes):
                    msg = msg.decode('utf-8', 'replace')
                grid.log('recv %.200s' % msg)
                try:
                    kind, what = sess.parse(msg)
                except Drop:
                    grid.log('drop connection after %.200s' % msg)
                    _drop(connection)
                    return
                if kind == 'reply':
                    send(what)
                    continue
                if kind == 'close':
                    send('')
                    connection.close(1002)     # protocol error, as both code bases close it
                    return
                cm.set_line(cm.writer, what)
                if cm.wait(handoff):
                    return_result()
                else:                # the command goes on; its reply comes from another thread
                    threading.Thread(target=late_result, daemon=True).start()
        finally:
            cm.shutdown()
            if conf.get('throttle') and sess.throttled:
                grid.throttle.add(sess.subject, 1, conf)   # the logout

    server = serve(handler, host, port, ssl=ctx, process_request=process_request,
                   ping_interval=None, max_size=64 * 2 ** 20, compression='deflate',
                   server_header='JAliEn-testgrid/%s' % SERVER_VERSION)
    return server


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workdir', required=True)
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--host-cert')
    ap.add_argument('--host-key')
    a = ap.parse_args(argv)
    workdir = os.path.abspath(a.workdir)
    with open(os.path.join(workdir, 'config.json')) as f:
        config = json.load(f)
    grid = Grid(workdir, config)
    server = build_server(grid, a.port, a.host_cert or grid.pki.host_cert,
                          a.host_key or grid.pki.host_key)

    def on_term(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    grid.log('listening on 127.0.0.1:%d' % a.port)
    # readiness proof for grid.py: written only once the port is bound by us
    rundir = os.path.join(workdir, 'run')
    os.makedirs(rundir, exist_ok=True)
    pidfile = os.path.join(rundir, 'jcentral-%d.pid' % a.port)
    with open(pidfile + '.tmp', 'w') as f:
        f.write('%d\n' % os.getpid())
    os.replace(pidfile + '.tmp', pidfile)
    try:
        server.serve_forever()
    finally:
        try:
            os.unlink(pidfile)
        except OSError:
            pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
