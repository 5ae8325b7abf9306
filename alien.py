#!/usr/bin/env python3
"""alien.py - command-line client for the ALICE grid (JAliEn central services).

One self-contained module, standard library only at import time, Python 3.6+.
Optional packages are imported lazily by the commands that need them:
XRootD (PyPI ``xrootd``) for cp and the file commands, gfal2 (Debian
``python3-gfal2``) for ``alien.py gfal ...``, ``websocket-client`` as an
alternative transport (ALIENPY_TRANSPORT=websocket-client).

Embedding (batch wrappers)::

    import alien
    s = alien.Session()             # or Session(environ={...}); connects lazily
    r = s.run('ls -l /alice/')      # -> Result
    r.exitcode                      # int, 0 = success (the process exit code)
    r.out, r.err                    # printed text: stdout on success, stderr otherwise
    r.results                       # list of dicts, one per reply row (all values str)
    s.run('cd /alice/; ls')         # chains; the cwd lives in the session (s.cwd)
    s.request('stat', ['-nomsg', '/alice/x'])   # one server command, raw rows
    s.close()

Session.run applies ~/.alienpy_aliases like the shell (set s.aliases = {} to
turn that off); output of '!cmd' and 'cmd | shellcmd' goes to the real stdout.
No arguments start the interactive shell (readline history in ~/.alienpy_history,
tab completion, last directory restored from ~/.alienpy_session).
"""

import base64
import collections
import errno
import hashlib
import itertools
import json
import os
import re
import shlex
import socket
import ssl
import stat as stat_mod
import struct
import sys
import threading
import time

VERSION = '0.1.0'

# the embedding API (see the docstring); everything else may change
__all__ = ['Session', 'Result', 'AlienError', 'ConnectionLost', 'main', 'VERSION']


# ==========================================================================
# Helpers used everywhere: errors, exit codes, results, bounded input, terminal-safe output, logging
# ==========================================================================

# Exit codes (documented in the README).
EX_GENERIC = 1
EX_ENOENT = 2
EX_EIO = 5
EX_EINVAL = 22
EX_ENOMSG = 42
EX_USAGE = 64
EX_EMPTY_REPLY = 70
EX_NOTCONN = 107
EX_EREMOTEIO = 121
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
    __slots__ = ('exitcode', '_out', 'err', 'results', 'metadata', 'as_json', 'raw', 'style')

    def __init__(self, exitcode=0, out='', err='', results=None, metadata=None):
        self.exitcode = exitcode
        self._out = out       # None: joined from the results' messages when first asked for
        self.err = err
        self.results = results if results is not None else []
        self.metadata = metadata if metadata is not None else {}
        self.as_json = False  # print the whole reply as JSON
        self.raw = None       # the reply text as received
        self.style = ''       # how out reaches a terminal: '' escaped, 'colour' service SGR kept, 'raw' as is

    def __repr__(self):
        return 'Result(exitcode=%r, out=%r, err=%r)' % (self.exitcode, self.out, self.err)

    def messages(self):
        """The `message` of each result row (rows may be compact: the message itself)."""
        for r in self.results:
            if isinstance(r, str):
                yield r
            elif 'message' in r:
                yield str(r['message'])

    @property
    def out(self):
        """What the command prints: the messages joined by newlines, stripped."""
        if self._out is None:
            self._out = '\n'.join(self.messages()).strip()
        return self._out

    @out.setter
    def out(self, value):
        self._out = value


class LazyRegex(object):
    """re.compile(pattern, flags) at the first use: compiling the module's twenty patterns at
    import costs ~3 ms of every start. Then the pattern's methods sit in the instance (as fast)."""

    def __init__(self, pattern, flags=0):
        self._args = (pattern, flags)

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        value = self.__dict__[name] = getattr(re.compile(*self._args), name)
        return value


# ---- untrusted input and output: bounded JSON, terminal-safe text ----------
# Everything from the network or from user files is parsed with bounds (nesting, size, count),
# and every text that reaches a terminal goes through term_text(): control characters escaped.

JSON_MAX_DEPTH = 64          # replies nest 3 deep, gfal jobs 4: far more than any real document
INPUT_MAX_BYTES = 16 << 20   # -input files, gfal jobs: 16 MiB
INPUT_MAX_LINES = 1000000    # lines of a -input file
SETTINGS_MAX_BYTES = 1 << 20  # ~/.alienpy_aliases, ~/.alienpy_session
ALIAS_MAX = 1000             # aliases read from ~/.alienpy_aliases
LINE_MAX_ELEMENTS = 10000    # commands in one chain after alias expansion
_JSON_NOISE = bytes(i for i in range(256) if i not in b'[]{}"')   # all but brackets and quotes
_JSON_STRING = LazyRegex(rb'"[^"]*"')
_JSON_SLICE = 1 << 20
_JSON_LEVEL = {ord('['): 1, ord('{'): 1, ord(']'): -1, ord('}'): -1}


class JsonTooDeep(ValueError):
    """A JSON text nests deeper than JSON_MAX_DEPTH."""


def json_too_deep(text, limit=JSON_MAX_DEPTH):
    """True when the JSON text nests arrays/objects (brackets in strings aside) more than limit
    levels deep. C-speed byte operations only (~1 ns a character): escapes, then all but brackets
    and quotes, then strings dropped; flat documents end after a few passes removing innermost
    pairs, others get their exact depth from a running sum."""
    if len(text) <= 2 * limit:
        return False
    if '\\' in text:
        text = text.replace('\\\\', '').replace('\\"', '')   # escaped backslashes, then escaped quotes
    # a slice at a time: the bytes of a 10 MB reply are never all in memory at once
    t = b''.join(text[i:i + _JSON_SLICE].encode('utf-8', 'surrogatepass').translate(None, _JSON_NOISE)
                 for i in range(0, len(text), _JSON_SLICE))
    if b'"' in t:
        t = t.replace(b'""', b'')   # empty strings, or two strings with nothing between
        if b'"' in t:
            t = _JSON_STRING.sub(b'', t)
    brackets = t = t.replace(b'"', b'')     # (a quote left over: not JSON, json.loads says so)
    for _ in range(min(4, limit // 2)):   # each pass removes one or two levels: flat documents end here
        t = t.replace(b'{}', b'').replace(b'[]', b'')
        if not t:
            return False
    return bool(brackets) and max(itertools.accumulate(map(_JSON_LEVEL.__getitem__, brackets))) > limit


def load_json(text, **kw):
    """The one JSON parser (replies, jobs): json.loads with JsonTooDeep (a ValueError) beyond
    JSON_MAX_DEPTH levels, ValueError when it is not JSON; never RecursionError."""
    if json_too_deep(text):
        raise JsonTooDeep('nested more than %d levels deep' % JSON_MAX_DEPTH)
    try:
        return json.loads(text, **kw)
    except RecursionError:
        raise JsonTooDeep('nested too deep')


def read_text_limited(source, limit):
    """UTF-8 text of a file (path) or stream, at most limit bytes read: ValueError beyond, or not UTF-8."""
    if isinstance(source, str):
        with open(source, 'rb') as f:
            data = f.read(limit + 1)
    else:
        data = getattr(source, 'buffer', source).read(limit + 1)
    if len(data) > limit:
        raise ValueError('larger than %s' % human_bytes(limit))
    return data if isinstance(data, str) else data.decode('utf-8')


_CTRL = LazyRegex('[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]')
_CTRL_OR_SGR = LazyRegex('\x1b\\[[0-9;]*m|[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]')
_SGR = LazyRegex('\x1b\\[[0-9;]*m')
_C_ESCAPES = {'\a': '\\a', '\b': '\\b', '\t': '\\t', '\n': '\\n', '\v': '\\v', '\f': '\\f', '\r': '\\r'}


def _visible_char(c):
    if c in _C_ESCAPES:
        return _C_ESCAPES[c]
    o = ord(c)
    if 0xdc80 <= o <= 0xdcff:     # an undecodable byte of a local name (surrogateescape)
        return '\\%03o' % (o - 0xdc00)
    if o < 0x80:
        return '\\%03o' % o
    return ''.join('\\%03o' % b for b in c.encode('utf-8', 'surrogatepass'))


def visible(text, keep_sgr=False, newlines=False):
    """text with control characters (C0 but tab/newline, DEL, C1) and undecodable bytes as C
    escapes, like GNU ls -b: ESC -> \\033, CR -> \\r, byte 0xff -> \\377. keep_sgr keeps colour
    codes (ESC [ digits ; m); newlines=True escapes newlines and tabs too (a name on one line)."""
    rx = _CTRL_OR_SGR if keep_sgr else _CTRL
    if newlines:
        text = text.replace('\t', '\\t').replace('\n', '\\n')
    if rx.search(text) is None:
        return text
    return rx.sub(lambda m: m.group(0) if len(m.group(0)) > 1 else _visible_char(m.group(0)), text)


def term_text(text, stream, colour=False):
    """The one sanitiser of untrusted text bound for stream. On a terminal control characters
    are escaped (visible()), SGR colour codes kept with colour (commands the service colours,
    e.g. listSEs) unless NO_COLOR is set. Off a terminal the bytes go as they are, colours removed."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    keep = colour and tty and not os.environ.get('NO_COLOR')
    if colour and not keep and '\x1b' in text:
        text = _SGR.sub('', text)
    if not tty:
        return text
    text = visible(text, keep_sgr=keep)
    if keep and '\x1b' in text:
        text += '\x1b[0m'         # a colour left open by the service ends here
    return text


_LOG = {}


def log(message):
    """Debug log (ALIENPY_DEBUG; file ALIENPY_DEBUG_FILE, default ~/alien_py.log, owner-only)."""
    if not (env_flag('ALIENPY_DEBUG') or env_flag('ALIENPY_TIMING')):
        return
    f = _LOG.get('file')
    if f is None:
        path = os.environ.get('ALIENPY_DEBUG_FILE') or os.path.join(os.path.expanduser('~'), 'alien_py.log')
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if env_flag('ALIENPY_DEBUG_APPEND') else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o600)
            os.fchmod(fd, 0o600)  # also when the file was there before
            f = _LOG['file'] = os.fdopen(fd, 'a')
        except OSError:
            _LOG['file'] = f = open(os.devnull, 'w')
    f.write('%s %s\n' % (time.strftime('%Y%m%d%H%M%S'), message))
    f.flush()


_SECRET = LazyRegex(r'-----BEGIN ([A-Z0-9 ]+)-----.*?(-----END [A-Z0-9 ]+-----|$)', re.S)
_AUTHZ = LazyRegex(r'(authz=)[^&\s"]+')


def redact(text, limit=4000):
    """Log-safe text: PEM blocks (keys, certificates, envelopes), authz values as their length, long cut."""
    text = _SECRET.sub(lambda m: '<%s: %d chars>' % (m.group(1), len(m.group(0))), text)
    text = _AUTHZ.sub(lambda m: m.group(1) + '<%d chars>' % (len(m.group(0)) - 6), text)
    return text if len(text) <= limit else text[:limit] + '... <%d chars>' % len(text)


def log_exception():
    if env_flag('ALIENPY_DEBUG'):
        import traceback
        log(traceback.format_exc())


def _int_or_none(v, default=None):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def human_bytes(n):
    n = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return ('%d %s' % (n, unit)) if unit == 'B' else ('%.2f %s' % (n, unit))
        n /= 1024.0


def local_time(stamp, unixtime=False):
    """A unix time in s (10 digits) or ms (13) as local 'YYYY-mm-dd HH:MM:SS[.mmm]+zone' (no .000,
    as the reference prints whole seconds); anything else, or with unixtime, as it is."""
    text = str(stamp)
    if unixtime or not re.match(r'^[0-9]{10}([0-9]{3})?$', text):
        return text
    t = time.localtime(int(text[:10]))
    ms = '.' + text[10:] if len(text) > 10 and text[10:] != '000' else ''
    return time.strftime('%Y-%m-%d %H:%M:%S', t) + ms + time.strftime('%z', t)


def _utc(t):
    return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))


def print_error(text):
    if text:
        sys.stderr.write(term_text(text.rstrip('\n'), sys.stderr) + '\n')
        sys.stderr.flush()


def print_result(result):
    if env_flag('ALIENPY_JSONRAW') and result.raw is not None:
        sys.stdout.write(result.raw + '\n')
    elif result.as_json:
        if result.metadata:
            sys.stdout.write(json.dumps({'metadata': result.metadata, 'results': result.results},
                                        sort_keys=True, indent=2) + '\n')
        else:
            print_error('no JSON reply to print: this command runs in the client')
    elif result.exitcode == 0:
        write_lines(result)
    else:
        if result._out:   # a client command's report (e.g. which replicas failed)
            write_lines(result)
        print_error(result.err)
    sys.stdout.flush()


def write_lines(result, batch=4096):
    """Print result.out without building it: large listings go out in batches."""
    def safe(text):
        return text if result.style == 'raw' else term_text(text, sys.stdout, result.style == 'colour')
    if result._out is not None:
        if result._out:
            sys.stdout.write(safe(result._out) + '\n')
        return
    lines = list(result.messages())
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return
    lines[0], lines[-1] = lines[0].lstrip(), lines[-1].rstrip()
    for i in range(0, len(lines), batch):
        sys.stdout.write(safe('\n'.join(lines[i:i + batch])) + '\n')


def table_line(values, widths):
    """One line of a fixed-width table: each value padded to its printf field width (negative:
    left-aligned); the values beyond the widths (usually the last column) as they are."""
    return ''.join('%*s' % (w, v) for w, v in zip(widths, values)) + ''.join(str(v) for v in values[len(widths):])


def exit_status(code):
    """Process exit status of a command exit code (negative codes wrap like sys.exit)."""
    return code if 0 <= code <= 255 else (code & 0xFF) or 1


class TempDir(object):
    """The one temporary directory: private (mkdtemp: 0700), made at the first use of .path, removed
    with its content after the with-block unless .keep is set (edit's copy it could not upload)."""
    __slots__ = ('_prefix', '_dir', '_path', 'keep')

    def __init__(self, prefix, dir=None):
        self._prefix, self._dir, self._path, self.keep = prefix, dir, None, False

    @property
    def path(self):
        if self._path is None:
            import tempfile
            self._path = tempfile.mkdtemp(prefix=self._prefix, dir=self._dir)
        return self._path

    def subdir(self):
        """A fresh directory inside: several files of the same name side by side."""
        import tempfile
        return tempfile.mkdtemp(dir=self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._path is not None and not self.keep:
            import shutil
            shutil.rmtree(self._path, ignore_errors=True)


# ==========================================================================
# Configuration: the service's address, environment switches, settings files
# ==========================================================================

DEFAULT_HOST = 'alice-jcentral.cern.ch'
DEFAULT_PORT = 8097
WS_PATH = '/websocket/json'


# Server commands whose messages carry the service's own colour codes (SGR): kept on a terminal,
# removed in a pipe or with NO_COLOR. Other text from the network has its control characters escaped.
SERVICE_COLOUR_COMMANDS = ('listSEs', 'xrdstat', 'testSE', 'submit')


def env_number(environ, name, default, kind=float, what='a number of seconds'):
    """A number >= 0 from the environment (seconds by default); a one-line error otherwise."""
    value = environ.get(name, '').strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = -1
    if not number >= 0:
        raise AlienError('%s=%r is not %s' % (name, value, what), EX_EINVAL)
    return number


def tmpdir(environ):
    return environ.get('TMPDIR') or environ.get('TEMP') or environ.get('TMP') or '/tmp'


def parse_hostport(text, default_port):
    """'host', 'host:port', '[v6]:port', 'v6' -> (host, port)."""
    text = text.strip()
    if text.startswith('['):
        host, _, rest = text[1:].partition(']')
        port = rest[1:] if rest.startswith(':') else ''
    elif text.count(':') == 1:
        host, port = text.split(':')
    else:
        host, port = text, ''
    if port and not re.match(r'^[0-9]{1,5}$', port):
        raise AlienError('invalid port in endpoint %r' % text, EX_EINVAL)
    return host, int(port) if port else default_port


def _env_port(environ, name):
    value = environ.get(name, '')
    if not value:
        return DEFAULT_PORT
    if not re.match(r'^[0-9]{1,5}$', value.strip()):
        raise AlienError('%s=%r is not a port number' % (name, value), EX_EINVAL)
    return int(value)


def jbox_endpoint(environ):
    """(host, port) of a running local JBox from $TMPDIR/jclient_token_<uid>, or None."""
    path = os.path.join(tmpdir(environ), 'jclient_token_%d' % os.getuid())
    try:
        with open(path) as f:
            conf = dict(line.strip().split('=', 1) for line in f if '=' in line)
        pid = int(conf.get('JALIEN_PID', '0'))
        with open('/proc/%d/status' % pid) as f:
            uid_line = [line for line in f if line.startswith('Uid:')]
        if not uid_line or int(uid_line[0].split()[1]) != os.getuid():
            return None
        return conf.get('JALIEN_HOST', 'localhost'), int(conf.get('JALIEN_WSPORT', DEFAULT_PORT))
    except (OSError, ValueError, IndexError):
        return None


def endpoints(environ):
    """Endpoints in order: ALIENPY_JCENTRAL alone, else JALIEN_HOST/JALIEN_WSPORT, a JBox, the default."""
    if environ.get('ALIENPY_JCENTRAL'):
        return [parse_hostport(environ['ALIENPY_JCENTRAL'], _env_port(environ, 'ALIENPY_JCENTRAL_PORT'))]
    found = []
    if environ.get('JALIEN_HOST'):
        found.append((environ['JALIEN_HOST'], _env_port(environ, 'JALIEN_WSPORT')))
    jbox = jbox_endpoint(environ)
    if jbox:
        found.append(jbox)
    found.append((DEFAULT_HOST, DEFAULT_PORT))
    return found


def ascii_host(host):
    """A host name as bytes when it is plain ASCII: socket and ssl then take it as
    it is, while a str makes them load the IDNA codec (about 2 ms of every start)."""
    try:
        return host.encode('ascii')
    except UnicodeEncodeError:
        return host


def proxy_for(host, environ, scheme='https'):
    """(proxy_host, proxy_port, 'user:pass' or None) from https_proxy/HTTPS_PROXY (http_proxy/
    HTTP_PROXY for scheme 'http'); None without a proxy or when no_proxy/NO_PROXY exempts host."""
    url = environ.get(scheme + '_proxy') or environ.get(scheme.upper() + '_PROXY') or ''
    if not url:
        return None
    exempt = environ.get('no_proxy') or environ.get('NO_PROXY') or ''
    h = host.lower().strip('[]')
    for item in exempt.replace(' ', ',').split(','):
        item = item.strip().lower()
        bare = item.lstrip('*')
        if item and (item == '*' or h == bare.lstrip('.') or (bare.startswith('.') and h.endswith(bare))
                     or h.endswith('.' + bare)):
            return None
    m = re.match(r'^(?:[a-zA-Z][a-zA-Z0-9+.-]*://)?(?:([^@/]*)@)?([^/]+?)/?$', url.strip())
    if not m:
        raise AlienError('cannot parse https_proxy=%r' % url, EX_EINVAL)
    phost, pport = parse_hostport(m.group(2), 3128)
    return phost, pport, m.group(1)


def user_agent(environ):
    """User-Agent of every connection (websocket and HTTP); names the grid job inside one."""
    agent = 'alien.py/%s Python/%s' % (VERSION, sys.version.split()[0])
    if environ.get('ALIEN_PROC_ID'):  # inside a grid job
        agent += ' jobid/%s' % environ['ALIEN_PROC_ID']
        if environ.get('ALIEN_MASTERJOB_ID'):
            agent += ' masterjobid/%s' % environ['ALIEN_MASTERJOB_ID']
    return agent


def user_file(environ, name):
    """~/name for the user of this session (HOME of its environment)."""
    home = environ.get('HOME') or os.path.expanduser('~')
    return os.path.join(home, name)


def read_settings(path):
    """[(key, value)] of a settings file (parse_settings); a missing file is
    empty, an oversized or non-UTF-8 one is ignored with a one-line notice."""
    try:
        return parse_settings(read_text_limited(path, SETTINGS_MAX_BYTES))
    except OSError:
        return []
    except ValueError as e:
        print_error('alien.py: %s ignored: %s' % (path, e))
        return []


def parse_settings(text):
    """[(key, value)] of 'key = value' lines ('#': a comment line), a value's one pair of quotes removed."""
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#') or '=' not in line:
            continue
        key, _, value = line.partition('=')
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in '"\'':
            value = value[1:-1]
        if key and not any(c.isspace() for c in key):
            pairs.append((key, value))
    return pairs


# ==========================================================================
# Credentials and TLS
# ==========================================================================
# Which certificate to present (token first, user certificate otherwise), where
# the CAs are, and an ssl.SSLContext that always verifies the server chain.

VALIDITY_MARGIN = 600  # seconds a certificate must still be valid to be used
CA_DIRS = ('/cvmfs/alice.cern.ch/etc/grid-security/certificates',
           '/etc/grid-security/certificates')
_TEMP_FILES = []  # PEM contents from the environment written to files; removed at exit


def _cleanup_temp_files():
    while _TEMP_FILES:
        try:
            os.unlink(_TEMP_FILES.pop())
        except OSError:
            pass


def credential_paths(environ):
    """(token_cert, token_key, user_cert, user_key) as the environment names them."""
    uid = os.getuid()
    tmp = tmpdir(environ)
    globus = os.path.join(os.path.expanduser('~'), '.globus')
    return (environ.get('JALIEN_TOKEN_CERT') or os.path.join(tmp, 'tokencert_%d.pem' % uid),
            environ.get('JALIEN_TOKEN_KEY') or os.path.join(tmp, 'tokenkey_%d.pem' % uid),
            os.path.expanduser(environ.get('X509_USER_CERT') or os.path.join(globus, 'usercert.pem')),
            os.path.expanduser(environ.get('X509_USER_KEY') or os.path.join(globus, 'userkey.pem')))


def is_pem_content(value):
    return value.lstrip().startswith('-----BEGIN ')


def materialize_pem(value, kind):
    """A path stays a path; PEM contents become an owner-only temp file (removed at exit)."""
    if not is_pem_content(value):
        return value
    import tempfile
    fd, path = tempfile.mkstemp(prefix='%s_%d_' % (kind, os.getuid()), suffix='.pem')  # 0600
    with os.fdopen(fd, 'w') as f:
        f.write(value.strip() + '\n')
    if not _TEMP_FILES:
        import atexit
        atexit.register(_cleanup_temp_files)
    _TEMP_FILES.append(path)
    return path


# ---- certificates: a small DER reader (the ssl module has no public parser) ----
# X.509 certificates read from their DER bytes: names, validity, public key, extensions. Chain checks
# (cert-verify) verify RSA (PKCS#1 v1.5) and ECDSA (P-256, P-384) with integers and hashlib.

class CertError(ValueError):
    """A file that holds no readable X.509 certificate."""


def der_tlv(data, pos=0):
    """One DER element at pos -> (tag, content start, end)."""
    if pos + 2 > len(data):
        raise CertError('truncated DER')
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1f == 0x1f:
        raise CertError('multi-byte DER tag')
    if n & 0x80:
        k = n & 0x7f
        if not 1 <= k <= 4 or pos + k > len(data):
            raise CertError('bad DER length')
        n = int.from_bytes(data[pos:pos + k], 'big')
        pos += k
    if pos + n > len(data):
        raise CertError('truncated DER')
    return tag, pos, pos + n


def der_items(data, start=0, end=None):
    """The elements between start and end -> [(tag, content start, end, element start)]."""
    end = len(data) if end is None else end
    out = []
    while start < end:
        tag, s, e = der_tlv(data, start)
        out.append((tag, s, e, start))
        start = e
    return out


def der_oid(body):
    if not body:
        raise CertError('empty OID')
    first = body[0] // 40 if body[0] < 80 else 2
    parts, v = [first, body[0] - 40 * first], 0
    for b in body[1:]:
        v = (v << 7) | (b & 0x7f)
        if not b & 0x80:
            parts.append(v)
            v = 0
    return '.'.join(str(p) for p in parts)


def der_time(tag, body):
    """UTCTime / GeneralizedTime (Z) -> seconds since the epoch (computed here:
    calendar and time.strptime cost milliseconds of imports at every start)."""
    s = body.decode('ascii', 'replace').rstrip('Z')
    if tag == 0x17:
        s = ('19' if s[:2].isdigit() and int(s[:2]) >= 50 else '20') + s
    elif tag != 0x18:
        raise CertError('bad time')
    if len(s) < 14 or not s[:14].isdigit():
        raise CertError('bad time %r' % s)
    y, mo, d, h, mi, sec = (int(s[a:b]) for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)))
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and sec <= 60):
        raise CertError('bad time %r' % s)
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec


def days_from_civil(y, m, d):
    """Days from 1970-01-01 to the proleptic Gregorian date y-m-d."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


_DN_NAMES = {'2.5.4.3': 'CN', '2.5.4.7': 'L', '2.5.4.8': 'ST', '2.5.4.10': 'O', '2.5.4.11': 'OU',
             '2.5.4.6': 'C', '2.5.4.9': 'STREET', '0.9.2342.19200300.100.1.25': 'DC',
             '0.9.2342.19200300.100.1.1': 'UID'}
_DER_STRINGS = {0x0c: 'utf-8', 0x13: 'latin-1', 0x14: 'latin-1', 0x16: 'latin-1', 0x1a: 'latin-1',
                0x1e: 'utf-16-be', 0x1c: 'utf-32-be'}


def der_name(data, start, end):
    """Name -> [[(oid, value tag, value bytes, value element bytes)], ...] (one list per RDN)."""
    def attribute(s, e):
        (_o, os_, oe, _), (vt, vs, ve, vh) = der_items(data, s, e)[:2]
        return der_oid(data[os_:oe]), vt, data[vs:ve], data[vh:ve]
    return [[attribute(s2, e2) for _t2, s2, e2, _h2 in der_items(data, s, e)]
            for _t, s, e, _h in der_items(data, start, end)]


def _dn_value(oid, tag, value, element):
    enc = _DER_STRINGS.get(tag)
    if enc is None or oid not in _DN_NAMES:  # RFC 4514: other types as #hex of the DER value
        return '#' + element.hex()
    v = value.decode(enc, 'replace')
    for c in '\\"+,;<>':
        v = v.replace(c, '\\' + c)
    v = v.replace('\0', '\\00')
    if v[:1] in ('#', ' '):
        v = '\\' + v
    if v.endswith(' ') and not v.endswith('\\ '):
        v = v[:-1] + '\\ '
    return v


def dn_text(rdns):
    """Name in the reference client's form: RFC 4514 attributes in certificate
    order joined by '/', without a leading '/' ('C=CH/O=JAliEn/CN=jalien')."""
    return '/'.join('+'.join('%s=%s' % (_DN_NAMES.get(oid, oid), _dn_value(oid, tag, value, el))
                             for oid, tag, value, el in rdn) for rdn in rdns)


class Cert(object):
    """One parsed X.509 certificate."""

    def __init__(self, der):
        self.der = der
        try:
            _t, s, e = der_tlv(der)
            (tt, ts, te, th), (_a, as_, ae, _), (_b, bs, be, _) = der_items(der, s, e)[:3]
            self.tbs = der[th:te]
            self.sig_alg = der_oid(der[slice(*der_items(der, as_, ae)[0][1:3])])
            self.signature = der[bs + 1:be]  # BIT STRING without its unused-bits byte
            fields = der_items(der, ts, te)
            if fields[0][0] == 0xa0:       # [0] version
                fields = fields[1:]
            self.serial = int.from_bytes(der[fields[0][1]:fields[0][2]], 'big')
            issuer, validity, subject, spki = fields[2], fields[3], fields[4], fields[5]
            self.issuer_der = der[issuer[3]:issuer[2]]
            self.subject_der = der[subject[3]:subject[2]]
            self.issuer = der_name(der, issuer[1], issuer[2])
            self.subject = der_name(der, subject[1], subject[2])
            (t1, s1, e1, _), (t2, s2, e2, _) = der_items(der, validity[1], validity[2])[:2]
            self.not_before, self.not_after = der_time(t1, der[s1:e1]), der_time(t2, der[s2:e2])
            (_k, ks, ke, _), (_p, ps, pe, _) = der_items(der, spki[1], spki[2])[:2]
            alg = der_items(der, ks, ke)
            self.key_alg = der_oid(der[alg[0][1]:alg[0][2]])
            self.key_param = der_oid(der[alg[1][1]:alg[1][2]]) if len(alg) > 1 and alg[1][0] == 0x06 else ''
            self.key = der[ps + 1:pe]
            self.extensions = {}
            for tag, xs, xe, _h in fields[6:]:
                if tag != 0xa3:
                    continue
                for _x, es, ee, _ in der_items(der, *der_items(der, xs, xe)[0][1:3]):
                    parts = der_items(der, es, ee)
                    critical = len(parts) == 3 and der[parts[1][1]:parts[1][2]] != b'\x00'
                    self.extensions[der_oid(der[parts[0][1]:parts[0][2]])] = (critical, der[parts[-1][1]:parts[-1][2]])
        except (IndexError, ValueError, TypeError) as e:
            raise CertError('not an X.509 certificate (%s)' % e)

    def is_ca(self):
        """basicConstraints cA = TRUE."""
        bc = self.extensions.get('2.5.29.19')
        if not bc:
            return False
        items = der_items(bc[1], *der_tlv(bc[1])[1:])
        return bool(items) and items[0][0] == 0x01 and bc[1][items[0][1]:items[0][2]] != b'\x00'

    def is_proxy(self):
        """An RFC 3820 proxy certificate (or a legacy Globus proxy: CN=proxy)."""
        return '1.3.6.1.5.5.7.1.14' in self.extensions or (
            self.subject[:-1] == self.issuer and self.subject[-1][0][0] == '2.5.4.3')


_PEM_CERT = LazyRegex(rb'-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----\s*(.*?)-----END', re.S)


def read_certs(path):
    """Every certificate in a PEM file -> [Cert] (CertError if there is none)."""
    with open(path, 'rb') as f:
        data = f.read()
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise CertError('%s holds no PEM certificate' % path)
    try:
        return [Cert(base64.b64decode(b''.join(b.split()), validate=True)) for b in blocks]
    except ValueError as e:
        raise CertError('%s: not a readable certificate (%s)' % (path, e))


def cert_info(path):
    """The first certificate of a PEM file -> Cert, or None if there is none."""
    try:
        return read_certs(path)[0]
    except (OSError, CertError):
        return None


def cert_seconds_left(path, now=None):
    info = cert_info(path)
    return None if info is None else info.not_after - (time.time() if now is None else now)


def der_encode(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, 'big')
    return bytes([tag, 0x80 | len(size)]) + size + body


def name_hash(rdns):
    """OpenSSL's subject hash (<hash>.0 in a CA directory): the first 4 bytes, little endian, of the
    SHA-1 of the canonical name (strings as UTF8String, lower case, blanks trimmed and collapsed)."""
    out = b''
    for rdn in rdns:
        attrs = b''
        for oid, tag, value, element in rdn:
            enc = _DER_STRINGS.get(tag)
            if enc is not None:
                text = ' '.join(value.decode(enc, 'replace').split(None))
                text = ''.join(c.lower() if c < '\x80' else c for c in text)
                element = der_encode(0x0c, text.encode('utf-8'))
            attrs += der_encode(0x30, _oid_der(oid) + element)
        out += der_encode(0x31, attrs)
    return '%08x' % int.from_bytes(hashlib.sha1(out).digest()[:4], 'little')


def _oid_der(oid):
    parts = [int(x) for x in oid.split('.')]
    body = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7f]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7f))
            p >>= 7
        body += bytes(reversed(chunk))
    return der_encode(0x06, body)


# signature algorithm OID -> (key type, hashlib name)
_SIG_ALGS = {'1.2.840.113549.1.1.5': ('rsa', 'sha1'), '1.2.840.113549.1.1.14': ('rsa', 'sha224'),
             '1.2.840.113549.1.1.11': ('rsa', 'sha256'), '1.2.840.113549.1.1.12': ('rsa', 'sha384'),
             '1.2.840.113549.1.1.13': ('rsa', 'sha512'), '1.2.840.10045.4.1': ('ec', 'sha1'),
             '1.2.840.10045.4.3.2': ('ec', 'sha256'), '1.2.840.10045.4.3.3': ('ec', 'sha384'),
             '1.2.840.10045.4.3.4': ('ec', 'sha512')}
_HASH_OIDS = {'sha1': '1.3.14.3.2.26', 'sha224': '2.16.840.1.101.3.4.2.4', 'sha256': '2.16.840.1.101.3.4.2.1',
              'sha384': '2.16.840.1.101.3.4.2.2', 'sha512': '2.16.840.1.101.3.4.2.3'}
# NIST curves: OID -> (p, a, b, Gx, Gy, n)
_CURVES = {
    '1.2.840.10045.3.1.7': (
        0xffffffff00000001000000000000000000000000ffffffffffffffffffffffff, -3,
        0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b,
        0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,
        0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5,
        0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551),
    '1.3.132.0.34': (
        int('fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff', 16), -3,
        int('b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef', 16),
        int('aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7', 16),
        int('3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f', 16),
        int('ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973', 16)),
}


def _ec_add(P, Q, p, a):
    if P is None:
        return Q
    if Q is None:
        return P
    if P[0] == Q[0] and (P[1] + Q[1]) % p == 0:
        return None
    if P == Q:
        m = (3 * P[0] * P[0] + a) * pow(2 * P[1], p - 2, p) % p
    else:
        m = (Q[1] - P[1]) * pow(Q[0] - P[0], p - 2, p) % p
    x = (m * m - P[0] - Q[0]) % p
    return x, (m * (P[0] - x) - P[1]) % p


def _ec_mul(k, P, p, a):
    R = None
    while k:
        if k & 1:
            R = _ec_add(R, P, p, a)
        P = _ec_add(P, P, p, a)
        k >>= 1
    return R


def signed_by(cert, issuer):
    """True if issuer's public key verifies cert's signature (RSA PKCS#1 v1.5 or ECDSA)."""
    alg = _SIG_ALGS.get(cert.sig_alg)
    if alg is None:
        raise CertError('signature algorithm %s is not supported' % cert.sig_alg)
    kind, hname = alg
    digest = hashlib.new(hname, cert.tbs).digest()
    if kind == 'rsa':
        if issuer.key_alg != '1.2.840.113549.1.1.1':
            return False
        n_item, e_item = der_items(issuer.key, *der_tlv(issuer.key)[1:])[:2]
        n = int.from_bytes(issuer.key[n_item[1]:n_item[2]], 'big')
        e = int.from_bytes(issuer.key[e_item[1]:e_item[2]], 'big')
        k = (n.bit_length() + 7) // 8
        s = int.from_bytes(cert.signature, 'big')
        if s >= n:
            return False
        info = der_encode(0x30, der_encode(0x30, _oid_der(_HASH_OIDS[hname]) + b'\x05\x00') + der_encode(0x04, digest))
        expected = b'\x00\x01' + b'\xff' * (k - len(info) - 3) + b'\x00' + info
        return pow(s, e, n).to_bytes(k, 'big') == expected
    curve = _CURVES.get(issuer.key_param) if issuer.key_alg == '1.2.840.10045.2.1' else None
    if curve is None or issuer.key[:1] != b'\x04':
        return False
    p, a, _b, gx, gy, n = curve
    size = (len(issuer.key) - 1) // 2
    Q = (int.from_bytes(issuer.key[1:1 + size], 'big'), int.from_bytes(issuer.key[1 + size:], 'big'))
    r_item, s_item = der_items(cert.signature, *der_tlv(cert.signature)[1:])[:2]
    r = int.from_bytes(cert.signature[r_item[1]:r_item[2]], 'big')
    s = int.from_bytes(cert.signature[s_item[1]:s_item[2]], 'big')
    if not (0 < r < n and 0 < s < n):
        return False
    z = int.from_bytes(digest, 'big') >> max(0, len(digest) * 8 - n.bit_length())
    w = pow(s, n - 2, n)
    R = _ec_add(_ec_mul(z * w % n, (gx, gy), p, a), _ec_mul(r * w % n, Q, p, a), p, a)
    return R is not None and R[0] % n == r


def load_ca_store(kind, where):
    """CA certificates of a directory (every *.pem and <hash>.N file) or a file -> {subject DER: [Cert]}."""
    paths = [where]
    if kind == 'capath':
        try:
            names = sorted(os.listdir(where))
        except OSError:
            names = []
        unique = collections.OrderedDict()   # real path -> its first name (<hash>.0 links to a .pem)
        for name in names:
            full = os.path.join(where, name)
            if (name.endswith('.pem') or re.match(r'^[0-9a-f]{8}\.\d+$', name)) and os.path.isfile(full):
                unique.setdefault(os.path.realpath(full), full)
        paths = list(unique.values())
    store = {}
    for path in paths:
        try:
            certs = read_certs(path)
        except (OSError, CertError):
            continue
        for c in certs:
            store.setdefault(c.subject_der, []).append(c)
    return store


def verify_chain(path, kind, where, now=None):
    """Check the certificate in path (the file's further certificates are intermediates, e.g. a
    proxy's chain) up to a CA of kind/where (find_ca()): None when it verifies, else the reason."""
    now = time.time() if now is None else now
    chain = read_certs(path)
    store = load_ca_store(kind, where)
    if not store:
        return 'no CA certificates in %s' % where
    cur, trusted = chain[0], False
    for _depth in range(12):
        if now > cur.not_after:
            return '%s expired on %s' % (dn_text(cur.subject), _utc(cur.not_after))
        if now < cur.not_before:
            return '%s is not valid before %s' % (dn_text(cur.subject), _utc(cur.not_before))
        if trusted:
            return None
        anchors = store.get(cur.issuer_der, [])
        if any(a.der == cur.der for a in anchors):
            return None  # the certificate is itself one of the CAs
        candidates = [(a, True) for a in anchors] + [(c, False) for c in chain[1:] if c.subject_der == cur.issuer_der]
        if not candidates:
            return 'issuer %s is not among the CAs in %s' % (dn_text(cur.issuer), where)
        for issuer, is_anchor in candidates:
            if signed_by(cur, issuer):
                break
        else:
            return 'the signature of %s does not verify with the key of %s' % (dn_text(cur.subject), dn_text(cur.issuer))
        if not issuer.is_ca() and not cur.is_proxy():
            return 'issuer %s is not a CA' % dn_text(issuer.subject)
        cur, trusted = issuer, is_anchor
    return 'certificate chain too long'


def token_problem(cert, key, now=None):
    """Why a cert/key pair cannot be used: None when it can (as far as the files tell: the key must
    still match, see JCentral._credentials), 'missing' when neither file is there, else a reason."""
    if not os.path.exists(cert) and not os.path.exists(key):
        return 'missing'
    for path in (cert, key):
        if not os.path.isfile(path):
            return '%s is missing' % path
        if not os.access(path, os.R_OK):
            return '%s is unreadable' % path
    left = cert_seconds_left(cert, now)
    if left is None:
        return '%s is not a certificate' % cert
    if left < VALIDITY_MARGIN:
        return 'it has expired' if left <= 0 else 'it expires within %d s' % VALIDITY_MARGIN
    return None


def choose_credentials(environ, want_user=False, now=None):
    """('token'|'user', cert, key): the token pair if usable (and not want_user), else the user pair."""
    tcert, tkey, ucert, ukey = credential_paths(environ)
    problem = ''
    if not want_user:
        tcert, tkey = materialize_pem(tcert, 'tokencert'), materialize_pem(tkey, 'tokenkey')
        problem = token_problem(tcert, tkey, now)
        if problem is None:
            return 'token', tcert, tkey
    if token_problem(ucert, ukey, now) is None:
        return 'user', ucert, ukey
    left = cert_seconds_left(ucert, now)   # (None also for a missing file)
    if left is not None and left < VALIDITY_MARGIN:
        raise AlienError('user certificate %s has expired (or expires within %d s) and no valid token was found'
                         % (ucert, VALIDITY_MARGIN), EX_NOTCONN)
    raise AlienError('no valid user certificate or token found (user cert: %s, key: %s; token: %s%s)'
                     % (ucert, ukey, tcert, '' if problem in ('', 'missing') else ': ' + problem), EX_NOTCONN)


# Token renewal is serialised across processes (a worker node starts many jobs at once): a flock
# on a file next to the token certificate. The holder fetches and writes the pair; the others wait for it.
TOKEN_LOCK_WAIT = 5.0
_TOKEN_LOCK = []   # the open lock file while this process is the one renewing


def lock_token(cert, wait=TOKEN_LOCK_WAIT):
    """Take the renewal lock (CERT.lock, owner-only): True when held within `wait`
    seconds, False when another process holds it longer, None when it cannot be
    made (no fcntl, read-only directory): renewal then goes on without it."""
    if _TOKEN_LOCK:
        return True
    try:
        import fcntl
        fd = os.open(cert + '.lock', os.O_RDWR | os.O_CREAT, 0o600)
    except (ImportError, OSError):
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _TOKEN_LOCK.append(fd)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(0.02)


def unlock_token():
    while _TOKEN_LOCK:
        os.close(_TOKEN_LOCK.pop())  # closing the file releases the flock


def write_token_pair(cert, key, cert_text, key_text):
    """Replace the token pair as a unit (write_private_files) under the renewal lock: a process
    reading it between the two renames finds it mismatched, waits for the lock, reads it again."""
    own = not _TOKEN_LOCK and lock_token(cert)   # token-init: not locked yet
    try:
        write_private_files([(key, key_text), (cert, cert_text)])
    finally:
        if own:
            unlock_token()


def check_key_permissions(key):
    """Refuse a private key that others may read (the grid CA's rule, and ssh's)."""
    try:
        mode = os.stat(key).st_mode
    except OSError as e:
        raise AlienError('cannot read key %s: %s' % (key, e.strerror), EX_NOTCONN)
    if mode & 0o077:
        raise AlienError('private key %s is readable by others (mode %o): run chmod 600 %s'
                         % (key, mode & 0o777, key), EX_NOTCONN)


def local_cas_dir(environ):
    """ALIENPY_USE_LOCAL_CAS's value if it is a directory, else ~/.globus/certificates (getCAcerts')."""
    value = os.path.expanduser(environ.get('ALIENPY_USE_LOCAL_CAS', ''))
    return value if value and os.path.isdir(value) else os.path.join(os.path.expanduser('~'), '.globus', 'certificates')


def find_ca(environ):
    """('capath'|'cafile', location) from ALIENPY_USE_LOCAL_CAS, X509_CERT_DIR, X509_CERT_FILE, CA_DIRS."""
    if environ.get('ALIENPY_USE_LOCAL_CAS'):
        local = local_cas_dir(environ)
        # as the reference client: the directory must hold getCAcerts' download
        if os.path.isfile(os.path.join(local, 'CERN-GridCA.pem')):
            return 'capath', local
        sys.stderr.write('alien.py: ALIENPY_USE_LOCAL_CAS is set but %s holds no CA certificates '
                         '(run: alien.py getCAcerts); looking further\n' % local)
    for kind, where in ([('capath', os.path.expanduser(environ.get('X509_CERT_DIR', ''))),
                         ('cafile', os.path.expanduser(environ.get('X509_CERT_FILE', '')))]
                        + [('capath', d) for d in CA_DIRS]):
        if where and (os.path.isfile if kind == 'cafile' else os.path.isdir)(where):
            return kind, where
    raise AlienError('no CA certificates found: set X509_CERT_DIR or X509_CERT_FILE, '
                     'or run getCAcerts and set ALIENPY_USE_LOCAL_CAS=1', EX_NOTCONN)


def ask_pass_phrase(key):
    """The pass phrase of an encrypted key: asked on the terminal without echo;
    without a terminal (batch jobs, tests) the first line of stdin, no prompt."""
    import getpass
    try:
        open('/dev/tty').close()
    except OSError:
        line = sys.stdin.readline() if sys.stdin is not None else ''
        if not line:
            raise AlienError('no pass phrase given for encrypted key %s' % key, EX_NOTCONN)
        return line.rstrip('\r\n')
    try:
        return getpass.getpass('Enter PEM pass phrase for %s: ' % key)
    except (EOFError, KeyboardInterrupt):
        raise AlienError('no pass phrase given for encrypted key %s' % key, EX_NOTCONN)


def make_tls_context(cert, key, environ):
    """TLS context, our certificate: server chain always verified, name unless ALIENPY_NO_VERIFY_HOSTNAME."""
    check_key_permissions(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = not env_flag('ALIENPY_NO_VERIFY_HOSTNAME', environ)
    kind, where = find_ca(environ)
    try:
        ctx.load_verify_locations(**{kind: where})   # capath= or cafile=
        # OpenSSL calls the password function only for an encrypted key, and once
        ctx.load_cert_chain(cert, key, password=lambda: ask_pass_phrase(key))
    except ssl.SSLError as e:
        raise AlienError('cannot load certificate %s / key %s: %s' % (cert, key, e.reason or e), EX_NOTCONN)
    except OSError as e:
        raise AlienError('cannot read credentials %s / %s: %s' % (cert, key, e.strerror), EX_NOTCONN)
    return ctx


def write_private_files(pairs, mode=0o400):
    """Write [(path, text)] as a unit: each staged in a temp file next to its target, owner-only
    from the first byte (created 0600, fsync, chmod mode), then all renamed one right after the
    other (nothing is replaced if one cannot be written)."""
    import tempfile
    staged = []
    try:
        for path, text in pairs:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                       prefix='.' + os.path.basename(path) + '.')
            staged.append((tmp, path))
            with os.fdopen(fd, 'w') as f:
                f.write(text if text.endswith('\n') else text + '\n')
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


class TLSError(AlienError):
    """A TLS failure: retrying the same endpoint cannot help (unless transient)."""
    transient = False


def tls_error(e, host):
    """One-line explanation of a TLS failure."""
    reason = getattr(e, 'reason', None) or str(e)
    text = str(e)
    if 'CERTIFICATE_VERIFY_FAILED' in text or reason == 'CERTIFICATE_VERIFY_FAILED':
        detail = getattr(e, 'verify_message', '') or reason
        if 'mismatch' in detail.lower() or "doesn't match" in text:
            return TLSError('TLS: the server certificate does not match the host name %s (%s); '
                              'ALIENPY_NO_VERIFY_HOSTNAME=1 skips this check' % (host, detail), EX_NOTCONN)
        return TLSError('TLS: cannot verify the server certificate of %s: %s (check X509_CERT_DIR)'
                          % (host, detail), EX_NOTCONN)
    if 'CERTIFICATE_UNKNOWN' in text or 'UNKNOWN_CA' in text or 'BAD_CERTIFICATE' in text or 'CERTIFICATE_EXPIRED' in text:
        return TLSError('TLS: the server rejected our certificate (%s)' % reason, EX_NOTCONN)
    e2 = TLSError('TLS handshake with %s failed: %s' % (host, reason), EX_NOTCONN)
    # cut off mid-handshake (a service going down or coming up): worth another try
    e2.transient = isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError))
    return e2


def worth_retrying(e):
    """The one retry rule: an unreachable service may come back; a refused credential, a TLS
    failure (other than a cut-off handshake) or any other error will not."""
    return e.exitcode == EX_NOTCONN and not (isinstance(e, TLSError) and not e.transient)


def tls_handshake(sock, ctx, host, port, timeout):
    """TLS over a connected socket (closed on failure) -> verified TLS socket; one-line errors (107)."""
    try:
        sock.settimeout(timeout)
        # Python 3.6 checks the name itself and needs it as str
        return ctx.wrap_socket(sock, server_hostname=ascii_host(host) if sys.version_info >= (3, 7) else host)
    except ssl.SSLError as e:
        sock.close()
        raise tls_error(e, host)
    except (OSError, socket.timeout) as e:
        sock.close()
        raise AlienError('TLS handshake with %s:%d failed: %s' % (host, port, e), EX_NOTCONN)


# ==========================================================================
# Transport: TCP (RFC 8305), HTTP proxies, WebSocket (RFC 6455)
# ==========================================================================
# Connect (RFC 8305 staggered), an HTTP proxy tunnel, then the websocket: pure codecs first (handshake,
# frames), then the connection. Every malformed input ends in WebSocketError, never in another exception.
REFUSED_401 = 'the service refused the certificate (HTTP 401): is it registered in the ALICE VO?'

WS_GUID = b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DEFAULT_MAX_MESSAGE = 1 << 30  # 1 GiB; ALIENPY_MAX_MESSAGE_MB changes it
MAX_HANDSHAKE = 64 * 1024


class WebSocketError(AlienError):
    """Protocol violation or lost connection on the websocket."""

    def __init__(self, message, exitcode=EX_NOTCONN, close_code=1002):
        super().__init__(message, exitcode)
        self.close_code = close_code


def ws_accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode('ascii') + WS_GUID).digest()).decode('ascii')


def build_handshake(host, port, path, key, headers=()):
    host_hdr = ('[%s]' % host) if ':' in host else host
    lines = ['GET %s HTTP/1.1' % path, 'Host: %s:%d' % (host_hdr, port), 'Upgrade: websocket',
             'Connection: Upgrade', 'Sec-WebSocket-Key: %s' % key, 'Sec-WebSocket-Version: 13']
    lines.extend('%s: %s' % kv for kv in headers)
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('ascii')


def parse_handshake_response(data, key):
    """Check the server's 101 reply (bytes up to the blank line) -> its headers (lower-case names)."""
    lines = data.decode('iso-8859-1').split('\r\n')   # (decodes every byte)
    parts = lines[0].split(' ', 2)
    if len(parts) < 2 or not parts[0].startswith('HTTP/1.') or not re.match(r'^[0-9]{3}$', parts[1]):
        raise WebSocketError('handshake: not an HTTP reply: %r' % lines[0][:80])
    status = int(parts[1])
    if status == 401:
        raise AlienError(REFUSED_401, EX_UNAUTHORIZED)
    if status != 101:
        raise WebSocketError('handshake: HTTP %d %s' % (status, parts[2] if len(parts) > 2 else ''))
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(':')
        if not sep:
            raise WebSocketError('handshake: malformed header line %r' % line[:80])
        headers[name.strip().lower()] = value.strip()
    if headers.get('upgrade', '').lower() != 'websocket' or \
            'upgrade' not in [t.strip() for t in headers.get('connection', '').lower().split(',')]:
        raise WebSocketError('handshake: the server did not upgrade to websocket')
    if headers.get('sec-websocket-accept') != ws_accept_key(key):
        raise WebSocketError('handshake: wrong Sec-WebSocket-Accept')
    if headers.get('sec-websocket-extensions'):
        raise WebSocketError('handshake: the server chose an extension we did not offer')
    return headers


def mask_payload(payload, mask):
    """XOR payload with the 4-byte mask (fast for any size: one big-int operation)."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, 'big') ^ int.from_bytes(key, 'big')).to_bytes(n, 'big')


def encode_frame(opcode, payload, fin=True, mask=None):
    """One client frame; mask=None draws a random mask (clients must mask)."""
    if mask is None:
        mask = os.urandom(4)
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += struct.pack('!BH', 0x80 | 126, n)
    else:
        head += struct.pack('!BQ', 0x80 | 127, n)
    return bytes(head) + mask + mask_payload(payload, mask)


def parse_frame(buf, offset=0, max_size=DEFAULT_MAX_MESSAGE):
    """Parse one server frame in buf[offset:]. Returns (fin, opcode, payload, next_offset)
    or None when more bytes are needed. Server frames must be unmasked."""
    avail = len(buf) - offset
    if avail < 2:
        return None
    b0, b1 = buf[offset], buf[offset + 1]
    if b0 & 0x70:
        raise WebSocketError('frame with reserved bits set (no extension negotiated)')
    if b1 & 0x80:
        raise WebSocketError('masked frame from the server')
    fin, opcode, n = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F
    pos = offset + 2
    if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise WebSocketError('unknown frame opcode %d' % opcode)
    if opcode >= 8 and (not fin or n > 125):
        raise WebSocketError('fragmented or oversized control frame')
    if n == 126:
        if avail < 4:
            return None
        n = struct.unpack_from('!H', buf, pos)[0]
        pos += 2
        if n < 126:
            raise WebSocketError('non-minimal frame length')
    elif n == 127:
        if avail < 10:
            return None
        n = struct.unpack_from('!Q', buf, pos)[0]
        pos += 8
        if n >> 63:
            raise WebSocketError('frame length with the most significant bit set')
        if n < 65536:
            raise WebSocketError('non-minimal frame length')
    if n > max_size:
        raise WebSocketError('message larger than the maximum of %d bytes' % max_size, close_code=1009)
    if len(buf) < pos + n:
        return None
    with memoryview(buf) as view:  # one copy of the payload, not two
        payload = bytes(view[pos:pos + n])
    return fin, opcode, payload, pos + n


def parse_close_payload(payload):
    """(code, reason) of a close frame."""
    if not payload:
        return 1005, ''
    if len(payload) == 1:
        raise WebSocketError('close frame with a 1-byte payload')
    code = struct.unpack('!H', payload[:2])[0]
    try:
        reason = payload[2:].decode('utf-8')
    except UnicodeDecodeError:
        raise WebSocketError('close reason is not UTF-8', close_code=1007)
    return code, reason


class MessageAssembler(object):
    """Fed bytes (feed), returns complete messages and control frames as events (next_event)."""

    def __init__(self, max_size=DEFAULT_MAX_MESSAGE):
        self.max_size, self.buf = max_size, bytearray()
        self.parts, self.size, self.opcode = [], 0, None   # the message being assembled

    def feed(self, data):
        self.buf += data

    def next_event(self):
        """('message', opcode, bytes) | ('ping'|'pong', payload) | ('close', code, reason) | None."""
        while True:
            frame = parse_frame(self.buf, 0, self.max_size)
            if frame is None:
                return None
            fin, opcode, payload, end = frame
            del self.buf[:end]
            if opcode in (OP_PING, OP_PONG):
                return ('ping' if opcode == OP_PING else 'pong', payload)
            if opcode == OP_CLOSE:
                return ('close',) + parse_close_payload(payload)
            if opcode == OP_CONT:
                if self.opcode is None:
                    raise WebSocketError('continuation frame without a message')
            elif self.opcode is not None:
                raise WebSocketError('new message before the previous one ended')
            else:
                self.opcode = opcode
            self.size += len(payload)
            if self.size > self.max_size:
                raise WebSocketError('message larger than the maximum of %d bytes' % self.max_size,
                                     close_code=1009)
            self.parts.append(payload)
            if fin:
                data = b''.join(self.parts)
                opcode, self.opcode, self.parts, self.size = self.opcode, None, [], 0
                return ('message', opcode, data)


class _Transport(object):
    """What both transports share: send_text, recv_text, ping, close, and this."""
    last_activity = 0.0
    closed = False
    deadline = None  # monotonic time after which a silent server is given up on, pings or not

    def _past_deadline(self):
        return self.deadline is not None and time.monotonic() >= self.deadline

    def set_timeout(self, seconds):
        """The keep-alive period from now on (see JCentral.timeout)."""
        (self.sock if hasattr(self, 'sock') else self.ws).settimeout(seconds)

    def alive(self, idle):
        """After `idle` seconds without traffic, check the connection with a ping."""
        if time.monotonic() - self.last_activity < idle:
            return True
        try:
            self.ping(b'idle-check')
            return True
        except WebSocketError:
            return False


class WebSocket(_Transport):
    """A client websocket over a connected (TLS) socket."""

    def __init__(self, sock, max_size=DEFAULT_MAX_MESSAGE):
        self.sock = sock  # its timeout is the keep-alive interval (ALIENPY_TIMEOUT)
        self.asm = MessageAssembler(max_size)
        self.last_activity = time.monotonic()
        self.ping_sent = False
        self.bufsize = 65536  # grows up to 4 MiB while replies keep filling it

    def handshake(self, host, port, path, headers=(), early=()):
        """The upgrade request and right behind it the text messages `early` (they wait in the
        server's buffer until it has upgraded): the first request does not wait for the 101."""
        key = base64.b64encode(os.urandom(16)).decode('ascii')
        self.sock.sendall(build_handshake(host, port, path, key, headers) +
                          b''.join(encode_frame(OP_TEXT, t.encode('utf-8')) for t in early))
        data = b''
        while b'\r\n\r\n' not in data:
            data += self._recv_raw(keepalive=False)
            if len(data) > MAX_HANDSHAKE:
                raise WebSocketError('handshake: reply headers too long')
        head, _, rest = data.partition(b'\r\n\r\n')
        parse_handshake_response(head, key)
        self.asm.feed(rest)

    def _recv_raw(self, keepalive=True):
        """Next bytes from the socket: a server silent for one timeout is pinged, for another it is dead."""
        while True:
            try:
                chunk = self.sock.recv(self.bufsize)
                break
            except socket.timeout:
                if not keepalive or self.ping_sent or self._past_deadline():
                    raise WebSocketError('no answer from the server for %.0f s (ALIENPY_TIMEOUT)'
                                         % (self.sock.gettimeout() or 0))
                self._send_frame(OP_PING, b'keepalive')
                self.ping_sent = True
            except (OSError, ssl.SSLError) as e:
                raise WebSocketError('connection lost: %s' % (getattr(e, 'strerror', None) or e))
        if not chunk:
            raise WebSocketError('connection closed by the server')
        self.last_activity = time.monotonic()
        self.ping_sent = False
        if len(chunk) >= self.bufsize and self.bufsize < (4 << 20):
            self.bufsize *= 2
        return chunk

    def _send_frame(self, opcode, payload):
        try:
            self.sock.sendall(encode_frame(opcode, payload))
        except socket.timeout:
            raise WebSocketError('timed out sending to the server')
        except (OSError, ssl.SSLError) as e:
            raise WebSocketError('connection lost while sending: %s' % (getattr(e, 'strerror', None) or e))
        self.last_activity = time.monotonic()

    def send_text(self, text):
        self._send_frame(OP_TEXT, text.encode('utf-8'))

    def ping(self, payload=b''):
        """Send a ping and wait for its pong; returns the round-trip time in seconds."""
        t0 = time.monotonic()
        self._send_frame(OP_PING, payload)
        while True:
            event = self._next_event(keepalive=False)
            if event[0] == 'pong' and event[1] == payload:
                return time.monotonic() - t0
            if event[0] == 'message':
                raise WebSocketError('unexpected message while waiting for a pong')

    def _next_event(self, keepalive=True):
        while True:
            try:
                event = self.asm.next_event()
            except WebSocketError as e:
                self.close(e.close_code)
                raise
            if event is None:
                self.asm.feed(self._recv_raw(keepalive))
            elif event[0] == 'ping':
                self._send_frame(OP_PONG, event[1])
            elif event[0] == 'close':
                self.close(1000)
                raise WebSocketError('the server closed the connection (code %d%s)'
                                     % (event[1], ': ' + event[2] if event[2] else ''))
            else:
                return event

    def recv_text(self):
        """Next text message as str (pings answered on the way)."""
        while True:
            event = self._next_event()
            if event[0] != 'message':
                continue  # an unsolicited pong
            if event[1] != OP_TEXT:
                raise WebSocketError('binary message where text was expected', EX_EINVAL)
            try:
                return event[2].decode('utf-8')
            except UnicodeDecodeError:
                self.close(1007)
                raise WebSocketError('text message is not valid UTF-8', close_code=1007)

    def close(self, code=1000):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.settimeout(1)
            self.sock.sendall(encode_frame(OP_CLOSE, struct.pack('!H', code)))
        except Exception:
            pass
        try:
            self.sock.close()
        except Exception:
            pass


def import_websocket_client():
    try:
        import websocket  # websocket-client
    except ImportError:
        raise AlienError('ALIENPY_TRANSPORT=websocket-client needs the package: pip install websocket-client',
                         EX_NOTCONN)
    return websocket


class WebSocketClientTransport(_Transport):
    """The same interface on the optional `websocket-client` package (ALIENPY_TRANSPORT), handed
    our TLS socket: the connect (staggered, proxy, network stack) and TLS are the same for both."""

    def __init__(self, url, tls_sock, timeout, headers=()):
        websocket = self._mod = import_websocket_client()
        self.last_activity = time.monotonic()
        try:
            self.ws = websocket.create_connection(url, socket=tls_sock, timeout=timeout,
                                                  header=['%s: %s' % kv for kv in headers],
                                                  enable_multithread=False)
        except (OSError, websocket.WebSocketException) as e:   # (a bad status is one, with its code)
            if getattr(e, 'status_code', None) == 401:
                raise AlienError(REFUSED_401, EX_UNAUTHORIZED)
            raise WebSocketError('handshake: %s' % e)

    def _translate(self, e):
        """The library's exceptions as our WebSocketError (others unchanged)."""
        m = self._mod
        if isinstance(e, m.WebSocketTimeoutException):
            return WebSocketError('timed out waiting for the server')
        if isinstance(e, (m.WebSocketPayloadException, UnicodeDecodeError)):
            return WebSocketError('invalid message: %s' % e, close_code=1007)
        if isinstance(e, (m.WebSocketException, OSError, ssl.SSLError)):
            return WebSocketError('connection lost: %s' % e)
        return e

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            raise self._translate(e)

    def send_text(self, text):
        self._call(self.ws.send, text)
        self.last_activity = time.monotonic()

    def recv_text(self):
        """Next text message; as WebSocket: one ping on silence, then give up (any frame proves it alive)."""
        pinged = False
        while True:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except self._mod.WebSocketTimeoutException:
                if pinged or self._past_deadline():
                    raise WebSocketError('no answer from the server for %.0f s (ALIENPY_TIMEOUT)' % self.ws.gettimeout())
                self._call(self.ws.ping, b'keepalive')
                pinged = True
                continue
            except Exception as e:
                raise self._translate(e)
            self.last_activity = time.monotonic()
            pinged = False
            if opcode == OP_TEXT:
                try:
                    return data.decode('utf-8')
                except UnicodeDecodeError:
                    raise WebSocketError('text message is not valid UTF-8', close_code=1007)
            if opcode == OP_BINARY:
                raise WebSocketError('binary message where text was expected', EX_EINVAL)
            if opcode == OP_CLOSE:
                raise WebSocketError('the server closed the connection')

    def ping(self, payload=b''):
        t0 = time.monotonic()
        self._call(self.ws.ping, payload)
        while True:
            opcode, frame = self._call(self.ws.recv_data_frame, True)
            if opcode == OP_PONG:
                return time.monotonic() - t0

    def close(self, code=1000):
        if not self.closed:
            self.closed = True
            try:
                self.ws.close(status=code, timeout=1)
            except Exception:
                pass


def interleave_addresses(infos):
    """RFC 8305 order: alternate address families, starting with the first one returned."""
    by_family = collections.OrderedDict()
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    return [info for round_ in itertools.zip_longest(*by_family.values()) for info in round_ if info is not None]


def resolve(host, port, environ):
    stack = environ.get('ALIENPY_NETWORKSTACK', '').lower()
    family = {'ipv4': socket.AF_INET, 'v4': socket.AF_INET, '4': socket.AF_INET,
              'ipv6': socket.AF_INET6, 'v6': socket.AF_INET6, '6': socket.AF_INET6}.get(stack, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(ascii_host(host), port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise AlienError('cannot resolve %s: %s' % (host, e.strerror), EX_NOTCONN)
    return interleave_addresses(infos)


def connect_tcp(host, port, environ, timeout=5.0, delay=0.25, avoid=None):
    """Connect to the first address that answers. Attempts are staggered by `delay`
    (RFC 8305); ALIENPY_NO_STAGGER tries them one after the other. An address
    equal to `avoid` (the one a connection was just lost on) is tried last."""
    import selectors
    addrs = resolve(host, port, environ)
    if avoid:
        addrs.sort(key=lambda info: info[4][:2] == tuple(avoid[:2]))  # stable: the order stays otherwise
    if env_flag('ALIENPY_NO_STAGGER', environ):  # one after the other, each with its own timeout
        delay, timeout = timeout, timeout * max(1, len(addrs))
    sel = selectors.DefaultSelector()
    pending, errors = [], []
    deadline = time.monotonic() + timeout
    next_start = time.monotonic()
    try:
        while addrs or pending:
            now = time.monotonic()
            if now >= deadline:
                errors.append('timed out after %.1f s' % timeout)
                break
            if addrs and (now >= next_start or not pending):
                fam, typ, proto, _, addr = addrs.pop(0)
                s = socket.socket(fam, typ, proto)
                s.setblocking(False)
                err = s.connect_ex(addr)
                if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                    sel.register(s, selectors.EVENT_WRITE, addr)
                    pending.append(s)
                else:
                    errors.append('%s: %s' % (addr[0], os.strerror(err)))
                    s.close()
                next_start = time.monotonic() + delay
                continue
            wait = max(0.0, min(deadline, next_start if addrs else deadline) - time.monotonic())
            for key, _ in sel.select(wait):
                s = key.fileobj
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                sel.unregister(s)
                pending.remove(s)
                if err:
                    errors.append('%s: %s' % (key.data[0], os.strerror(err)))
                    s.close()
                    if addrs:
                        next_start = time.monotonic()
                    continue
                s.setblocking(True)
                log('connected to %s:%s' % key.data[:2])
                return s
    finally:
        for s in pending:
            s.close()
        sel.close()
    raise AlienError('cannot connect to %s:%d: %s' % (host, port, '; '.join(errors) or 'no address'), EX_NOTCONN)


def proxy_authorization(auth):
    """The Proxy-Authorization value for a proxy URL's 'user:password' (%-quoted)."""
    from urllib.parse import unquote
    return 'Basic ' + base64.b64encode(unquote(auth).encode()).decode()


def connect_tunnel(sock, host, port, auth=None, timeout=10.0):
    """HTTP CONNECT through a proxy on an open socket; returns when the tunnel is up."""
    target = '%s:%d' % (('[%s]' % host) if ':' in host else host, port)
    lines = ['CONNECT %s HTTP/1.1' % target, 'Host: %s' % target]
    if auth:
        lines.append('Proxy-Authorization: ' + proxy_authorization(auth))
    sock.settimeout(timeout)
    sock.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode())
    data = b''
    while b'\r\n\r\n' not in data:
        try:
            chunk = sock.recv(4096)
        except (OSError, socket.timeout) as e:
            raise AlienError('proxy CONNECT to %s failed: %s' % (target, e), EX_NOTCONN)
        if not chunk or len(data) > MAX_HANDSHAKE:
            raise AlienError('proxy CONNECT to %s: no valid reply' % target, EX_NOTCONN)
        data += chunk
    status = data.split(b'\r\n', 1)[0].split()
    if len(status) < 2 or status[1] != b'200':
        raise AlienError('proxy refused CONNECT to %s: %s' % (target, data.split(b'\r\n', 1)[0].decode('latin-1')),
                         EX_NOTCONN)
    if data.index(b'\r\n\r\n') + 4 != len(data):
        raise AlienError('proxy sent data before the tunnel was up', EX_NOTCONN)


# ==========================================================================
# JCentral session: requests, replies, session state
# ==========================================================================
# One JSON request -> one JSON reply, several at once only when each reply can be told to be its
# own (docs/protocol.md); the session state mirrored from every reply's metadata.

# Commands that read only: safe to send again after a transparent reconnect.
READ_ONLY_COMMANDS = frozenset('''pwd ls find stat whereis whoami listSEs version commandlist type
    cd lfn2guid guid2lfn guidinfo md5sum du df motd uptime w ps top listCEs quota jquota fquota
    user whois groups xrdstat access:read'''.split())


def _compact_row(d):
    return d['message'] if len(d) == 1 and 'message' in d else d


def parse_reply(text, compact=False):
    """(metadata, results) of a JCentral reply text, AlienError when it is not one. compact: rows
    of only a message become that string (a third of the memory for listings only printed)."""
    if not text:
        raise AlienError('empty reply from the server', EX_EMPTY_REPLY)
    try:
        reply = load_json(text, object_hook=_compact_row if compact else None)
    except JsonTooDeep as e:
        raise AlienError('reply from the server is not in the JCentral format: %s' % e, EX_ENOMSG)
    except ValueError:
        raise AlienError('reply from the server is not JSON', EX_EINVAL)
    if not isinstance(reply, dict) or not isinstance(reply.get('metadata'), dict) \
            or not isinstance(reply.get('results'), list):
        raise AlienError('reply from the server is not in the JCentral format', EX_ENOMSG)
    return reply['metadata'], [r for r in reply['results'] if isinstance(r, (dict, str) if compact else dict)]


def reply_to_result(metadata, results):
    try:
        exitcode = int(metadata.get('exitcode', '0'))
    except (TypeError, ValueError, OverflowError):
        exitcode = 121
    return Result(exitcode, None, str(metadata.get('error', '') or ''), results, metadata)


class ConnectionLost(AlienError):
    """The connection was lost and did not come back within the reconnect budget. .results: what
    JCentral.request_many got before: the answered results, for the others 107 results whose
    metadata 'outcome' says 'unknown' (sent, reply lost) or 'not sent'."""

    def __init__(self, message, results=None, exitcode=EX_NOTCONN):
        super().__init__(message, exitcode)
        self.results = results or []


def lost_result(error, command, outcome):
    """The 107 result of a request whose reply never came (outcome 'unknown') or never sent ('not sent')."""
    text = ('%s; the outcome of "%s" is unknown' % (error, command) if outcome == 'unknown'
            else '%s; "%s" was not sent' % (error, command))
    return Result(EX_NOTCONN, '', text, [], {'exitcode': str(EX_NOTCONN), 'error': text, 'outcome': outcome})


class JCentral(object):
    """A JCentral session, connected at the first request: request(command, options) -> Result
    (raw reply in .results/.metadata), request_many(requests) -> [Result]. Mirrored from every
    reply: user, cwd, home, prevdir. Session (the command line section) adds command lines."""

    def __init__(self, environ=None, json_mode=None):
        self.environ = dict(os.environ if environ is None else environ)
        self.user = self.cwd = self.home = self.prevdir = ''
        self.ws = self.peer = self.credential_kind = None
        self.peer_addr = None     # socket address of the connection (tried last after a loss)
        self.json_mode = env_flag('ALIENPY_JSON', self.environ) if json_mode is None else json_mode
        self.timeout = float(self.environ.get('ALIENPY_TIMEOUT') or 20)
        self.reconnect_timeout = env_number(self.environ, 'ALIENPY_RECONNECT_TIMEOUT', 60.0)
        self._lock_wait = TOKEN_LOCK_WAIT  # 0 once another process kept the renewal lock too long
        self.last_exitcode = 0
        self._commandlist = None
        self._token_due = None     # 'after-first' -> 'due' -> fetched (see _credentials)
        self._loss = ''            # why the last connection was lost
        self.compact_rows = False  # the front end sets it: its results are only printed
        self.pipeline = self.environ.get('ALIENPY_PIPELINE', '1').strip().lower() not in ('0', 'false', 'no', 'off')
        self.slow_reply = env_number(self.environ, 'ALIENPY_SLOW_REPLY', 0.5)
        self.rtt = 0.0             # round trip to the service (half the TLS handshake, at most a reply's time)
        self.requests = self.logins = 0   # what this session cost the user (the 2024 service throttles both)
        self.spread = True         # large checked batches may be shared with more sessions (_spread)
        self.sessions = env_number(self.environ, 'ALIENPY_SESSIONS', 4, int, 'a number of sessions')
        self.helpers = []          # those sessions, made at the first such batch
        self.outage = [None]       # the session (of this one and its helpers) that said an outage
        self.connecting = None     # a helper's connecting thread
        self.tls = None            # (credential kind, TLS context) of the last connection
        self.command_json = self.json_mode  # JSON output asked for the command being run

    # -- connection --
    def connect(self, want_user=False, avoid=None, tries=None, first=()):
        """Open a connection (closing any old one). avoid: a socket address to try last; tries:
        rounds over the endpoints (default ALIENPY_CONNECT_TRIES); first: the texts of the requests
        that made us connect: they go right behind the upgrade request (built-in websocket; a service
        refusing the upgrade runs none of them), and the caller reads their replies."""
        self.close(helpers=False)
        kind, ctx = self.tls if self.tls and not want_user else self._credentials(want_user)
        self.tls = kind, ctx
        if tries is None:
            tries = int(self.environ.get('ALIENPY_CONNECT_TRIES') or 3)
        interval = float(self.environ.get('ALIENPY_CONNECT_TRIES_INTERVAL') or 0.3)
        t0 = time.monotonic()
        last = None
        # site affinity for the whole session: before anything else on the connection; the
        # first request then waits for its reply (two requests in flight could race)
        site = self.environ.get('ALIEN_SITE')
        early = [json.dumps({'command': 'setSite', 'options': ['-nomsg', site]})] if site else list(first)
        for host, port in endpoints(self.environ):
            for attempt in range(max(1, tries)):
                if attempt:
                    time.sleep(interval)
                try:
                    self.ws = self._open(ctx, host, port, early, avoid)
                    self.peer = (host, port)
                    break
                except AlienError as e:
                    last = e
                    if not worth_retrying(e):
                        raise
            if self.ws:
                break
        if env_flag('ALIENPY_TIMECONNECT', self.environ):
            sys.stderr.write('connected in %.1f ms\n' % ((time.monotonic() - t0) * 1000))
        if not self.ws:
            raise last or AlienError('cannot connect', EX_NOTCONN)
        self.credential_kind = kind
        if site:
            self._decode(self.ws.recv_text(), False)     # the setSite reply
            self.requests += 1
            for text in first:
                self.ws.send_text(text)
        return self

    def _credentials(self, want_user):
        """(kind, TLS context): the token pair when it can be used, else the user pair. An unusable
        token pair (expired, corrupt, unreadable, a key that does not match) is passed over with a
        one-line notice, and renewed with the user certificate by one process at a time (lock_token:
        the others wait for its pair), after the user's first command on that connection (_token_due)."""
        env = self.environ
        problem = None
        if not want_user:
            kind, cert, key = choose_credentials(env)
            if kind == 'token':
                try:
                    return kind, make_tls_context(cert, key, env)
                except AlienError as e:
                    problem = str(e)
            else:
                tcert, tkey = credential_paths(env)[:2]
                problem = token_problem(materialize_pem(tcert, 'tokencert'), materialize_pem(tkey, 'tokenkey'))
        renewable = not want_user and not any(is_pem_content(p) for p in credential_paths(env)[:2])
        held = False
        if renewable:
            held = lock_token(credential_paths(env)[0], self._lock_wait)
            if held is False:
                self._lock_wait = 0  # (reconnects do not wait for it again)
            if held:
                # another process may have renewed the pair while we waited
                kind, cert, key = choose_credentials(env)
                if kind == 'token':
                    try:
                        ctx = make_tls_context(cert, key, env)
                        unlock_token()
                        return kind, ctx
                    except AlienError as e:
                        problem = str(e)
        try:
            kind, cert, key = choose_credentials(env, want_user=True)
            ctx = make_tls_context(cert, key, env)
        except AlienError as e:
            unlock_token()
            if problem and problem != 'missing' and 'token' not in str(e):
                raise AlienError('%s; the token is not usable either: %s' % (e, problem), e.exitcode)
            raise
        if held is not False and renewable:
            self._token_due = self._token_due or 'after-first'
        if problem and problem != 'missing':
            print_error('alien.py: token not usable (%s): using the user certificate%s'
                        % (problem, ' and renewing the token' if held is not False and renewable else ''))
        return kind, ctx

    def _open(self, ctx, host, port, early=(), avoid=None, pipelined=True):
        headers = [('User-Agent', user_agent(self.environ))]
        url = 'wss://%s:%d%s' % (('[%s]' % host) if ':' in host else host, port, WS_PATH)
        log('connecting to %s' % url)
        other = self.environ.get('ALIENPY_TRANSPORT', '').lower() in ('websocket-client', 'websocket_client')
        if other:
            import_websocket_client()  # a missing package is said before anything is opened
        proxy = proxy_for(host, self.environ)
        sock = connect_tcp(*(proxy[:2] if proxy else (host, port)), self.environ, avoid=avoid)
        if proxy:
            try:
                connect_tunnel(sock, host, port, proxy[2])
            except AlienError:
                sock.close()
                raise
        try:
            self.peer_addr = sock.getpeername()
        except OSError:
            pass
        t0 = time.monotonic()
        tls = tls_handshake(sock, ctx, host, port, self.timeout)
        self.rtt = (time.monotonic() - t0) / 2   # TLS 1.2: two round trips
        self.logins += 1
        try:
            if other or not pipelined:
                ws = WebSocketClientTransport(url, tls, self.timeout, headers) if other else \
                    self._websocket(tls, host, port, headers)
                for text in early:
                    ws.send_text(text)
                return ws
            try:
                return self._websocket(tls, host, port, headers, early)
            except WebSocketError:
                if not early:
                    raise
            # Refusing the upgrade (401), a server may close the connection with our requests
            # unread: its TCP reset can swallow the answer. Once more, the requests waiting for
            # the 101 this time (no server acts on a request before it has upgraded: none ran).
            tls.close()
            return self._open(ctx, host, port, early, avoid, pipelined=False)
        except AlienError:
            tls.close()
            raise

    def _websocket(self, tls, host, port, headers, early=()):
        ws = WebSocket(tls, max_size=int(float(self.environ.get('ALIENPY_MAX_MESSAGE_MB') or 1024) * (1 << 20)))
        ws.handshake(host, port, WS_PATH, headers, early)
        return ws

    def close(self, helpers=True):
        """Close the connection (and the helpers'); a token renewal still due is done first."""
        for h in self.helpers if helpers else ():
            h.close()
        if self.ws is not None and self._token_due == 'due':
            self._fetch_token(direct=True)  # no reconnect: the command is done
        self.drop()

    def drop(self):
        """Forget the connection (a reply may be half read): the next request reconnects, same cwd."""
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    def _direct(self, command, options):
        """One request on the current connection, no recovery (used while connecting)."""
        text = json.dumps({'command': command, 'options': options})
        debug = env_flag('ALIENPY_DEBUG', self.environ)
        if debug:
            log('request %s' % redact(text))
        self.ws.send_text(text)
        self.requests += 1
        reply = self.ws.recv_text()
        if debug:
            log('reply %s' % redact(reply.replace('\\/', '/')))
        return self._decode(reply, False)

    def _reconnect(self, reason=''):
        """A new connection in the same server-side directory after a loss (or a drop on purpose):
        every address of the endpoint, the lost one last, with exponential backoff and jitter, for up
        to ALIENPY_RECONNECT_TIMEOUT s. When the first attempt fails the outage is real: one line
        on stderr then, and one when the connection is back."""
        import random
        failed = self.peer_addr
        self.drop()
        t0 = time.monotonic()
        pause = 0.1
        said = False
        while True:
            try:
                self.connect(avoid=failed, tries=1)
                if self.cwd:
                    self._direct('cd', [self.cwd])
                break
            except AlienError as e:
                self.drop()
                if not worth_retrying(e):
                    raise
                last = e
            elapsed = time.monotonic() - t0
            if not said:
                said = True
                where = '%s:%d' % self.peer if self.peer else 'the service'
                if self.outage[0] is None:    # (one line for the outage, whichever session met it)
                    self.outage[0] = self
                    print_error('alien.py: connection to %s lost (%s); reconnecting for up to %g s'
                                % (where, reason or last, self.reconnect_timeout))
            if elapsed >= self.reconnect_timeout:
                raise AlienError('connection lost and not back within %g s (ALIENPY_RECONNECT_TIMEOUT): %s'
                                 % (self.reconnect_timeout, last), EX_NOTCONN)
            time.sleep(max(0.0, min(pause * random.uniform(0.5, 1.5), self.reconnect_timeout - elapsed)))
            pause = min(pause * 2, 5.0)
        log('reconnected after %.3f s' % (time.monotonic() - t0))
        if said and self.outage[0] is self:
            self.outage[0] = None
            print_error('alien.py: connection back after %.1f s' % (time.monotonic() - t0))

    def _ensure_connected(self):
        """A usable connection: the first, or a new one (same cwd) for one lost, dropped or found dead."""
        if self.ws is not None and self.ws.alive(self.timeout):
            return
        if self.ws is None and self.peer is None:
            self.connect()
            return
        reason, self._loss = self._loss, ''
        self._reconnect(reason if self.ws is None else 'no answer to the idle check')

    # -- one request, one reply --
    @staticmethod
    def _item(command, options, nomsg, nokeys, check=None):
        """One request as (text, command, opts, check)."""
        opts = (['-nomsg'] if nomsg else []) + (['-nokeys'] if nokeys else []) + [str(o) for o in options]
        return (json.dumps({'command': command, 'options': opts}), command, opts, check)

    def _decode(self, reply, nokeys):
        metadata, results = parse_reply(reply, self.compact_rows and nokeys)
        self._update_state(metadata)
        return reply_to_result(metadata, results)

    def request(self, command, options=(), nomsg=False, nokeys=False):
        result = self._transact([self._item(command, options, nomsg, nokeys)], nokeys)[0]
        if result.metadata.get('outcome'):  # the reply was lost
            raise AlienError(result.err, result.exitcode)
        if command in SERVICE_COLOUR_COMMANDS:
            result.style = 'colour'
        return result

    def request_many(self, requests, nomsg=False, nokeys=False, window=32):
        """[(command, options[, check])] -> [Result] in order. The real endpoint waits at most 1 s
        for a session's command before it reads the next message, which may then run with another
        request's arguments or get its reply (docs/protocol.md). So requests go out several at a time
        (up to `window`) only when each has a check(result) -> True (provably its reply), None (cannot
        tell) or False (contradicts it), and only while replies are quick. A slow, empty, non-JSON or
        contradicting reply ends the pipelining for good and retires the connection. An unproven reply
        is asked for again alone when safe (_can_resend), else its result says 'outcome': 'unknown';
        ConnectionLost when the connection does not come back."""
        items = [self._item(r[0], r[1], nomsg, nokeys, r[2] if len(r) > 2 else None) for r in requests]
        if self.spread and self.pipeline and len(items) >= self.SPREAD_MIN and all(i[3] for i in items):
            return self._spread(items, nokeys, window)
        return self._transact(items, nokeys, window)

    # The endpoint runs one session's commands one after the other, however pipelined: at most
    # about 1/(cost) a second (~6 ms for an access or a commit). A large batch of checked requests
    # is shared with up to ALIENPY_SESSIONS - 1 more sessions (each a login, which the 2024 throttle
    # counts as 10 requests) while replies are quick: once one is slow, one at a time on this one.
    SPREAD_MIN = 32

    def spread_ahead(self):
        """Connect the helper sessions now, in the background (cp: a copy large enough is coming)."""
        if not self.spread or not self.pipeline:
            return
        if self.tls is None:
            self.tls = self._credentials(False)
        while len(self.helpers) < self.sessions - 1:
            h = JCentral(self.environ, self.json_mode)
            h.tls, h.timeout, h.reconnect_timeout, h.spread, h.outage = \
                self.tls, self.timeout, self.reconnect_timeout, False, self.outage
            h.connecting = threading.Thread(target=h._connect_quietly, name='alienpy-connect', daemon=True)
            h.connecting.start()
            self.helpers.append(h)

    def _connect_quietly(self):
        try:
            self._ensure_connected()
        except AlienError as e:
            log('a helper session could not connect: %s' % e)

    def _spread(self, items, nokeys, window):
        """_transact of items, a slice each for this session (the calling thread) and its connected
        helpers (threads, spread_ahead); all of it while none is: a helper still connecting delays
        nothing, and over a WAN a slice costs a round trip."""
        self.spread_ahead()
        out = [None] * len(items)
        ready = 1 + sum(h.ws is not None for h in self.helpers)
        take = len(items) if ready == 1 else max(16, -(-len(items) // ready))
        state = {'next': 0, 'error': None}
        lock = threading.Lock()
        before = [(h.requests, h.logins) for h in self.helpers]

        def work(session):
            if session is not self:
                session.connecting.join()
                if session.ws is None:
                    return
            while True:
                with lock:
                    start = state['next']
                    if state['error'] is not None or start >= len(items) or (session is not self and not self.pipeline):
                        return
                    state['next'] = start + take
                try:
                    got = session._transact(items[start:start + take], nokeys, window)
                except BaseException as e:   # (ConnectionLost: the answered ones, the rest lost)
                    got = list(getattr(e, 'results', None) or [])
                    with lock:
                        state['error'] = state['error'] or e
                out[start:start + len(got)] = got
                if not session.pipeline:
                    self.pipeline = False        # slow replies: fewer sessions
                if state['error'] is not None:
                    return
        threads = [threading.Thread(target=work, args=(h,), name='alienpy-session', daemon=True)
                   for h in self.helpers]
        for t in threads:
            t.start()
        try:
            work(self)
            for t in threads:
                t.join()
        except KeyboardInterrupt as e:   # the helpers finish the slice they have (its replies
            with lock:                  # say what it did), for up to 5 s
                state['error'] = state['error'] or e
            deadline = time.monotonic() + 5
            try:
                for t in threads:
                    t.join(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                pass
        finally:
            for h, (r, l) in zip(self.helpers, before):
                self.requests += h.requests - r
                self.logins += h.logins - l
        e = state['error']
        if isinstance(e, KeyboardInterrupt):
            e.results = list(out)      # every slice's answered requests (the helpers finished theirs)
            raise e
        if e is not None:
            if isinstance(e, ConnectionLost):
                raise ConnectionLost(str(e), [r if r is not None else lost_result(e, items[i][1], 'unknown')
                                              for i, r in enumerate(out)], e.exitcode)
            raise e
        # a slice not taken (the helpers stopped): this session, one request at a time
        rest = [i for i, r in enumerate(out) if r is None]
        for i, r in zip(rest, self._transact([items[i] for i in rest], nokeys, window) if rest else []):
            out[i] = r
        return out

    RESEND_LIMIT = 3  # times one request is sent again after lost connections or unproven replies

    def _transact(self, items, nokeys, window=1):
        """Send items [(text, command, opts, check)] -> [Result] in order, pipelined as request_many
        says, through lost connections (_reconnect): an unanswered request is sent again when safe,
        at most RESEND_LIMIT times; a modifying one whose reply was lost or unproven never is ('unknown')."""
        if self._token_due == 'due':
            self._fetch_token()
        debug = env_flag('ALIENPY_DEBUG', self.environ)
        out = [None] * len(items)
        todo = list(range(len(items)))
        tries = [0] * len(items)
        alone = set()     # asked again one at a time: their replies are then their own
        while todo:
            chunk = todo[:1]
            # the session's first request goes alone (behind the upgrade request): how
            # quickly it is answered says whether more may follow it at once
            if self.pipeline and window > 1 and todo[0] not in alone and self.peer is not None:
                chunk = list(itertools.takewhile(lambda i: items[i][3] is not None and i not in alone,
                                                 todo[:window])) or chunk
            again, bad = [], False
            sent = got = 0
            if debug:
                for i in chunk:
                    log('request %s' % redact(items[i][0]))
            try:
                if self.ws is None and self.peer is None:
                    self.connect(first=[items[chunk[0]][0]])
                    sent = 1
                else:
                    self._ensure_connected()
            except AlienError as e:
                if self.peer is None:  # the first connection: nothing was lost
                    raise
                raise ConnectionLost(str(e), [r if r is not None else lost_result(e, items[i][1], 'not sent')
                                              for i, r in enumerate(out)], e.exitcode)
            try:
                t_send = time.monotonic()
                for i in chunk[sent:]:
                    self.ws.send_text(items[i][0])
                    sent += 1
                self.requests += len(chunk)
                last = None
                for i in chunk:
                    text = self.ws.recv_text()
                    now = time.monotonic()
                    got += 1
                    # how long the service may have worked on it: since the previous reply, or
                    # since it went out less a round trip
                    busy = now - last if last is not None else now - t_send - self.rtt
                    last = now
                    if len(chunk) == 1:
                        self.rtt = min(self.rtt, now - t_send) if self.rtt else now - t_send
                    if debug:
                        log('reply %.1f ms %s' % ((now - t_send) * 1000, redact(text.replace('\\/', '/'))))
                    elif env_flag('ALIENPY_TIMING', self.environ):
                        log('timing %s %.1f ms %d bytes' % (items[i][1], (now - t_send) * 1000, len(text)))
                    # (a large reply alone, a listing, is allowed a microsecond a byte to be made and sent)
                    allowed = self.slow_reply + (len(text) * 1e-6 if len(chunk) == 1 and items[i][3] is None else 0)
                    if busy > allowed and self.pipeline:
                        self.pipeline = False
                        bad = bad or len(chunk) > 1
                        log('a reply took %.2f s: requests go one at a time from now on' % busy)
                    result, verdict = self._judge(items[i], text, nokeys, len(chunk) > 1)
                    del text  # a large reply's text is freed before its output is joined
                    if verdict is True:
                        out[i] = result
                        continue
                    bad = bad or verdict is False
                    tries[i] += 1
                    if self._can_resend(items[i][1], items[i][2]) and tries[i] <= self.RESEND_LIMIT:
                        again.append(i)
                        alone.add(i)
                    elif self._is_read_only(items[i][1], items[i][2]):
                        out[i] = result   # asked often enough: what the service says
                    else:
                        out[i] = lost_result('the reply cannot be told to be its own', items[i][1], 'unknown')
                todo = again + todo[len(chunk):]
            except KeyboardInterrupt as e:
                if sent == len(chunk):  # every request went out whole: their replies are on the way
                    self._drain([(i,) + items[i][1:] for i in chunk[got:]], out, nokeys)
                self.drop()    # a reply may be half read
                e.results = list(out)  # the answered ones (None: no reply)
                raise
            except WebSocketError as e:
                self.drop()
                keep = []
                for i in chunk[got:sent]:   # sent, no reply
                    tries[i] += 1
                    if self._can_resend(items[i][1], items[i][2]) and tries[i] <= self.RESEND_LIMIT:
                        keep.append(i)
                    else:
                        out[i] = lost_result(e, items[i][1], 'unknown')
                todo = again + keep + chunk[sent:] + todo[len(chunk):]
                self._loss = str(e)
                log('%s; %d request(s) to send again' % (e, len(todo)))
                continue  # the next round reconnects (_ensure_connected) and sends the rest
            if bad:
                # a run of this connection may still be going: it could take the arguments
                # of our next request or print into its reply. A new connection has its own.
                self.pipeline = False
                log('a reply did not answer its own request: requests go one at a time on a new connection')
                self.drop()
        if self._token_due == 'after-first':
            self._token_due = 'due'
        return out

    def _judge(self, item, text, nokeys, pipelined):
        """(Result, verdict) of one reply: True when it is the request's own, None when that cannot
        be told, False when it cannot be (its check says so, or among others it is empty or not JSON:
        a sign of the race). Alone, a broken reply is the service's answer (a modifying request's
        outcome unknown), but an empty one (sent under load) is asked for again where safe."""
        check = item[3]
        try:
            result = self._decode(text, nokeys)
        except AlienError as e:   # empty, not JSON, not in the JCentral format
            result = Result(e.exitcode, '', str(e))
            if pipelined:
                return result, False
            if not text and self._can_resend(item[1], item[2]):
                return result, None
            if not self._is_read_only(item[1], item[2]):
                result.metadata = {'exitcode': str(e.exitcode), 'error': str(e), 'outcome': 'unknown'}
            return result, True
        if env_flag('ALIENPY_JSONRAW', self.environ):
            result.raw = text
        if check is None:
            return result, True
        verdict = check(result)
        return result, (True if verdict is None and not pipelined else verdict)

    def _drain(self, pending, out, nokeys, wait=2.0):
        """After Ctrl-C: read the replies of modifying requests already sent (for up to `wait` s, a
        second Ctrl-C stops it), so that what they did is known; read-only ones are dropped."""
        if all(self._can_resend(command, opts) for _, command, opts, _c in pending):
            return
        try:
            self.ws.set_timeout(0.2)
            self.ws.deadline = time.monotonic() + wait  # (pongs would keep it waiting)
            for i, _, _, _ in pending:
                out[i] = self._judge(self._item('', [], False, False), self.ws.recv_text(), nokeys, False)[0]
        except (AlienError, KeyboardInterrupt):
            pass

    @staticmethod
    def _is_read_only(command, opts):
        return 'read' in opts if command == 'access' else command in READ_ONLY_COMMANDS

    @classmethod
    def _can_resend(cls, command, opts):
        """Safe to send again when its reply was lost: read-only commands, `access`
        (a booking nobody commits leaves nothing in the catalogue) and `mkdir -p`."""
        return cls._is_read_only(command, opts) or command == 'access' or (command == 'mkdir' and '-p' in opts)

    def flush_token(self):
        """Fetch a token renewal that is due now (the shell does it before it waits
        for the user's input, so the renewal lock is not held while they type)."""
        if self._token_due == 'due' and self.ws is not None:
            self._fetch_token()

    def _fetch_token(self, direct=False):
        """The token renewal that was due (_credentials); direct: no recovery if the connection is gone."""
        self._token_due = None
        try:
            reply = self._direct('token', ['-nomsg']) if direct else self.request('token', nomsg=True)
            self._store_token(reply, quiet=True)
        except AlienError as e:
            log('token renewal failed: %s' % e)
        finally:
            unlock_token()

    def _update_state(self, metadata):
        user = metadata.get('user')
        if user and isinstance(user, str):
            self.user = user
        cwd = metadata.get('currentdir')
        if cwd and isinstance(cwd, str) and cwd.startswith('/'):
            self.home = self.home or cwd
            if cwd != self.cwd:
                self.prevdir, self.cwd = self.cwd or self.prevdir, cwd

    def renew_token(self, quiet=False, args=()):
        """Ask the service for a token certificate and store the pair owner-only."""
        return self._store_token(self.request('token', list(args), nomsg=True), quiet)

    def _store_token(self, r, quiet):
        if r.exitcode != 0 or not r.results or 'tokencert' not in r.results[0] or 'tokenkey' not in r.results[0]:
            if quiet:
                log('token renewal failed: %s' % r.err)
                return r
            raise AlienError('could not get a token: %s' % (r.err or 'no tokencert/tokenkey in the reply'), r.exitcode or EX_ENOMSG)
        tcert, tkey = credential_paths(self.environ)[:2]
        if is_pem_content(tcert) or is_pem_content(tkey):
            return r  # the token is given in the environment: nothing to write
        try:
            write_token_pair(tcert, tkey, r.results[0]['tokencert'], r.results[0]['tokenkey'])
        except OSError as e:
            raise AlienError('cannot write the token files: %s' % e, EX_EIO)
        return r

    def server_commands(self):
        """Names the service knows (commandlist; both reply formats)."""
        if self._commandlist is None:
            r = self.request('commandlist')
            names = set()
            for res in r.results:
                if 'commandlist' in res:
                    names.add(res['commandlist'])
                if 'message' in res:
                    names.update(res['message'].split())
            self._commandlist = sorted(n for n in names if not n.endswith('_csd'))
        return self._commandlist


# ==========================================================================
# Paths: grid and local path expansion (pure functions)
# ==========================================================================

_GRID_PREFIX = LazyRegex(r'^(alien:(//)?)')
_LOCAL_PREFIX = LazyRegex(r'^(file:(//)?)')


def expand_grid_path(path, cwd, home):
    """Absolute LFN for path as typed (alien:, %ALIEN, ~, ., .., relative); a trailing '/' is kept."""
    trailing = path.endswith('/')
    p = _GRID_PREFIX.sub('', path.strip())
    home = home or '/'
    cwd = cwd or home
    m = re.match(r'^/*%ALIEN(/|$)', p)
    if m:
        p = home.rstrip('/') + '/' + p[m.end():]
    elif p == '~' or p.startswith('~/'):
        p = home.rstrip('/') + '/' + p[1:]
    elif not p.startswith('/'):
        p = cwd.rstrip('/') + '/' + p
    p = '/' + '/'.join(part for part in _normalize(p.split('/')))
    if trailing and not p.endswith('/'):
        p += '/'
    return p


def path_needs_cwd(path):
    """Whether expanding path needs the session's cwd or home (relative, ~, %ALIEN)."""
    p = _GRID_PREFIX.sub('', path.strip())
    return not p.startswith('/') or re.match(r'^/*%ALIEN(/|$)', p) is not None


def _normalize(parts):
    out = []
    for part in parts:
        if part in ('', '.'):
            continue
        if part == '..':
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def expand_local_path(path):
    """Absolute local path for path as typed (file:, ~), ending in '/' for a directory or a '/' typed."""
    trailing = path.endswith('/')
    p = os.path.abspath(os.path.expanduser(_LOCAL_PREFIX.sub('', path.strip())))
    if (trailing or os.path.isdir(p)) and not p.endswith('/'):
        p += '/'
    return p


def posix_normpath(p):
    import posixpath
    keep_slash = p.endswith('/')
    q = posixpath.normpath(p)
    if q.startswith('//'):
        q = q[1:]
    return q + '/' if keep_slash and not q.endswith('/') else q


# ==========================================================================
# The command line: splitting, aliases, options, the command registry
# ==========================================================================

def _scan(line, stops):
    """Yield (index, char) of characters in stops that are outside quotes."""
    quote = None
    escaped = False
    for i, c in enumerate(line):
        if escaped:
            escaped = False
        elif c == '\\' and quote != "'":
            escaped = True
        elif quote:
            if c == quote:
                quote = None
        elif c in '"\'':
            quote = c
        elif c in stops:
            yield i, c


def split_chain(line):
    """'a; b\\nc' -> ['a', 'b', 'c']: ';' and newlines outside quotes separate commands."""
    parts, start = [], 0
    for i, _ in _scan(line, ';\n'):
        parts.append(line[start:i])
        start = i + 1
    parts.append(line[start:])
    return [p.strip() for p in parts if p.strip()]


def split_pipe(element):
    """'ls -l | grep x' -> ('ls -l', 'grep x'); no unquoted '|' -> (element, None)."""
    for i, _ in _scan(element, '|'):
        return element[:i].strip(), element[i + 1:].strip()
    return element, None


def tokenize(element):
    try:
        return shlex.split(element)
    except ValueError as e:
        raise AlienError('cannot parse %r: %s' % (element, e), EX_USAGE)


def run_local(argv, stdin_text=None):
    """Run a local program on our terminal -> Result(its exit code; 127: not found, 126: not runnable)."""
    import subprocess
    sys.stdout.flush()
    try:
        proc = subprocess.run(argv, input=stdin_text.encode() if stdin_text is not None else None)
    except FileNotFoundError:
        return Result(127, '', '%s: command not found' % argv[0])
    except OSError as e:
        return Result(126, '', 'cannot run %s: %s' % (argv[0], e.strerror or e))
    return Result(proc.returncode)


def run_local_shell(command, stdin_text=None):
    """Run a local shell command (for '!cmd' and 'cmd | shellcmd'), output to our terminal."""
    return run_local(['/bin/sh', '-c', command], stdin_text)


def parse_time_ms(value):
    """'1700000000000' (ms), '1700000000' (s) or 'YYYY-mm-dd[ HH:MM[:SS]]' (local time) -> ms."""
    v = value.strip()
    if v.isdigit() and len(v) >= 12:
        return int(v)
    if v.isdigit() and len(v) >= 9:
        return int(v) * 1000
    for fmt in ('%Y-%m-%d %H:%M:%S', '%Y-%m-%d %H:%M', '%Y-%m-%dT%H:%M:%S', '%Y-%m-%d', '%Y%m%d'):
        try:
            return int(time.mktime(time.strptime(v, fmt)) * 1000)
        except ValueError:
            pass
    raise AlienError('cannot read the time %r (ms or s since 1970, or YYYY-mm-dd[ HH:MM[:SS]])' % value,
                     EX_EINVAL)


HELP_WORDS = ('-h', '-help', '--help')


class ShowUsage(AlienError):
    """A help option among a command's options: the dispatch prints the command's usage
    (exit 0); an AlienError for callers of parse_args outside the dispatch."""

    def __init__(self, cmd):
        super().__init__('%s: usage asked for' % cmd, 0)


class Options(object):
    """A command's options, declared once: rows (NAMES, KEY, KIND[, DEFAULT[, HELP]]) and plain usage
    lines, or a string of words NAME[:KIND] (key: NAME without its dash; no default: absent unless
    given). NAMES: the option and its aliases ('-f -force'; a bare word is a keyword: lfn2uri's meta).
    KIND: 'flag', 'int' (>= 0), 'count' (> 0), 'str', 'list' (repeatable), 'time' (parse_time_ms),
    'word' (the name given: one of several keywords), 'ignore' (accepted, dropped). HELP: its usage
    line ('' when a neighbour's covers it). usage: head and those lines; code: the exit code of a bad
    option; check(opts) -> an error text when options exclude each other."""

    def __init__(self, rows, head='', defaults=None, code=EX_USAGE, check=None):
        if isinstance(rows, str):
            rows = [(n, n.lstrip('-'), kind or 'flag') for n, _, kind in (w.partition(':') for w in rows.split())]
        self.rows = [r for r in rows if not isinstance(r, str)]
        self.kinds, self.defaults, self.code, self.check = {}, dict(defaults or {}), code, check
        for row in self.rows:
            for name in row[0].split():
                self.kinds[name] = row[1:3]
            if len(row) > 3 and row[1]:
                self.defaults[row[1]] = row[3]
        lines = [r if isinstance(r, str) else r[4] for r in rows if isinstance(r, str) or len(r) > 4 and r[4]]
        self.usage = '\n'.join(([head] if head else []) + lines)


def parse_args(cmd, args, options='', defaults=None, free=False):
    """A command's arguments -> (options dict, positional list), by its Options (or the words of
    one). Options may appear anywhere; '--' ends them; '-5' is an argument; help words raise
    ShowUsage; a bad option or value is an AlienError (options.code). free: the arguments are
    run's program's (unknown options, '--' and help words are arguments); defaults: over the table's."""
    options = options if isinstance(options, Options) else Options(options)
    opts = dict(options.defaults, **(defaults or {}))
    pos, code, where = [], options.code, cmd + ': ' if cmd else ''
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        spec = options.kinds.get(a)
        if spec is None and not free:
            if a == '--':
                pos.extend(args[i:])
                break
            if a in HELP_WORDS:
                raise ShowUsage(cmd)
            if len(a) > 1 and a.startswith('-') and not re.match(r'^-[0-9]', a):
                raise AlienError('%sunknown option %s (%s -h for the usage)' % (where, a, cmd), code)
        if spec is None:
            pos.append(a)
            continue
        key, kind = spec
        if kind in ('flag', 'word', 'ignore'):
            if kind != 'ignore':
                opts[key] = True if kind == 'flag' else a
            continue
        if i >= len(args):
            raise AlienError('%soption %s needs a value' % (where, a), code)
        value = args[i]
        i += 1
        if kind == 'list':
            value = tuple(opts.get(key, ())) + (value,)
        elif kind == 'time':
            value = parse_time_ms(value)
        elif kind == 'count':
            value = _int_or_none(value, 0)
            if value <= 0:
                raise AlienError('%s%s needs a positive number, not %r' % (where, a, args[i - 1]), code)
        elif kind == 'int':
            try:
                value = int(value)
            except ValueError:
                raise AlienError('%soption %s needs an integer, got %r' % (where, a, value), code)
            if value < 0:
                raise AlienError('%soption %s needs a value >= 0, got %d' % (where, a, value), code)
        opts[key] = value
    problem = options.check(opts) if options.check else ''
    if problem:
        raise AlienError(where + problem, code)
    return opts, pos


def int_arg(cmd, text, least=None):
    """An integer argument (exit's CODE, ping's COUNT) of at least `least`, else an error, exit 22."""
    if not re.match(r'^-?[0-9]+$', text):
        raise AlienError('%s: %r is not a number' % (cmd, text), EX_EINVAL)
    if least is not None and int(text) < least:
        raise AlienError('%s: %s is less than %d' % (cmd, text, least), EX_EINVAL)
    return int(text)


COMMANDS = {}


Command = collections.namedtuple('Command', 'name handler usage connect noargs')


def command(*names, **kw):
    """Register handler(session, args) -> Result under one or more names. usage:
    the help text; connect=False: never needs the central service (stays unconnected);
    noargs=True: takes no arguments (the dispatch refuses a typo instead of ignoring it)."""
    def deco(fn):
        for name in names:
            COMMANDS[name] = Command(name, fn, kw.get('usage', fn.__doc__ or ''), kw.get('connect', True),
                                     kw.get('noargs', False))
        return fn
    return deco


def client_result(out, rows, metadata=None, exitcode=0, err=''):
    """Result of a client-side command: printed text, and for -json the rows it was made
    of. A failed check (exitcode, err) keeps its report in out: it is printed too."""
    md = dict(metadata or {})
    md.update(exitcode=str(exitcode), error=err)
    return Result(exitcode, out, err, rows, md)


def format_columns(names, width=None):
    if width is None:
        try:
            width = os.get_terminal_size().columns
        except OSError:
            width = 120
    colw = max(len(n) for n in names) + 2 if names else 1
    ncol = max(1, width // colw)
    rows = [names[i:i + ncol] for i in range(0, len(names), ncol)]
    return '\n'.join(table_line(row, [-colw] * len(row)).rstrip() for row in rows)


def load_aliases(environ):
    """Aliases of ~/.alienpy_aliases ('name = cmd1; cmd2'), in file order."""
    aliases = read_settings(user_file(environ, '.alienpy_aliases'))
    if len(aliases) > ALIAS_MAX:
        print_error('alien.py: only the first %d aliases of ~/.alienpy_aliases are used' % ALIAS_MAX)
    return dict(aliases[:ALIAS_MAX])


def expand_aliases(elements, aliases):
    """Replace an alias that is the whole first word of a chain element by its value (maybe a
    chain); one pass, so aliases cannot loop. Unlike the reference client, which replaced every
    substring of the line, 'ls' inside a path or an argument is never touched."""
    if not aliases:
        return list(elements)
    out = []
    for element in elements:
        m = re.match(r'(\S+)(.*)$', element, re.S)
        if m and m.group(1) in aliases:
            out.extend(split_chain(aliases[m.group(1)] + m.group(2)))
        else:
            out.append(element)
        if len(out) > LINE_MAX_ELEMENTS:
            raise AlienError('the command line expands to more than %d commands' % LINE_MAX_ELEMENTS, EX_USAGE)
    return out


class Session(JCentral):
    """A JCentral session that runs command lines ('a; b', '!shell', 'cmd | shell') with the aliases
    and the command registry; grid_path(path) -> the absolute LFN of a path as typed."""

    def grid_path(self, path):
        if not self.cwd and path_needs_cwd(path):   # an absolute path costs no round trip
            self.request('pwd')
        return expand_grid_path(path, self.cwd, self.home)

    def run(self, line, on_result=None):
        """Run 'cmd1; cmd2 | shellcmd' -> the last Result, with the out/err of the whole chain;
        on_result(result) is called after each command (the front end prints there)."""
        outs, errs = [], []
        result = Result()
        if getattr(self, 'aliases', None) is None:
            self.aliases = load_aliases(self.environ)
        for element in expand_aliases(split_chain(line), self.aliases):
            result = self.run_one(element)
            self.last_exitcode = result.exitcode
            if on_result is not None:
                on_result(result)
            elif result.exitcode == 0 and result.out:
                outs.append(result.out)
            elif result.exitcode != 0 and result.err:
                errs.append(result.err)
        if on_result is not None:
            return result
        chain = Result(result.exitcode, '\n'.join(outs), '\n'.join(errs), result.results, result.metadata)
        chain.as_json, chain.raw = result.as_json, result.raw
        return chain

    def run_one(self, element):
        """One element of a chain: '!shell', 'cmd args', 'cmd args | shell'."""
        element = element.strip()
        if element.startswith('!'):
            return run_local_shell(element[1:])
        grid_part, shell_part = split_pipe(element)
        tokens = tokenize(grid_part)
        if not tokens:
            return Result()
        result = self.run_tokens(tokens)
        if shell_part is not None and result.exitcode == 0:
            return run_local_shell(shell_part, (result.out + '\n') if result.out else '')
        return result

    def run_tokens(self, tokens):
        verb, args = tokens[0], tokens[1:]
        as_json = self.json_mode or '-json' in args
        args = [a for a in args if a != '-json']
        self.command_json = as_json  # client-side handlers ask for full replies then
        cmd = COMMANDS.get(verb)
        try:
            if cmd is not None and args and args[0] in HELP_WORDS and cmd.usage:
                result = Result(0, cmd.usage.strip())
            elif cmd is not None and cmd.noargs and args:
                result = Result(EX_USAGE, '', '%s: unexpected argument %r (usage: %s)'
                                % (verb, args[0], cmd.usage.strip()))
            elif cmd is not None:
                result = cmd.handler(self, args)
            else:
                result = self.request(verb, args, nokeys=not as_json)
        except ShowUsage:   # a help option the command's options meet
            result = Result(0, cmd.usage.strip())
        except AlienError as e:
            result = Result(e.exitcode, '', str(e))
        result.as_json = as_json
        return result


# ==========================================================================
# Transfers: cp arguments, names, selections, listings, replies that answer their own request
# ==========================================================================

# ---- cp: pure helpers (argument grammar, specifiers, naming) --------------

def _one_selection_rule(opts):
    if sum(1 for k in ('glob', 'select', 'name') if opts.get(k)) > 1:
        return ('only one selection rule can be used: -select (full path regex), -name (file name) or -glob '
                '(globbing)')


# cp's options: (names, key, kind, default, usage line); the usage, the table and the defaults come from it
CP_OPTIONS = Options([
    'options:',
    ('-f -force', 'force', 'flag', False, '  -f, -force      copy even if an identical destination exists (size+md5)'),
    ('-T', 'parallel', 'int', None, '  -T N            files transferred at once (default 8)'),
    ('-S', 'streams', 'int', 0, '  -S N            TCP streams per transfer (1-15)'),
    ('-chunks', 'chunks', 'int', 0, '  -chunks N       parallel chunks per file;  -chunksz BYTES  chunk size'),
    ('-chunksz', 'chunksize', 'int', 0),
    ('-y', 'sources', 'int', 1, '  -y N            read one file from up to N replicas at once'),
    ('-retry', 'retry', 'int', 2,
     '  -retry N        XRootD retries of a transfer (default 2; downloads: on the last replica left)'),
    ('-timeout', 'timeout', 'int', 0,
     '  -timeout S      per file;  -ratethreshold B/S  fail a transfer slower than B bytes/s'),
    ('-ratethreshold', 'ratethreshold', 'int', 0),
    '  defaults from XRD_CPRETRY, XRD_CPTIMEOUT, XRD_XRATETHRESHOLD, XRD_SUBSTREAMSPERCHANNEL,',
    '  XRD_CPPARALLELCHUNKS, XRD_CPCHUNKSIZE when set',
    ('-site', 'site', 'str', '',
     '  -site SITE      prefer replicas close to SITE (the service\'s site affinity, for this copy)'),
    ('-http', 'http', 'flag', False,
     '  -http           ask the service for HTTP replica URLs (downloads; needs XRootD\'s HTTP plugin)'),
    ('-noxrdzip', 'noxrdzip', 'flag', False,
     '  -noxrdzip       a file inside a zip archive: download the archive, extract the file locally'),
    ('-quiet', 'quiet', 'flag', False, '  -quiet          no progress line, no summary on success; -dryrun  only print the plan'),
    ('-dryrun', 'dryrun', 'flag', False),
    ('-strictspec', 'strictspec', 'flag', False, '  -strictspec     the service uses only the SEs named in the specifiers'),
    ('-norecovery', 'norecovery', 'flag', False, '  -norecovery     do not re-book failed upload replicas on other SEs'),
    ('-P', 'posc', 'flag', True, '  -P, -cksum      accepted (md5 is always verified on download)'),
    ('-cksum', 'cksum', 'flag', True),
    ('-skipmd5', 'skipmd5', 'flag', False, '  -skipmd5, -fastcheck  accepted with a notice: the md5 is always verified'),
    ('-fastcheck', 'fastcheck', 'flag', False),
    # accepted and ignored, as the reference client ignores them (find options it does not
    # pass on, its unimplemented verbose mode, its unused -xrdcp)
    ('-v -s -c -w -wh -d -xrdcp', None, 'ignore', None,
     '  -v, -s, -c, -w, -wh, -d, -xrdcp  accepted and ignored, as by the reference client; -tpc refused'),
    ('-tpc', 'tpc', 'flag', False),
    'directories (recursive; listed with the service\'s find):',
    ('-glob', 'glob', 'str', '', '  -glob PAT | -select REGEX (full path) | -name begin_X_contain_Y_ends_Z_ext_W'),
    ('-select', 'select', 'str', ''), ('-name', 'name', 'str', ''),
    ('-parent', 'parent', 'int', 0, '  -parent N       keep the last N directories of the source path'),
    ('-rmprefix', 'rmprefix', 'int', 0, '  -rmprefix N     drop the first N directories of the source path'),
    ('-a', 'hidden', 'flag', True, '  -a (hidden files, always on)  -j JOBID  -l COUNT  -o OFFSET  (passed to find)'),
    ('-j', 'jobid', 'str', ''), ('-l', 'limit', 'int', 0), ('-o', 'offset', 'int', 0),
    ('-e', 'exclude_pat', 'list', (),
     '  -e PATTERN      exclude files whose relative path contains PATTERN (* = any text; repeatable)'),
    # client-side filters on the listed files (relative path, size, owner, time)
    '  filters: -exclude TEXT, -exclude_re REGEX (relative path; repeatable), -minsize/-maxsize BYTES,',
    '  -mindepth/-maxdepth N, -user U, -group G, -jobid ID, -min-ctime/-max-ctime T (ms, s, YYYY-mm-dd)',
    ('-exclude', 'exclude', 'list', ()), ('-exclude_re', 'exclude_re', 'list', ()),
    ('-minsize', 'minsize', 'int', None), ('-maxsize', 'maxsize', 'int', None),
    ('-mindepth', 'mindepth', 'int', None), ('-maxdepth', 'maxdepth', 'int', None),
    ('-user', 'user', 'str', ''), ('-group', 'group', 'str', ''), ('-jobid', 'jobid_is', 'str', ''),
    ('-min-ctime', 'min_ctime', 'time', None), ('-max-ctime', 'max_ctime', 'time', None),
    ('-input', 'input', 'str', ''), ('-dst', 'dst', 'str', ''),
    'exit code: 0 only when every requested file reached its destination',
], head='''cp [options] SRC DST
cp [options] -input FILE        (one "SRC DST" pair per line; # ; // comments)
cp [options] -dst DIR SRC...    (each SRC to DIR/<its path below the sources' common directory>)
  local side: file:PATH (or an existing local path); grid side: LFN, alien:LFN
  grid specifiers after the LFN: LFN@disk:2,ALICE::SITE::SE,!ALICE::SITE::SE''', code=EX_EINVAL,
    check=_one_selection_rule)
CP_USAGE = CP_OPTIONS.usage
# cp defaults the reference client reads from XRootD's variables
_CP_ENV_DEFAULTS = (('XRD_CPRETRY', 'retry'), ('XRD_CPTIMEOUT', 'timeout'), ('XRD_XRATETHRESHOLD', 'ratethreshold'),
                    ('XRD_SUBSTREAMSPERCHANNEL', 'streams'), ('XRD_CPPARALLELCHUNKS', 'chunks'),
                    ('XRD_CPCHUNKSIZE', 'chunksize'))


def parse_cp_args(args, environ=None):
    """Parse cp arguments -> (options dict, positional list) by CP_OPTIONS. The XRD_*
    variables of _CP_ENV_DEFAULTS in environ (default: os.environ) replace the defaults."""
    defaults = {}
    environ = os.environ if environ is None else environ
    for var, key in _CP_ENV_DEFAULTS:
        value = environ.get(var, '').strip()
        if value:
            try:
                defaults[key] = abs(int(value))
            except ValueError:
                raise AlienError('cp: %s=%r is not an integer' % (var, value), EX_EINVAL)
    opts, pos = parse_args('cp', args, CP_OPTIONS, defaults)
    if opts['parallel'] is not None:    # None: CP_PARALLEL large / CP_INFLIGHT small files at once
        opts['parallel'] = max(opts['parallel'], 1)
    opts['streams'], opts['sources'] = min(opts['streams'], 15), max(opts['sources'], 1)
    return opts, pos


def name_verbs_to_regex(value):
    """-name begin_X_contain_Y_ends_Z_ext_W -> a full-path regex. Each verb takes the text (literal)
    up to the next '_': the name starts with X, then contains Y (several, in order), ends with Z
    before the extension W. E.g. begin_myf_contain_run1_ext_root -> .*/myf[^/]*run1[^/]*\\.root$"""
    tokens = value.split('_')
    if len(tokens) % 2 or not tokens:
        raise AlienError('cp: -name needs verb_value pairs (begin_, contain_, ends_, ext_): %r' % value, EX_EINVAL)
    begin = ext = ends = None
    contains = []
    for verb, text in zip(tokens[0::2], tokens[1::2]):
        if not text:
            raise AlienError('cp: -name verb %s has no text: %r' % (verb, value), EX_EINVAL)
        if verb == 'begin' and begin is None:
            begin = text
        elif verb == 'ext' and ext is None:
            ext = text
        elif verb == 'ends' and ends is None:
            ends = text
        elif verb == 'contain':
            contains.append(text)
        else:
            raise AlienError('cp: -name: unknown or repeated verb %r in %r '
                             '(use begin_X, contain_X, ends_X, ext_X)' % (verb, value), EX_EINVAL)
    return ('.*/' + re.escape(begin or '') + ''.join('[^/]*' + re.escape(c) for c in contains) + '[^/]*'
            + re.escape(ends or '') + (r'\.' + re.escape(ext) if ext is not None else '') + '$')


_REPLICA_COUNT = r'[A-Za-z][A-Za-z0-9_-]*[:=]\d+'       # disk:2: how many replicas to write
_REPLICA_COUNT_RE = LazyRegex('^%s$' % _REPLICA_COUNT)
_SPEC_TOKEN_RE = LazyRegex(r'^(!?[A-Za-z0-9_.-]+::[A-Za-z0-9_.-]+::[A-Za-z0-9_.-]+|%s)$' % _REPLICA_COUNT)


def split_specs(arg):
    """'path@disk:2,SE1,!SE2' or 'path,disk:2' -> ('path', ['disk:2', 'SE1', '!SE2']). '@' always
    starts the specifiers; a ',' only when every token after it is one (a name may hold a comma)."""
    m = re.match(r'^((?:alien|file):(?://)?)?', arg)     # (matches with no prefix too)
    prefix, head = m.group(1) or '', arg[m.end():]
    at = '@' in head
    if not at and ',' not in head:
        return arg, []
    path, rest = head.split('@' if at else ',', 1)
    specs = [t for t in re.split('[@,]', rest) if t]
    if not at and not (specs and all(_SPEC_TOKEN_RE.match(t) for t in specs)):
        return arg, []
    for t in specs:
        if not _SPEC_TOKEN_RE.match(t):
            raise AlienError('cp: invalid storage specifier %r in %r (use disk:N, SITE::NAME::SE, !SITE::NAME::SE)'
                             % (t, arg), EX_EINVAL)
        if _REPLICA_COUNT_RE.match(t) and int(re.split('[:=]', t)[1]) < 1:
            raise AlienError('cp: replica count must be > 0 in %r' % t, EX_EINVAL)
    return prefix + path, specs


_SHELL_BLANKS = LazyRegex('[ \t\r\n]+')   # what shlex splits on (str.split() knows more)


def parse_input_lines(text):
    """-input file content -> ([(src, dst), ...], [notices]). Blank lines and lines starting with #, ;
    or // are ignored; fields are shell-quoted; a line without 2 fields is skipped with a notice."""
    pairs, notices = [], []
    skipped = 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(('#', ';', '//')):
            continue
        if len(pairs) >= INPUT_MAX_LINES:
            raise AlienError('cp: -input holds more than %d "src dst" lines' % INPUT_MAX_LINES, EX_EINVAL)
        try:
            # shlex costs ~70x a plain split: 100,000 lines took 2-30 s before any transfer
            fields = shlex.split(s) if any(c in s for c in '\'"\\') else _SHELL_BLANKS.split(s)
            why = None if len(fields) == 2 else 'need "src dst"'
        except ValueError as e:
            why = str(e)
        if why is None:
            pairs.append((fields[0], fields[1]))
            continue
        skipped += 1
        if skipped <= 100:
            notices.append('cp -input line %d skipped (%s): %s' % (n, why, visible(s, newlines=True)))
    if skipped > 100:
        notices.append('cp -input: %d more lines skipped' % (skipped - 100))
    return pairs, notices


def dst_dir_targets(sources, dst_dir):
    """-dst DIR: absolute source paths -> one destination directory each, DIR/<source's directory
    below the common directory of all sources>/ (the name is added by the usual naming rules),
    with DIR's prefix and storage specifiers."""
    import posixpath
    m = re.match(r'^((?:alien|file):(?://)?)', dst_dir)
    prefix = m.group(1) if m else ''
    path, specs = split_specs(dst_dir[len(prefix):]) if not prefix.startswith('file') else (dst_dir[len(prefix):], [])
    dirs = [posixpath.dirname(s.rstrip('/')) or '/' for s in sources]
    common = posixpath.commonpath(dirs) if dirs else '/'
    out = []
    for d in dirs:
        rel = d[len(common):].strip('/')
        target = path.rstrip('/') + '/' + (rel + '/' if rel else '')
        out.append(prefix + target + ('@' + ','.join(specs) if specs else ''))
    return out


def cp_side(arg):
    """'file:x' -> ('local', 'x'), 'alien:x' -> ('grid', 'x'), else (None, arg)."""
    for side, prefix in (('local', _LOCAL_PREFIX), ('grid', _GRID_PREFIX)):
        m = prefix.match(arg)
        if m:
            return side, arg[m.end():] or '.'
    return None, arg


def cp_direction(src, dst, local_exists):
    """One pair -> ('upload'|'download', src_path, dst_path); local_exists(path) is asked only when
    neither side has a prefix."""
    s_side, s_path = cp_side(src)
    d_side, d_path = cp_side(dst)
    if s_side is None and d_side is None:
        s_side = 'local' if local_exists(s_path) else 'grid'
    if s_side is None:
        s_side = 'grid' if d_side == 'local' else 'local'
    if d_side is None:
        d_side = 'grid' if s_side == 'local' else 'local'
    if s_side == d_side == 'grid':
        raise AlienError('cp: grid to grid copy is not supported: download and upload in two steps '
                         '(mark local paths with file:)', EX_GENERIC)
    if s_side == d_side == 'local':
        raise AlienError('cp: both sides are local: use the system cp (mark grid paths with alien:)', EX_GENERIC)
    return ('upload' if s_side == 'local' else 'download'), s_path, d_path


def split_glob(path):
    """'/a/b/*.log' -> ('/a/b/', '*.log'); a path without '*' -> (path, '')."""
    if '*' not in path:
        return path, ''
    parts = path.split('/')
    for i, p in enumerate(parts):
        if '*' in p:
            return '/'.join(parts[:i]) + '/', '/'.join(parts[i:])
    return path, ''


def _components(dirpath):
    """'/a/b/' -> ['a', 'b'] (real directories, the root not counted)."""
    return [c for c in dirpath.split('/') if c and c != '.']


def cp_dst_name(src_dir, rel, dst, parent=0, rmprefix=0):
    """Destination of one file. src_dir: the file's directory for a single file, the
    copied directory for a recursive copy; rel: the file's path below src_dir; dst:
    a directory when it ends with '/', else the exact target name. parent N keeps
    the last N directories of src_dir, rmprefix N those after the first N."""
    if not dst.endswith('/'):
        return dst
    dirs = _components(src_dir)
    if rmprefix > 0:
        keep = dirs[min(rmprefix, len(dirs)):]
    elif parent > 0:
        keep = dirs[-parent:] if parent < len(dirs) else dirs
    else:
        keep = []
    return posix_normpath(dst + '/'.join(keep + [rel]))


def glob_to_regex(pattern):
    """Shell glob -> regex on a relative path: '*' and '?' stay in one path component, '**/' crosses
    directories; a pattern without '/' matches the file name at any depth."""
    out = ''
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith('**/', i):
            out += '(?:.*/)?'
            i += 3
            continue
        if pattern.startswith('**', i):
            out += '.*'
            i += 2
            continue
        if c == '*':
            out += '[^/]*'
        elif c == '?':
            out += '[^/]'
        elif c == '[':
            j = pattern.find(']', i + 1)
            if j < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1:j]
                if body.startswith('!'):
                    body = '^' + body[1:]
                out += '[' + body.replace('\\', '\\\\') + ']'
                i = j
        else:
            out += re.escape(c)
        i += 1
    if '/' not in pattern:
        out = '(?:.*/)?' + out
    return '^' + out + '$'


def user_regex(pattern, flags=0, what='cp'):
    """A regular expression typed by the user, compiled; AlienError (exit 64) when it is not one, nests
    too deep for the compiler (RecursionError) or is too large; no FutureWarnings are printed."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return re.compile(pattern, flags)
    except (re.error, RecursionError, OverflowError, ValueError) as e:
        raise AlienError('%s: invalid regex %s: %s' % (what, visible(repr(pattern[:100])), e), EX_USAGE)


def cp_filter(opts, glob_pattern=''):
    """-> function(full_path, rel_path) -> bool for the selection options."""
    if glob_pattern or opts.get('glob'):
        rx = user_regex(glob_to_regex(glob_pattern or opts['glob']), re.S)
        return lambda full, rel: bool(rx.match(rel))
    regex = opts.get('select') or (name_verbs_to_regex(opts['name']) if opts.get('name') else '')
    if regex:
        rx = user_regex(regex, re.S)
        return lambda full, rel: bool(rx.match(full))
    return lambda full, rel: True


def cp_meta_filter(opts):
    """Client-side filters -> (needs file metadata, function(rel, meta) -> bool or None when no filter
    is set). meta: size, owner, gowner, ctime (ms), jobid; a value not listed never excludes a file."""
    tests = []
    for s in opts.get('exclude') or ():
        tests.append(lambda rel, m, s=s: s not in rel)
    for p in opts.get('exclude_pat') or ():   # -e: '*' stands for any text
        rx = re.compile('.*'.join(re.escape(x) for x in p.split('*')), re.S)
        tests.append(lambda rel, m, rx=rx: not rx.search(rel))
    for r in opts.get('exclude_re') or ():
        rx = user_regex(r)
        tests.append(lambda rel, m, rx=rx: not rx.search(rel))
    if opts.get('mindepth') is not None:
        tests.append(lambda rel, m, n=opts['mindepth']: rel.count('/') >= n)
    if opts.get('maxdepth') is not None:
        tests.append(lambda rel, m, n=opts['maxdepth']: rel.count('/') <= n)
    by_meta = []
    for key, field, check in (('minsize', 'size', lambda v, x: v >= x), ('maxsize', 'size', lambda v, x: v <= x),
                              ('min_ctime', 'ctime', lambda v, x: v >= x), ('max_ctime', 'ctime', lambda v, x: v <= x),
                              ('user', 'owner', lambda v, x: v == x), ('group', 'gowner', lambda v, x: v == x),
                              ('jobid_is', 'jobid', lambda v, x: str(v) == str(x))):
        x = opts.get(key)
        if x is None or x == '':
            continue
        by_meta.append(lambda rel, m, f=field, c=check, x=x: m.get(f) is None or c(m[f], x))
    tests += by_meta
    if not tests:
        return False, None
    return bool(by_meta), lambda rel, m: all(t(rel, m) for t in tests)


def ctime_ms(v):
    """A catalogue time stamp in ms: the 2021 service gives seconds (ls -l, stat, find -f),
    the newer one ms. Below 10^11 (1973 in ms, the year 5138 in seconds) it is seconds."""
    n = _int_or_none(v)
    return n * 1000 if n is not None and n < 10 ** 11 else n


def stat_fields(result):
    """Normalise one `stat` result (2021 service: `file`, newer: `lfn`)."""
    r = dict(result or {})
    path = r.get('lfn') or r.get('file') or r.get('path') or r.get('name') or ''
    kind = (r.get('type') or 'f')[:1].lower()
    try:
        size = int(r.get('size') or 0)
    except ValueError:
        size = 0
    return {'path': path, 'type': kind, 'size': size, 'md5': (r.get('md5') or '').lower(),
            'guid': (r.get('guid') or '').lower()}


# ---- replies that answer their own request ------------------------------------
# Session.request_many sends requests several at a time only when each has a check:
# check(result) -> True (the reply provably answers this request), None (it cannot
# tell: an error naming nothing), False (it cannot be this request's reply). On the
# real endpoint a request sent while another runs can get the other one's reply.

def _error_naming(r, name):
    if r.results:
        return False
    return True if name and r.err.rstrip().endswith(' : ' + name) else None


def check_stat(lfn):
    """A stat reply names its LFN (2024: lfn, 2021: file); its 'not found' error does too."""
    want = lfn.rstrip('/')

    def check(r):
        if r.exitcode != 0:
            return _error_naming(r, lfn)
        return len(r.results) == 1 and stat_fields(r.results[0])['path'].rstrip('/') == want
    return check


def check_access(size=-1, md5='', guid='', write=False):
    """An access reply: the replicas of one file, one GUID (the listed one, for a read), each URL
    ending in it (but an archive member's, URL#member), the size and md5 that were listed (read) or
    asked for (write: as many rows as nSEs says). A write reply with another file's size and md5 may
    still book another name: its bytes are then that name's own. (The SE checks the opaque envelope.)"""
    md5, guid = (md5 or '').lower(), (guid or '').lower()

    def check(r):
        if r.exitcode != 0 or not r.results:
            return None if r.exitcode != 0 and not r.results else False
        guids = set()
        for x in r.results:
            g = str(x.get('guid') or '').lower()
            guids.add(g)
            if size >= 0 and str(x.get('size')) != str(size) or md5 and str(x.get('md5') or '').lower() != md5:
                return False
            url = str(x.get('url') or '')
            if '#' not in url and not url.endswith(g) or \
                    write and (not g or str(x.get('nSEs', len(r.results))) != str(len(r.results))):
                return False
        return len(guids) == 1 and (not guid or guid in guids)
    return check


def check_commit(lfn, guid):
    """A commit reply names the LFN it was given (path) and the PFN it registered, whose name ends in
    the booking's GUID. A refusal (lfn '0') proves nothing: the same arguments may have run twice."""
    def check(r):
        rows = r.results
        if len(rows) != 1 or str(rows[0].get('path', '')) != lfn:
            return None if r.exitcode != 0 and not rows else False
        if r.exitcode == 0 and str(rows[0].get('lfn')) == '1':
            return bool(guid) and str(rows[0].get('pfn') or '').endswith(guid)
        return None
    return check


def check_mkdir(r):
    """mkdir -p: done, with nothing to print. Nothing else rests on it: access and
    commit make missing directories themselves."""
    return None if r.exitcode != 0 and not r.results else (r.exitcode == 0 and not r.results)


def _grid_stat(session, lfn, cache=None):
    """stat of lfn -> stat_fields dict, None when it does not exist; cache: _prefetch_stats's replies."""
    if cache is not None and lfn in cache:
        return _stat_of(cache[lfn], lfn)
    return _stat_of(session.request('stat', [lfn], nomsg=True), lfn)


def _stat_of(r, lfn):
    if r.exitcode != 0 or not r.results:
        return None
    st = stat_fields(r.results[0])
    if not st['path']:
        st['path'] = lfn
    return st


def _grid_find(session, base, opts, glob_pattern='', rows=None, known=None):
    """Every file under the grid directory base (ends with '/') -> [lfn] (cp, find2).
    rows: a list to fill with the listing's row of each of them (all fields);
    known: a dict to fill with {lfn: (size, md5, guid)} (all fields too)."""
    args = ['-a', '-s']
    for flag, key in (('-j', 'jobid'), ('-l', 'limit'), ('-o', 'offset')):
        if opts.get(key):
            args += [flag, str(opts[key])]
    # Selection is applied here on the client (exact glob/regex semantics); the
    # service only lists, so its pattern dialect cannot change what matches.
    needs_meta, meta_ok = cp_meta_filter(opts)
    if needs_meta or rows is not None or known is not None:
        args.insert(0, '-f')        # all fields: size, md5, owner, gowner, ctime, jobid
    args += [base, '*']
    r = session.request('find', args, nomsg=True)
    if r.exitcode != 0:
        raise AlienError('find %s failed: %s' % (base, r.err or 'exit code %d' % r.exitcode),
                         EX_ENOENT if r.exitcode == 2 else (r.exitcode if r.exitcode > 0 else EX_GENERIC))
    keep = cp_filter(opts, glob_pattern)
    out = []
    for item in r.results:
        lfn = item.get('lfn') or item.get('path') or item.get('message') or ''
        if not lfn or lfn.endswith('/') or lfn.endswith('.'):
            continue
        rel = lfn[len(base):] if lfn.startswith(base) else lfn.rsplit('/', 1)[-1]
        if not keep(lfn, rel):
            continue
        if meta_ok is not None:
            meta = {'size': _int_or_none(item.get('size')), 'owner': item.get('owner'),
                    'gowner': item.get('gowner'), 'ctime': ctime_ms(item.get('ctime') or item.get('mtime')),
                    'jobid': item.get('jobid')}
            if not meta_ok(rel, meta):
                continue
        if rows is not None:
            rows.append(item)
        if known is not None and item.get('type', 'f') == 'f':
            known[lfn] = (_int_or_none(item.get('size'), -1), (item.get('md5') or '').lower(),
                          (item.get('guid') or '').lower())
        out.append(lfn)
    return out


def _local_meta(path):
    st = os.stat(path)
    meta = {'size': st.st_size, 'ctime': int(st.st_mtime * 1000), 'jobid': None}
    try:
        import pwd
        import grp
        meta['owner'] = pwd.getpwuid(st.st_uid).pw_name
        meta['gowner'] = grp.getgrgid(st.st_gid).gr_name
    except (ImportError, KeyError):
        meta['owner'] = meta['gowner'] = None
    return meta


def _local_walk(base, opts, glob_pattern=''):
    keep = cp_filter(opts, glob_pattern)
    _needs, meta_ok = cp_meta_filter(opts)
    out = []
    for root, dirs, files in os.walk(base, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            if not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, base)
            if keep(full, rel) and (meta_ok is None or meta_ok(rel, _local_meta(full))):
                out.append(full)
    return out


def _access_args(mode, lfn, specs=None, size=None, md5=None, strict=False, http=False):
    args = ['-f'] if strict and specs else []
    if http:
        args.append('-u')   # HTTP replica URLs
    if size is not None:
        args += ['-s', str(size)]
    if md5:
        args += ['-m', md5]
    args += [mode, lfn]
    if specs:
        args.append(','.join(specs))
    return args


REQUEST_WINDOW = 128


def _requests(session, requests, window=REQUEST_WINDOW):
    """[(command, options)] -> [Result], in order (nomsg), several requests in flight on the
    connection: over a WAN, 1,000 files cost 2,000 round trips one after the other."""
    return session.request_many(requests, nomsg=True, window=window)


# small job files (scripts, macros, JDLs, collections) get more replicas, as with the reference
JOB_FILE_EXTENSIONS = ('.sh', '.C', '.jdl', '.xml')


def _with_default_specs(specs, lfn='', size=None):
    """Upload specifiers with the default replica count: disk:4 for a job file under
    1 MiB with no specifier at all, else disk:2 unless a count or an SE is named."""
    if any(_REPLICA_COUNT_RE.match(s) for s in specs) or \
            any('::' in s and not s.startswith('!') for s in specs):
        return specs
    if not specs and lfn.endswith(JOB_FILE_EXTENSIONS) and size is not None and size < (1 << 20):
        return ['disk:4']
    return ['disk:2'] + list(specs)


def _local_exists(p):
    return os.path.lexists(os.path.expanduser(split_specs(p)[0]))


def _prefetch_stats(session, pairs):
    """The grid paths cp_plan will stat for these pairs, asked for at once (one round trip per window,
    not per line of a -input list) -> {lfn: Result} for _grid_stat's cache."""
    lfns = []
    for src, dst in pairs:
        try:
            direction, s_raw, d_raw = cp_direction(src, dst, _local_exists)
        except AlienError:
            continue
        g_path = split_specs(s_raw if direction == 'download' else d_raw)[0]
        if direction == 'download' and split_glob(g_path)[1]:
            continue
        lfn = session.grid_path(g_path)
        if direction == 'download':
            lfns.append(lfn.rstrip('/') or '/')
        elif not lfn.endswith('/'):
            lfns.append(lfn)
    lfns = list(dict.fromkeys(lfns))
    return dict(zip(lfns, _requests(session, [('stat', [lfn], check_stat(lfn)) for lfn in lfns],
                                    window=4 * REQUEST_WINDOW)))


def cp_plan(session, src, dst, opts, stats_cache=None, known=None, facts=None):
    """One src/dst pair -> ('download'|'upload', [(src, dst, specs)]). A directory source is copied
    recursively into a directory: 'dir' copies the directory itself (parent + 1), 'dir/' or a glob
    its content (rsync convention). facts: a LocalFacts to read an existing destination directory
    into while the grid side is listed (with known: present files are skipped unread)."""
    direction, s_raw, d_raw = cp_direction(src, dst, _local_exists)
    g_raw, l_path = (s_raw, d_raw) if direction == 'download' else (d_raw, s_raw)
    g_path, specs = split_specs(g_raw)
    if direction == 'download':
        base, pattern = split_glob(g_path)
        lfn = session.grid_path(base if pattern else g_path)
        local = expand_local_path(l_path)
        if pattern or g_path.endswith('/') and stats_cache is None:
            is_dir = True     # a directory by its name: its listing says so if it is not
        else:
            st = _grid_stat(session, lfn.rstrip('/') or '/', stats_cache)
            if st is None:
                raise AlienError('cp: source %s not found' % lfn, EX_ENOENT)
            is_dir = st['type'] == 'd'
            if known is not None and not is_dir:
                known[lfn.rstrip('/')] = (st['size'], st['md5'], st['guid'])
        if not is_dir:
            if os.path.isdir(local) and not local.endswith('/'):
                local += '/'
            d, name = lfn.rstrip('/').rsplit('/', 1)
            return 'download', [(lfn.rstrip('/'), cp_dst_name(d + '/', name, local, opts['parent'],
                                                              opts['rmprefix']), specs)]
        parent = opts['parent'] + (0 if pattern or g_path.endswith('/') else 1)
        lfn = lfn.rstrip('/') + '/'
        local = local.rstrip('/') + '/'
        # files may be present already only when the destination directory is
        present = known is not None and os.path.isdir(local)
        if present and facts is not None:
            facts.prefetch(local)
        try:
            files = _grid_find(session, lfn, opts, pattern, known=known)
        except AlienError as e:
            if e.exitcode == EX_ENOENT and not pattern:
                raise AlienError('cp: source %s not found' % lfn, EX_ENOENT)
            raise
        finally:
            if facts is not None:
                facts.stop()
        if not files:
            raise AlienError('cp: no files found in %s' % lfn, EX_ENOMSG)
        # named as they are consumed: the first files transfer while later names are made
        return 'download', ((f, cp_dst_name(lfn, f[len(lfn):], local, parent, opts['rmprefix']), specs)
                            for f in files)
    # upload
    base, pattern = split_glob(l_path)
    local = expand_local_path(base if pattern else l_path)
    if not pattern and not os.path.exists(local):
        raise AlienError('cp: source %s not found' % l_path, EX_ENOENT)
    lfn = session.grid_path(g_path)
    if not pattern and not os.path.isdir(local):
        if not lfn.endswith('/'):
            st = _grid_stat(session, lfn, stats_cache)
            if st is not None and st['type'] == 'd':
                lfn += '/'
        d, name = local.rstrip('/').rsplit('/', 1)
        return 'upload', [(local.rstrip('/'), cp_dst_name(d + '/', name, lfn, opts['parent'],
                                                          opts['rmprefix']), specs)]
    parent = opts['parent'] + (0 if pattern or l_path.endswith('/') else 1)
    local = local.rstrip('/') + '/'
    lfn = lfn.rstrip('/') + '/'
    files = _local_walk(local, opts, pattern)
    if not files:
        raise AlienError('cp: no files found in %s' % local, EX_ENOMSG)
    return 'upload', [(f, cp_dst_name(local, f[len(local):], lfn, parent, opts['rmprefix']), specs)
                      for f in files]


_SURROGATE = LazyRegex('[\ud800-\udfff]')
# anything cp_name_problem may object to; most names have none of it
_NAME_SUSPECT = LazyRegex('[\ud800-\udfff\x00\n\r]|(?:^|/)\\.\\.?(?:/|$)|[^/]{64}')


def cp_name_problem(path, side):
    """Why path cannot be a file name on side ('grid': an LFN the catalogue can
    hold; 'local': a local destination name), or '' when it can."""
    if _NAME_SUSPECT.search(path) is None:      # 1,000s of names per copy: one scan each
        return ''
    if _SURROGATE.search(path):
        return 'the name is not valid UTF-8'
    if '\x00' in path:
        return 'the name holds a NUL character'
    if side == 'grid':
        if '\n' in path or '\r' in path:
            return 'a grid file name cannot hold a line break'
        if any(c in ('.', '..') for c in path.split('/')):
            return 'a grid file name cannot have "." or ".." components'
    elif any(len(c.encode('utf-8')) > 255 for c in path.split('/')):
        return 'a name component is longer than 255 bytes'
    return ''


def cp_refuse_bad_names(items, direction, stats):
    """Planned items -> (as they are consumed) those whose names both sides can hold; each other one is
    refused up front with a one-line reason (nothing is booked for it)."""
    for src, dst, specs in items:
        lfn, local = (dst, src) if direction == 'upload' else (src, dst)
        why = cp_name_problem(lfn, 'grid') or (direction == 'download' and cp_name_problem(local, 'local'))
        if why:
            stats.fail(src, 'refused %s -> %s: %s' % (visible(src, newlines=True), visible(dst, newlines=True), why))
        else:
            yield src, dst, specs


def _top_dirs(lfns):
    """The directory all these LFNs are in (the deepest one), or, when that is the
    root, the directories of them that are not below another one of them."""
    dirs = set(lfn.rsplit('/', 1)[0] or '/' for lfn in lfns)
    common = os.path.commonpath(list(dirs)) if dirs else '/'
    if common != '/':
        return [common]

    def below_another(d):
        while d.count('/') > 1:
            d = d.rsplit('/', 1)[0]
            if d in dirs:
                return True
        return False
    return sorted(d for d in dirs if not below_another(d))


def cp_upload_dirs(items):
    """The mkdir -p requests of the top destination directories (the service makes
    the ones below when it registers a file in them)."""
    return [('mkdir', ['-p', d], check_mkdir) for d in _top_dirs(lfn for _, lfn, _ in items)]


# ==========================================================================
# Transfers: XRootD I/O
# ==========================================================================

def part_name(final):
    """Temporary name next to final: '.<name>.alienpy-part-<random>' (no
    characters XRootD would read as URL syntax)."""
    d, base = os.path.split(final)
    safe = re.sub(r'[?#&%\x00-\x1f]', '_', base)[:150]
    return os.path.join(d, '.%s.alienpy-part-%s' % (safe, os.urandom(6).hex()))


def md5_file(path, chunk=1 << 20, stop=None):
    """md5 hex digest of a local file (OSError if unreadable); None when stop is set before the end."""
    return md5_and_size(path, chunk, stop)[0]


def md5_and_size(path, chunk=1 << 20, stop=None):
    """(md5 hex digest, bytes read) of a local file: the size that was hashed."""
    h = hashlib.md5()
    buf = bytearray(chunk)
    view = memoryview(buf)
    size = 0
    with open(path, 'rb', buffering=0) as f:
        while True:
            if stop is not None and stop.is_set():
                return None, size
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def split_member(url):
    """A replica URL of a zip archive member, 'pfn#member' -> (pfn, member);
    (url, '') for a plain replica. PFNs hold no '#', member names may."""
    base, _, member = url.partition('#')
    return base, member


def member_needs_local_unzip(member):
    """True for a member XRootD cannot find through xrdcl.unzip=NAME: it takes the value verbatim up to
    the next '&', decoding no %-escapes, and a name with '&' or '?' is not found either way (checked
    with xrdcp). Its archive is fetched whole and unzipped here instead."""
    return '&' in member or '?' in member


def grid_url(url, envelope, extra=''):
    """Replica URL + authorisation envelope (+ extra opaque) for XRootD."""
    base, member = split_member(url)
    sep = '&' if '?' in base else '?'
    full = '%s%sxrd.wantprot=unix&authz=%s' % (base, sep, envelope)
    if member:
        full += '&xrdcl.unzip=' + member
    return full + extra


# ---- XRootD -----------------------------------------------------------------

_XRD_CLIENT = []


_XRD_MISSING = '%s needs the XRootD Python bindings: pip install xrootd (or apt install python3-xrootd)'


def require_xrootd(what='cp'):
    """AlienError when the XRootD bindings are not installed, without importing
    them (a copy with every file present never needs them)."""
    if not _XRD_CLIENT:
        import importlib.util
        if importlib.util.find_spec('XRootD') is None:
            raise AlienError(_XRD_MISSING % what, EX_GENERIC)


def xrootd_client(what='cp'):
    """Import XRootD once and apply our defaults; AlienError if it is missing
    (`what`: the command that needs it, named in the one-line message)."""
    if _XRD_CLIENT:
        return _XRD_CLIENT[0]
    try:
        from XRootD import client
    except Exception:
        raise AlienError(_XRD_MISSING % what, EX_GENERIC)
    # Page checksums (pgread/pgwrite) cost 3-4x throughput on CPU-bound hosts; downloads are verified
    # end to end with the catalogue md5 and every later reader verifies what we uploaded, so they are
    # off unless the user sets XRD_CPUSEPGWRTRD. A refused connection is retried for ConnectionWindow
    # seconds ConnectionRetry times (default 5 x 120 s): we fail over to the next replica instead, so
    # one attempt within 15 s. The rest as the reference client sets them, so that SEs see a grid
    # client: application name, timeouts (s), idle connections closed early.
    defaults = (('XRD_CPUSEPGWRTRD', 'CpUsePgWrtRd', 0),
                ('XRD_CONNECTIONRETRY', 'ConnectionRetry', 1),
                ('XRD_CONNECTIONWINDOW', 'ConnectionWindow', 15),
                ('XRD_APPNAME', 'AppName', 'alien.py/%s xrootd/%s' % (VERSION, getattr(client, '__version__', '?'))),
                ('XRD_TIMEOUTRESOLUTION', 'TimeoutResolution', 1),
                ('XRD_REQUESTTIMEOUT', 'RequestTimeout', 1200),
                ('XRD_STREAMTIMEOUT', 'StreamTimeout', 60),
                ('XRD_CPINITTIMEOUT', 'CPInitTimeout', 90),
                ('XRD_DATASERVERTTL', 'DataServerTTL', 20),
                ('XRD_LOADBALANCERTTL', 'LoadBalancerTTL', 30),
                ('XRD_ZIPMTLNCKSUM', 'ZipMtlnCksum', 1),
                ('XRD_CPRETRYPOLICY', 'CpRetryPolicy', 'force'))
    for env, key, value in defaults:
        if env not in os.environ:
            (client.EnvPutString if isinstance(value, str) else client.EnvPutInt)(key, value)
    _XRD_CLIENT.append(client)
    return client


class CopyJob(object):
    """One file transfer: source/target URLs plus what to do afterwards."""
    __slots__ = ('source', 'target', 'size', 'md5', 'sources', 'info', 'ok', 'error', 'retry', 'attrs', 'stamped')

    def __init__(self, source, target, size=0, md5='', sources=1, info=None):
        self.source, self.target, self.size, self.md5 = source, target, size, md5
        self.sources, self.info, self.ok, self.error = sources, info, False, ''
        self.retry = None       # XRootD retries; None: the -retry option
        self.attrs = None       # download: write_xattrs arguments (lfn, guid, md5) for the target
        self.stamped = False    # the target has its size and those attributes (a VerifiedRead did it)


class _Progress(object):
    """Progress of one transfer set on one stderr line (tty only, not with -quiet)."""

    def __init__(self, opts, label):
        self.enabled, self.label = not opts.get('quiet') and sys.stderr.isatty(), label
        self.total_files = self.total_bytes = self.done_files = self.done_bytes = 0
        self.current = {}
        self.start, self.last, self.cancel = time.time(), 0.0, False
        self.lock = threading.Lock()   # many transfers report at once

    # CopyProgressHandler interface (called from XRootD threads)
    def begin(self, job, total, source, target):
        with self.lock:
            self.current[job] = 0

    def update(self, job, processed, total):
        with self.lock:
            self.current[job] = processed
        self.show()

    def end(self, job, results):
        status = results.get('status') if hasattr(results, 'get') else None
        with self.lock:
            moved = self.current.pop(job, 0)
            if status is not None and getattr(status, 'ok', False):
                moved = results.get('size') or moved
            self.done_bytes += moved or 0
            self.done_files += 1
        self.show()

    def should_cancel(self, job):
        return self.cancel

    def show(self, final=False):
        if not self.enabled:
            return
        now = time.time()
        if not final and now - self.last < 0.25:
            return
        self.last = now
        with self.lock:
            moved = self.done_bytes + sum(self.current.values())
        rate = moved / max(now - self.start, 1e-6)
        left = self.total_bytes - moved
        eta = ('%ds' % (left / rate)) if rate > 0 and left > 0 else '-'
        line = '%s%d/%d files  %s/%s  %s/s  ETA %s' % (
            self.label, self.done_files, self.total_files, human_bytes(moved),
            human_bytes(self.total_bytes), human_bytes(rate), eta)
        sys.stderr.write('\r\x1b[K' + term_text(line, sys.stderr) + ('\n' if final else ''))
        sys.stderr.flush()


def metalink_text(lfn, size, md5, urls):
    """Metalink 4 document listing every replica (cp -y N > 1, lfn2uri meta)."""
    from xml.sax.saxutils import escape
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<metalink xmlns="urn:ietf:params:xml:ns:metalink">',
             ' <file name="%s">' % escape(os.path.basename(lfn) or 'file')]
    if size >= 0:
        lines.append('  <size>%d</size>' % size)
    if md5:
        lines.append('  <hash type="md5">%s</hash>' % md5)
    for u in urls:
        lines.append('  <url><![CDATA[%s]]></url>' % u.replace(']]>', ']]]]><![CDATA[>'))
    lines += [' </file>', '</metalink>', '']
    return '\n'.join(lines)


# ---- cp: extended attributes of downloaded files ------------------------------
# A download records the reference client's attributes (user.lfn, user.guid, user.md5, user.size,
# user.ts_r, user.ts_w). Here ts_w is the file's mtime in ms when it was delivered: a later write
# moves the mtime, so a re-run can tell an untouched file (skipped without reading it) from one whose
# bytes may differ (hashed again).

def _mtime_ms(st):
    return str(st.st_mtime_ns // 1000000)


def write_xattrs(path, lfn='', guid='', md5='', size=None):
    """Record what path (or an open file descriptor) holds -> False when there are no user xattrs."""
    try:
        st = os.stat(path)
        for key, value in (('lfn', lfn), ('guid', guid), ('md5', md5),
                           ('size', str(st.st_size if size is None else size)),
                           ('ts_r', _mtime_ms(st)), ('ts_w', _mtime_ms(st))):
            if value:
                os.setxattr(path, 'user.' + key, value.encode('utf-8'))
        return True
    except (OSError, AttributeError):   # no user xattrs here (or no os.setxattr)
        return False


STREAM_CHUNK = 8 << 20     # bytes per read of a streamed download
STREAM_READS = 4           # reads in flight


def _pwrite_all(fd, data, offset):
    """os.pwrite until every byte is written (a regular file may take fewer)."""
    done = os.pwrite(fd, data, offset)
    if done < len(data):
        view = memoryview(data)
        while done < len(data):
            done += os.pwrite(fd, view[done:], offset + done)


_PINNED_THREADS = set()


def _pin_thread_state():
    """Called in an XRootD callback: keep this thread's Python thread state. The binding wraps every
    callback in PyGILState_Ensure/Release, and a thread Python does not know gets a new thread state
    each time, its 16 KiB frame stack mmap'ed and unmapped (a TLB flush on every core): three callbacks
    per small file made that a tenth of a download's client CPU. One Ensure never released keeps it."""
    ident = threading.get_ident()
    if ident in _PINNED_THREADS:
        return
    _PINNED_THREADS.add(ident)
    try:
        import ctypes
        ctypes.pythonapi.PyGILState_Ensure.restype = ctypes.c_int
        ctypes.pythonapi.PyGILState_Ensure()
    except Exception:    # no ctypes here: only slower
        pass


class VerifiedRead(object):
    """One verified download, driven by XRootD's callbacks (no thread of its own): STREAM_READS reads
    of STREAM_CHUNK in flight, each chunk written to job.target (created once the source is open) at
    its offset as it arrives and hashed in order; the md5 is compared with job.md5. The file is never
    read twice, a small one costs three requests (open, read, close) on the SE's shared connection,
    and as os.pwrite and md5.update release the GIL, receiving, writing and hashing overlap. done(self)
    is called once when the target is closed (from an XRootD thread, or from start() when nothing could
    be sent): job.ok / job.error say how it went (a failed target is the caller's to remove). After
    cancel() no target is created and the transfer stops at the next reply. handler: a _JobProgress."""

    def __init__(self, job, timeout, done, handler=None):
        self.job, self.timeout, self.done, self.handler = job, timeout, done, handler
        self.lock = threading.Lock()
        self.file = self.fd = None
        self.md5 = hashlib.md5()
        self.ahead = 0           # the next offset to ask for
        self.hashed = 0          # bytes hashed, in order
        self.early = {}          # offset -> bytes written, not hashed yet
        self.inflight = 0        # requests sent and not answered
        self.busy = False        # a thread is hashing
        self.error = None
        self.retry = False       # after an error: worth reading the replica again
        self.created = False     # job.target is ours (to remove when it is read again)
        self.ending = False      # the close is sent (or nothing to close)

    def start(self):
        from XRootD.client.flags import OpenFlags
        self.file = xrootd_client().File()
        self.inflight = 1
        try:
            status = self.file.open(self.job.source, OpenFlags.READ, timeout=self.timeout, callback=self._opened)
        except Exception as e:          # e.g. a URL the binding refuses
            status = None
            self._fail(e, False)
        if status is None or not status.ok:
            if status is not None:
                self._fail(status.message)
            self.inflight, self.ending = 0, True
            self._finish()
        return self

    def cancel(self):
        with self.lock:
            self._fail('cancelled', False)

    def _fail(self, why, retry=True):
        """The first error is the one reported; retry: reading the same replica
        again may help (not after a local error, an md5 mismatch or a cancel)."""
        if self.error is None:
            self.error = ' '.join(str(why).split())
            self.retry = retry

    def _opened(self, status, _response, _hosts):
        _pin_thread_state()
        with self.lock:
            self.inflight -= 1
            if not status.ok:
                self._fail(status.message)
            elif self.error is None:
                try:
                    self.fd = os.open(self.job.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    self.created = True
                except OSError as e:
                    self._fail('cannot create %s: %s' % (self.job.target, e.strerror), False)
            if self.error is None and self.handler is not None:
                self.handler.begin(1, 1, self.job.source, self.job.target)
            if status.ok:
                self._ask()
            self.busy = True
        self._drain()

    def _ask(self):
        """Keep STREAM_READS chunks in flight or not hashed yet (self.lock held)."""
        size = self.job.size
        while self.error is None and self.ahead < size and self.inflight + len(self.early) < STREAM_READS:
            offset, n = self.ahead, min(STREAM_CHUNK, size - self.ahead)
            status = self.file.read(offset, n, timeout=self.timeout,
                                    callback=lambda s, d, _h, o=offset, n=n: self._arrived(o, n, s, d))
            if not status.ok:
                self._fail(status.message)
                return
            self.inflight += 1
            self.ahead += n

    def _arrived(self, offset, n, status, data):
        _pin_thread_state()
        written = None
        if status.ok and len(data or b'') == n and self.error is None:
            try:                 # the file stays open while a request is in flight
                _pwrite_all(self.fd, data, offset)
                written = data
            except OSError as e:
                written = e
        with self.lock:
            self.inflight -= 1
            if not status.ok:
                self._fail(status.message)
            elif len(data or b'') != n:
                self._fail('short read at byte %d of %d' % (offset + len(data or b''), self.job.size))
            elif isinstance(written, OSError):
                self._fail('cannot write %s: %s' % (self.job.target, written.strerror), False)
            elif self.error is None and written is not None:
                self.early[offset] = data
            if self.busy:
                return               # the thread that is busy takes these bytes in turn
            self.busy = True
        self._drain()

    def _drain(self):
        """Hash the bytes whose turn it is, outside the lock (other replies keep
        arriving meanwhile), then close when all is done."""
        while True:
            with self.lock:
                data = None if self.error is not None else self.early.pop(self.hashed, None)
                if data is None:
                    self.busy = False
                    if self.ending or self.inflight:
                        return
                    if self.error is None and self.hashed < self.job.size:
                        return
                    self.ending = True
                    break
                self._ask()
            self.md5.update(data)
            with self.lock:
                self.hashed += len(data)
            if self.handler is not None:
                self.handler.update(1, self.hashed, self.job.size)
        if self.error is None and self.md5.hexdigest() != self.job.md5.lower():
            self._fail('md5 mismatch: %s, the catalogue says %s' % (self.md5.hexdigest(), self.job.md5), False)
        if self.error is None and self.job.attrs is not None:
            # through the open file: no path lookups, and from this thread, not cp's
            write_xattrs(self.fd, *self.job.attrs, size=self.job.size)
            self.job.stamped = True
        self.early.clear()
        try:
            status = self.file.close(timeout=self.timeout, callback=self._closed)
        except Exception:
            status = None
        if status is None or not status.ok:
            self._finish()

    def _closed(self, _status, _response, _hosts):
        _pin_thread_state()
        self._finish()

    def _finish(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError as e:
                self._fail('cannot write %s: %s' % (self.job.target, e.strerror), False)
            self.fd = None
        self.job.ok = self.error is None
        self.job.error = '' if self.job.ok else 'XRootD: %s' % self.error
        if self.handler is not None:
            # the job stands for XRootD's status: _Progress.end reads only its .ok
            self.handler.end(1, {'status': self.job, 'size': self.job.size})
        self.done(self)


def verified_read_possible(job):
    """A download that VerifiedRead can do: known size and md5, one replica at a
    time, no member of a zip archive (that is XRootD's copy's work)."""
    return (job.md5 and job.sources == 1 and job.size >= 0 and job.target.startswith('/')
            and 'xrdcl.unzip=' not in job.source)


def _read_again(reader, opts):
    """After a failed VerifiedRead: True when the same replica is to be read again (-retry, as XRootD's
    retries of a copy: only where job.retry allows, only after an error of the transfer itself); the
    part file it made is removed."""
    job = reader.job
    if job.ok or not reader.retry:
        return False
    left = int(opts.get('retry', 2) if job.retry is None else job.retry)
    if left <= 0:
        return False
    job.retry = left - 1
    if reader.created:
        _unlink_quiet(job.target)
    return True


def _stream_download(job, opts, handler):
    """A VerifiedRead waited for in the calling thread (a CopyPipeline worker: a large file), polling
    the handler for a cancel; -retry reads the replica again. Raises AlienError (without 'XRootD: ')."""
    while True:
        finished = threading.Event()
        reader = VerifiedRead(job, int(opts.get('timeout') or 0), lambda _r: finished.set(), handler).start()
        while not finished.wait(0.5):
            if handler is not None and handler.should_cancel(1):
                reader.cancel()
                finished.wait(5)     # the replies in flight come back before the file goes
                raise AlienError('cancelled')
        if job.ok:
            return
        if not _read_again(reader, opts):
            raise AlienError(reader.error)
        if handler is not None:
            handler.progress.done_files -= 1


def _copy_one(job, opts, handler):
    """Run one transfer in the calling thread; sets job.ok/.error, never raises. A download with a
    known size and md5 from one replica is a VerifiedRead (hashed as it arrives), the rest (uploads,
    -y N metalinks, zip members, files without an md5) one XRootD CopyProcess each."""
    try:
        client = xrootd_client()
        if verified_read_possible(job):
            _stream_download(job, opts, handler)
            job.ok, job.error = True, ''
            return
        proc = client.CopyProcess()
        kw = dict((name, int(opts[key])) for key, name in (
            ('chunks', 'parallelchunks'), ('chunksize', 'chunksize'), ('timeout', 'cptimeout'),
            ('ratethreshold', 'xrateThreshold')) if opts.get(key))
        # the init timeout is not taken from the environment by add_job
        kw['inittimeout'] = int(client.EnvGetInt('CPInitTimeout') or 90)
        kw['retry'] = int(opts.get('retry', 2) if job.retry is None else job.retry)
        if job.target.startswith('/'):
            # download into a fresh temporary name: the directory exists already, nothing to
            # overwrite; md5 verified by XRootD after the transfer and a mismatching file removed
            if job.md5:
                kw.update(checksummode='target', checksumtype='md5', checksumpreset=job.md5, rmBadCksum=True)
            proc.add_job(job.source, job.target, sourcelimit=job.sources, **kw)
        else:
            # upload: POSC so an interrupted write leaves nothing on the SE
            proc.add_job(job.source, job.target, posc=True, mkdir=True, **kw)
        status = proc.prepare()
        if not status.ok:
            raise AlienError(status.message.strip())
        _status, results = proc.run(handler)
    except Exception as e:
        job.ok, job.error = False, 'XRootD: %s' % e
        return
    st = results[0].get('status') if results else None
    job.ok = st is not None and st.ok
    job.error = '' if job.ok else ' '.join((st.message if st is not None else 'not run').split())


class _JobProgress(object):
    """The XRootD progress handler of one transfer: reports to the shared
    _Progress under the job's own key (every CopyProcess numbers its job 1)."""

    def __init__(self, progress, job):
        self.progress = progress
        self.job = job

    def begin(self, _n, total, source, target):
        self.progress.begin(self.job, total, source, target)

    def update(self, _n, processed, total):
        self.progress.update(self.job, processed, total)

    def end(self, _n, results):
        self.progress.end(self.job, results)

    def should_cancel(self, _n):
        return self.progress.cancel


# Transfers in flight. A small file costs a few round trips to its SE (open, read or write, close)
# and almost no bandwidth: over a WAN only many of them at once keep the line busy. A large file is
# bound by bandwidth, where more at once only share it. Without -T: up to CP_INFLIGHT files at once,
# of which at most CP_PARALLEL large ones; -T N: N files at once, whatever their size.
CP_PARALLEL = 8
CP_INFLIGHT = 128
CP_SMALL_FILE = 4 << 20
CP_BACKLOG = 512  # downloads waiting to start: cp then waits before asking for more access


class CopyPipeline(object):
    """Transfers run while the caller keeps talking to the service (access before, commit after). A
    download VerifiedRead can do is driven by XRootD's callbacks; every other transfer runs in a worker
    thread of its own (no batch waits for its slowest file); one XRootD connection per SE for all.
    submit(jobs); results(wait) hands back finished jobs; close(cancel) stops all."""

    def __init__(self, opts, label):
        if opts.get('streams'):     # -S N: a setting of the whole XRootD client, made once
            xrootd_client().EnvPutInt('SubStreamsPerChannel', int(opts['streams']))
        self.opts = opts
        self.progress = _Progress(opts, label)
        lock = threading.Lock()
        self.cv = threading.Condition(lock)      # idle workers wait here for jobs
        self.done = threading.Condition(lock)    # the caller waits here for results
        self.quick = collections.deque()         # small downloads for VerifiedRead
        self.small = collections.deque()
        self.big = collections.deque()
        self.big_running = 0
        self.big_limit = opts.get('parallel') or CP_PARALLEL
        self.limit = opts.get('parallel') or max(CP_INFLIGHT, self.big_limit)
        self.running = 0          # transfers in flight, of both kinds
        self.threaded = 0         # transfers for the worker threads, queued or running
        self.readers = set()      # VerifiedReads in flight
        self.timeout = int(opts.get('timeout') or 0)
        self.finished = []
        self.pending = 0          # submitted and not yet handed back
        self.closed = False
        self.threads = []

    def submit(self, jobs):
        with self.cv:
            threaded = 0
            for job in jobs:
                if 0 <= job.size < CP_SMALL_FILE and verified_read_possible(job):
                    self.quick.append(job)
                    continue
                (self.small if 0 <= job.size < CP_SMALL_FILE else self.big).append(job)
                threaded += 1
            self.pending += len(jobs)
            self.threaded += threaded
            busy = len(self.threads)
            while busy < self.limit and busy < self.threaded:
                t = threading.Thread(target=self._work, name='xrootd-copy-%d' % busy, daemon=True)
                t.start()
                self.threads.append(t)
                busy += 1
            if threaded:
                self.cv.notify(threaded)    # not all: a woken idle worker costs the GIL
        self._start_reads()

    def queued(self):
        """Transfers submitted and not started yet."""
        with self.cv:
            return len(self.quick) + len(self.small) + len(self.big)

    def _start_reads(self):
        """Start queued small downloads while fewer than limit transfers run."""
        while True:
            with self.cv:
                if not self.quick or self.running >= self.limit or self.closed and self.progress.cancel:
                    return
                job = self.quick.popleft()
                self.running += 1
                handler = _JobProgress(self.progress, job) if self.progress.enabled else None
                reader = VerifiedRead(job, self.timeout, self._read_done, handler)
                self.readers.add(reader)
            reader.start()

    def _read_done(self, reader):
        job = reader.job
        with self.cv:
            self.readers.discard(reader)
            self.running -= 1
            if _read_again(reader, self.opts) and not self.progress.cancel:
                self.quick.appendleft(job)
                if self.progress.enabled:
                    self.progress.done_files -= 1
            else:
                self.finished.append(job)
            self.done.notify()
            self.cv.notify()             # a worker may take a transfer now
        self._start_reads()

    def _take(self):
        if self.running >= self.limit:
            return None, False
        if self.small:
            self.running += 1
            return self.small.popleft(), False
        if self.big and self.big_running < self.big_limit:
            self.big_running += 1
            self.running += 1
            return self.big.popleft(), True
        return None, False

    def _work(self):
        while True:
            with self.cv:
                job, big = self._take()
                while job is None:
                    if self.closed and not self.small and not self.big:
                        return
                    self.cv.wait()
                    job, big = self._take()
            # a progress handler costs ~15% of a small file's client CPU: only when
            # progress is shown, or the transfer is long enough to be worth cancelling
            watched = self.progress.enabled or big or not 0 <= job.size < CP_SMALL_FILE
            _copy_one(job, self.opts, _JobProgress(self.progress, job) if watched else None)
            with self.cv:
                self.running -= 1
                self.threaded -= 1
                if big:
                    self.big_running -= 1
                self.cv.notify()         # a slot is free
                self.finished.append(job)
                self.done.notify()
            self._start_reads()

    def results(self, wait=False):
        with self.cv:
            if wait:
                while not self.finished and self.pending:
                    self.done.wait(0.2)
            out, self.finished = self.finished, []
            self.pending -= len(out)
            return out

    def close(self, cancel=False):
        with self.cv:
            self.closed = True
            if cancel:
                for queue in (self.quick, self.small, self.big):
                    queue.clear()
                self.progress.cancel = True
            readers = list(self.readers)
            self.cv.notify_all()
        for reader in readers:
            reader.cancel()              # no part file is created after this
        for t in self.threads:
            t.join()
        deadline = time.monotonic() + 5
        with self.cv:                    # the replies in flight come back before XRootD goes
            while self.readers and time.monotonic() < deadline:
                self.done.wait(0.2)
        if not cancel and self.progress.enabled and self.progress.total_files:
            self.progress.show(final=True)


def _regular_size(path):
    """Size of path if it is a regular file, else None (one stat)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat_mod.S_ISREG(st.st_mode) else None


def _unlink_quiet(path):
    try:
        if path:
            os.unlink(path)
    except OSError:
        pass


# ==========================================================================
# Transfers: verified downloads and uploads
# ==========================================================================

def _access(session, mode, lfn, specs=None, size=None, md5=None, strict=False):
    return session.request('access', _access_args(mode, lfn, specs, size, md5, strict), nomsg=True)


def _local_facts(path):
    """(size, mtime in ms, user.ts_w, user.md5) of a local file, or None when any is missing."""
    try:
        st = os.stat(path)
        return (st.st_size, _mtime_ms(st), os.getxattr(path, 'user.ts_w').decode('ascii', 'replace'),
                os.getxattr(path, 'user.md5').decode('ascii', 'replace'))
    except (OSError, AttributeError):   # no such file or attribute (or no os.getxattr)
        return None


class LocalFacts(object):
    """_local_facts of the files under a local directory, read in a background thread only while the
    service lists the grid side: a re-run's 1,000 present files cost about 30 ms of stat and getxattr
    calls, which then overlap the service's time instead of following it. stop() ends the scan when
    the listing has arrived (a large unrelated tree is never read in full); the rest is read on demand."""

    def __init__(self):
        self.facts = {}
        self.threads = []
        self.stopped = False

    def prefetch(self, root):
        self.stopped = False
        t = threading.Thread(target=self._scan, args=(root,), name='local-facts', daemon=True)
        t.start()
        self.threads.append(t)

    def _scan(self, root):
        for d, _dirs, files in os.walk(root):
            for name in files:
                if self.stopped:
                    return
                path = os.path.join(d, name)
                self.facts[path] = _local_facts(path)

    def stop(self):
        self.stopped = True
        while self.threads:
            self.threads.pop().join()

    def get(self, path):
        return self.facts[path] if path in self.facts else _local_facts(path)


def present_unchanged(path, size, md5, facts=None):
    """True when path holds the catalogue file (size, md5) by the xattrs of its download and its size
    and mtime have not moved since; nothing is read. facts: a LocalFacts that may have read them."""
    if not md5:
        return False
    f = facts.get(path) if facts is not None else _local_facts(path)
    if f is None or f[2] != f[1] or f[3] != md5:
        return False
    if size >= 0:
        return f[0] == size     # with the catalogue size known and equal, user.size adds nothing
    try:                        # unknown: the size recorded at the download stands in for it
        return os.getxattr(path, 'user.size').decode('ascii', 'replace') == str(f[0])
    except (OSError, AttributeError):
        return False


def _file_matches(path, size, md5, lfn=''):
    """The local file holds the catalogue's bytes: by its xattrs when it is untouched
    since they were written, else by its md5 (and the xattrs are then written)."""
    if present_unchanged(path, size, md5):
        return True
    try:
        if os.path.getsize(path) != size:
            return False
        if not md5:
            return True
        if md5_file(path) != md5:
            return False
    except OSError:
        return False
    write_xattrs(path, lfn, '', md5, size)
    return True


class Download(object):
    """One file cp downloads: its replicas, tried in the service's order, and its outcome."""
    __slots__ = ('lfn', 'dst', 'replicas', 'md5', 'guid', 'member', 'unzip', 'next', 'se', 'errors',
                 'metalink_tried', 'delivered')

    def __init__(self, lfn, dst, replicas, md5, guid, member, unzip):
        self.lfn, self.dst, self.md5, self.guid = lfn, dst, md5, guid
        self.member = member        # a zip archive's member, read out of the archive
        self.unzip = unzip          # ... or that member, when the whole archive is fetched and unzipped here
        self.replicas = replicas    # [(url, se)]
        self.next = 0               # the replica to try next
        self.se = ''                # the SE (or 'all replicas') of the current attempt
        self.errors = []
        self.metalink_tried = False
        self.delivered = None       # bytes, once renamed into place


def cp_download(session, items, opts, stats, known=None):
    """items: [(lfn, local_dst, specs)]. Each file is written to a temporary name next to its
    destination, verified against the catalogue md5 and only then renamed; a failed replica is followed
    by the next one. known: {lfn: (size, md5, guid)} from replies that named the LFN: each access reply
    must be that file's (check_access) before its md5 is believed."""
    known = known if known is not None else {}
    if len(known) >= session.SPREAD_MIN:
        session.spread_ahead()       # more sessions for the access requests, connected meanwhile
    pipe = CopyPipeline(opts, 'download ')
    progress = pipe.progress
    live = set()
    meta_dir = TempDir('alienpy-meta-')     # made only for a -y metalink

    def launch(job):
        info = job.info
        reps = info.replicas
        job.target = part_name(info.dst)
        job.ok = False
        if info.unzip:
            job.md5 = ''    # the archive is fetched: its member is checked after extraction
        # -y N: XRootD's several-replica copy. Never for an archive member: reading a
        # deflated member that way hung now and then in XRootD (xrootd 6.2.1: the copy
        # waits for a chunk its sources never send; about 1 run in 150 under load)
        if not info.metalink_tried and not info.member and opts.get('sources', 1) > 1 and len(reps) > 1:
            info.metalink_tried = True
            meta = os.path.join(meta_dir.path, '%d.meta4' % len(os.listdir(meta_dir.path)))
            with open(meta, 'w', encoding='utf-8') as f:   # a private temp dir: no rename needed
                f.write(metalink_text(info.lfn, job.size, job.md5, [u for u, _ in reps]))
            job.source, job.sources = meta, min(opts['sources'], len(reps))
            job.retry = 0
            info.se = 'all replicas'
        else:
            # then one replica after the other, in the service's order
            job.source, info.se = reps[info.next]
            job.sources = 1
            info.next += 1
            # the next replica is the better retry; the last one gets XRootD's retries
            job.retry = None if info.next == len(reps) else 0
        job.attrs, job.stamped = (info.lfn, info.guid, info.md5), False
        live.add(job)
        pipe.submit([job])

    def settle(job):
        # the job leaves `live` only when its outcome is recorded: a Ctrl-C at any
        # point of this leaves no part file and no delivered file uncounted
        info = job.info
        if job.ok and info.unzip:
            job.error = extract_zip_member(job.target, info.unzip, info.md5)
            job.ok = not job.error
        # stamped: written and verified through its open file
        got = (job.size if job.stamped else _regular_size(job.target)) if job.ok else None
        if got is not None and job.size in (-1, got):
            if not job.stamped:
                write_xattrs(job.target, *job.attrs, size=job.size if job.size >= 0 else None)
            info.delivered = got     # once the part file is gone (a Ctrl-C may come at any point)
            try:
                os.replace(job.target, info.dst)
            except OSError as e:
                info.delivered = None
                _unlink_quiet(job.target)
                live.discard(job)
                stats.fail(info.lfn, 'cannot rename into %s: %s' % (info.dst, e.strerror))
                return
            delivered(job)
            return
        _unlink_quiet(job.target)
        info.errors.append('%s: %s' % (info.se, job.error or 'size mismatch after transfer'))
        if info.next < len(info.replicas):
            progress.done_files -= 1
            launch(job)
        else:
            live.discard(job)
            stats.fail(info.lfn, '%s -> %s failed: %s' % (info.lfn, info.dst, '; '.join(info.errors)))

    def delivered(job):
        info = job.info
        if (info.lfn, info.dst) not in stats.done[-1:]:
            stats.copied(info.lfn, info.dst, info.delivered)
        live.discard(job)

    made_dirs = set()
    with meta_dir:
        try:
            items = iter(items)     # planned while it runs (cp_run)
            while True:
                # ask for more access only while a bounded number of transfers wait to start: the
                # queued jobs (each with its replicas' envelopes) stay few, no envelope is fetched long
                # before use; at the high mark, the queue is let down to half of it (settled in batches)
                if pipe.queued() >= CP_BACKLOG:
                    while pipe.queued() > CP_BACKLOG // 2:
                        for job in pipe.results(wait=True):
                            settle(job)
                window = list(itertools.islice(items, REQUEST_WINDOW))
                if not window:
                    break
                replies = _requests(session, [('access', _access_args('read', x[0], x[2], strict=opts.get('strictspec'),
                                                                     http=opts.get('http')),
                                               check_access(*known[x[0]]) if x[0] in known else None)
                                              for x in window])
                for (lfn, dst, specs), r in zip(window, replies):
                    for job in pipe.results():
                        settle(job)
                    if r.exitcode != 0 or not r.results:
                        stats.fail(lfn, 'no access to %s: %s' % (lfn, r.err or 'no replicas (exit %d)' % r.exitcode))
                        continue
                    first = r.results[0]
                    try:
                        size = int(first['size'])
                    except (KeyError, ValueError):
                        size = -1           # unknown: not checked
                    md5 = (first.get('md5') or '').lower()
                    member = next((split_member(x['url'])[1] for x in r.results if '#' in x.get('url', '')), '')
                    # the whole archive, unzipped here; else XRootD reads the member out of it (xrdcl.unzip)
                    unzip = member if opts.get('noxrdzip') or member_needs_local_unzip(member) else ''
                    replicas = [(grid_url(split_member(x['url'])[0] if unzip else x['url'], x.get('envelope', '')),
                                 x.get('se', '?')) for x in r.results if x.get('url')]
                    stats.replicas[lfn] = len(replicas)
                    try:
                        st = os.stat(dst)      # one look at the destination (a stat per file counts)
                    except OSError:
                        st = None
                    if st is not None and stat_mod.S_ISREG(st.st_mode) and not opts.get('force') and \
                            _file_matches(dst, size, md5, lfn):
                        stats.already(lfn, dst)
                        continue
                    if not replicas:
                        stats.fail(lfn, 'no replica URL for %s' % lfn)
                        continue
                    ddir = os.path.dirname(dst) or '.'
                    if ddir not in made_dirs:
                        try:
                            os.makedirs(ddir, exist_ok=True)
                        except OSError as e:
                            stats.fail(lfn, 'cannot create %s: %s' % (ddir, e.strerror))
                            continue
                        made_dirs.add(ddir)
                    if st is not None and stat_mod.S_ISDIR(st.st_mode):
                        stats.fail(lfn, 'destination %s is a directory' % dst)
                        continue
                    progress.total_files += 1
                    progress.total_bytes += max(size, 0)
                    launch(CopyJob('', '', size, md5, 1, Download(lfn, dst, replicas, md5, first.get('guid', ''),
                                                                  member, unzip)))
            while pipe.pending:
                for job in pipe.results(wait=True):
                    settle(job)
        except BaseException as exc:
            pipe.close(cancel=True)
            for job in list(live):      # renamed, cut short before it was counted
                if job.info.delivered is not None and not os.path.lexists(job.target):
                    delivered(job)
            for job in list(live) + pipe.results():
                _unlink_quiet(job.target)
            why = 'interrupted' if isinstance(exc, KeyboardInterrupt) else str(exc)
            for job in live:
                stats.fail(job.info.lfn, '%s -> %s not finished: %s' % (job.info.lfn, job.info.dst, why))
            raise
        finally:
            pipe.close()


def extract_zip_member(path, member, md5):
    """-noxrdzip: path holds a zip archive; replace it by its member (checked
    against md5 when given) -> '' or the reason it failed."""
    import zipfile
    tmp = path + '.member'
    try:
        with zipfile.ZipFile(path) as z, z.open(member) as src, open(tmp, 'wb') as out:
            h = hashlib.md5()
            for b in iter(lambda: src.read(4 << 20), b''):
                h.update(b)
                out.write(b)
        if md5 and h.hexdigest() != md5:
            raise ValueError('md5 of the extracted %s is %s, the catalogue says %s' % (member, h.hexdigest(), md5))
        os.replace(tmp, path)
        return ''
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        _unlink_quiet(tmp)
        return 'cannot extract %s from the archive: %s' % (member, e)


class Upload(object):
    """One file cp uploads: the replicas booked for it, their transfers and commits."""
    __slots__ = ('src', 'lfn', 'target', 'specs', 'size', 'md5', 'replace', 'wanted', 'attempt', 'tried',
                 'guids', 'launched', 'running', 'held', 'failed', 'written', 'committed', 'doubt', 'errors')

    def __init__(self, src, lfn, specs, size, md5):
        self.src, self.lfn, self.specs, self.size, self.md5 = src, lfn, list(specs or []), size, md5
        self.target = lfn           # a temporary LFN when an existing file is replaced (replace)
        self.replace = False
        self.wanted = 0             # replicas the service booked at first
        self.attempt = 1            # bookings so far (failed replicas are re-booked elsewhere)
        self.tried = []             # every SE booked
        self.guids = set()          # every GUID booked
        self.launched = []          # the transfers of the last booking, in booking order
        self.running = 0
        self.held = set()           # finished transfers waiting for the rest of their booking
        self.failed = 0             # transfers failed since the last booking
        self.written = set()        # GUIDs of the replicas written
        self.committed = []         # SEs whose commit was accepted
        self.doubt = False          # a commit was refused or unanswered
        self.errors = []


def _existing_upload_target(session, e, r, opts, stats):
    """access write-once failed: an identical existing LFN is skipped, another
    one is replaced through a temporary LFN -> the new access reply or None."""
    st = _grid_stat(session, e.lfn)
    if st is not None:      # (none: r's failure is the one reported)
        if st['type'] != 'f':
            stats.fail(e.src, '%s exists and is not a file' % e.lfn)
            return None
        if not opts.get('force') and st['size'] == e.size and st['md5'] == e.md5:
            stats.already(e.src, e.lfn)
            return None
        d, base = e.lfn.rsplit('/', 1)
        e.target = '%s/.%s.alienpy-part-%s' % (d, base, os.urandom(6).hex())
        e.replace = True
        r = _access(session, 'write-once', e.target, _with_default_specs(e.specs, e.lfn, e.size), e.size,
                    e.md5, opts.get('strictspec'))
    if r.exitcode != 0 or not r.results:
        stats.fail(e.src, 'no write access for %s: %s' % (e.lfn, r.err or 'exit code %d' % r.exitcode))
        return None
    return r


class Md5Ahead(object):
    """The md5 and size of local files, hashed in a background thread: an upload's `access` request
    needs the md5, so the next files are hashed while the service is asked and earlier files transfer.
    add(paths) queues; take() hands back (md5, size) or the OSError in order (at most AHEAD wait)."""

    AHEAD = 256

    def __init__(self):
        self.cv = threading.Condition()
        self.todo = collections.deque()
        self.results = collections.deque()
        self.stop = threading.Event()
        self.thread = None

    def add(self, paths):
        with self.cv:
            self.todo.extend(paths)
            if self.thread is None and self.todo:
                self.thread = threading.Thread(target=self._run, name='md5-ahead', daemon=True)
                self.thread.start()
            self.cv.notify_all()

    def _run(self):
        while True:
            with self.cv:
                while not self.stop.is_set() and (not self.todo or len(self.results) >= self.AHEAD):
                    self.cv.wait()
                if self.stop.is_set():
                    return
                path = self.todo.popleft()
            try:
                result = md5_and_size(path, stop=self.stop)
            except OSError as e:
                result = e
            with self.cv:
                self.results.append(result)
                self.cv.notify_all()

    def ready(self):
        """The next result is there: take() would not wait."""
        with self.cv:
            return bool(self.results)

    def take(self):
        with self.cv:
            while not self.results:
                if self.stop.is_set() or (self.thread is None and not self.todo):
                    raise AlienError('md5: nothing queued')
                self.cv.wait(0.5)
            result = self.results.popleft()
            self.cv.notify_all()
        if isinstance(result, OSError):
            raise result
        return result

    def close(self):
        self.stop.set()
        with self.cv:
            self.cv.notify_all()


def cp_upload(session, items, opts, stats, md5s=None, prepare=()):
    """items: [(local_path, lfn, specs)]: md5 and size locally, access write-once, copy each booked
    replica, commit each good one; failed replicas are re-booked on other SEs (at most twice). md5s: an
    Md5Ahead already hashing these paths in order (cp_run starts it while planning). A window of
    `access` requests is the next file (waiting for its md5) and those already hashed. prepare:
    requests to send with the first window (the destinations' mkdir -p)."""
    if md5s is None:
        md5s = Md5Ahead()
        md5s.add(src for src, _, _ in items)
    if len(items) >= session.SPREAD_MIN:
        session.spread_ahead()   # more sessions for the access and commit requests, connected meanwhile
    pipe = CopyPipeline(opts, 'upload ')
    progress = pipe.progress
    live = []
    hashed = []    # every file that was hashed: what cp_check_uploads looks up

    def launch(e, booked):
        e.tried.extend(rep.get('se', '') for rep in booked)
        e.guids.update((rep.get('guid') or '').lower() for rep in booked)
        jobs = [CopyJob(e.src, grid_url(rep.get('url', ''), rep.get('envelope', '')), e.size, '', 1, (e, rep))
                for rep in booked]
        e.running += len(jobs)
        e.launched = jobs
        progress.total_files += len(jobs)
        progress.total_bytes += e.size * len(jobs)
        pipe.submit(jobs)

    def whole_files(jobs):
        """Finished jobs -> those of the files with no transfer left, each file's in booking order: the
        catalogue lists replicas in the order of their commits, not of the transfers' ends."""
        out = []
        for j in jobs:
            e = j.info[0]
            e.held.add(j)
            if len(e.held) == e.running:
                out.extend(x for x in e.launched if x in e.held)
                e.held = set()
        return out

    def settle(jobs, good=None, replies=None, stop=None):
        if not jobs:
            return
        if replies is None:
            good = [j for j in jobs if j.ok]
        commits_of, lost = _commit(session, good, replies, stop)
        rebook = []
        for job in jobs:
            e, rep = job.info
            e.running -= 1
            if job.ok:
                e.written.add((rep.get('guid') or '').lower())
                c = commits_of[id(job)]
                if c.exitcode == 0 and not any(str(x.get('lfn', '1')) == '0' for x in c.results):
                    e.committed.append(rep.get('se', ''))
                else:
                    e.doubt = True   # (a race can register another booking of the name: see cp_check_uploads)
                    e.errors.append('%s: commit %s: %s' % (
                        rep.get('se', '?'), 'outcome unknown' if c.metadata.get('outcome') else 'refused',
                        c.err or 'exit code %d' % c.exitcode))
            else:
                e.errors.append('%s: %s' % (rep.get('se', '?'), job.error))
                e.failed += 1
            if e.running == 0 and e.failed and e.attempt < (1 if opts.get('norecovery') else 3):
                rebook.append(e)
        if lost is not None:
            raise lost  # the answered commits are counted; the copy stops here
        for e in rebook:
            # re-book the failed replicas elsewhere: every SE tried so far excluded
            n, e.failed = e.failed, 0
            e.attempt += 1
            spec = ['disk:%d' % n] + ['!' + se for se in sorted(set(e.tried)) if se]
            r = _access(session, 'write' if e.committed else 'write-once', e.target, spec, e.size, e.md5)
            if r.exitcode == 0 and r.results:
                launch(e, r.results)
            else:
                e.errors.append('no other SE: %s' % (r.err or 'exit code %d' % r.exitcode))

    try:
        pos = 0
        while pos < len(items):
            entries, start = [], pos
            while pos < len(items) and len(entries) < REQUEST_WINDOW and (pos == start or md5s.ready()):
                src, lfn, specs = items[pos]
                pos += 1
                try:
                    md5, size = md5s.take()
                except OSError as err:
                    stats.fail(src, 'cannot read %s: %s' % (src, err.strerror))
                    continue
                entries.append(Upload(src, lfn, specs, size, md5))
                hashed.append(entries[-1])
            # one round trip books this window and commits what finished meanwhile
            done = whole_files(pipe.results())
            good = [j for j in done if j.ok]
            commit_requests = [_commit_request(*j.info) for j in good]
            books = [('access', _access_args('write-once', x.lfn, _with_default_specs(x.specs, x.lfn, x.size),
                                             x.size, x.md5, opts.get('strictspec')),
                      check_access(x.size, x.md5, write=True)) for x in entries]
            try:
                replies = _requests(session, list(prepare) + books + commit_requests,
                                    window=2 * REQUEST_WINDOW)
                replies, prepare = replies[len(prepare):], ()
            except (ConnectionLost, KeyboardInterrupt) as e:
                # the answered commits are counted (settle raises e then), this window is not attempted
                got = list(getattr(e, 'results', None) or [])[len(prepare) + len(entries):]
                got += [None] * (len(commit_requests) - len(got))
                settle(done, good, got, stop=e)
                raise
            settle(done, good, replies[len(entries):])
            for e, r in zip(entries, replies):
                if r.exitcode != 0 or not r.results:
                    r = _existing_upload_target(session, e, r, opts, stats)
                    if r is None:
                        continue
                e.wanted = len(r.results)
                live.append(e)
                launch(e, r.results)
        while pipe.pending:
            settle(whole_files(pipe.results(wait=True)))
    except BaseException as exc:
        pipe.close(cancel=True)
        # cut short: files whose transfers are over are counted as usual, the
        # others failed (their replicas were cancelled: POSC leaves nothing)
        why = 'interrupted' if isinstance(exc, KeyboardInterrupt) else str(exc)
        for e in live:
            if e.running == 0 and e.committed and not e.replace:
                _cp_upload_finish(session, e, stats)
            else:   # a commit sent whose reply was lost may have registered the file: say so
                unsure = [x for x in e.errors if ': commit outcome unknown: ' in x]
                stats.fail(e.src, '%s -> %s not finished: %s' % (e.src, e.lfn, '; '.join(unsure) or why))
        raise
    finally:
        md5s.close()
        pipe.close()
    for e in live:
        _cp_upload_finish(session, e, stats)
    return hashed


def _cp_upload_finish(session, e, stats):
    """Count one uploaded file whose transfers are over (replace: rename it into place)."""
    if not e.committed:
        stats.fail(e.src, '%s -> %s failed: %s' % (e.src, e.lfn, '; '.join(e.errors)))
        return
    if e.replace:
        session.request('rm', ['-f', e.lfn], nomsg=True)
        mv = session.request('mv', [e.target, e.lfn], nomsg=True)
        if mv.exitcode != 0:
            stats.fail(e.src, 'uploaded as %s but could not rename it to %s: %s'
                       % (e.target, e.lfn, mv.err))
            return
    if len(e.committed) < e.wanted:
        stats.notices.append('%s: %d of %d replicas stored (%s)' % (
            e.lfn, len(e.committed), e.wanted, '; '.join(e.errors)))
    stats.copied(e.src, e.lfn, e.size)


def _commit_request(e, rep):
    return ('commit', [rep.get('envelope', ''), str(e.size), e.target, '644', '0', rep.get('url', ''),
                       rep.get('se', ''), rep.get('guid', ''), e.md5],
            check_commit(e.target, (rep.get('guid') or '').lower()))


def _committed_in_catalogue(session, pairs):
    """For commits whose reply was lost, [(e, rep)] -> [True | False | None]: the catalogue holds
    exactly this replica (the entry has our size, md5 and booked GUID, and lists the SE) / nothing
    of ours yet (safe to commit again) / the name belongs to another file (never to be touched)."""
    replies = _requests(session, [q for e, rep in pairs
                                  for q in (('stat', [e.target], check_stat(e.target)), ('whereis', [e.target]))])
    out = []
    for n, (e, rep) in enumerate(pairs):
        st, where = replies[2 * n], replies[2 * n + 1]
        if st.exitcode != 0 or not st.results:
            out.append(False)
            continue
        row = st.results[0]
        fields = stat_fields(row)
        if (row.get('guid') or '').lower() != (rep.get('guid') or '').lower() or fields['type'] != 'f' \
                or fields['size'] != e.size or fields['md5'] != e.md5:
            out.append(None)
            continue
        ses = set((x.get('seName') or x.get('se') or '').lower() for x in where.results)
        out.append((rep.get('se') or '').lower() in ses)
    return out


def _commit(session, jobs, replies=None, stop=None):
    """Commit the replicas of the finished jobs -> ({id(job): Result}, the exception that stops the
    copy or None). `replies`: their commit replies if already sent (None: no reply), `stop` the
    exception that cut them off. Exactly once: for a commit whose reply was lost the catalogue is asked
    (_committed_in_catalogue): registered -> done; nothing -> committed again; another file -> refused.
    Without a connection the unanswered commits get the 107 'outcome unknown' result; after Ctrl-C the
    catalogue is asked for 5 s at most."""
    results = {}
    todo = list(jobs)
    for _round in range(4):
        if not todo:
            break
        if replies is None:
            try:   # (sent again: one at a time, its reply is then its own)
                replies = _requests(session, [_commit_request(*j.info) for j in todo], window=1 if _round else REQUEST_WINDOW)
            except ConnectionLost as e:
                replies, stop = e.results, e
            except KeyboardInterrupt as e:
                replies, stop = getattr(e, 'results', None) or [], e
        replies = list(replies) + [None] * (len(todo) - len(replies))
        why = 'interrupted' if isinstance(stop, KeyboardInterrupt) else (stop or 'no reply')
        replies = [r or lost_result(why, 'commit', 'unknown') for r in replies]
        if isinstance(stop, ConnectionLost):  # nobody to ask
            results.update(zip(map(id, todo), replies))
            return results, stop
        unknown = []
        for job, r in zip(todo, replies):
            if r.metadata.get('outcome') == 'unknown':
                unknown.append(job)
            else:
                results[id(job)] = r
        todo, replies = [], None
        if not unknown:
            if stop is not None:
                return results, stop
            break
        budget = session.reconnect_timeout
        if stop is not None:
            session.reconnect_timeout = min(budget, 5.0)
        try:
            found = _committed_in_catalogue(session, [j.info for j in unknown])
        except (AlienError, KeyboardInterrupt) as e:
            results.update((id(j), lost_result(e, 'commit', 'unknown')) for j in unknown)
            return results, stop or e
        finally:
            session.reconnect_timeout = budget
        for job, there in zip(unknown, found):
            if there:
                results[id(job)] = Result(0, '', '', [{'lfn': '1'}])
            elif there is None:
                results[id(job)] = Result(EX_EIO, '', 'the catalogue holds another file under %s' % job.info[0].target)
            elif stop is not None:
                results[id(job)] = lost_result('interrupted', 'commit', 'not sent')
            else:
                todo.append(job)  # not registered: now it is safe to send it again
                log('commit of %s on %s was not registered: sending it again' % (job.info[0].target, job.info[1].get('se')))
        if stop is not None:
            return results, stop
    for job in todo:
        results[id(job)] = lost_result('connection lost repeatedly', 'commit', 'unknown')
    return results, None


# ==========================================================================
# Transfers: the cp command, its catalogue check and its summary
# ==========================================================================

# ---- cp: planning and execution ----------------------------------------------

CP_STATES = ('copied', 'present', 'failed', 'not attempted')


class CpStats(object):
    """What a copy did, file by file: every planned file ends in exactly one of
    CP_STATES, whatever ends the copy (abort: why it was cut short)."""

    def __init__(self):
        self.failed = []      # (what, why)
        self.notices = []
        self.sizes = {}       # (src, dst) -> bytes delivered
        self.plan = []        # dry-run lines
        self.done = []        # (src, dst) of delivered files
        self.present = []     # (src, dst) of files that were there already
        self.planned = []     # (src, dst) of every file to deliver
        self.abort = None     # (exit code, reason) when the copy was cut short
        self.replicas = {}    # lfn -> number of replicas the service offered

    def fail(self, what, why):
        self.failed.append((what, why))

    @property
    def bytes(self):
        return sum(self.sizes.values())

    def already(self, src, dst):
        self.present.append((src, dst))

    def copied(self, src, dst, size):
        self.sizes[(src, dst)] = size
        self.done.append((src, dst))

    def forget(self, src):
        """Take back what was said of src (the catalogue has the last word)."""
        gone = [d for d in self.done if d[0] == src]
        for d in gone:
            self.sizes.pop(d, None)
        self.done = [d for d in self.done if d[0] != src]
        self.failed = [f for f in self.failed if f[0] != src]
        return bool(gone)

    def states(self):
        """{state: [(src, dst, why)]}: each file once; planned files that none of
        the others mention were not attempted."""
        out = dict((k, []) for k in CP_STATES)
        dst_of = dict(self.planned)
        seen = set()
        for state, rows in (('copied', self.done), ('present', self.present)):
            for src, dst in rows:
                out[state].append((src, dst, ''))
                seen.add(src)
        for what, why in self.failed:
            out['failed'].append((what, dst_of.get(what, ''), why))
            seen.add(what)
        out['not attempted'] = [(src, dst, '') for src, dst in self.planned if src not in seen]
        return out


CP_LIST_ABOVE = 1   # files under one directory from which cp_catalogue_facts lists it instead of stat-ing each


def cp_catalogue_facts(session, lfns):
    """{lfn: (size, md5, guid)} of those of lfns the catalogue holds as files, from replies that name
    them: one listing of each top directory holding more than CP_LIST_ABOVE of them (cut at twice their
    number: a directory full of other files costs little), a checked stat of each of the others and of
    those the listing did not show."""
    lfns = list(lfns)
    facts, single = {}, []
    for top in _top_dirs(lfns):
        under = [x for x in lfns if x.startswith(top.rstrip('/') + '/')]
        if len(under) > CP_LIST_ABOVE:
            try:
                _grid_find(session, top.rstrip('/') + '/', dict(CP_OPTIONS.defaults, limit=2 * len(under) + 64), known=facts)
            except AlienError as e:       # (no such directory: nothing arrived)
                log('cannot list %s: %s' % (top, e))
        single.extend(x for x in under if x not in facts)
    for lfn, r in zip(single, _requests(session, [('stat', [x], check_stat(x)) for x in single])):
        st = _stat_of(r, lfn)
        if st is not None and st['type'] == 'f':
            facts[lfn] = (st['size'], st['md5'], st['guid'])
    return facts


def cp_check_uploads(session, hashed, stats, last=False):
    """After an upload the catalogue has the last word: every file's entry against its local size and
    md5, and against the GUIDs this copy wrote when the entry may be its own (a GUID it booked, or a
    commit refused or unanswered: on a racing service a commit can register another booking of the
    name, with no data). A right entry counts as copied whatever the replies said; a wrong one of this
    copy is removed. Those, and the missing or uncommitted ones -> [(src, lfn, specs)] to upload
    again (last: reported as failed instead)."""
    booked = set(g for e in hashed for g in e.guids)
    facts = cp_catalogue_facts(session, [e.lfn for e in hashed])
    present = set(src for src, _ in stats.present)
    copied = set(src for src, _ in stats.done)
    again = []
    for e in hashed:
        got, src = facts.get(e.lfn), e.src
        if src in present:
            continue
        mine = got is not None and (got[2] in booked or e.doubt)
        if got is not None and got[:2] == (e.size, e.md5) and (got[2] in e.written or not mine):
            if src not in copied:    # a reply said otherwise: the catalogue holds it
                stats.forget(src)
                stats.copied(src, e.lfn, e.size)
            continue
        why = 'the catalogue has no entry' if got is None else \
            'the catalogue entry holds other bytes (size %d, md5 %s)' % (got[0], got[1] or '?') \
            if got[:2] != (e.size, e.md5) else 'the catalogue entry has no replica this copy wrote'
        if got is not None and not mine:    # not made by this copy: not ours to touch
            if src in copied:
                stats.forget(src)
                stats.fail(src, '%s -> %s: %s' % (src, e.lfn, why))
            continue
        if mine:
            session.request('rm', ['-f', e.lfn], nomsg=True)
        elif src not in copied and (last or not e.doubt):
            continue                 # missing, and reported as failed (why, it said)
        stats.forget(src)
        if last:
            stats.fail(src, '%s -> %s failed: %s after the upload' % (src, e.lfn, why))
        else:
            log('%s: %s: uploading it again' % (e.lfn, why))
            again.append((src, e.lfn, e.specs))
    return again


CP_PLAN_CHUNK = 1000


def cp_run(session, pairs, opts):
    """Plan and copy every (src, dst) pair -> CpStats. Downloads are planned while they run (a long
    -input list a chunk at a time, its stats pipelined): the first files transfer while later lines
    are still looked up. Uploads follow."""
    stats = CpStats()
    uploads = []
    md5s = Md5Ahead()  # the files to upload are hashed from the moment they are planned
    unplanned = [0]   # index of the first pair not planned yet
    known = {}      # lfn -> (size, md5, guid) from the listings and stats: what each access
    # reply is checked against, and present files are skipped unread
    facts = None if opts.get('force') or opts.get('dryrun') else LocalFacts()

    def planned_downloads():
        seen = set()
        start = 0
        while start < len(pairs):
            # a short first chunk: its files transfer while the next ones are looked up
            chunk = pairs[start:start + (CP_PLAN_CHUNK if start else REQUEST_WINDOW)]
            start += len(chunk)
            cache = _prefetch_stats(session, chunk) if len(pairs) > 1 else None
            for n, (src, dst) in enumerate(chunk):
                unplanned[0] = start - len(chunk) + n + 1
                try:
                    direction, items = cp_plan(session, src, dst, opts, cache, known, facts)
                except AlienError as e:
                    if len(pairs) == 1:
                        raise
                    stats.fail(src, str(e))
                    continue
                items = cp_refuse_bad_names(items, direction, stats)
                if direction == 'upload':
                    n = len(uploads)
                    uploads.extend(items)
                    if not opts.get('dryrun'):
                        md5s.add(src for src, _, _ in uploads[n:])
                    continue
                unique = []
                for it in items:
                    if it[1] in seen and not opts.get('dryrun'):
                        stats.fail(it[0], 'two sources map to %s' % it[1])
                        continue
                    seen.add(it[1])
                    k = known.get(it[0])
                    if k is not None and not opts.get('force') and not opts.get('dryrun') and \
                            present_unchanged(it[1], k[0], k[1], facts):
                        stats.already(it[0], it[1])      # by its xattrs: no access request, nothing read
                        continue
                    unique.append(it)
                stats.planned.extend((it[0], it[1]) for it in unique)  # (each one's final state is reported)
                yield from unique

    if opts.get('dryrun'):
        stats.plan = ['%s -> %s' % (s, d) for s, d, _ in planned_downloads()]
        stats.plan += ['%s -> %s%s' % (s, d, (' (%s)' % ','.join(sp)) if sp else '') for s, d, sp in uploads]
        return stats
    try:
        downloads = planned_downloads()
        first = next(downloads, None)
        if first is not None:       # with everything present, XRootD is not even imported
            xrootd_client()
            cp_download(session, itertools.chain([first], downloads), opts, stats, known)
        if uploads and opts.get('http'):
            stats.notices.append('cp: -http ignored for uploads (XRootD writes)')
        if uploads:
            stats.planned.extend((s, d) for s, d, _ in uploads)
            hashed = cp_upload(session, uploads, opts, stats, md5s, cp_upload_dirs(uploads))
            again = cp_check_uploads(session, hashed, stats)
            if again:     # once more, then what is still not right is reported
                cp_check_uploads(session, cp_upload(session, again, opts, stats), stats, last=True)
    except KeyboardInterrupt:
        session.drop()  # a reply may be half read: the next request reconnects
        stats.abort = (130, 'cp: interrupted')
    except AlienError as e:
        if not isinstance(e, ConnectionLost) and e.exitcode != EX_NOTCONN:
            raise
        stats.abort = (e.exitcode, 'cp: %s' % e)
    finally:
        md5s.close()
    if stats.abort:  # what was never reached: not attempted (pairs not planned yet as they are)
        listed = set(src for src, _ in stats.planned)
        stats.planned.extend((s, d) for s, d, _ in uploads if s not in listed)
        stats.planned.extend(pairs[unplanned[0]:])
    return stats


def cp_result(stats, opts, as_json=False):
    """The Result of a copy: exit 0 only when every file arrived; the summary line (copied, already
    present, failed, not attempted) however it ended; as_json: every file's state, JCentral-style."""
    if opts.get('dryrun'):
        return Result(EX_GENERIC if stats.failed else 0, out='\n'.join(stats.plan),
                      err='\n'.join('cp: %s' % why for _, why in stats.failed))
    states = stats.states()
    total = sum(len(v) for v in states.values())
    summary = 'cp: %d/%d files copied (%s), %d already present, %d failed, %d not attempted' % (
        len(states['copied']), total, human_bytes(stats.bytes), len(states['present']), len(states['failed']),
        len(states['not attempted']))
    code = stats.abort[0] if stats.abort else (EX_GENERIC if stats.failed or states['not attempted'] else 0)
    lines = list(stats.notices)
    if code:
        lines += ['cp: %s' % why for _, why in stats.failed] + ([stats.abort[1]] if stats.abort else []) + [summary]
    result = Result(code, out='' if code or opts.get('quiet') else summary, err='\n'.join(lines) if code else '')
    if not code and lines:
        print_error('\n'.join(lines))
    if as_json:
        if code:
            print_error(result.err)
        result.results = [dict(state=state, src=src, dst=dst, **({'error': why} if why else {}))
                          for state in CP_STATES for src, dst, why in states[state]]
        result.metadata = {'exitcode': str(code), 'error': stats.abort[1] if stats.abort else '',
                           'copied': str(len(states['copied'])), 'present': str(len(states['present'])),
                           'failed': str(len(states['failed'])), 'not_attempted': str(len(states['not attempted']))}
    return result


def cp_option_notices(opts):
    """What alien.py does instead of the reference client's options that would
    weaken its checks -> [notice lines]; -tpc is refused (AlienError, exit 1)."""
    if opts['tpc']:
        raise AlienError('cp: -tpc is not allowed: third-party copies are not supported', EX_GENERIC)
    out = []
    if opts['skipmd5']:
        out.append('cp: -skipmd5 ignored: alien.py always verifies the md5 of what it copies')
    if opts['fastcheck']:
        out.append('cp: -fastcheck ignored: a present file is skipped without reading it only when its '
                   'size, mtime and recorded md5 (xattrs) match the catalogue, else its md5 is checked')
    return out


def cp_sources_to_dir(pos, local_isdir=os.path.isdir):
    """cp SRC1 SRC2 ... DIR/: several sources and a directory last -> (DIR, [SRC...]);
    the directory ends with '/' or is an existing local directory."""
    dst = pos[-1]
    side, path = cp_side(dst)
    if dst.endswith('/') or split_specs(dst)[0].endswith('/') or (side != 'grid' and local_isdir(
            os.path.expanduser(path))):
        return dst, pos[:-1]
    raise AlienError('cp: %d sources need a directory as the last argument (end it with /); see cp -h'
                     % (len(pos) - 1), EX_EINVAL)


@command('cp', usage=CP_USAGE)
def cmd_cp(session, args):
    opts, pos = parse_cp_args(args, session.environ)
    notices = cp_option_notices(opts)
    if not opts['input'] and not opts['dst'] and len(pos) > 2:
        opts['dst'], pos = cp_sources_to_dir(pos)
    if opts['input']:
        if pos:
            raise AlienError('cp: -input FILE takes no other SRC/DST arguments', EX_EINVAL)
        try:
            text = read_text_limited(os.path.expanduser(opts['input']), INPUT_MAX_BYTES)
        except OSError as e:
            raise AlienError('cp: cannot read -input file %s: %s' % (opts['input'], e.strerror), EX_ENOENT)
        except ValueError as e:
            raise AlienError('cp: cannot read -input file %s: %s' % (opts['input'], e), EX_EINVAL)
        pairs, more = parse_input_lines(text)
        notices += more
        if not pairs:
            raise AlienError('cp: no "src dst" lines in %s' % opts['input'], EX_EINVAL)
    elif opts['dst']:
        if not pos:
            raise AlienError('cp: -dst DIR needs at least one SRC', EX_EINVAL)
        d_side = cp_side(opts['dst'])[0]
        expanded = []
        for src in pos:
            s_side, s_path = cp_side(src)
            if s_side is None:
                s_side = 'grid' if d_side == 'local' else ('local' if d_side == 'grid' else
                                                            ('local' if os.path.lexists(s_path) else 'grid'))
            expanded.append(expand_local_path(s_path) if s_side == 'local' else
                            session.grid_path(split_specs(s_path)[0]))
        pairs = list(zip(pos, dst_dir_targets(expanded, opts['dst'])))
    elif len(pos) != 2:
        raise AlienError('cp: need exactly SRC and DST (got %d arguments); see cp -h' % len(pos), EX_EINVAL)
    else:
        pairs = [(pos[0], pos[1])]
    if not opts['dryrun']:
        require_xrootd()
    if notices:
        print_error('\n'.join(notices))
    run = cp_at_site if opts['site'] and not opts['dryrun'] else cp_run
    return cp_result(run(session, pairs, opts), opts, session.command_json)


def cp_at_site(session, pairs, opts):
    """cp_run with -site SITE: the service's site affinity (setSite) for this copy only; the previous
    site (from the reply 'Setting close site to X (was Y)') is restored."""
    r = session.request('setSite', [opts['site']], nomsg=False)
    if r.exitcode != 0:
        raise AlienError('cp: -site %s: %s' % (opts['site'], r.err or 'exit code %d' % r.exitcode), r.exitcode)
    m = re.search(r'\(was ([^)]*)\)', r.out or '')
    spread, session.spread = session.spread, False    # (more sessions would not have the site)
    try:
        return cp_run(session, pairs, opts)
    finally:
        session.spread = spread
        previous = m.group(1).strip() if m else session.environ.get('ALIEN_SITE', '')
        if previous and previous != opts['site']:
            session.request('setSite', [previous], nomsg=True)


# ==========================================================================
# Commands: the session, files and the catalogue
# ==========================================================================

@command('cd', usage='cd [DIR | - | ~]  change the grid directory (no argument: home; -: previous)')
def cmd_cd(session, args):
    if args == ['-']:
        if not session.prevdir:
            return Result(EX_GENERIC, '', 'cd -: no previous directory')
        args = [session.prevdir]
    result = session.request('cd', args, nokeys=True)
    save_cwd(session)  # shell section: restored by the next interactive shell
    return result


def _ls_with(*flags):
    def handler(session, args):
        return session.request('ls', ['-F'] + list(flags) + args, nokeys=not session.command_json)
    return handler


command('ls', usage='ls [-l] [-a] [PATH...]  list grid directories')(_ls_with())
command('ll', usage='ll [PATH...]  = ls -l')(_ls_with('-l'))
command('la', usage='la [PATH...]  = ls -a')(_ls_with('-a'))
command('lla', usage='lla [PATH...]  = ls -l -a')(_ls_with('-l', '-a'))


@command('home', noargs=True, usage='home  print the grid home directory')
def cmd_home(session, args):
    if not session.home:
        session.request('pwd')
    return Result(0, session.home)


@command('version', connect=False, noargs=True,
         usage='version  client and environment versions (XRootD, Python, locations)')
def cmd_version(session, args):
    lines = ['alien.py version: %s' % VERSION,
             'alien.py location: %s' % os.path.realpath(__file__),
             'script location: %s' % (sys.argv[0] if sys.argv and sys.argv[0] else '-'),
             'Interpreter: %s' % os.path.realpath(sys.executable),
             'Python version: %s' % sys.version.replace('\n', ' ')]
    try:
        from XRootD import client as xrd
        lines += ['XRootD version: %s' % getattr(xrd, '__version__', '?'), 'XRootD path: %s' % xrd.__file__]
    except Exception:
        lines.append('XRootD version: Not Found! (pip install xrootd)')
    return Result(0, '\n'.join(lines))


@command('help', '?', connect=False, usage='help [COMMAND]  list the commands, or show the usage of one')
def cmd_help(session, args):
    if args:
        cmd = COMMANDS.get(args[0])
        if cmd is not None and cmd.usage:
            return Result(0, cmd.usage.strip())
        return session.request(args[0], ['-h'])
    names = set(COMMANDS)
    note = ''
    try:
        names.update(session.server_commands())
    except AlienError as e:
        note = '\n(server commands not listed: %s)' % e
    return Result(0, format_columns(sorted(names)) + note)


@command('exit', 'quit', 'logout', connect=False,
         usage='exit [CODE [stderr] [MESSAGE...]]  leave with CODE (default: the last exit code), printing MESSAGE '
               '(on stderr when CODE is not 0 or with stderr)')
def cmd_exit(session, args):
    code = session.last_exitcode
    args = list(args)
    if args and args[0] not in ('stderr', 'err'):  # a typo must not end the shell
        code = int_arg('exit', args.pop(0))
    to_err = code != 0
    if args and args[0] in ('stderr', 'err'):
        args.pop(0)
        to_err = True
    message = ' '.join(args).strip()
    if message:
        (sys.stderr if to_err else sys.stdout).write(message + '\n')
    raise SystemExit(code)


@command('time', usage='time COMMAND [ARGS]  run COMMAND; add its wall time seen by the client and what it cost\n'
                       '    the user (requests and logins: the 2024 service throttles users by both)\n'
                       'time N COMMAND [ARGS]  the service runs COMMAND N times and reports its own timing')
def cmd_time(session, args):
    if not args:
        return Result(EX_EINVAL, '', 'time: need a command (see time -h)')
    if re.match(r'^\d+$', args[0]):  # the service's own repeat-and-time
        return session.request('time', args, nokeys=not session.command_json)
    t0, requests, logins = time.monotonic(), session.requests, session.logins
    result = session.run_tokens(list(args) + (['-json'] if session.command_json else []))
    if result.exitcode == 0 and not result.as_json:
        result.out = (result.out + '\n' if result.out else '') + 'time: %.3f ms, requests %d, logins %d' % (
            (time.monotonic() - t0) * 1000, session.requests - requests, session.logins - logins)
    return result


@command('ping', usage='ping [COUNT]  websocket round-trip time to the service')
def cmd_ping(session, args):
    _, pos = parse_args('ping', args)
    count = int_arg('ping', pos[0], 1) if pos else 3
    if session.ws is None:
        session.connect()
    rtts = [session.ws.ping(str(i).encode()) * 1000 for i in range(count)]
    return Result(0, '%d websocket ping(s) to %s:%d, round trip min/avg/max %.3f/%.3f/%.3f ms'
                  % (count, session.peer[0], session.peer[1], min(rtts), sum(rtts) / len(rtts), max(rtts)))


@command('exitcode', '$?', connect=False, noargs=True, usage='exitcode  the exit code of the last command')
def cmd_exitcode(session, args):
    return Result(0, str(session.last_exitcode))


def _fetch_temp(session, arg, tmpdir, nses=None):
    """Download one LFN (arg may carry @specs) into tmpdir -> (local path, lfn, specs)."""
    path, specs = split_specs(arg)
    lfn = session.grid_path(path).rstrip('/')
    local = os.path.join(tmpdir, lfn.rsplit('/', 1)[-1] or 'file')
    stats = CpStats()
    opts = dict(CP_OPTIONS.defaults, quiet=True, force=True)
    cp_download(session, [(lfn, local, [s for s in specs if '::' in s])], opts, stats)
    if stats.failed:
        if _grid_stat(session, lfn) is None:
            raise AlienError('%s: no such file' % lfn, EX_ENOENT)
        raise AlienError('%s' % stats.failed[0][1], EX_EIO)
    if nses is not None:
        nses.append(stats.replicas.get(lfn, 0))
    return local, lfn, specs


def _show_files(session, args, name):
    _, files = parse_args(name, args, '-force:ignore')   # always a fresh download
    if not files:
        return Result(EX_USAGE, '', 'usage: %s LFN...' % name)
    xrootd_client()
    with TempDir('alienpy-%s-' % name) as tmp:
        paths = [_fetch_temp(session, f, tmp.path if len(files) == 1 else tmp.subdir())[0] for f in files]
        pager = {'less': os.environ.get('PAGER', 'less'), 'more': 'more'}.get(name)
        if pager and sys.stdout.isatty():
            import subprocess
            try:
                rc = subprocess.call(shlex.split(pager) + paths)
            except OSError as e:
                raise AlienError('%s: cannot run %s: %s' % (name, pager, e.strerror), EX_GENERIC)
            return Result(rc)
        text = b''.join(open(p, 'rb').read() for p in paths).decode('utf-8', 'replace')
        result = Result(0, out=text[:-1] if text.endswith('\n') else text)
        result.style = 'raw'   # file content, printed as is like the system cat
        return result


for _name, _what in (('cat', 'print grid files (downloaded through XRootD)'), ('more', 'page through grid files'),
                     ('less', 'page through grid files ($PAGER or less)')):
    command(_name, usage='%s LFN...  %s' % (_name, _what))(
        lambda session, args, _name=_name: _show_files(session, args, _name))


def edit_grid_file(session, args, editor):
    """Download, edit, and if changed: keep LFN~, upload, restore on failure."""
    import subprocess
    opts, files = parse_args('edit', args, '-datebck')
    if len(files) != 1:
        raise AlienError('usage: edit [-datebck] LFN[@disk:N,SE,...]  (editor: $VISUAL, $EDITOR, or the command name)',
                         EX_USAGE)
    xrootd_client()
    with TempDir('alienpy-edit-') as tmp:
        nses = []
        path, specs = split_specs(files[0])
        lfn = session.grid_path(path).rstrip('/')
        st = _grid_stat(session, lfn)
        if st is not None and st['type'] != 'f':
            raise AlienError('edit: %s is not a file' % lfn, EX_EINVAL)
        if st is None:
            local = os.path.join(tmp.path, lfn.rsplit('/', 1)[-1])
            open(local, 'wb').close()
            before = None
        else:
            local, lfn, specs = _fetch_temp(session, files[0], tmp.path, nses)
            before = md5_file(local)
        try:
            rc = subprocess.call(shlex.split(editor) + [local])
        except OSError as e:
            raise AlienError('edit: cannot run editor %r: %s' % (editor, e.strerror), EX_GENERIC)
        if rc != 0:
            raise AlienError('edit: editor %r exited with %d; nothing uploaded' % (editor, rc), EX_GENERIC)
        if md5_file(local) == before:
            return Result(0, out='%s unchanged' % lfn)
        backup = None
        if before is not None:
            backup = lfn + (time.strftime('.%Y%m%d_%H%M%S') if opts.get('datebck') else '~')
            session.request('rm', ['-f', backup], nomsg=True)
            mv = session.request('mv', [lfn, backup], nomsg=True)
            if mv.exitcode != 0:
                tmp.keep = True
                raise AlienError('edit: cannot back up %s as %s (%s); edited copy kept at %s'
                                 % (lfn, backup, mv.err, local), EX_GENERIC)
        up_specs = list(specs)
        if nses and nses[0] > 0 and not any(_REPLICA_COUNT_RE.match(s) for s in specs):
            up_specs = ['disk:%d' % nses[0]] + up_specs
        stats = CpStats()
        cp_upload(session, [(local, lfn, up_specs)], dict(CP_OPTIONS.defaults, quiet=True), stats)
        if stats.failed:
            tmp.keep = True
            msg = 'edit: upload of %s failed (%s); edited copy kept at %s' % (lfn, stats.failed[0][1], local)
            if backup:
                session.request('rm', ['-f', lfn], nomsg=True)
                back = session.request('mv', [backup, lfn], nomsg=True)
                msg += '; previous version restored' if back.exitcode == 0 else \
                    '; previous version is at %s' % backup
            raise AlienError(msg, EX_GENERIC)
        return Result(0, out='Uploaded %s' % lfn + (' (previous version: %s)' % backup if backup else ''))


for _name in ('edit', 'vi', 'vim', 'nano', 'mcedit'):   # edit: $VISUAL, $EDITOR or vi; the others: that editor
    command(_name, usage='%s [-datebck] LFN[@specs]  edit a grid file; the old version is kept as LFN~' % _name)(
        lambda session, args, _name=_name: edit_grid_file(session, args, _name if _name != 'edit' else (
            os.environ.get('VISUAL') or os.environ.get('EDITOR') or 'vi')))


FIND2_USAGE = '''find2 [options] DIR        (or DIR/PATTERN, e.g. /alice/data/*/AO2D.root)
every file under DIR that passes the client-side filters, one LFN per line
(exit 2 when none does). The selection and filters are cp's:
  -glob PAT | -select REGEX (full path) | -name begin_X_contain_Y_ends_Z_ext_W
  -exclude TEXT, -exclude_re REGEX (relative path; repeatable), -minsize/-maxsize BYTES,
  -mindepth/-maxdepth N, -user U, -group G, -jobid ID, -min-ctime/-max-ctime T (ms, s, YYYY-mm-dd)
  -j JOBID, -l COUNT, -o OFFSET   passed to the service's find
  -x FILE         also write the files as an AliEn XML collection to the local FILE
  -v -a -s -f -d -w -wh           accepted and ignored, as by the reference client'''
_FIND2_NAMES = ('-glob', '-select', '-name', '-exclude', '-exclude_re', '-minsize', '-maxsize', '-mindepth',
                '-maxdepth', '-user', '-group', '-jobid', '-min-ctime', '-max-ctime', '-j', '-l', '-o')
FIND2_OPTIONS = Options([r[:4] for r in CP_OPTIONS.rows if r[0] in _FIND2_NAMES] + [
    ('-v -a -s -f -d -w -wh', None, 'ignore'), ('-x', 'xml', 'str', '')],
    head=FIND2_USAGE, defaults=CP_OPTIONS.defaults, code=EX_EINVAL, check=_one_selection_rule)
# the attributes of a <file> in the service's XML collections, in its order
_XML_FILE_FIELDS = ('name', 'aclId', 'broken', 'ctime', 'dir', 'entryId', 'expiretime', 'gowner', 'guid',
                    'guidtime', 'jobid', 'lfn', 'md5', 'owner', 'perm', 'replicated', 'size', 'turl', 'type')


def xml_collection(entries, command, creator, now=None):
    """An AliEn XML collection shaped like the service's toXml; missing entry fields are empty."""
    from xml.sax.saxutils import quoteattr
    now = time.time() if now is None else now
    lines = ['<?xml version="1.0"?>', '<alien>', '  <collection name="tempCollection">']
    for i, e in enumerate(entries, 1):
        attrs = ' '.join('%s=%s' % (k, quoteattr(str(e.get(k, '')))) for k in _XML_FILE_FIELDS)
        lines += ['    <event name="%d">' % i, '      <file %s />' % attrs, '    </event>']
    lines.append('    <info command=%s creator=%s date=%s timestamp="%d" />' % (
        quoteattr(command), quoteattr(creator),
        quoteattr(time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime(now))), int(now * 1000)))
    return '\n'.join(lines + ['  </collection>', '</alien>']) + '\n'


def xml_entry_grid(row):
    """A row of `find -f` -> collection entry (ctime: ms since 1970 -> UTC text)."""
    e = dict((k, row.get(k, '')) for k in _XML_FILE_FIELDS)
    lfn = row.get('lfn', '')
    ms = ctime_ms(row.get('ctime'))
    e.update(name=row.get('name') or lfn.rsplit('/', 1)[-1], turl='alien://' + lfn,
             ctime=_utc(ms / 1000.0) if ms is not None else row.get('ctime', ''))
    return e


def xml_entry_local(path):
    """A local file -> collection entry (lfn and turl: file://ABSPATH)."""
    path = os.path.abspath(path)
    st = os.stat(path)
    if not stat_mod.S_ISREG(st.st_mode):
        raise AlienError('%s is not a regular file' % path, EX_EINVAL)
    meta = _local_meta(path)
    return {'name': os.path.basename(path), 'broken': '0', 'replicated': '0', 'type': 'f',
            'ctime': _utc(st.st_ctime), 'owner': meta['owner'] or st.st_uid, 'gowner': meta['gowner'] or st.st_gid,
            'perm': '%o' % (st.st_mode & 0o777), 'size': st.st_size, 'md5': md5_file(path),
            'lfn': 'file://' + path, 'turl': 'file://' + path}


def write_local_text(path, text, what=''):
    """Write text to path through a temp file renamed over it: a failure leaves path as it was."""
    path = os.path.abspath(os.path.expanduser(path))
    tmp = part_name(path)
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quiet(tmp)
        raise AlienError('%scannot write %s: %s' % (what + ': ' if what else '', path, e.strerror), EX_EIO)


def _local_target(value, cmd):
    """-x target that must be local: file:PATH or PATH; an alien: one is refused."""
    side, path = cp_side(value)
    if side == 'grid':
        raise AlienError('%s: -x %s: the collection is written locally; upload it with cp' % (cmd, value), EX_EINVAL)
    return path


@command('find2', usage=FIND2_USAGE)
def cmd_find2(session, args):
    opts, pos = parse_args('find2', args, FIND2_OPTIONS)
    if len(pos) != 1:
        return Result(EX_EINVAL, '', 'find2: give one directory (DIR or DIR/PATTERN); see find2 -h')
    xml = _local_target(opts['xml'], 'find2') if opts['xml'] else ''
    base, pattern = split_glob(session.grid_path(pos[0]))
    base = base.rstrip('/') + '/'
    rows = [] if xml else None
    try:
        lfns = _grid_find(session, base, opts, pattern, rows=rows)
    except AlienError as e:
        return Result(e.exitcode, '', 'find2: %s' % e)
    if not lfns:
        return Result(EX_ENOENT, '', 'find2: no file under %s passes the selection' % base)
    if xml:
        write_local_text(xml, xml_collection([xml_entry_grid(r) for r in rows], 'find2 ' + ' '.join(args),
                                             session.user or ''))
    return Result(0, '\n'.join(lfns))


TOXML_USAGE = '''toXml [-i] [-a] [-x OUT] [-l LIST] [LFN...]   the service's toXml (see toXml -h there), plus:
  -local          the targets (LFN... or the lines of LIST) are local files: the
                  collection is made here, with lfn/turl file://PATH
  -x file:OUT     write the collection to the local file OUT (without file: the
                  service writes it to the catalogue; with -local OUT is always local)'''
TOXML_OPTIONS = Options([('-local', 'local', 'flag', False), ('-i', 'ignore', 'flag', False),
                         ('-a', 'append', 'flag', False), ('-x', 'xml', 'str', ''), ('-l', 'list', 'str', '')],
                        code=EX_EINVAL)


@command('toXml', usage=TOXML_USAGE)
def cmd_toxml(session, args):
    opts, pos = parse_args('toXml', args, TOXML_OPTIONS)
    if opts['append'] and not opts['xml']:
        return Result(EX_EINVAL, '', 'toXml: -a appends to the collection given with -x')
    if not opts['local']:
        side, out = cp_side(opts['xml']) if opts['xml'] else (None, '')
        srv = (['-i'] if opts['ignore'] else []) + (['-a'] if opts['append'] else []) + \
              (['-l', opts['list']] if opts['list'] else []) + (['-x', out] if out and side != 'local' else []) + pos
        if side == 'local' and opts['append']:
            return Result(EX_EINVAL, '', 'toXml: -a appends to a collection in the catalogue, not to a local file')
        result = session.request('toXml', srv)
        if side == 'local' and result.exitcode == 0:
            write_local_text(out, result.out)     # as the service sent it
        return result
    if opts['append']:
        return Result(EX_EINVAL, '', 'toXml -local: appending to a collection is not supported; write a new one')
    targets = list(pos)
    if opts['list']:
        try:
            with open(os.path.expanduser(cp_side(opts['list'])[1]), encoding='utf-8') as f:
                targets += [l.strip() for l in f if l.strip() and not l.lstrip().startswith('#')]
        except OSError as e:
            return Result(EX_ENOENT, '', 'toXml: cannot read %s: %s' % (opts['list'], e.strerror))
    if not targets:
        return Result(EX_EINVAL, '', 'toXml -local: no files given')
    entries = []
    for t in targets:
        side, path = cp_side(t)
        if side == 'grid':
            return Result(EX_EINVAL, '', 'toXml -local: %s is a grid file' % t)
        try:
            entries.append(xml_entry_local(path))
        except OSError as e:
            if not opts['ignore']:
                return Result(EX_ENOENT, '', 'toXml: %s: %s' % (path, e.strerror))
    text = xml_collection(entries, 'toXml ' + ' '.join(args), session.user or pwd_name())
    if opts['xml']:
        write_local_text(_local_target(opts['xml'], 'toXml'), text)
    return Result(0, text.rstrip('\n'))


def pwd_name():
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


RUN_USAGE = '''run COMMAND [ARGS...] LFN     download LFN (md5-verified), run COMMAND ARGS... FILE here,
                              remove the file; the exit code is COMMAND's
  several grid files: mark each with alien: (they are appended in their order);
  -force, -noout: accepted (the file is always downloaded afresh, the output
  is never captured: it goes straight to the terminal)'''
EXEC_USAGE = '''exec LFN [ARGS...]            download the program LFN (md5-verified), run it with ARGS,
                              remove it; the exit code is the program's (-force, -noout: as in run)'''
RUN_OPTIONS = '-force:ignore -noout:ignore'   # the other arguments are the program's


def _run_with_grid_files(session, argv, grid_at, make_executable=False):
    """Run argv with private local copies in place of the grid files argv[i], i in grid_at."""
    xrootd_client()
    with TempDir('alienpy-run-') as tmp:
        argv = list(argv)
        for i in grid_at:
            argv[i] = _fetch_temp(session, argv[i], tmp.subdir())[0]
            if make_executable:
                os.chmod(argv[i], 0o700)
        return run_local(argv)


def run_argv(args):
    """run's arguments -> (argv, indexes of the grid files: the alien:-marked ones moved last, or the last)."""
    args = parse_args('run', args, RUN_OPTIONS, free=True)[1]
    if len(args) < 2:
        return None
    marked = [i for i, a in enumerate(args) if i > 0 and a.startswith('alien:')] or [len(args) - 1]
    argv = [a for i, a in enumerate(args) if i not in marked] + [args[i] for i in marked]
    return argv, list(range(len(argv) - len(marked), len(argv)))


@command('run', usage=RUN_USAGE)
def cmd_run(session, args):
    parsed = run_argv(args)
    if parsed is None:
        return Result(EX_USAGE, '', 'usage: run COMMAND [ARGS...] LFN')
    return _run_with_grid_files(session, *parsed)


@command('exec', usage=EXEC_USAGE)
def cmd_exec(session, args):
    args = parse_args('exec', args, RUN_OPTIONS, free=True)[1]
    if not args:
        return Result(EX_USAGE, '', 'usage: exec LFN [ARGS...]')
    return _run_with_grid_files(session, args, [0], make_executable=True)


def save_cwd(session):
    """Write CWD/CWDPREV to ~/.alienpy_session (owner-only); never fails a cd. Written in place, then cut:
    on ext4 a rename over it or a truncation to zero flushes to disk (~4 ms per cd); a lost cd is harmless."""
    if not session.cwd:
        return
    text = 'CWD = %s\nCWDPREV = %s\n' % (session.cwd, session.prevdir or session.cwd)
    if getattr(session, 'saved_cwd_text', None) == text:
        return
    path = user_file(session.environ, '.alienpy_session')
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0), 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            data = text.encode('utf-8', 'surrogateescape')
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        session.saved_cwd_text = text
    except OSError as e:
        log('cannot write the session file: %s' % e)


def restore_cwd(session):
    """Go back to the directory of the last session (interactive shell only)."""
    if env_flag('ALIENPY_NO_CWD_RESTORE', session.environ):
        return
    saved = dict(read_settings(user_file(session.environ, '.alienpy_session')))
    cwd, prev = saved.get('CWD', ''), saved.get('CWDPREV', '')
    if cwd and cwd.startswith('/') and cwd != session.cwd:
        r = session.request('cd', [cwd], nokeys=True)
        if r.exitcode != 0:
            print_error('cannot return to %s: %s' % (cwd, r.err or 'cd failed'))
            return
    if prev.startswith('/'):
        session.prevdir = prev


def dir_stack(session):
    """The directory stack below the top; the top is always the current directory."""
    if getattr(session, 'dirstack', None) is None:
        session.dirstack = []
    return session.dirstack


def _short_dir(session, path, full=False):
    home = session.home
    if not full and home and (path == home or path.startswith(home)):
        path = '~/' + path[len(home):]
    return path.rstrip('/') or '/'


def _stack_text(session, opts=None):
    opts = opts or {}
    entries = [session.cwd] + dir_stack(session)
    shown = [_short_dir(session, p, opts.get('l')) for p in entries]
    if opts.get('v'):
        return '\n'.join('%2d  %s' % (i, p) for i, p in enumerate(shown))
    return ('\n' if opts.get('p') else ' ').join(shown)


def _stack_index(session, arg, name):
    """Index in [cwd] + stack of '+N' (from the left) or '-N' (from the right)."""
    size = 1 + len(dir_stack(session))
    n = int(arg[1:])   # callers checked _is_index(arg)
    if n >= size or n < 0:
        raise AlienError('%s: %s: directory stack index out of range' % (name, arg), EX_EINVAL)
    return n if arg[0] == '+' else size - 1 - n


def _is_index(arg):
    return re.match(r'^[+-][0-9]+$', arg) is not None


def _need_cwd(session):
    if not session.cwd:
        session.request('pwd')


@command('dirs', usage='dirs [-c] [-l] [-p] [-v] [+N|-N]  show (or with -c clear) the directory stack')
def cmd_dirs(session, args):
    opts, other = parse_args('dirs', args, '-c -l -p -v')
    _need_cwd(session)
    bad = [a for a in other if not _is_index(a)]
    if bad:
        return Result(EX_USAGE, '', 'dirs: %s: invalid argument (use -c, -l, -p, -v, +N or -N)' % bad[0])
    if opts.get('c'):
        del dir_stack(session)[:]
        return Result(0)
    if other:
        i = _stack_index(session, other[0], 'dirs')
        return Result(0, _short_dir(session, ([session.cwd] + dir_stack(session))[i], opts.get('l')))
    return Result(0, _stack_text(session, opts))


def _cd_to(session, path):
    r = cmd_cd(session, [path])
    if r.exitcode != 0:
        raise AlienError(r.err or 'cd %s failed' % path, r.exitcode)


@command('pushd', usage='pushd [-n] [DIR | +N | -N]  push DIR (no argument: swap the top two) and go there')
def cmd_pushd(session, args):
    opts, args = parse_args('pushd', args, '-n')
    _need_cwd(session)
    no_cd = opts.get('n')
    stack = dir_stack(session)
    if len(args) > 1:
        return Result(EX_USAGE, '', 'pushd: too many arguments')
    if not args:
        if not stack:
            return Result(EX_GENERIC, '', 'pushd: no other directory')
        if no_cd:
            return Result(0, _stack_text(session))
        old = session.cwd
        _cd_to(session, stack[0])
        stack[0] = old
    elif _is_index(args[0]):
        entries = [session.cwd] + stack
        i = _stack_index(session, args[0], 'pushd')
        rotated = entries[i:] + entries[:i]
        if i:  # the top is always the current directory: rotating means a cd
            _cd_to(session, rotated[0])
        stack[:] = rotated[1:]
    else:
        target = session.grid_path(args[0])
        if no_cd:
            stack.insert(0, target if target.endswith('/') else target + '/')
        else:
            old = session.cwd
            _cd_to(session, target)
            stack.insert(0, old)
    return Result(0, _stack_text(session))


@command('popd', usage='popd [-n] [+N | -N]  drop the top of the directory stack and go to the new top')
def cmd_popd(session, args):
    opts, args = parse_args('popd', args, '-n')
    _need_cwd(session)
    no_cd = opts.get('n')
    stack = dir_stack(session)
    if len(args) > 1 or (args and not _is_index(args[0])):
        return Result(EX_USAGE, '', 'popd: usage: popd [-n] [+N | -N]')
    if not stack:
        return Result(EX_GENERIC, '', 'popd: directory stack empty')
    i = _stack_index(session, args[0], 'popd') if args else 0
    if i == 0 and not no_cd:
        _cd_to(session, stack[0])
    del stack[max(i - 1, 0)]   # i: the index in [cwd] + stack
    return Result(0, _stack_text(session))


# ==========================================================================
# Commands: storage elements (XRootD probes and the storage commands)
# ==========================================================================
# Exit codes: 0 all fine; 2 no such LFN/SE label; 5 a replica or SE failed its check (stdout says which);
# 64 wrong arguments; 107 checkAddr: an address failed; 1 no XRootD bindings; a server errno.

XRD_CONFIG_KEYS = ('bind_max', 'chksum', 'pio_max', 'readv_ior_max', 'readv_iov_max', 'tpc',
                   'wan_port', 'wan_window', 'window', 'cms', 'role', 'sitename', 'version')


def xrd_probe_fs(host, what):
    """XRootD FileSystem of root://host[:port] (xrootd_client sets TimeoutResolution 1: at the
    default 15 s granularity a 2 s timeout would last 15 s)."""
    client = xrootd_client(what)
    return client.FileSystem('root://%s/?xrd.wantprot=unix' % host)


def xrd_status_dict(status):
    """The fields of an XRootDStatus every probe reports."""
    return {'ok': bool(status.ok), 'status': int(status.status), 'code': int(status.code),
            'errno': int(status.errno), 'message': (status.message or '').strip()}


def xrd_config_value(key, raw):
    """A `query config` answer: the server echoes the key back when it is not set."""
    value = (raw or b'').decode('ascii', 'replace').strip('\x00 \t\r\n')
    return 'NOT_SET' if value == key or not value else value


def _xml_element_dict(e):
    """An element as xmltodict shows it (repeated children: lists, mixed text: '#text'), quotes dropped."""
    d = {k: v for k, v in e.attrib.items()}
    for child in e:
        v = _xml_element_dict(child)
        if child.tag in d:
            if not isinstance(d[child.tag], list):
                d[child.tag] = [d[child.tag]]
            d[child.tag].append(v)
        else:
            d[child.tag] = v
    text = (e.text or '').strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if text and not d:
        return text
    if text:
        d['#text'] = text
    return d or None


def xrd_stats_dict(xml_text):
    """`query stats` XML -> the reference client's dict: attributes, 'stats' = {id: {...}} (oss paths too)."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise AlienError('xrd_stats: the server sent statistics that are not XML: %s' % e, EX_ENOMSG)
    d = _xml_element_dict(root) or {}
    blocks = d.pop('stats', None) or []
    merged = {}
    for block in blocks if isinstance(blocks, list) else [blocks]:
        block = dict(block or {})
        ident = block.pop('id', '')
        paths = block.get('paths')
        if isinstance(paths, dict) and isinstance(paths.get('stats'), dict):
            inner = dict(paths['stats'])
            paths['stats'] = {inner.pop('id', ''): inner}
        merged[ident] = block
    d['stats'] = merged
    return d


XRD_STAT_FLAGS = (('x_bit_set', 1), ('is_dir', 2), ('other', 4), ('offline', 8),
                  ('is_readable', 16), ('is_writable', 32), ('posc_pending', 64), ('backup_exists', 128))


def xrd_stat_pfn(pfn, timeout):
    """Metadata of one replica on its SE: status fields, and size/modtime/flags when ok."""
    from urllib.parse import urlsplit
    u = urlsplit(pfn)
    if u.scheme not in ('root', 'xroot') or not u.netloc:
        return {'ok': False, 'status': 1, 'code': 0, 'errno': 0,
                'message': 'not an XRootD URL (root://host//path)'}
    fs = xrd_probe_fs(u.netloc, 'pfn-status')
    path = u.path + ('?' + u.query if u.query else '')
    status, info = fs.stat(path, timeout=timeout)
    d = xrd_status_dict(status)
    if status.ok and info is not None:
        d.update(size=int(info.size), modtime=int(info.modtime), modtimestr=info.modtimestr,
                 flags=int(info.flags))
        d.update((name, bool(info.flags & bit)) for name, bit in XRD_STAT_FLAGS)
    return d


PROBE_TIMEOUT = 5   # seconds, default -timeout of one XRootD/TCP/TLS probe


def list_ses(session):
    """Every storage element of the service (listSEs rows)."""
    r = session.request('listSEs', [], nomsg=True)
    if r.exitcode != 0:
        raise AlienError('listSEs: %s' % (r.err or 'failed'), r.exitcode)
    return [x for x in r.results if isinstance(x, dict) and x.get('seName')]


def se_matches(se, label):
    """A number label is the SE number; text: a case-insensitive part of the SE name or endpoint URL."""
    if label.isdigit():
        return str(se.get('seNumber', '')).lstrip('0') == label.lstrip('0')
    text = label.casefold()
    return any(text in str(se.get(k) or '').casefold() for k in ('seName', 'endpointUrl'))


def se_host(se):
    from urllib.parse import urlsplit
    return urlsplit(se.get('endpointUrl') or '').netloc


def xrd_host_label(label):
    """'host[:port]' (default port 1094) when a label names an XRootD server, else None."""
    if not ('.' in label or ':' in label or label == 'localhost'):
        return None
    try:
        host, port = parse_hostport(label, 1094)
    except AlienError:
        return None
    if not host or not re.match(r'^[A-Za-z0-9.:-]+$', host):
        return None
    return '%s:%d' % (('[%s]' % host) if ':' in host else host, port)


def lookup_ses(session, labels, name, hosts=False):
    """The SEs the labels match, each once; hosts: a label no SE matches may name an XRootD server."""
    ses, found = list_ses(session), []
    for label in labels:
        hit = [se for se in ses if se_matches(se, label)]
        host = xrd_host_label(label) if hosts and not hit else None
        if host:
            hit = [{'seName': label, 'endpointUrl': 'root://%s' % host}]
        if not hit:
            raise AlienError('%s: no storage element matches "%s" (getSE lists them)' % (name, label), EX_ENOENT)
        found.extend(se for se in hit if se not in found)
    return found


GETSE_USAGE = '''getSE [-id | -name | -srv] [LABEL]  storage elements from listSEs
  no LABEL: every SE as "number name host:port"; LABEL: an SE number, or part of
  an SE name or endpoint (case-insensitive); -id, -name, -srv print only that field.
  Exit 2 when no SE matches.'''


@command('getSE', usage=GETSE_USAGE)
def cmd_getse(session, args):
    opts, pos = parse_args('getSE', args, '-id -name -srv')
    if len(pos) > 1 or len(opts) > 1:
        raise AlienError('getSE: one LABEL and at most one of -id, -name, -srv (see getSE -h)', EX_USAGE)
    ses = lookup_ses(session, pos, 'getSE') if pos else list_ses(session)
    field = next(iter(opts), '')
    widths = (-32,) if pos and pos[0].isdigit() else (-6, -32)   # a number label: the number is known
    lines = []
    for se in ses:
        row = {'id': se.get('seNumber', ''), 'name': se['seName'], 'srv': se_host(se)}
        lines.append(row[field] if field else table_line([row['id'], row['name'], row['srv']][-1 - len(widths):],
                                                         widths))
    return client_result('\n'.join(lines), ses)


@command('SEqos', usage='SEqos SE...  the QoS tags of storage elements (labels as in getSE)')
def cmd_seqos(session, args):
    _, pos = parse_args('SEqos', args)
    if not pos:
        raise AlienError('SEqos: which SE? usage: SEqos SE...', EX_USAGE)
    ses = lookup_ses(session, pos, 'SEqos')
    return client_result('\n'.join(table_line((se['seName'], se.get('qos', '')), (-32,)) for se in ses), ses)


@command('pfn', usage='pfn LFN  the physical URLs of the replicas of a file (whereis -r)')
def cmd_pfn(session, args):
    _, pos = parse_args('pfn', args)
    if len(pos) != 1:
        raise AlienError('pfn: usage: pfn LFN', EX_USAGE)
    r = session.request('whereis', ['-r', pos[0]], nomsg=True)
    if r.exitcode == 0:
        r.out = '\n'.join(x['pfn'] for x in r.results if isinstance(x, dict) and 'pfn' in x)
    return r


PFN_STATUS_USAGE = '''pfn-status [-v] [-timeout S] LFN|PFN...  check each replica on its SE over XRootD
  an argument starting with root:// is a PFN, anything else an LFN (all its replicas).
  One line per replica: size and R/W flags, or what failed; -v adds the other flags.
  Exit 0 when every replica answered and is online, 5 when one did not.'''


@command('pfn-status', usage=PFN_STATUS_USAGE)
def cmd_pfn_status(session, args):
    opts, pos = parse_args('pfn-status', args, '-v -verbose -timeout:count', {'timeout': PROBE_TIMEOUT})
    if not pos:
        raise AlienError('pfn-status: usage: pfn-status [-v] LFN|PFN...', EX_USAGE)
    xrootd_client('pfn-status')
    targets = []
    for arg in pos:
        if re.match(r'^x?root://', arg):
            targets.append(('', '', arg))
            continue
        lfn = session.grid_path(arg)
        r = session.request('whereis', ['-r', lfn], nomsg=True)
        if r.exitcode != 0:
            raise AlienError('pfn-status: %s' % (r.err or 'whereis %s failed' % lfn), r.exitcode)
        targets += [(lfn, x.get('seName', ''), x['pfn']) for x in r.results if isinstance(x, dict) and x.get('pfn')]
    rows, lines = [], []
    for lfn, se, pfn in targets:
        row = {'lfn': lfn, 'se': se, 'pfn': pfn}
        row.update(xrd_stat_pfn(pfn, opts['timeout']))
        row['online'] = bool(row['ok'] and not row.get('offline'))
        rows.append(row)
        if lfn:
            lines.append('LFN: %s' % lfn)
        if row['ok']:
            lines.append('%s\t\tSize: %d\tR/W status:%d/%d' % (pfn, row['size'], row['is_readable'], row['is_writable']))
            if 'v' in opts or 'verbose' in opts:
                lines.append('IS DIR/OTHER/OFFLINE: %d/%d/%d\tModified: %s\tPOSC pending: %d\t\tBACKUP: %d' % (
                    row['is_dir'], row['other'], row['offline'], row['modtimestr'], row['posc_pending'],
                    row['backup_exists']))
        else:
            lines.append('%s\t\tMessage: %s\tStatus/Code/ErrNo:%d/%d/%d' % (
                pfn, row['message'], row['status'], row['code'], row['errno']))
    bad = [r for r in rows if not r['online']]
    err = 'pfn-status: %d of %d replicas failed the check' % (len(bad), len(rows)) if bad else ''
    return client_result('\n'.join(lines), rows, exitcode=EX_EIO if bad else 0, err=err)


LFN2URI_USAGE = '''lfn2uri LFN[@SPECS] [LOCAL_FILE] [meta] [write|upload] [strict] [http]
  the XRootD URLs (with their access envelopes) of the replicas of LFN, one per line
  as a Python string literal (the envelope holds newlines): ready for xrdcp.
  meta: write LFN's replicas into ./NAME.meta4 (a metalink for xrdcp) and print its path
  write|upload: URLs to write LOCAL_FILE as LFN (default specs disk:2); not with meta
  strict: only the SEs named in SPECS; http: http(s) URLs where the SEs have them'''


@command('lfn2uri', usage=LFN2URI_USAGE)
def cmd_lfn2uri(session, args):
    keys, pos = parse_args('lfn2uri', args, 'meta write upload strict http')   # keywords, not options
    write = 'write' in keys or 'upload' in keys
    if not pos or len(pos) > 2:
        raise AlienError('lfn2uri: usage: lfn2uri LFN [LOCAL_FILE] [meta] [write|upload] [strict] [http]', EX_USAGE)
    if write and 'meta' in keys:
        raise AlienError('lfn2uri: meta is for reading; it cannot be combined with write/upload', EX_USAGE)
    path, specs = split_specs(pos[0])
    lfn = session.grid_path(path)
    size = md5 = None
    if write:
        local = expand_local_path(pos[1]) if len(pos) > 1 else ''
        if not local or not os.path.isfile(local):
            raise AlienError('lfn2uri: write URLs need an existing LOCAL_FILE to upload (got %r)'
                             % (pos[1] if len(pos) > 1 else ''), EX_ENOENT)
        size, md5 = os.path.getsize(local), md5_file(local)
        specs = _with_default_specs(specs)
    access = _access_args('write' if write else 'read', lfn, specs, size, md5, 'strict' in keys)
    r = session.request('access', (['-u'] if 'http' in keys else []) + access, nomsg=True)
    if r.exitcode != 0:
        return r
    replicas = [x for x in r.results if isinstance(x, dict) and x.get('url')]
    urls = [grid_url(x['url'], x.get('envelope', '')) for x in replicas]
    if 'meta' not in keys:
        return client_result('\n'.join(repr(u) for u in urls), replicas)
    target = os.path.abspath(os.path.basename(lfn) + '.meta4')
    first = replicas[0] if replicas else {}
    write_local_text(target, metalink_text(lfn, _int_or_none(first.get('size')) or 0, first.get('md5') or '', urls),
                     what='lfn2uri')
    return client_result(target, replicas)


def xrd_each_se(session, args, name, options, probe, timeout=PROBE_TIMEOUT):
    """An xrd_* command (-a: every SE): probe(se_name, host, opts, timeout) -> (text or None: failed, row)."""
    opts, pos = parse_args(name, args, options + ' -timeout:count', {'timeout': timeout})
    if 'a' in opts or 'all' in opts:
        ses = list_ses(session)
    elif pos:
        ses = lookup_ses(session, pos, name, hosts=True)
    else:
        raise AlienError('%s: which SE? usage: %s [options] SE|HOST[:PORT]... (see %s -h)' % (name, name, name),
                         EX_USAGE)
    xrootd_client(name)
    texts, rows = [], []
    for se_name, host in [(se['seName'], se_host(se)) for se in ses if se_host(se)]:
        text, row = probe(se_name, host, opts, opts['timeout'])
        row.update(seName=se_name, endpointUrl=host)
        texts.append('%-32s %s' % (se_name, row['message']) if text is None else text)
        rows.append(row)
    bad = [r['seName'] for r in rows if not r['ok']]
    return client_result('\n'.join(texts), rows, exitcode=EX_EIO if bad else 0,
                         err='%s: no answer from %s' % (name, ', '.join(bad)) if bad else '')


XRD_PING_USAGE = '''xrd_ping [-c COUNT] [-timeout S] SE|HOST[:PORT]...  XRootD round trip to storage elements
  SE: an SE number or part of its name (getSE); HOST[:PORT]: any XRootD server.
  COUNT pings (default 3) after one that opens the connection; -timeout per ping (2 s).
  Exit 0 when every SE answered, 5 when one did not (its line says why).'''


def _ping_probe(se_name, host, opts, timeout):
    import statistics
    count = opts.get('c', 3)
    rtts = []
    fs = xrd_probe_fs(host, 'xrd_ping')
    for i in range(count + 1):   # ping 0 opens the connection: not counted
        t0 = time.monotonic()
        status, _ = fs.ping(timeout=timeout)
        ms = (time.monotonic() - t0) * 1000
        st = xrd_status_dict(status)
        if not st['ok']:
            break
        if i:
            rtts.append(ms)
    if len(rtts) < count:
        return None, {'ok': False, 'rtt_ms': rtts, 'message': st['message']}
    row = {'ok': True, 'rtt_ms': rtts, 'min': min(rtts), 'avg': sum(rtts) / len(rtts), 'max': max(rtts),
           'mdev': statistics.stdev(rtts) if len(rtts) > 1 else 0.0}
    return ('%-32s rtt min/avg/max/mdev (ms) = %.3f/%.3f/%.3f/%.3f'
            % (se_name, row['min'], row['avg'], row['max'], row['mdev'])), row


@command('xrd_ping', usage=XRD_PING_USAGE)
def cmd_xrd_ping(session, args):
    count = parse_args('xrd_ping', args, '-c:count -timeout:count')[0].get('c', 3)
    r = xrd_each_se(session, args, 'xrd_ping', '-c:count', _ping_probe, timeout=2)
    r.out = 'XRootD ping(s): %d time(s) to:\n%s' % (count, r.out)
    return r


XRD_CONFIG_USAGE = '''xrd_config [-v] [-a] [-timeout S] SE|HOST[:PORT]...  XRootD configuration of storage elements
  one line per SE: site, XRootD version, TPC, role, CMS; -v adds checksum, limits and
  windows; -a: every SE of listSEs. Exit 5 when an SE did not answer.'''


def _config_probe(se_name, host, opts, timeout):
    from XRootD.client.flags import QueryCode
    fs = xrd_probe_fs(host, 'xrd_config')
    cfg = {}
    for key in XRD_CONFIG_KEYS:   # the first failure ends the probe
        status, raw = fs.query(QueryCode.CONFIG, key, timeout=timeout)
        if not status.ok:
            return None, dict(cfg, ok=False, message=xrd_status_dict(status)['message'])
        cfg[key] = xrd_config_value(key, raw)
    if cfg['sitename'] == 'NOT_SET':
        cfg['sitename'] = se_name
    cfg['ok'] = True
    text = ('Site/XrdVer: %s/%s ; TPC status: %s ; role: %s ; CMS: %s'
            % (cfg['sitename'], cfg['version'], cfg['tpc'], cfg['role'], cfg['cms']))
    if 'v' in opts or 'verbose' in opts:
        text += ('\nChksum type: %s ; Bind max: %s ; PIO max: %s ; Window/WAN window: %s/%s ; '
                 'readv_{ior,iov}_max: %s/%s' % (cfg['chksum'], cfg['bind_max'], cfg['pio_max'], cfg['window'],
                                                 cfg['wan_window'], cfg['readv_ior_max'], cfg['readv_iov_max']))
    return text, cfg


@command('xrd_config', usage=XRD_CONFIG_USAGE)
def cmd_xrd_config(session, args):
    return xrd_each_se(session, args, 'xrd_config', '-v -verbose -a -all', _config_probe)


XRD_STATS_USAGE = '''xrd_stats [-xml | -xmlraw] [-compact] [-a] [-timeout S] SE|HOST[:PORT]...  XRootD statistics
  of storage elements, as JSON (default), indented XML (-xml) or as the server sent it
  (-xmlraw); -compact: no indentation; -a: every SE. Exit 5 when an SE did not answer.'''


def _stats_probe(se_name, host, opts, timeout):
    from XRootD.client.flags import QueryCode
    status, raw = xrd_probe_fs(host, 'xrd_stats').query(QueryCode.STATS, 'a', timeout=timeout)
    if not status.ok:
        return None, {'ok': False, 'message': xrd_status_dict(status)['message']}
    xml_text = (raw or b'').decode('utf-8', 'replace').strip('\x00 \t\r\n')
    stats = xrd_stats_dict(xml_text)
    if not stats.get('site') or stats.get('site') == 'NOT_SET':
        stats['site'] = se_name
    stats.update(seName=se_name, endpointUrl=host)
    compact = 'compact' in opts
    if 'xmlraw' in opts:
        text = xml_text
    elif 'xml' in opts:
        import xml.dom.minidom
        pretty = xml.dom.minidom.parseString(xml_text)
        text = pretty.toxml() if compact else pretty.toprettyxml(indent='  ').strip()
    else:
        text = json.dumps(stats, indent=None if compact else 2, separators=(',', ':') if compact else (', ', ': '))
    return text, dict(stats, ok=True)


@command('xrd_stats', usage=XRD_STATS_USAGE)
def cmd_xrd_stats(session, args):
    return xrd_each_se(session, args, 'xrd_stats', '-xml -xmlraw -compact -a -all', _stats_probe)


CHECKADDR_USAGE = '''checkAddr [-timeout S] [HOST[:PORT] | HOST PORT]  can the central service be reached?
  Resolves HOST (default: the endpoint alien.py connects to) and tries every address,
  IPv4 and IPv6: TCP connect, then the TLS handshake with your certificate (server
  chain and host name verified). With https_proxy set, also the path through the
  proxy (CONNECT), which then alone decides the exit code. Exit 0 when every address
  passed, 107 otherwise.'''


def _checkaddr_path(row, open_socket, ctx, why, timeout):
    """TCP (open_socket()) then TLS along one path to the service; fills row, returns its line."""
    t0 = time.monotonic()
    try:
        sock = open_socket()
        row.update(tcp='OK', tcp_ms=round((time.monotonic() - t0) * 1000, 3))
        if ctx is None:
            row['tls'] = 'not tried: %s' % why
            sock.close()
        else:
            t0 = time.monotonic()
            tls_handshake(sock, ctx, row['host'], row['port'], timeout).close()
            row.update(tls='OK', tls_ms=round((time.monotonic() - t0) * 1000, 3))
    except AlienError as e:
        row['error'] = str(e)
        if row['tcp'] == 'OK':
            row['tls'] = 'FAIL'
    text = '%-45s TCP %s' % (row['shown'], row['tcp'])
    if row['tcp'] == 'OK':
        text += ' %.1f ms   TLS %s' % (row['tcp_ms'], row['tls'])
        if row['tls'] == 'OK':
            text += ' %.1f ms' % row['tls_ms']
    return text + ('   (%s)' % row['error'] if row['error'] else '')


@command('checkAddr', connect=False, usage=CHECKADDR_USAGE)
def cmd_checkaddr(session, args):
    opts, pos = parse_args('checkAddr', args, '-timeout:count', {'timeout': PROBE_TIMEOUT})
    timeout = opts['timeout']
    env = {k: v for k, v in session.environ.items() if k != 'ALIENPY_NETWORKSTACK'}   # every family
    if len(pos) > 2:
        raise AlienError('checkAddr: usage: checkAddr [HOST[:PORT] | HOST PORT]', EX_USAGE)
    if pos:
        host, port = parse_hostport(pos[0], DEFAULT_PORT)
        if len(pos) == 2:
            if not re.match(r'^[0-9]{1,5}$', pos[1]):
                raise AlienError('checkAddr: %r is not a port number' % pos[1], EX_EINVAL)
            port = int(pos[1])
    else:
        host, port = endpoints(session.environ)[0]
    try:
        _, cert, key = choose_credentials(session.environ)
        ctx, why = make_tls_context(cert, key, session.environ), ''
    except AlienError as e:
        ctx, why = None, str(e)
    proxy = proxy_for(host, session.environ)
    try:
        addrs = [info[4][0] for info in resolve(host, port, env)]
        lines = ['%s:%d resolves to %s' % (host, port, ', '.join(addrs))]
    except AlienError as e:
        if not proxy:
            raise
        addrs, lines = [], ['%s (the proxy resolves it)' % e]
    rows = []

    def check(address, family, shown, open_socket):
        rows.append({'host': host, 'port': port, 'address': address, 'family': family,
                     'tcp': 'FAIL', 'tls': 'not tried', 'error': '', 'shown': shown})
        lines.append(_checkaddr_path(rows[-1], open_socket, ctx, why, timeout))
    for addr in addrs:
        shown = '[%s]:%d' % (addr, port) if ':' in addr else '%s:%d' % (addr, port)
        check(addr, 'IPv6' if ':' in addr else 'IPv4', shown, lambda: connect_tcp(addr, port, env, timeout=timeout))
    if proxy:   # the path alien.py takes: its exit code is this row's
        def tunnel():
            sock = connect_tcp(proxy[0], proxy[1], session.environ, timeout=timeout)
            try:
                connect_tunnel(sock, host, port, proxy[2], timeout)
            except AlienError:
                sock.close()
                raise
            return sock
        check('proxy %s:%d' % proxy[:2], 'proxy', 'via https_proxy %s:%d' % proxy[:2], tunnel)
    bad = [r for r in (rows[-1:] if proxy else rows) if r['error']]
    err = ('checkAddr: %d of %d addresses of %s failed' % (len(bad), len(rows), host) if bad and not proxy else
           'checkAddr: %s through the proxy failed' % host if bad else '')
    return client_result('\n'.join(lines), rows, exitcode=EX_NOTCONN if bad else 0, err=err)


# ==========================================================================
# Commands: credentials (certificates, tokens, CA certificates)
# ==========================================================================

def load_cert_file(path):
    """[Cert] of a PEM file; like the reference client a missing file exits 2, one without a certificate 5."""
    try:
        return read_certs(path)
    except OSError as e:
        raise AlienError('cannot read %s: %s' % (path, e.strerror), EX_ENOENT)
    except CertError as e:
        raise AlienError(str(e), EX_EIO)


def describe_cert(path):
    """cert-info in the reference client's format (UTC times)."""
    c = load_cert_file(path)[0]
    return 'DN >>> %s\nISSUER >>> %s\nBEGIN >>> %s\nEXPIRE >>> %s' % (
        dn_text(c.subject), dn_text(c.issuer), _utc(c.not_before), _utc(c.not_after))


def verify_cert_file(path, environ):
    """cert-verify: the chain of path up to the CAs in use -> Result (1 if it does not verify)."""
    load_cert_file(path)
    try:
        kind, where = find_ca(environ)
    except AlienError as e:
        raise AlienError(str(e), EX_GENERIC)
    try:
        reason = verify_chain(path, kind, where)
    except CertError as e:
        reason = str(e)
    if reason:
        return Result(EX_GENERIC, '', '%s does not verify against %s: %s' % (path, where, reason))
    return Result(0, '%s verifies against the CAs in %s' % (path, where))


def match_cert_key(cert, key):
    """certkey-match: 0 when key is the private key of cert, 42 when it is not."""
    load_cert_file(cert)
    if not os.path.isfile(key):
        raise AlienError('cannot read %s: no such file' % key, EX_ENOENT)
    asked = []

    def password():
        asked.append(True)
        return ask_pass_phrase(key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=password)
    except ssl.SSLError as e:
        if 'MISMATCH' in ('%s %s' % (e.reason, e)).upper():
            return Result(EX_ENOMSG, '', 'certificate %s and key %s do not match' % (cert, key))
        if asked:
            raise AlienError('cannot decrypt key %s: wrong pass phrase' % key, EX_EIO)
        raise AlienError('cannot load key %s: %s' % (key, e.reason or e), EX_EIO)
    except OSError as e:
        raise AlienError('cannot read %s: %s' % (key, e.strerror), EX_EIO)
    return Result(0, 'certificate %s and key %s match' % (cert, key))


def _token_pair(environ):
    tcert, tkey = credential_paths(environ)[:2]
    return materialize_pem(tcert, 'tokencert'), materialize_pem(tkey, 'tokenkey')


@command('cert-info', connect=False, usage='cert-info [CERT]  subject, issuer and validity (UTC) of the user certificate')
def cmd_cert_info(session, args):
    return Result(0, describe_cert(args[0] if args else credential_paths(session.environ)[2]))


@command('token-info', connect=False, usage='token-info  subject, issuer and validity (UTC) of the token certificate')
def cmd_token_info(session, args):
    path = _token_pair(session.environ)[0]
    if not os.path.exists(path):
        return Result(EX_ENOENT, '', 'no token certificate at %s (run token-init)' % path)
    return Result(0, describe_cert(path))


@command('cert-verify', connect=False,
         usage='cert-verify [CERT]  verify the user certificate\'s chain against the CAs in use (exit 1 if it does not)')
def cmd_cert_verify(session, args):
    return verify_cert_file(args[0] if args else credential_paths(session.environ)[2], session.environ)


@command('token-verify', connect=False,
         usage='token-verify  verify the token certificate\'s chain against the CAs in use (exit 1 if it does not)')
def cmd_token_verify(session, args):
    return verify_cert_file(_token_pair(session.environ)[0], session.environ)


@command('certkey-match', connect=False,
         usage='certkey-match [CERT KEY]  check that the user key belongs to the user certificate (exit 42 if not)')
def cmd_certkey_match(session, args):
    if len(args) not in (0, 2):
        return Result(EX_USAGE, '', 'usage: certkey-match [CERT KEY]')
    return match_cert_key(*(args or credential_paths(session.environ)[2:]))


@command('tokenkey-match', connect=False,
         usage='tokenkey-match  check that the token key belongs to the token certificate (exit 42 if not)')
def cmd_tokenkey_match(session, args):
    return match_cert_key(*_token_pair(session.environ))


CAS_REPOSITORY = 'https://github.com/alisw/alien-cas.git'
_HASH_NAME = LazyRegex(r'^[0-9a-f]{8}\.r?\d+$')


def hash_links(directory):
    """The `openssl rehash` links <hash>.N to the CA certificates (*.pem) of directory -> their number."""
    count = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith('.pem'):
            continue
        c = cert_info(os.path.join(directory, name))
        if c is None:
            continue
        h, n = name_hash(c.subject), 0
        while os.path.lexists(os.path.join(directory, '%s.%d' % (h, n))):
            n += 1
        os.symlink(name, os.path.join(directory, '%s.%d' % (h, n)))
        count += 1
    return count


def fetch_ca_certs(source, target, timeout=120):
    """git clone source; its top-level directories' content, with hash links, replaces target -> CA count."""
    import shutil
    import subprocess
    git = shutil.which('git')
    if git is None:
        raise AlienError('getCAcerts needs git (e.g. apt-get install git)', EX_GENERIC)
    with TempDir('.alienpy-cas-', dir=os.path.dirname(target)) as tmp:   # beside target: renamed into place
        work = tmp.path
        try:
            repo = os.path.join(work, 'repo')
            env = dict(os.environ, GIT_TERMINAL_PROMPT='0')
            try:
                p = subprocess.run([git, 'clone', '--quiet', '--depth=1', source, repo], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                   timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                raise AlienError('getCAcerts: git clone %s took more than %d s' % (source, timeout), EX_GENERIC)
            if p.returncode != 0:
                why = [l for l in p.stderr.splitlines() if l.strip() and 'depth is ignored' not in l]
                raise AlienError('getCAcerts: git clone %s failed: %s' % (source, why[-1] if why else 'exit %d' % p.returncode),
                                 EX_GENERIC)
            new = os.path.join(work, 'certificates')
            os.mkdir(new)
            for top in sorted(os.listdir(repo)):
                if top.startswith('.') or not os.path.isdir(os.path.join(repo, top)):
                    continue
                for root, dirs, files in os.walk(os.path.join(repo, top)):
                    dirs[:] = [d for d in dirs if d != '.git']
                    out = os.path.join(new, os.path.relpath(root, os.path.join(repo, top)))
                    os.makedirs(out, exist_ok=True)
                    for name in files:
                        if not _HASH_NAME.match(name):      # the links are made again below
                            shutil.copy(os.path.join(root, name), os.path.join(out, name))
            count = hash_links(new)
            if not count:
                raise AlienError('getCAcerts: %s holds no CA certificate' % source, EX_GENERIC)
            if os.path.lexists(target):
                os.rename(target, os.path.join(work, 'old'))
            os.rename(new, target)
            return count
        except OSError as e:
            raise AlienError('getCAcerts: %s: %s' % (e.filename or target, e.strerror), EX_GENERIC)


@command('getCAcerts', connect=False, usage='''getCAcerts [DIR]  download the grid CA certificates into DIR/certificates
  (default ~/.globus/certificates) from the ALICE CA repository with git
  (ALIENPY_CAS_REPO: another repository URL or path). Use them with
  export X509_CERT_DIR=DIR/certificates, or ALIENPY_USE_LOCAL_CAS=1 for the default place.''')
def cmd_getcacerts(session, args):
    if len(args) > 1:
        return Result(EX_USAGE, '', 'usage: getCAcerts [DIR]')
    if args:
        parent = os.path.expanduser(args[0])
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            return Result(EX_GENERIC, '', 'getCAcerts: %s is not a writable directory' % parent)
    else:
        parent = user_file(session.environ, '.globus')
        os.makedirs(parent, mode=0o700, exist_ok=True)
    target = os.path.join(os.path.abspath(parent), 'certificates')
    count = fetch_ca_certs(session.environ.get('ALIENPY_CAS_REPO') or CAS_REPOSITORY, target)
    use = 'ALIENPY_USE_LOCAL_CAS=1 or ' if not args else ''
    return Result(0, '%d CA certificates in %s; to use them: %sexport X509_CERT_DIR=%s' % (count, target, use, target))


@command('token-init', connect=False, usage='token-init [-v DAYS]  get a new token with the user certificate')
def cmd_token_init(session, args):
    session.connect(want_user=True)
    session.renew_token(args=args)
    session.close()
    return Result(0, describe_cert(materialize_pem(credential_paths(session.environ)[0], 'tokencert')))


@command('token-destroy', connect=False, noargs=True, usage='token-destroy  delete the token files')
def cmd_token_destroy(session, args):
    for path in credential_paths(session.environ)[:2]:
        if not is_pem_content(path) and os.path.exists(path):
            os.unlink(path)
    return Result(0, 'token files removed; the next connection with the user certificate makes a new token')


# ==========================================================================
# Commands: jobs, and outside services (one HTTP GET)
# ==========================================================================

_TRACE_TIME = LazyRegex(r'^([0-9]{10}) \[')


def trace_local_times(text, unixtime=False):
    """Lines of a job trace with their leading unix time shown as local time."""
    return text if unixtime else '\n'.join(_TRACE_TIME.sub(lambda m: local_time(m.group(1)) + ' [', line, 1)
                                           for line in text.split('\n'))


def parse_trace(trace, unixtime=False):
    """A job trace -> jobInfo's parts: state, trace, proc (procfmt first) lines, worker, workdir, queue ids."""
    info = {'state': [], 'trace': [], 'proc': [], 'workdir': '', 'wn': '', 'queue': []}
    procfmt = []
    for line in trace_local_times(trace or '', unixtime).split('\n'):
        m = re.match(r'^(.*?) ?\[(state|trace|proc|procfmt) *\]: (.*)$', line)
        if not m:
            continue
        when, tag, text = m.groups()
        (procfmt if tag == 'procfmt' else info[tag]).append('%s %s' % (when, text))
        if tag == 'trace':
            if text.startswith('Created workdir'):
                info['workdir'] = text.split(': ', 1)[-1].strip()
            w = re.match(r'Running JAliEn JobAgent .* on ([\w.-]+?)\.?$', text)
            if w:
                info['wn'] = w.group(1)
            if 'BatchId' in text:
                info['queue'].append(text.replace('BatchId', '').strip())
    info['proc'][0:0] = procfmt
    return info


def parse_jdl(jdl):
    """A JDL as a dict: 'Name = value;' statements; {...} lists become lists of strings."""
    out = {}
    for stmt in re.split(r';\s*(?=[A-Za-z_][A-Za-z0-9_]*\s*=|$)', jdl or ''):
        name, eq, value = stmt.strip().partition('=')
        if not eq:
            continue
        value = re.sub(r'\s+', ' ', value).strip()
        if value.startswith('{') and value.endswith('}'):
            out[name.strip()] = [v.strip().strip('"') for v in value[1:-1].split(',') if v.strip()]
        else:
            out[name.strip()] = value.replace('"', '').strip()
    return out


def ps_row(row):
    """A ps row with the newer service's keys: the 2021 service writes `id ` and `owner `."""
    return dict((k.strip(), v) for k, v in row.items())


JOB_COLUMNS = (-13, -13, -12, -14)
JOB_HEADER = table_line(('JobID', 'MasterJobID', 'Status', 'User', 'Name'), JOB_COLUMNS)


def job_line(row):
    return table_line([row.get(k, '') for k in ('id', 'split', 'status', 'owner', 'name')], JOB_COLUMNS)


def jobinfo_text(row, info, show_trace=False, show_proc=False):
    parts = ['#' * 66, JOB_HEADER, job_line(row), '',
             'Machine info:', 'WorkerNode: %s' % info['wn'], 'Workdir: %s' % info['workdir'],
             'Local queue info:'] + info['queue'] + ['', 'State info:'] + info['state'] + ['']
    if show_trace:
        parts += ['Trace info:'] + info['trace'] + ['']
    if show_proc:
        parts += ['Proc info:'] + info['proc'] + ['']
    return '\n'.join(parts)


JOBINFO_USAGE = '''jobInfo ID[,ID...] [-trace] [-proc] [-jdl] [-unixtime]  what a job did
    for each job: ID, master job, status, owner, name, worker node, work directory,
    batch queue id and state transitions (times in local time)
    -trace     also the trace messages      -proc  also the process monitoring lines
    -jdl       only the JDL, as one JSON object per job
    -unixtime  keep the unix times of the trace'''


def _jobs_with_trace(session, ids):
    """ps rows of the jobs IDS with trace and jdl, in one `ps -j IDS -trace -jdl` where the service takes
    it; the 2021 one refuses (22: -trace and -jdl take one ID each): then the rows and each job's own."""
    r = session.request('ps', ['-j', ids, '-trace', '-jdl'], nomsg=True)
    if r.exitcode != EX_EINVAL:
        return r
    r = session.request('ps', ['-j', ids], nomsg=True)
    rows = [ps_row(x) for x in r.results]
    if not rows:
        return r
    parts = session.request_many([('ps', [f, x.get('id', '')]) for x in rows for f in ('-trace', '-jdl')], nomsg=True)
    for n, row in enumerate(rows):
        for field, part in zip(('trace', 'jdl'), parts[2 * n:2 * n + 2]):
            row[field] = str(part.results[0].get(field, '')) if part.results else ''
    return Result(r.exitcode, None, r.err, rows, r.metadata)


@command('jobInfo', usage=JOBINFO_USAGE)
def cmd_jobinfo(session, args):
    opts, pos = parse_args('jobInfo', args, '-trace -proc -jdl -unixtime')
    if len(pos) != 1 or not re.match(r'^[0-9]+(,[0-9]+)*$', pos[0]):
        return Result(EX_USAGE, '', 'jobInfo: give one list of job IDs, like 123 or 123,124')
    r = _jobs_with_trace(session, pos[0])
    if not r.results:   # jobs without a trace still come with their rows (and exit code 61)
        return r if r.exitcode else Result(EX_ENOENT, '', 'jobInfo: no job with ID %s' % pos[0])
    rows, texts = [], []
    for row in map(ps_row, r.results):
        info = parse_trace(row.get('trace', ''), opts.get('unixtime'))
        jdl = parse_jdl(row.get('jdl', ''))
        rows.append(dict(row, trace=info, jdl=jdl))
        texts.append(json.dumps(jdl, separators=(',', ':')) if opts.get('jdl') else
                     jobinfo_text(row, info, opts.get('trace'), opts.get('proc')))
    return client_result('\n'.join(texts).strip(), rows, r.metadata)


@command('ps', usage='')   # -h: the server's usage
def cmd_ps(session, args):
    """ps as the server answers it; with -trace the unix times become local times."""
    r = session.request('ps', args, nokeys=not session.command_json)
    if '-trace' in args and r.exitcode == 0 and not session.command_json:
        r.out = trace_local_times('\n'.join(r.messages())).strip()
    return r


CE_COLUMNS = (-28, -50, -8, -10, -6, -6, -10)
CE_HEADER = table_line(('Name', 'Host', 'State', 'Type', 'R', 'W', 'TTL', 'Partitions'), CE_COLUMNS)


def ce_line(ce):
    return table_line((ce.get('ceName', '').replace('ALICE::', ''), ce.get('host', ''), ce.get('status', ''),
                       ce.get('type', ''), ce.get('maxRunning', ''), ce.get('maxQueued', ''), ce.get('TTL', ''),
                       ce.get('partitions', '').strip(',')), CE_COLUMNS)


def select_ces(ces, name=None, host=None, part=None):
    """CEs that pass every given filter: parts of name and host, a partition (case-insensitive)."""
    return [ce for ce in ces if (not name or name.lower() in ce.get('ceName', '').lower())
            and (not host or host.lower() in ce.get('host', '').lower())
            and (not part or part.lower() in ce.get('partitions', '').lower().split(','))]


def _list_ces(session):
    r = session.request('listCEs', [], nomsg=True)
    if r.exitcode == EX_ENOENT and 'Command [listCEs] not found' in r.err:
        raise AlienError('listCEs: this service does not list its computing elements (JAliEn before 1.8)', EX_ENOENT)
    if r.exitcode != 0:
        raise AlienError('listCEs: %s' % (r.err or 'failed'), r.exitcode)
    return r


@command('getCE', usage='getCE [-name TEXT] [-host TEXT] [-part PARTITION]  computing elements (all given filters apply)')
def cmd_getce(session, args):
    opts, pos = parse_args('getCE', args, '-name:str -host:str -part:str')
    if pos:
        return Result(EX_USAGE, '', 'getCE: unexpected argument %r (filters are -name, -host, -part)' % pos[0])
    r = _list_ces(session)
    ces = select_ces(r.results, opts.get('name'), opts.get('host'), opts.get('part'))
    if not ces:
        return Result(EX_ENOENT, '', 'getCE: no computing element matches')
    return client_result('\n'.join([CE_HEADER] + [ce_line(ce) for ce in ces]), ces, r.metadata)


SITEJOBS_USAGE = '''siteJobs SITE [-id] [-running] [-status TEXT] [-user TEXT]  jobs of the CEs whose name contains SITE
    -id  only the job IDs    -running (-r)  = -status RUNNING
    -status / -user: the status / owner contains TEXT (case-insensitive)'''


@command('siteJobs', usage=SITEJOBS_USAGE)
def cmd_sitejobs(session, args):
    opts, pos = parse_args('siteJobs', args, '-id -running -r -status:str -user:str')
    if len(pos) != 1:
        return Result(EX_USAGE, '', 'siteJobs: give one SITE (usage: siteJobs -h)')
    ces = select_ces(_list_ces(session).results, name=pos[0])
    if not ces:
        return Result(EX_ENOENT, '', 'siteJobs: no computing element name contains %r (getCE lists them)' % pos[0])
    r = session.request('ps', ['-s', ','.join(ce['ceName'] for ce in ces), '-a'], nomsg=True)
    if r.exitcode != 0:
        return r
    status = 'RUNNING' if opts.get('running') or opts.get('r') else opts.get('status')
    user = opts.get('user')
    jobs = [j for j in map(ps_row, r.results) if (not status or status.lower() in j.get('status', '').lower())
            and (not user or user.lower() in j.get('owner', '').lower())]
    if opts.get('id'):
        text = '\n'.join(j.get('id', '') for j in jobs)
    else:
        text = '\n'.join([JOB_HEADER] + [job_line(j) for j in jobs]) if jobs else ''
    return client_result(text, jobs, r.metadata)


def _ratio(used, limit):
    return ('%.2f%%' % (100.0 * used / limit)) if limit else 'n/a'


def quota_report(jq, fq, jq_missing=''):
    """The text of `quota`: job quota (or why there is none) and file quota."""
    user = (jq or fq).get('username', '')
    lines = ['Quota report for user : %s' % user]
    num = lambda d, *keys: float(next((d[k] for k in keys if k in d), 0) or 0)   # noqa: E731
    if jq:
        run, wait, maxu = num(jq, 'running'), num(jq, 'waiting'), num(jq, 'maxUnfinishedJobs')
        rt, rtmax = num(jq, 'totalRunningTimeLast24h') / 3600, num(jq, 'maxTotalRunningTime') / 3600
        cpu, cpumax = num(jq, 'totalCpuCostLast24h') / 3600, num(jq, 'maxTotalCpuCost') / 3600
        lines += ['Unfinished jobs(R + W / Max):\t\t%d + %d / %d --> %s used' % (run, wait, maxu, _ratio(run + wait, maxu)),
                  'Running time (last 24h) used/max:\t%.2f/%.2f(h) --> %s used' % (rt, rtmax, _ratio(rt, rtmax)),
                  'CPU Cost (last 24h) used/max:\t\t%.2f/%.2f(h) --> %s used' % (cpu, cpumax, _ratio(cpu, cpumax)),
                  'ParallelJobs (nominal/max) :\t%d/%d' % (num(jq, 'nominalParallelJobs', 'nominalparallelJobs'),
                                                           num(jq, 'maxParallelJobs', 'maxparallelJobs'))]
    else:
        lines.append('Job quota :\t\t\tnone (%s)' % jq_missing)
    size, smax = num(fq, 'totalSize'), num(fq, 'maxTotalSize')
    files, fmax = num(fq, 'nbFiles'), num(fq, 'maxNbFiles')
    lines += ['Storage size :\t\t\t%.2f/%.2f MiB --> %s' % (size / 1048576, smax / 1048576, _ratio(size, smax)),
              'Number of files :\t\t%d/%d --> %s' % (files, fmax, _ratio(files, fmax))]
    return '\n'.join(lines)


ENODATA = 61


@command('quota', usage='quota [USER]  job and file quotas (server jquota and fquota); a user without a job quota is said so')
def cmd_quota(session, args):
    opts, pos = parse_args('quota', args)
    if len(pos) > 1 or pos[:1] == ['set']:
        return Result(EX_USAGE, '', 'quota: give at most one USER (setting quotas: jquota set / fquota set, admins only)')
    jr, fr = session.request_many([('jquota', ['list'] + pos), ('fquota', ['list'] + pos)], nomsg=True)
    if fr.exitcode != 0 or not fr.results:
        return Result(fr.exitcode or EX_ENOMSG, '', 'quota: fquota: %s' % (fr.err or 'empty reply'))
    if jr.exitcode not in (0, ENODATA) or (jr.exitcode == 0 and not jr.results):
        return Result(jr.exitcode or EX_ENOMSG, '', 'quota: jquota: %s' % (jr.err or 'empty reply'))
    jq = jr.results[0] if jr.results else None
    rows = [dict(jq or {}, **fr.results[0])]
    return client_result(quota_report(jq, fr.results[0], jr.err.split(' : ')[-1]), rows, fr.metadata)


@command('submit', usage='submit JDL [ARGS...]  submit the grid JDL file (path as for ls; $1.. in it take ARGS)')
def cmd_submit(session, args):
    if not args:
        return Result(EX_USAGE, '', 'submit: give the JDL (a grid file) to submit')
    if _LOCAL_PREFIX.match(args[0]):
        return Result(EX_EINVAL, '', 'submit: %s is a local file: copy it to the grid first '
                      '(cp %s JOB.jdl), then submit that' % (args[0], args[0]))
    return session.request('submit', [session.grid_path(args[0])] + args[1:],
                           nokeys=not session.command_json)


# Outside services: plain HTTP/1.1 on the websocket's pieces (connect_tcp, proxy_for with
# connect_tunnel, find_ca); http.client is imported only when a GET is made.

HTTP_TIMEOUT = 10.0          # seconds to connect and between bytes (ALIENPY_HTTP_TIMEOUT)
HTTP_MAX_BODY = 256 << 20    # a reply kept in memory; downloads stream to a file instead
HTTP_REDIRECTS = 5


def _http_connection(scheme, host, port, environ, timeout):
    """(http.client connection on an open socket, True when a plain HTTP proxy needs absolute URLs, proxy)."""
    import http.client
    proxy = proxy_for(host, environ, scheme)
    sock = connect_tcp(proxy[0] if proxy else host, proxy[1] if proxy else port, environ, timeout=timeout)
    try:
        if proxy and scheme == 'https':
            connect_tunnel(sock, host, port, proxy[2], timeout)
        sock.settimeout(timeout)
        if scheme == 'https':
            ctx = ssl.create_default_context()
            try:
                kind, where = find_ca(environ)
                ctx.load_verify_locations(**{kind: where})
            except AlienError:
                pass  # the system CAs only
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except ssl.SSLError as e:
                raise tls_error(e, host)
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
    except (AlienError, OSError):
        sock.close()
        raise
    conn.sock = sock
    return conn, bool(proxy) and scheme == 'http', proxy


def http_get(url, environ, headers=(), timeout=None, sink=None, what='GET'):
    """GET url (redirects followed) -> (lower-cased headers, body; b'' when written to sink). AlienError:
    107 unreachable or no answer in time, 2 HTTP 404, 121 other HTTP errors, 42 a cut or oversized body."""
    import http.client
    from urllib.parse import urlsplit, urljoin
    try:
        timeout = float(timeout or environ.get('ALIENPY_HTTP_TIMEOUT') or HTTP_TIMEOUT)
    except ValueError:
        raise AlienError('ALIENPY_HTTP_TIMEOUT=%r is not a number' % environ.get('ALIENPY_HTTP_TIMEOUT'), EX_EINVAL)
    for _ in range(HTTP_REDIRECTS + 1):
        u = urlsplit(url)
        try:
            port = u.port or (443 if u.scheme == 'https' else 80)
        except ValueError:
            port = None
        if u.scheme not in ('http', 'https') or not u.hostname or not port:
            raise AlienError('%s: not a valid http(s) URL: %s' % (what, url), EX_EINVAL)
        try:
            conn, absolute, proxy = _http_connection(u.scheme, u.hostname, port, environ, timeout)
        except AlienError as e:
            raise AlienError('%s %s: %s' % (what, url, e), e.exitcode)
        hdrs = dict([('User-Agent', user_agent(environ))] + list(headers))
        if absolute and proxy[2]:
            hdrs['Proxy-Authorization'] = proxy_authorization(proxy[2])
        try:
            conn.request('GET', url if absolute else (u.path or '/') + ('?' + u.query if u.query else ''),
                         headers=hdrs)
            resp = conn.getresponse()
            location = resp.getheader('Location')
            if resp.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise AlienError('%s %s: HTTP %d %s' % (what, url, resp.status, resp.reason),
                                 EX_ENOENT if resp.status == 404 else EX_EREMOTEIO)
            got, body = 0, b''
            if sink is None:
                body = resp.read(HTTP_MAX_BODY + 1)
                got = len(body)
                if got > HTTP_MAX_BODY:
                    raise AlienError('%s %s: reply larger than %d MiB' % (what, url, HTTP_MAX_BODY >> 20), EX_ENOMSG)
            else:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    sink.write(chunk)
                    got += len(chunk)
            length = resp.getheader('Content-Length')
            if length and length.isdigit() and int(length) != got:
                raise AlienError('%s %s: reply cut after %d of %s bytes' % (what, url, got, length), EX_ENOMSG)
            return dict((k.lower(), v) for k, v in resp.getheaders()), body
        except socket.timeout:
            raise AlienError('%s %s: no answer within %g s' % (what, url, timeout), EX_NOTCONN)
        except http.client.IncompleteRead as e:
            raise AlienError('%s %s: reply cut after %d bytes' % (what, url, len(e.partial)), EX_ENOMSG)
        except (OSError, http.client.HTTPException) as e:
            raise AlienError('%s %s: %s' % (what, url, e or type(e).__name__), EX_NOTCONN)
        finally:
            conn.close()
    raise AlienError('%s %s: more than %d redirects' % (what, url, HTTP_REDIRECTS), EX_EREMOTEIO)


def http_get_json(url, environ, headers=(), what='GET', check=None):
    """http_get of a JSON document of the shape `check(doc)` accepts; anything else exits 42."""
    _, body = http_get(url, environ, [('Accept', 'application/json')] + list(headers), what=what)
    try:
        doc = load_json(body.decode('utf-8'))
    except ValueError as e:
        raise AlienError('%s %s: the reply is not JSON%s' % (
            what, url, ' (%s)' % e if isinstance(e, JsonTooDeep) else ''), EX_ENOMSG)
    if check is not None and not check(doc):
        raise AlienError('%s %s: the reply is not in the expected format' % (what, url), EX_ENOMSG)
    return doc


CCDB_DEFAULT = 'http://alice-ccdb.cern.ch'
MONALISA_DEFAULT = 'http://alimonitor.cern.ch/rest/'


def service_base(url):
    """'host', 'host:port' or a URL -> 'http(s)://.../' (http:// when no scheme is given)."""
    url = url.strip()
    if not re.match(r'^https?://', url):
        url = 'http://' + url
    return url.rstrip('/') + '/'


def ccdb_query_path(query, when=''):
    """CCDB path of 'path[/TIME][/key=value...]': wildcards dropped, the TIME (or `when`), filters last."""
    query = query.replace('.*', '').replace('*', '')
    path, times, keys = [], [], []
    for part in query.split('/'):
        if re.match(r'^[0-9]{13}$', part):
            times.append(part)
        elif '=' in part:
            keys.append(part)
        elif part:
            path.append(part)
    return '/'.join(path + (times[-1:] or ([when] if when else [])) + keys), bool(times)


def ccdb_object(obj):
    """A CCDB object description with its file name and lifetime (ms)."""
    o = dict(obj)
    name = o.get('fileName') or re.sub(r'^(inline|attachment);\s*filename=', '', o.get('Content-Disposition', ''))
    o['filename'] = name.replace('"', '').replace('::', '-').strip() or o.get('id', 'object')
    o['ETag'] = str(o.get('ETag', o.get('id', ''))).strip('"')
    try:
        o['Lifetime'] = int(o.get('Valid-Until', 0)) - int(o.get('Valid-From', 0))
    except ValueError:
        o['Lifetime'] = ''
    return o


def ccdb_listing(doc, unixtime=False):
    lines = ['%s/' % d for d in doc['subfolders']]
    objs = [ccdb_object(o) for o in doc['objects']]
    if objs:
        lines.append(table_line(('Filename', 'Type', 'ValidFrom', 'ValidUntil', 'Lifetime(ms)'), (-47, -28, -19, -20)))
    for o in objs:
        lines.append('%s  %s  "%s"  "%s"  %s' % (o['filename'], o.get('ObjectType', 'TYPE NOT FOUND'),
                                                local_time(o.get('Valid-From', ''), unixtime),
                                                local_time(o.get('Valid-Until', ''), unixtime), o['Lifetime']))
    return '\n'.join(lines)


def ccdb_report(doc):
    columns = (-40, 12, 12, 12, 14)
    lines = [table_line(('Name', 'ownFiles', 'ownSize', 'filesSub', 'sizeSub'), columns)]
    total_size = total = 0
    for f in doc['subfolders']:
        if not isinstance(f, dict):
            continue
        own, sub = int(f.get('ownSize', 0)), int(f.get('sizeOfSubfolders', 0))
        total_size += own + sub
        total += int(f.get('ownFiles', 0)) + int(f.get('filesInSubfolders', 0))
        lines.append(table_line((f.get('name', ''), f.get('ownFiles', 0), human_bytes(own),
                                 f.get('filesInSubfolders', 0), human_bytes(sub)), columns))
    if doc['objects']:
        total = len(doc['objects'])
        total_size += sum(int(o.get('size', o.get('Content-Length', 0)) or 0) for o in doc['objects'])
    lines.append(table_line(('TOTAL'.center(40), '-', '-', total, human_bytes(total_size)), columns))
    return '\n'.join(lines)


def _ccdb_doc_ok(doc):
    return isinstance(doc, dict) and isinstance(doc.get('objects'), list) \
        and isinstance(doc.get('subfolders'), list) and all(isinstance(o, dict) for o in doc['objects'])


def download_file(url, dest, environ, md5=None, what='GET'):
    """Download url to dest through a checked (length, md5) temp file renamed over it -> the size."""
    d = os.path.dirname(os.path.abspath(dest))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise AlienError('%s: cannot create %s: %s' % (what, d, e.strerror), EX_EIO)
    tmp = part_name(os.path.abspath(dest))
    try:
        with open(tmp, 'wb') as f:
            http_get(url, environ, sink=f, what=what)
        if md5 and md5_file(tmp) != md5.lower():
            raise AlienError('%s %s: md5 mismatch (the download is not the object)' % (what, url), EX_EIO)
        os.replace(tmp, dest)
        tmp = None
        return os.path.getsize(dest)
    except OSError as e:
        raise AlienError('%s: cannot write %s: %s' % (what, dest, e.strerror), EX_EIO)
    finally:
        _unlink_quiet(tmp)


CCDB_USAGE = '''ccdb [-host URL] [-history] [-limit N] [-unixtime] [-run RUN | -objtime MS] [-header "K: V"]...
     [-get | -mirror] [-dst DIR] [-report] QUERY       query the CCDB (REST, plain HTTP)
QUERY: path/of/object[/TIME_MS][/key=value...]   ("*" and ".*" are dropped)
    -host URL      another CCDB server (default $ALIENPY_CCDB or http://alice-ccdb.cern.ch)
    -history       every version (browse), newest first, at most -limit N (default 10)
    -run RUN       the version valid at the start of run RUN    -objtime MS: valid at that time
    -unixtime      times in ms instead of local time            -header: extra request headers
    -get           download the objects to DST/path/filename (default DST: .)
    -mirror        download as DST/path/VALIDFROM/ETAG with a .properties file (a CCDB snapshot)
    -report        files and sizes of a path and its subfolders'''


@command('ccdb', connect=False, usage=CCDB_USAGE)
def cmd_ccdb(session, args):
    opts, pos = parse_args('ccdb', args, '-history -unixtime -get -mirror -report -nicetime -host:str -run:str '
                           '-objtime:str -limit:str -dst:str -header:list')
    if len(pos) != 1:
        return Result(EX_USAGE, '', 'ccdb: give one QUERY (at least "/"; ccdb -h for the usage)')
    for a, b in (('get', 'mirror'), ('run', 'objtime')):
        if opts.get(a) and opts.get(b):
            return Result(EX_USAGE, '', 'ccdb: -%s and -%s exclude each other' % (a, b))
    for key, pattern in (('limit', r'^[0-9]+$'), ('run', r'^[0-9]+$'), ('objtime', r'^[0-9]{13}$')):
        if key in opts and not re.match(pattern, opts[key]):
            return Result(EX_USAGE, '', 'ccdb: -%s %r is not %s' % (
                key, opts[key], 'a time in ms (13 digits)' if key == 'objtime' else 'a number'))
    headers = [('Browse-Limit', opts.get('limit', '10'))]
    for h in opts.get('header', []):
        k, colon, v = h.partition(':')
        if not colon or not k.strip():
            return Result(EX_USAGE, '', 'ccdb: -header %r is not "Name: value"' % h)
        headers.append((k.strip(), v.strip()))
    env = session.environ
    base = service_base(opts.get('host') or env.get('ALIENPY_CCDB') or CCDB_DEFAULT)
    when = opts.get('objtime', '')
    path, has_time = ccdb_query_path(pos[0], when)
    if opts.get('run') and not has_time:
        info = http_get_json('%slatest/RCT/Info/RunInformation/%s' % (base, opts['run']), env, what='ccdb',
                             check=_ccdb_doc_ok)
        sor = info['objects'][0].get('SOR') if info['objects'] else None
        if not sor:
            return Result(EX_ENOENT, '', 'ccdb: no start-of-run time registered for run %s' % opts['run'])
        path, _ = ccdb_query_path(pos[0], str(sor))
    listing = 'browse/' if opts.get('history') or opts.get('report') else 'latest/'
    url = base + listing + path + ('?report=true' if opts.get('report') else '')
    doc = http_get_json(url, env, headers, what='ccdb', check=_ccdb_doc_ok)
    metadata = {'url': url, 'subfolders': doc['subfolders']}
    if opts.get('report'):
        return client_result(ccdb_report(doc), doc['objects'], metadata)
    objs = [ccdb_object(o) for o in doc['objects']]
    if not (opts.get('get') or opts.get('mirror')):
        return client_result(ccdb_listing(doc, opts.get('unixtime')), objs, metadata)
    return _ccdb_download(base, objs, opts, env, metadata)


def ccdb_download_urls(base, obj):
    """Where an object can be fetched: http(s) replicas (a bare path: this server), then /PATH/VALIDFROM/ID."""
    from urllib.parse import urljoin
    urls = [urljoin(base, r) for r in obj.get('replicas', []) if isinstance(r, str)
            and (r.startswith(('http://', 'https://')) or r.startswith('/'))]
    urls.append('%s%s/%s/%s' % (base, obj.get('path', '').strip('/'), obj.get('Valid-From', ''), obj['ETag']))
    return urls


def _ccdb_download(base, objs, opts, env, metadata):
    dst = opts.get('dst', '.')
    unique = len({(o.get('path', ''), o['filename']) for o in objs}) == len(objs)
    lines = []
    for o in objs:
        name = o['filename']
        if opts.get('mirror'):
            name = '%s/%s' % (o.get('Valid-From', ''), o['ETag'])
        elif not unique:
            stem, dot, ext = name.rpartition('.')
            name = '%s_%s.%s' % (stem, o['ETag'], ext) if dot else '%s_%s' % (name, o['ETag'])
        dest = os.path.join(dst, o.get('path', '').strip('/'), name)
        size, error = None, None
        for url in ccdb_download_urls(base, o):   # the next one when a replica fails
            try:
                size = download_file(url, dest, env, md5=o.get('MD5') or o.get('Content-MD5'), what='ccdb')
                break
            except AlienError as e:
                error = e
                log('ccdb: %s' % e)
        if size is None:
            raise error
        if opts.get('mirror'):
            skip = ('replicas', 'path', 'ETag', 'Valid-From', 'Content-Length', 'filename', 'Lifetime')
            rename = {'Created': 'CreateTime', 'Valid-Until': 'ValidUntil'}
            props = ''.join('%s=%s\n' % (rename.get(k, k), v) for k, v in o.items() if k not in skip)
            props += 'OriginalFileName=%s\n' % o['filename']
            write_local_text(dest + '.properties', props, what='ccdb')
        lines.append('%s (%d bytes)' % (dest, size))
        o['local'] = dest
    return client_result('\n'.join(lines), objs, metadata)


QUERYML_USAGE = '''queryML [-host URL] [text|xml|json] PATH   query the MonALISA REST service
    PATH: farm/cluster/node/parameter, each part may be *; a time range goes first:
    /START/END/parameter, in ms since the epoch, or negative = relative to now (-60000: a minute ago)
    json (default): a table (Timestamp in local time); text, xml: the reply as it is
    -host URL  another MonALISA REST endpoint (default $ALIENPY_MONALISA or http://alimonitor.cern.ch/rest/)'''


def ml_table(rows):
    """MonALISA rows as columns (the first row's keys), each 3 wider than its widest value."""
    keys = list(rows[0].keys())
    cells = [[str(r.get(k)) if k != 'Timestamp' else local_time(r.get(k)) for k in keys] for r in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) + 3 for i, k in enumerate(keys)]
    return '\n'.join(table_line(line, [-w for w in widths]).rstrip() for line in [keys] + cells)


@command('queryML', connect=False, usage=QUERYML_USAGE)
def cmd_queryml(session, args):
    opts, pos = parse_args('queryML', args, [('-host', 'host', 'str'), ('text xml json', 'kind', 'word', 'json')])
    kind = opts['kind']
    if len(pos) != 1:
        return Result(EX_USAGE, '', 'queryML: give one PATH (queryML -h for the usage)')
    env = session.environ
    base = service_base(opts.get('host') or env.get('ALIENPY_MONALISA') or MONALISA_DEFAULT)
    accept = {'json': 'application/json', 'xml': 'text/xml', 'text': 'text/plain'}[kind]
    url = '%s%s?Accept=%s' % (base, pos[0].lstrip('/'), accept)
    if kind != 'json':
        _, body = http_get(url, env, [('Accept', accept)], what='queryML')
        return Result(0, body.decode('utf-8', 'replace').strip())
    doc = http_get_json(url, env, what='queryML', check=lambda d: isinstance(d, dict) and isinstance(
        d.get('results'), list) and all(isinstance(r, dict) for r in d['results']))
    rows = doc['results']
    return client_result(ml_table(rows) if rows else '', rows, {'url': url})


# ==========================================================================
# Interactive shell: prompt, working directory, completion
# ==========================================================================
# readline (imported here, not at module import) gives line editing, history and completion; the
# session is command mode's, the shell adds the prompt, the loop and Ctrl-C/Ctrl-D handling.

def prompt_flags(session):
    """{'date': bool, 'pwd': bool}, first from ALIENPY_PROMPT_DATE/_CWD."""
    flags = getattr(session, 'prompt_flags', None)
    if flags is None:
        flags = session.prompt_flags = {'date': env_flag('ALIENPY_PROMPT_DATE', session.environ),
                                        'pwd': env_flag('ALIENPY_PROMPT_CWD', session.environ)}
    return flags


PROMPT_USAGE = 'prompt date|pwd  toggle the date / the local directory in the shell prompt'


@command('prompt', connect=False, usage=PROMPT_USAGE)
def cmd_prompt(session, args):
    flags = prompt_flags(session)
    if not args:
        state = ', '.join('%s %s' % (k, 'on' if v else 'off') for k, v in sorted(flags.items()))
        return Result(0, 'usage: %s\n(now: %s)' % (PROMPT_USAGE, state))
    for arg in args:
        if arg not in flags:
            return Result(EX_EINVAL, '', 'prompt: unknown item %r (use date or pwd)' % arg)
    for arg in args:
        flags[arg] = not flags[arg]
    return Result(0)


HISTORY_SIZE = 5000        # lines kept in ~/.alienpy_history
COMPLETION_TTL = 10.0      # seconds a directory listing is reused for completion
BANNER = 'Welcome to the ALICE GRID\n(alien.py %s; help lists the commands, exit or Ctrl-D leaves)\n' % VERSION
_ESCAPE = set(' \t\'"\\;|&()<>$`')
DIR_ONLY_VERBS = ('cd', 'pushd', 'rmdir')  # complete directories only


def prompt_text(session):
    """'AliEn[user]:/cwd/ >' (+ date prefix, + ' local:<dir>' per `prompt`)."""
    flags = prompt_flags(session)
    text = 'AliEn[%s]:%s' % (session.user, session.cwd)
    if flags['date']:
        text = time.strftime('%Y-%m-%dT%H:%M:%S ') + text
    if flags['pwd']:
        try:
            text += ' local:%s' % os.getcwd()
        except OSError:
            text += ' local:?'
    return term_text(text, sys.stdout) + ' >'


def shell_print(result):
    """print_result, with errors in red when stderr is a terminal."""
    if result.exitcode != 0 and result.err and not result.as_json and sys.stderr.isatty() \
            and not os.environ.get('NO_COLOR'):
        if result._out:
            write_lines(result)
        sys.stdout.flush()
        sys.stderr.write('\033[91m%s\033[0m\n' % term_text(result.err.rstrip('\n'), sys.stderr))
        sys.stderr.flush()
    else:
        print_result(result)


def _escape(word):
    return ''.join('\\' + c if c in _ESCAPE else c for c in word)


def current_word(text):
    """(raw last word, unescaped, is it the verb, local context) of a partial line, by the tokenizer."""
    element_start, word_start, local = 0, 0, False
    for i, c in _scan(text, ';\n| \t'):
        if c in ';\n|':
            element_start, word_start, local = i + 1, i + 1, c == '|'
        else:
            word_start = i + 1
    raw = text[word_start:]
    element = text[element_start:word_start]
    local = local or element.lstrip().startswith('!')
    try:
        plain = shlex.split(raw + ('"' if raw.count('"') % 2 else '')) if raw else ['']
        plain = plain[0] if plain else ''
    except ValueError:
        plain = raw
    return raw, plain, not element.strip(), local


class Shell(object):
    """The interactive loop around a Session."""

    def __init__(self, session):
        self.session = session
        self.tty = sys.stdin.isatty()
        self.readline = None
        self.history = None
        self.listings = {}      # grid dir -> (time, [names])
        self.matches = []
        self.reconnect = False  # a request was interrupted: new connection, same cwd

    # -- readline: history and completion --
    def setup_readline(self):
        if not self.tty:
            return
        try:
            import readline
        except ImportError:
            print('(no readline module here: no line editing, history or tab completion)')
            return
        self.readline = readline
        if env_flag('ALIENPY_NO_HISTORY', self.session.environ):
            if hasattr(readline, 'set_auto_history'):
                readline.set_auto_history(False)
            readline.set_completer(lambda text, state: None)  # not even local file names
            return
        self.history = user_file(self.session.environ, '.alienpy_history')
        readline.set_history_length(HISTORY_SIZE)
        try:
            if not os.path.exists(self.history):
                os.close(os.open(self.history, os.O_WRONLY | os.O_CREAT, 0o600))
            readline.read_history_file(self.history)
        except OSError as e:
            log('history file %s: %s' % (self.history, e))
        readline.set_completer(self.complete)
        readline.set_completer_delims(' \t\n;|')
        readline.set_completion_display_matches_hook(self.display_matches)
        readline.parse_and_bind('bind ^I rl_complete' if 'libedit' in (getattr(readline, '__doc__', '') or '')
                                else 'tab: complete')

    def save_history(self):
        """Append the line just entered (a crashing command keeps it); readline cuts to HISTORY_SIZE lines."""
        rl = self.readline
        if rl is None or self.history is None or rl.get_current_history_length() < 1:
            return
        try:
            if hasattr(rl, 'append_history_file'):
                rl.append_history_file(1, self.history)
            else:
                rl.write_history_file(self.history)
        except OSError as e:
            log('history file %s: %s' % (self.history, e))

    def complete(self, text, state):
        if state == 0:
            try:
                line = self.readline.get_line_buffer()[:self.readline.get_endidx()]
                self.matches = self.completions(line, text)
            except KeyboardInterrupt:  # a listing was interrupted: drop its connection
                self.drop_connection(sys.exc_info()[2])
                self.matches = []
            except Exception:
                log_exception()
                self.matches = []
        return self.matches[state] if state < len(self.matches) else None

    def display_matches(self, substitution, matches, longest):
        """Candidates by their last path component in columns (like ls), then the prompt and line again."""
        names = []
        for m in matches:
            if m.endswith(' ') and not m.endswith('\\ '):
                m = m[:-1]
            names.append(m.rstrip('/').rsplit('/', 1)[-1] + ('/' if m.endswith('/') else ''))
        try:
            sys.stdout.write('\n' + term_text(format_columns(sorted(set(names))), sys.stdout) + '\n')
            sys.stdout.write(prompt_text(self.session) + term_text(self.readline.get_line_buffer(), sys.stdout))
            sys.stdout.flush()
        except Exception:
            log_exception()

    def completions(self, line, text):
        """Candidates that replace text (readline's word: after the last space) in the partial line."""
        raw, plain, is_verb, local = current_word(line)
        if is_verb and not local:
            return [n + ' ' for n in self.command_names() if n.startswith(plain)]
        if plain.startswith('file:'):
            cands = ['file:' + c for c in self.local_paths(plain[5:])]
        elif local:
            cands = self.local_paths(plain)
        else:
            cands = self.grid_paths(plain)
            words = re.split(r'[;|\n]', line)[-1].split()
            if words and words[0] in DIR_ONLY_VERBS:
                cands = [c for c in cands if c.endswith('/')]
        cut = len(raw) - len(text)
        out = []
        for c in cands:
            tail = c.endswith(' ')
            esc = _escape(c.rstrip(' ') if tail else c) + (' ' if tail else '')
            if esc.startswith(raw) and cut >= 0:
                out.append(esc[cut:])
        return out

    def command_names(self):
        names = set(n for n in COMMANDS if n not in ('$?',))
        names.update(getattr(self.session, 'aliases', None) or ())
        try:
            self.restore_connection()
            names.update(self.session.server_commands())
        except AlienError:
            pass
        return sorted(names)

    def listing(self, directory):
        now = time.monotonic()
        hit = self.listings.get(directory)
        if hit and now - hit[0] < COMPLETION_TTL:
            return hit[1]
        self.restore_connection()
        r = self.session.request('ls', ['-a', '-F', directory], nomsg=True)
        names = [str(x['name']) for x in r.results if isinstance(x, dict) and x.get('name')] if r.exitcode == 0 else []
        self.listings[directory] = (now, names)
        return names

    def grid_paths(self, word):
        prefix = ''
        m = _GRID_PREFIX.match(word)
        if m:
            prefix, word = m.group(1), word[m.end():]
        dirpart, base = word[:word.rfind('/') + 1], word[word.rfind('/') + 1:]
        _need_cwd(self.session)
        directory = self.session.grid_path(dirpart) if dirpart else self.session.cwd
        return sorted(prefix + dirpart + name + ('' if name.endswith('/') else ' ') for name in self.listing(directory)
                      if name.startswith(base) and (base.startswith('.') or not name.startswith('.')))

    @staticmethod
    def local_paths(word):
        dirpart, base = word[:word.rfind('/') + 1], word[word.rfind('/') + 1:]
        directory = os.path.expanduser(dirpart) if dirpart else '.'
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        return sorted(dirpart + name + ('/' if os.path.isdir(os.path.join(directory, name)) else ' ') for name in names
                      if name.startswith(base) and (base.startswith('.') or not name.startswith('.')))

    # -- the loop --
    def restore_connection(self):
        """After an interrupted request: a new connection in the same directory."""
        if self.reconnect:
            prev = self.session.prevdir  # (a token renewal on connect passes through home)
            self.session.close()
            self.session._reconnect()  # raises when the service is gone: try again next time
            self.session.prevdir = prev
            self.reconnect = False

    def drop_connection(self, tb):
        """Ctrl-C hit a request: the reply may be half read, so the next request reconnects."""
        codes = set(getattr(getattr(value, '__func__', value), '__code__', None)
                    for cls in (Session, WebSocket, WebSocketClientTransport) for value in vars(cls).values())
        while tb is not None and tb.tb_frame.f_code not in codes:
            tb = tb.tb_next
        if tb is None:
            return
        self.session.drop()
        self.reconnect = True

    def read_line(self):
        if self.tty:
            return input(prompt_text(self.session))
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip('\n')

    def run_line(self, line):
        session = self.session
        try:
            self.restore_connection()
            session.run(line, on_result=shell_print)
        except KeyboardInterrupt:
            self.drop_connection(sys.exc_info()[2])
            sys.stdout.write('\n')
            print_error('interrupted')
            session.last_exitcode = 130
        except AlienError as e:
            shell_print(Result(e.exitcode, '', str(e)))
            session.last_exitcode = e.exitcode
        self.listings.clear()  # the command may have changed the directories

    def loop(self):
        session = self.session
        if self.tty:
            import signal  # Ctrl-C must reach us even when started with SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.stdout.write(BANNER + '\n')
            sys.stdout.flush()
        session.request('pwd')  # connect now: the prompt needs user and cwd
        restore_cwd(session)
        if getattr(session, 'aliases', None) is None:
            session.aliases = load_aliases(session.environ)  # (completion offers them)
        self.setup_readline()
        session.flush_token()
        while True:
            try:
                line = self.read_line()
            except EOFError:
                if self.tty:
                    sys.stdout.write('\nExit\n')
                    return 0
                return session.last_exitcode  # a script on stdin: like command mode
            except KeyboardInterrupt:
                sys.stdout.write('\n')  # Ctrl-C at the prompt: forget the line
                continue
            if not line.strip():
                continue
            self.save_history()
            try:
                self.run_line(line)
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else 0


# ==========================================================================
# gfal jobs: the job, its entries, options and credentials, its output lines
# ==========================================================================

GFAL_JOB_TYPES = ('list', 'remove', 'copy', 'rename', 'mkdir')
GFAL_USAGE = 'gfal list|remove|copy|rename|mkdir [JOB.json | -]'
# Options each job type accepts (anything else is a job error: nothing is done).
GFAL_OPTIONS = {
    'list': ('depth', 'checksum', 'timeout'),
    'remove': ('timeout',), 'rename': ('timeout',), 'mkdir': ('timeout',),
    'copy': ('make_dirs', 'parent', 'checksum', 'encrypt', 'preserve_timestamp',
             'overwrite', 'nbstreams', 'timeout', 'parallel', 'copy_mode'),
}
# copy_mode (HTTP): that mode only, without gfal2's fallback from pull to push to streamed
GFAL_COPY_MODES = {'pull': '3rd pull', 'push': '3rd push', 'streamed': 'streamed'}
# Credentials (docs/gfal.md): COPY's source and destination sides take these, each falling
# back to X509_USER_PROXY, the one credential of every other job.
GFAL_PROXY_VARS = ('X509_USER_PROXY_SRC', 'X509_USER_PROXY_DST')
GFAL_TOP_KEYS = ('base', 'files', 'dirs', 'options')
# COPY defaults. make_dirs: True as in the pdm worker (its parent option), so its per-file jobs
# for a directory tree work unchanged. parallel: chosen by bench/gfal_bench.py (see docs-gfal.md).
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
# Data channel encryption by scheme: encrypted anyway, upgraded to a TLS twin, no network at all.
GFAL_ENCRYPTED_SCHEMES = ('roots', 'xroots', 'https', 'davs', 'sftp', 's3s', 'gsiftp')
GFAL_TLS_TWIN = {'root': 'roots', 'xroot': 'xroots'}
GFAL_LOCAL_SCHEMES = ('file',)
GFAL_HTTP_SCHEMES = ('http', 'https', 'dav', 'davs')
_GFAL_SCHEME_RE = LazyRegex(r'^([A-Za-z][A-Za-z0-9+.-]*)://')
_GFAL_CHECKSUM_RE = LazyRegex(r'^[A-Za-z][A-Za-z0-9_-]{0,31}$')


class GfalJobError(Exception):
    """The job as a whole is unusable: one error line, exit 2, nothing done."""


class GfalJob(object):
    """A validated job, options with defaults. entries: (id, 'file'|'dir', url), or (id, 'file', src, dst)
    for copy/rename; id None for wiki-style entries. creds: gfal_credentials; the rest gfal_cred_bindings."""
    __slots__ = ('type', 'entries', 'options', 'creds', 'bound', 'shared', 'tokens')

    def __init__(self, jobtype, entries, options):
        self.type, self.entries, self.options = jobtype, entries, options
        self.creds = (None, None)
        self.bound, self.shared, self.tokens = {}, frozenset(), False


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
        doc = load_json(text)
    except ValueError as e:
        raise GfalJobError('invalid JSON: %s' % e)
    if not isinstance(doc, dict):
        raise GfalJobError('the job must be a JSON object, not %s' % _gfal_json_type(doc))
    return doc


# (bool before int: True is an int too)
_GFAL_JSON_TYPES = ((type(None), 'null'), (bool, 'a boolean'), ((int, float), 'a number'),
                    (str, 'a string'), (list, 'a list'))


def _gfal_json_type(value):
    return next((name for kind, name in _GFAL_JSON_TYPES if isinstance(value, kind)), 'an object')


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
    """One entry (the shapes its error names) -> (id, url), or (id, src, dst) when pair."""
    paths = 2 if pair else 1
    if isinstance(entry, str) and not pair:
        return (None, _gfal_url(entry, where, base))
    if not isinstance(entry, list) or len(entry) not in ((2, 3) if pair else (2,)):
        raise GfalJobError('%s: expected %s, got %s' % (where, '["src", "dst"] or ["id", "src", "dst"]' if pair
                                                        else '"path" or ["id", "path"]', _gfal_short(entry)))
    ident = _gfal_id(entry[0], where) if len(entry) > paths else None
    return (ident,) + tuple(_gfal_url(path, where, base) for path in entry[-paths:])


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
    if base is not None and not (isinstance(base, str) and gfal_scheme(base)):
        raise GfalJobError('"base" must be a URL with a scheme (e.g. root://host//path/), got %s'
                           % _gfal_short(base))
    for key in ('files', 'dirs'):
        if not isinstance(doc.get(key, []), list):
            raise GfalJobError('"%s" must be a list, not %s' % (key, _gfal_json_type(doc[key])))
    options = gfal_check_options(jobtype, doc.get('options', {}))

    files, dirs = doc.get('files', []), doc.get('dirs', [])
    pair = jobtype in ('copy', 'rename')
    if jobtype == 'list':
        if len(files) + len(dirs) != 1:
            raise GfalJobError('LIST takes exactly one entry in "files" or "dirs", got %d'
                               % (len(files) + len(dirs)))
    elif pair and dirs:
        raise GfalJobError('%s takes its pairs in "files"; "dirs" must be empty' % jobtype.upper())
    elif pair and not files:
        raise GfalJobError('no files to %s: "files" is empty' % jobtype)
    elif jobtype == 'mkdir' and files:
        raise GfalJobError('MKDIR takes its directories in "dirs"; "files" must be empty')
    elif jobtype == 'mkdir' and not dirs:
        raise GfalJobError('no directories to create: "dirs" is empty')
    elif not files and not dirs:
        raise GfalJobError('nothing to remove: "files" and "dirs" are empty')
    entries = []   # (remove: every file, then every directory)
    for key, kind, items in (('files', 'file', files), ('dirs', 'dir', dirs)):
        for i, entry in enumerate(items):
            parsed = gfal_parse_entry(entry, pair, base, '%s[%d]' % (key, i))
            entries.append((parsed[0], kind) + parsed[1:])
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
        out['depth'] = max(-1, integer('depth', -1, None))   # any negative depth: unlimited
        out['checksum'] = _gfal_checksum_option(options.get('checksum'), False)
    elif jobtype == 'copy':
        make_dirs = boolean('make_dirs', True)
        parent = boolean('parent', make_dirs)
        if 'make_dirs' in options and make_dirs != parent:   # (parent defaults to make_dirs)
            raise GfalJobError('options make_dirs and parent (its alias) disagree')
        out['make_dirs'] = parent
        out['checksum'] = _gfal_checksum_option(options.get('checksum'), True)
        for name in ('encrypt', 'preserve_timestamp', 'overwrite'):
            out[name] = boolean(name, False)
        out['nbstreams'] = integer('nbstreams', None, 1)
        parallel = integer('parallel', GFAL_DEFAULT_PARALLEL, 1)
        if parallel > GFAL_MAX_PARALLEL:
            raise GfalJobError('option parallel must be at most %d, not %d' % (GFAL_MAX_PARALLEL, parallel))
        out['parallel'] = parallel
        mode = options.get('copy_mode')
        if mode is not None and mode not in GFAL_COPY_MODES:
            raise GfalJobError('option copy_mode must be one of %s, not %s' % (
                ', '.join(sorted(GFAL_COPY_MODES)), _gfal_short(mode)))
        out['copy_mode'] = mode
    return out


def _gfal_checksum_option(value, with_value):
    """checksum option -> None or (algorithm, expected value or ''). LIST: an algorithm; COPY: "ALG"
    (source against destination), "ALG:VALUE" (both also against VALUE) or true (adler32)."""
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
    """URL for encryption (root/xroot: roots/xroots; file://, TLS, gsiftp with DCAU: as is) or ValueError."""
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


def gfal_endpoint(url):
    """'scheme://host[:port]/' of a remote URL (what a credential is bound to); None for file://."""
    m = _GFAL_SCHEME_RE.match(url)
    if not m or m.group(1).lower() in GFAL_LOCAL_SCHEMES:
        return None
    slash = url.find('/', m.end())
    return (url if slash < 0 else url[:slash]) + '/'


def gfal_credentials(jobtype, environ):
    """(source, destination) credential, (variable, file) or None; an unreadable/certless file: job error."""
    one = ('X509_USER_PROXY', environ['X509_USER_PROXY']) if environ.get('X509_USER_PROXY') else None
    sides = tuple((var, environ[var]) if jobtype == 'copy' and environ.get(var) else one
                  for var in GFAL_PROXY_VARS)
    for var, path in sorted(set(filter(None, sides))):
        try:
            with open(path, 'rb') as f:
                ok = b'-----BEGIN CERTIFICATE-----' in f.read(1 << 20)
        except OSError as e:
            raise GfalJobError('%s=%s: cannot read the credential file: %s' % (var, path, e.strerror or e))
        if not ok:
            raise GfalJobError('%s=%s: the credential file holds no PEM certificate' % (var, path))
    return sides


def gfal_cred_bindings(job):
    """({URL prefix: credential file}, shared endpoints, tokens) of a job. COPY: each side's credential on its
    endpoints' roots (and TLS twins), the destination's last: an endpoint of both sides with two files is
    `shared` (sources there get the source's per copy); other jobs: none (gfal2 reads X509_USER_PROXY).
    tokens: an entry may be an HTTP third-party copy, the one use of gfal2's token requests (one a file)."""
    tokens = job.type == 'copy' and job.options['copy_mode'] != 'streamed' and any(
        gfal_scheme(e[2]) in GFAL_HTTP_SCHEMES and gfal_scheme(e[3]) in GFAL_HTTP_SCHEMES for e in job.entries)
    bound, shared = {}, set()
    for side, cred in zip((2, 3), job.creds if job.type == 'copy' else ()):
        for entry in job.entries if cred else ():
            urls = [entry[side]]
            if job.options['encrypt']:
                try:
                    urls.append(gfal_encrypted_url(entry[side]))
                except ValueError:
                    pass
            for root in filter(None, map(gfal_endpoint, urls)):
                if side == 3 and bound.get(root, cred[1]) != cred[1]:
                    shared.add(root)
                bound[root] = cred[1]
    return bound, frozenset(shared), tokens


_GFAL_AUTH_RE = LazyRegex(r'\b40[13]\b|[Pp]ermission|SSL|TLS|[Cc]ertificate|[Hh]andshake|reset by peer|'
                          r'[Aa]uthenticat|unknown ca')


def gfal_credential_note(reason, creds, urls, copy=False):
    """reason, plus what credential each remote endpoint got when it looks like an authentication failure;
    a COPY failure gfal2 places on one side (SOURCE/DESTINATION) names that side only."""
    if not _GFAL_AUTH_RE.search(reason):
        return reason
    side = re.search(r'^(SOURCE|DESTINATION)\b|\((source|destination)\)$', reason) if copy else None
    side = side and (side.group(1) or side.group(2)).lower()
    notes = []
    for name, cred, url, var in zip(('source', 'destination'), creds, urls, GFAL_PROXY_VARS):
        root = gfal_endpoint(url)
        note = '%s%s: %s' % (name + ' ' if copy else '', root, '%s=%s' % cred if cred else
                             'no credential (%sX509_USER_PROXY unset)' % (var + ' and ' if copy else ''))
        if root and side in (None, name) and note not in notes:
            notes.append(note)
    return reason + ' [credential for %s]' % '; '.join(notes) if notes else reason


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
    # davix escapes its own newlines (a literal backslash-n)
    text = text.replace('\x00', '').replace('\\n', '\n').strip()
    return ' '.join(text.split()) if '\n' in text else text


class _GfalOutput(object):
    """Serialised, flushed line output on stdout (JSON) and stderr (text)."""

    def __init__(self, stdout, stderr):
        self.stdout, self.stderr = stdout, stderr
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
        self._write(self.stderr, term_text(text, self.stderr) + '\n')


# ==========================================================================
# gfal jobs: running them on gfal2 (imported lazily)
# ==========================================================================

# dirent d_type (DT_DIR, DT_REG, DT_LNK) -> st_mode file-type bits
_GFAL_DTYPE_MODE = {4: stat_mod.S_IFDIR, 8: stat_mod.S_IFREG, 10: stat_mod.S_IFLNK}


def _gfal_context(gfal2, job):
    options = job.options
    ctx = gfal2.creat_context()
    if options.get('timeout'):
        ctx.set_opt_integer('CORE', 'NAMESPACE_TIMEOUT', options['timeout'])
    for prefix, path in job.bound.items():
        ctx.cred_set(prefix, ctx.cred_new('X509_CERT', path))
    try:
        if not job.tokens:
            ctx.set_opt_boolean('HTTP PLUGIN', 'RETRIEVE_BEARER_TOKEN', False)
        if job.shared:
            # davix reuses a TLS connection, and the identity of its certificate, for
            # any request to the same host and port: one connection per request then
            ctx.set_opt_boolean('HTTP PLUGIN', 'KEEP_ALIVE', False)
        if options.get('copy_mode'):
            ctx.set_opt_string('HTTP PLUGIN', 'DEFAULT_COPY_MODE', GFAL_COPY_MODES[options['copy_mode']])
            ctx.set_opt_boolean('HTTP PLUGIN', 'ENABLE_FALLBACK_TPC_COPY', False)
        if options.get('encrypt'):
            ctx.set_opt_boolean('GRIDFTP PLUGIN', 'DCAU', True)
        # One file per filecopy call: else xrootd sets up a 20-job copy process each time (+30 % CPU a file)
        ctx.set_opt_integer('XROOTD PLUGIN', 'PARALLEL_COPIES', 1)
    except Exception:   # options of plugins that are not installed: nothing to tune
        pass
    return ctx


def _gfal_read_dir(ctx, dir_url):
    """(name, stat, d_type) of every entry of a directory, in server order. Remote: opendir/readpp (one round
    trip). file://: listdir and stat, faster there, and a dangling symlink gets its lstat (readpp: ENOENT)."""
    found = []
    if gfal_scheme(dir_url) == 'file':
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
        d = dict(((key, int(getattr(st, key))) for key in GFAL_STAT_KEYS), name=name)
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
            stack.extend((child, level + 1) for child in reversed(subdirs))
    return listing


class _GfalParentDirs(object):
    """Destination directories created in this job (make_dirs): each parent once, not gfal2's create_parent
    per file, saves two round trips a file. One that fails here is left to gfal2, to report its error."""

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


def _gfal_copy_one(gfal2, ctx, job, src, dst, out, parents=None):
    """Copy one file -> None or the failure Reason; a source on a shared endpoint gets the source's cred."""
    options = job.options
    try:
        src_url, dst_url = map(gfal_encrypted_url, (src, dst)) if options['encrypt'] else (src, dst)
    except ValueError as e:
        return str(e)
    pinned = job.creds[0] and gfal_endpoint(src_url) in job.shared
    if pinned:
        ctx.cred_set(src_url, ctx.cred_new('X509_CERT', job.creds[0][1]))
    try:
        return _gfal_filecopy(gfal2, ctx, options, src, dst, src_url, dst_url, out, parents)
    finally:
        if pinned:
            ctx.cred_del('X509_CERT', src_url)


def _gfal_filecopy(gfal2, ctx, options, src, dst, src_url, dst_url, out, parents):
    params = ctx.transfer_parameters()
    params.overwrite = options['overwrite']
    params.create_parent = options['make_dirs']
    if options['make_dirs'] and parents is not None and parents.ensure(ctx, dst_url):
        params.create_parent = False
    for name in ('nbstreams', 'timeout'):
        if options[name]:
            setattr(params, name, options[name])
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
            # davs:// stat gives no access time: the file gets its mtime then
            os.utime(dst_path, (int(src_st.st_atime or src_st.st_mtime), int(src_st.st_mtime)))
    # The summary line: gfal2 calls the monitor only for long transfers.
    try:
        size = (src_st if src_st is not None else os.stat(src_path) if src_path is not None
                else os.stat(dst_path) if dst_path is not None else ctx.stat(dst_url)).st_size
    except Exception:
        size = 0
    out.err(gfal_monitor_line(src, elapsed, size, size / elapsed if elapsed > 0 else 0))
    return None


def _gfal_run_entry(gfal2, ctx, job, entry, out, parents=None):
    """Run one REMOVE/MKDIR/RENAME/COPY entry -> result dict (never raises)."""
    ident = entry[0]
    try:
        if job.type == 'copy':
            reason = _gfal_copy_one(gfal2, ctx, job, entry[2], entry[3], out, parents)
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
        reason = gfal_credential_note(gfal_error_text(e), job.creds, entry[2:], job.type == 'copy')
        return gfal_result(False, reason, ident)
    return gfal_result(True, 'OK', ident)


def _gfal_run_parallel(gfal2, job, out, workers):
    """COPY entries on `workers` threads (a context each), results printed in order once ready -> failures."""
    entries = job.entries
    parents = _GfalParentDirs()
    results = [None] * len(entries)
    todo, printed = iter(range(len(entries))), [0]
    lock = threading.Lock()

    def worker():
        ctx = None
        while True:
            with lock:
                index = next(todo, None)
            if index is None:
                return
            try:
                ctx = _gfal_context(gfal2, job) if ctx is None else ctx
            except Exception as e:   # (the next entry tries again)
                result = gfal_result(False, gfal_error_text(e), entries[index][0])
            else:
                result = _gfal_run_entry(gfal2, ctx, job, entries[index], out, parents)
            with lock:
                results[index] = result
                while printed[0] < len(entries) and results[printed[0]] is not None:
                    out.json(results[printed[0]])
                    printed[0] += 1

    threads = [threading.Thread(target=worker, name='gfal-copy-%d' % i, daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return sum(line['Code'] for line in results[:printed[0]])


def gfal_run_job(gfal2, job, out):
    """Run a validated job with gfal2; prints results; returns the exit status 0/1."""
    if job.type == 'list':
        ident, _kind, url = job.entries[0]
        try:
            ctx = _gfal_context(gfal2, job)
            listing = _gfal_do_list(gfal2, ctx, url, job.options)
        except Exception as e:
            out.json(gfal_result(False, gfal_credential_note(gfal_error_text(e), job.creds, (url,)), ident))
            return 1
        out.json(listing if ident is None else collections.OrderedDict(
            [('Reason', 'OK'), ('Code', 0), ('id', ident), ('Listing', listing)]))
        return 0
    job.bound, job.shared, job.tokens = gfal_cred_bindings(job)
    workers = min(job.options.get('parallel', 1), len(job.entries)) if job.type == 'copy' else 1
    if workers > 1:
        return 1 if _gfal_run_parallel(gfal2, job, out, workers) else 0
    failed = 0
    parents = _GfalParentDirs() if job.type == 'copy' else None
    try:
        ctx = _gfal_context(gfal2, job)
    except Exception as e:
        ctx, context_error = None, gfal_error_text(e)
    for entry in job.entries:
        result = (gfal_result(False, context_error, entry[0]) if ctx is None
                  else _gfal_run_entry(gfal2, ctx, job, entry, out, parents))
        out.json(result)
        failed += result['Code']
    return 1 if failed else 0


def gfal_lazy_system_cas(environ):
    """Let OpenSSL find the system CAs by hash in their directory: davix parses the whole default CA file
    (about 30 ms of CPU) for every HTTPS request. Only while both are the system's (SSL_CERT_FILE/_DIR
    unset or naming them) and the directory links every certificate of the file: trust stays the same."""
    paths = ssl.get_default_verify_paths()
    real = os.path.realpath
    cafile = environ.get(paths.openssl_cafile_env) or paths.openssl_cafile
    capath = environ.get(paths.openssl_capath_env) or paths.openssl_capath
    if real(cafile) != real(paths.openssl_cafile) or real(capath) != real(paths.openssl_capath):
        return
    try:
        with open(cafile, 'rb') as f:
            certs = f.read().count(b'-----BEGIN CERTIFICATE-----')
        links = sum(1 for name in os.listdir(capath) if re.match(r'^[0-9a-f]{8}\.\d+$', name))
    except OSError:
        return
    if 0 < certs <= links:
        environ[paths.openssl_cafile_env] = os.devnull


def gfal_main(args, stdin=None, stdout=None, stderr=None):
    """alien.py gfal TYPE [JOB.json|-] -> 0 all entries OK, 1 some failed, 2 job error (one JSON line)."""
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
        try:
            text = read_text_limited(stdin if source == '-' else source, INPUT_MAX_BYTES)
        except (OSError, ValueError) as e:
            raise GfalJobError('cannot read the job %s: %s' % (
                'from stdin' if source == '-' else 'file ' + source, getattr(e, 'strerror', None) or e))
        job = gfal_parse_job(jobtype, gfal_load_json(text))
        job.creds = gfal_credentials(jobtype, os.environ)
        try:
            import gfal2   # only here
        except ImportError:
            raise GfalJobError(GFAL_MISSING_HINT % (sys.executable or 'python3'))
    except GfalJobError as e:
        out.json(gfal_result(False, str(e), ''))   # id "": the whole job failed (pdm worker)
        return 2
    gfal_lazy_system_cas(os.environ)
    status = gfal_run_job(gfal2, job, out)
    return 1 if out.broken else status


@command('gfal', connect=False, usage='usage: alien.py ' + GFAL_USAGE + """
Run a GridPP worker job (JSON on stdin or in JOB.json) with gfal2; one JSON
result line per entry on stdout, COPY progress (MONITOR lines) on stderr.
Exit 0: all entries OK, 1: some failed, 2: job error. Needs gfal2's Python
bindings (python3-gfal2): run it with the system interpreter, /usr/bin/python3.""")
def cmd_gfal(session, args):
    return Result(gfal_main(args))


# ==========================================================================
# main()
# ==========================================================================

USAGE = """usage: alien.py                     interactive shell
       alien.py 'cmd1 args; cmd2'   run commands and exit with the last one's code
       alien.py FILE                run the command lines of a local file
       alien.py help                list the commands
  anywhere: -json (JSON replies for the whole run), -debug, -debugfile FILE (debug log)
  the arguments are joined with spaces and split again honouring quotes:
  alien.py "stat 'my file'" for a name with a space"""
MAIN_OPTIONS = Options([('-json', 'json', 'flag', False), ('-debug', 'debug', 'flag', False),
                        ('-debugfile', 'debugfile', 'str', None)])
# The alien-<verb> commands of the reference client (alien_<verb> is any verb).
ENTRY_VERBS = ('token-init', 'token-info', 'token-destroy', 'cert-info')


def entry_verb(argv0):
    """The verb of a program name: alien_ls -> 'ls', alien-token-init -> 'token-init', alien.py -> ''."""
    name = os.path.basename(argv0 or '')
    if name.endswith('.py'):
        name = name[:-3]
    if (name.startswith('alien_') and name not in ('alien_', 'alien_cmd')
            or name.startswith('alien-') and name[6:] in ENTRY_VERBS):
        return name[6:]
    return ''


def parse_main_args(argv):
    """Front-end options anywhere on the command line -> (words, {json, debug, debugfile})."""
    opts, words = parse_args('', argv, MAIN_OPTIONS, free=True)   # the other words are the commands'
    if opts['debugfile'] == '':
        raise AlienError('-debugfile needs a file name', EX_USAGE)
    opts['debug'] = opts['debug'] or opts['debugfile'] is not None
    return words, opts


def command_file_lines(text):
    """Content of a command file -> its command lines (blank lines and # comments dropped)."""
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith('#')]


def run_command_file(session, path):
    """Each line of a local file as a command line -> exit code of the last command."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = command_file_lines(f.read())
    except OSError as e:
        raise AlienError('cannot read the command file %s: %s' % (path, e.strerror), EX_ENOENT)
    code = 0
    for line in lines:
        try:
            code = session.run(line, on_result=print_result).exitcode
        except AlienError as e:
            print_error('alien.py: %s' % e)
            code = session.last_exitcode = e.exitcode
    return code


def main(argv=None):
    prog = sys.argv[0] if argv is None else 'alien.py'
    argv = sys.argv[1:] if argv is None else list(argv)
    session = None
    try:
        verb = entry_verb(prog)
        if not verb and argv and argv[0] in HELP_WORDS:
            sys.stdout.write(USAGE + '\n')
            return 0
        words, opts = parse_main_args(argv)
        for key, var in (('json', 'ALIENPY_JSON'), ('debug', 'ALIENPY_DEBUG'), ('debugfile', 'ALIENPY_DEBUG_FILE')):
            if opts[key]:
                os.environ[var] = '1' if opts[key] is True else opts[key]
        if verb:
            words.insert(0, verb)
        session = Session()
        session.compact_rows = True
        if not words:
            return exit_status(Shell(session).loop())   # no command: the interactive shell
        if not verb and len(words) == 1 and os.path.isfile(words[0]):
            return exit_status(run_command_file(session, words[0]))
        # like the reference client: join with spaces and split again, honouring quotes
        return exit_status(session.run(' '.join(words), on_result=print_result).exitcode)
    except AlienError as e:
        print_error('alien.py: %s' % e)
        return exit_status(e.exitcode)
    except SystemExit as e:
        return exit_status(e.code) if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print_error('alien.py: interrupted')
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, 'w')
        except OSError:
            pass
        return 1
    except Exception as e:  # the last guard: never a traceback
        log_exception()
        print_error('alien.py: internal error: %s: %s (ALIENPY_DEBUG=1 logs the details)' % (type(e).__name__, e))
        return 1
    finally:
        if session is not None:
            session.close()


def leave(code):
    """Exit with `code` after main(): flush, run the exit handlers (temp PEM files, logging) and os._exit,
    skipping Python's teardown of every object (about 10 ms of a 0.14 s command). Other threads running,
    or XRootD or gfal2 loaded (their libraries stop their threads at exit): Python's normal exit."""
    run_handlers = getattr(__import__('atexit'), '_run_exitfuncs', None)
    if (run_handlers is None or threading.active_count() > 1
            or 'XRootD' in sys.modules or 'gfal2' in sys.modules):
        sys.exit(code)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):   # a closed pipe (alien.py ls | head -1)
        code = code or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    run_handlers()
    os._exit(code)


if __name__ == '__main__':
    leave(main())
