"""CCDB and MonALISA REST stand-ins of the test grid (standard library http.server).

Run: ``python3 -m testgrid.httpsvc --workdir DIR --ccdb-port N --ml-port M`` (grid.py
does it; one process, one threaded server per service, pid file run/httpsvc.pid).

CCDB (the paths and headers the reference client uses):
  ``GET /latest/<path>[/<time ms>][/<key>=<value>...]``  the newest version valid at
      that time (default now) of each object under path, JSON ``{"objects": [...],
      "subfolders": [...]}`` (``Accept: application/json``);
  ``GET /browse/<path>...``  every version, newest first, at most ``Browse-Limit``
      (header) objects; ``?report=true`` gives subfolders as size/count records;
  ``GET /<path>/<validFrom>/<id>``  303 redirect to ``/download/<id>``, the object's
      bytes (``Content-MD5``, ``Content-Length``, ``Content-Disposition``).
  Run information: ``RCT/Info/RunInformation/<run>`` objects carry ``SOR``/``EOR``.
MonALISA: ``GET /rest/<farm>/<cluster>/<node>/<parameter>?Accept=application/json``
  (``text/plain``, ``text/xml``); each part may be ``*``; JSON ``{"results": [rows]}``.

Faults: ``<workdir>/http-faults.json`` (grid.set_http_faults), read at every request,
maps ``"ccdb"``, ``"ccdb-download"`` (object downloads only) or ``"monalisa"`` to ``"404"``/``"500"`` (that status), ``"hang"``
(no answer for 60 s), ``"garbage"`` (200 with a body that is not JSON), ``"cut"``
(Content-Length larger than the body, then close) or ``"drop"`` (close at once).
"""

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DAY = 86400000
T0 = 1700000000000   # validity start of the first versions (ms)


def _object(path, n, valid_from, valid_until, otype, extra=None):
    oid = '%08x-%04x-11ee-8000-%012x' % (int(hashlib.md5(path.encode()).hexdigest()[:8], 16), n, n)
    data = ('%s version %d\n' % (path, n)).encode() * (50 + n)
    name = path.rsplit('/', 1)[-1] + '.root'
    o = {'path': path, 'createTime': valid_from + 1000, 'lastModified': valid_from + 2000, 'id': oid,
         'validFrom': valid_from, 'validUntil': valid_until, 'initialValidity': valid_until,
         'MD5': hashlib.md5(data).hexdigest(), 'fileName': name, 'contentType': 'application/octet-stream',
         'size': len(data), 'ObjectType': otype, 'UploadedFrom': 'testgrid', 'partName': '',
         'replicas': ['http://127.0.0.1:1/dead-replica/%s' % oid, '/download/%s' % oid,
                      'alien:///alice/data/CCDB/%s/%s' % (path, oid)],
         'Created': str(valid_from + 1000), 'Last-Modified': str(valid_from + 2000), 'ETag': '"%s"' % oid,
         'Valid-From': str(valid_from), 'Valid-Until': str(valid_until),
         'Content-Disposition': 'inline;filename="%s"' % name, 'Content-MD5': hashlib.md5(data).hexdigest(),
         'Content-Length': str(len(data)), 'InitialValidityLimit': str(valid_until)}
    o.update(extra or {})
    return o, data


def build_ccdb():
    objs, blobs = [], {}

    def add(*a, **kw):
        o, data = _object(*a, **kw)
        objs.append(o)
        blobs[o['id']] = (o, data)

    for i in range(3):   # three versions, each valid for a day
        add('TPC/Calib/PadGainFull', i, T0 + i * DAY, T0 + (i + 1) * DAY + 10 * 365 * DAY, 'o2::tpc::CalDet<float>')
    add('TPC/Calib/Temperature', 0, T0, T0 + 400 * DAY, 'o2::tpc::TempMap')
    add('GLO/Config/GRPECS', 0, T0, T0 + 400 * DAY, 'o2::parameters::GRPECSObject')
    add('GLO/Config/GRPECS', 1, T0 + 1, T0 + 400 * DAY, 'o2::parameters::GRPECSObject', {'runNumber': '523897'})
    add('RCT/Info/RunInformation/523897', 0, T0 + DAY, T0 + 3650 * DAY, 'RunInfo',
        {'SOR': str(T0 + DAY + 60000), 'EOR': str(T0 + DAY + 3000000), 'runNumber': '523897'})
    return objs, blobs


OBJECTS, BLOBS = build_ccdb()

ML_ROWS = [
    {'Farm': farm, 'Cluster': 'Site_Jobs_Summary', 'Node': node, 'Parameter': param,
     'Timestamp': str(T0 + k * 60000), 'Value': str(v)}
    for k, (farm, node, param, v) in enumerate([
        ('JTestSite', 'jobs', 'RUNNING_jobs', 42), ('JTestSite', 'jobs', 'WAITING_jobs', 7),
        ('OtherSite', 'jobs', 'RUNNING_jobs', 3), ('OtherSite', 'jobs', 'WAITING_jobs', 0),
        ('JTestSite', 'storage', 'used_GB', 1250.5)])]


def _match(pattern, value):
    return pattern in ('*', '') or re.fullmatch(re.escape(pattern).replace('\\*', '.*'), value) is not None


class Handler(BaseHTTPRequestHandler):
    server_version = 'testgrid-http/1.0'
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        with open(self.server.log_path, 'a') as f:
            f.write('%s %s %s %s\n' % (time.strftime('%H:%M:%S'), self.server.kind, self.requestline,
                                       json.dumps({k: v for k, v in self.headers.items()})))

    def fault(self):
        kind = self.server.kind
        if kind == 'ccdb' and self.path.startswith('/download/'):
            kind = 'ccdb-download'   # only the object downloads (the listing works)
        try:
            with open(os.path.join(self.server.workdir, 'http-faults.json')) as f:
                return str(json.load(f).get(kind, ''))
        except (OSError, ValueError, AttributeError):
            return ''

    def send(self, status, body, ctype='application/json', headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.log_message('')
        fault = self.fault()
        if fault in ('404', '500'):
            return self.send(int(fault), '<html><body>error %s</body></html>' % fault, 'text/html')
        if fault == 'hang':
            time.sleep(60)
            return None
        if fault == 'drop':
            self.close_connection = True
            return None
        if fault == 'garbage':
            return self.send(200, '<html>this is not JSON</html>', 'text/html')
        if fault == 'cut':
            self.send_response(200)
            self.send_header('Content-Length', '100000')
            self.end_headers()
            self.wfile.write(b'{"objects": [')
            self.close_connection = True
            return None
        u = urlsplit(self.path)
        path = unquote(u.path)
        if self.server.kind == 'ccdb':
            return self.ccdb(path, parse_qs(u.query))
        return self.monalisa(path, parse_qs(u.query))

    # -- CCDB --
    def ccdb(self, path, query):
        m = re.match(r'^/download/([0-9a-f-]+)$', path)
        if m and m.group(1) in BLOBS:
            o, data = BLOBS[m.group(1)]
            return self.send(200, data, 'application/octet-stream',
                             [('Content-MD5', o['MD5']), ('Content-Disposition', o['Content-Disposition'])])
        m = re.match(r'^/(latest|browse)(/.*)?$', path)
        if not m:
            m2 = re.match(r'^/(.+)/([0-9]{13})/([0-9a-f-]{36})$', path)
            if m2 and m2.group(3) in BLOBS and BLOBS[m2.group(3)][0]['path'] == m2.group(1):
                self.send_response(303)
                self.send_header('Location', '/download/%s' % m2.group(3))
                self.send_header('Content-Length', '0')
                self.end_headers()
                return None
            return self.send(404, '{"error": "no such object"}')
        kind, rest = m.group(1), (m.group(2) or '/').strip('/')
        when, keys, parts = None, {}, []
        for p in rest.split('/') if rest else []:
            if re.match(r'^[0-9]{13}$', p):
                when = int(p)
            elif '=' in p:
                k, _, v = p.partition('=')
                keys[k] = v
            else:
                parts.append(p)
        prefix = '/'.join(parts)
        under = [o for o in OBJECTS if not prefix or o['path'] == prefix or o['path'].startswith(prefix + '/')]
        under = [o for o in under if all(str(o.get(k)) == v for k, v in keys.items())]
        direct = [o for o in under if o['path'] == prefix] or \
            [o for o in under if '/' not in o['path'][len(prefix):].strip('/')]
        sub = sorted({o['path'][len(prefix):].strip('/').split('/')[0] for o in under
                      if '/' in o['path'][len(prefix):].strip('/')})
        if kind == 'latest':
            t = when if when is not None else int(time.time() * 1000)
            latest = {}
            for o in direct:
                if o['validFrom'] <= t < o['validUntil']:
                    cur = latest.get(o['path'])
                    if cur is None or o['createTime'] > cur['createTime']:
                        latest[o['path']] = o
            objs = list(latest.values())
        else:
            objs = sorted(direct, key=lambda o: -o['createTime'])
            if when is not None:
                objs = [o for o in objs if o['validFrom'] <= when < o['validUntil']]
            limit = self.headers.get('Browse-Limit', '')
            if limit.isdigit():
                objs = objs[:int(limit)]
        if query.get('report') == ['true']:
            subs = []
            for name in sub:
                full = (prefix + '/' if prefix else '') + name
                own = [o for o in OBJECTS if o['path'] == full]
                below = [o for o in OBJECTS if o['path'].startswith(full + '/')]
                subs.append({'name': full, 'ownFiles': len(own), 'ownSize': sum(o['size'] for o in own),
                             'filesInSubfolders': len(below), 'sizeOfSubfolders': sum(o['size'] for o in below)})
            return self.send(200, json.dumps({'objects': objs, 'subfolders': subs}))
        return self.send(200, json.dumps({'objects': objs, 'subfolders': [
            (prefix + '/' if prefix else '') + s for s in sub]}))

    # -- MonALISA --
    def monalisa(self, path, query):
        m = re.match(r'^/rest(/.*)?$', path)
        if not m:
            return self.send(404, 'not found', 'text/plain')
        parts = [p for p in (m.group(1) or '').split('/') if p]
        while len(parts) >= 2 and re.match(r'^-?[0-9]+$', parts[0]):   # /START/END/... time range
            parts = parts[1:]
        pattern = (parts + ['*'] * 4)[:4]
        rows = [r for r in ML_ROWS if all(_match(p, r[k]) for p, k in
                                          zip(pattern, ('Farm', 'Cluster', 'Node', 'Parameter')))]
        accept = (query.get('Accept') or [self.headers.get('Accept', 'text/plain')])[0]
        if accept == 'application/json':
            return self.send(200, json.dumps({'results': rows}))
        if accept == 'text/xml':
            body = '<results>%s</results>' % ''.join(
                '<result %s/>' % ' '.join('%s="%s"' % kv for kv in r.items()) for r in rows)
            return self.send(200, body, 'text/xml')
        return self.send(200, ''.join('%s/%s/%s/%s\t%s\t%s\n' % (r['Farm'], r['Cluster'], r['Node'], r['Parameter'],
                                                                  r['Timestamp'], r['Value']) for r in rows),
                         'text/plain')


def serve(kind, port, workdir, tls=None):
    """One service ('ccdb' or 'monalisa') in a thread; tls: an ssl.SSLContext for HTTPS.
    Returns the server (its port: server_address[1])."""
    srv = ThreadingHTTPServer(('127.0.0.1', port), Handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    srv.kind, srv.workdir = kind, workdir
    srv.log_path = os.path.join(workdir, 'http.log')
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--workdir', required=True)
    ap.add_argument('--ccdb-port', type=int, required=True)
    ap.add_argument('--ml-port', type=int, required=True)
    a = ap.parse_args(argv)
    servers = [serve('ccdb', a.ccdb_port, a.workdir), serve('monalisa', a.ml_port, a.workdir)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run = os.path.join(a.workdir, 'run')
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, 'httpsvc.pid'), 'w') as f:
        f.write('%d\n' % os.getpid())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    for s in servers:
        s.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
