"""The session against the test grid: connecting, credentials and tokens, TLS."""
import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pexpect
import pytest

import alien
from testgrid.tools import tool
from conftest import (
    ALIEN, ConnectProxy, OWN_TRANSPORT, REPO, _TG_DIR, _rc_service_log, decode_client_frame, hostile_run,
    one_line_error, run_cli)


# ===== the session: credentials, endpoint forms, TLS refusals =====


def test_pwd_whoami_and_token_written_owner_only(cenv, grid_state):
    p = run_cli(['pwd'], env=cenv)
    assert (p.returncode, p.stdout, p.stderr) == (0, grid_state['home'] + '\n', '')
    for name in ('JALIEN_TOKEN_CERT', 'JALIEN_TOKEN_KEY'):
        assert os.stat(cenv[name]).st_mode & 0o777 == 0o400
    p = run_cli(['whoami -json'], env=cenv)  # now connects with the token
    reply = json.loads(p.stdout)
    assert reply['results'][0]['username'] == 'jalien'
    assert 'OU=token' in reply['results'][0]['certificate_dn'] or 'token' in reply['results'][0]['certificate_dn']


def test_embedding_api(cenv, grid_state):
    s = alien.Session(environ=cenv)
    try:
        r = s.run('mkdir -p embed; cd embed; pwd')
        assert (r.exitcode, r.out) == (0, grid_state['home'] + 'embed/')
        assert s.cwd == grid_state['home'] + 'embed/' and s.home == grid_state['home'] and s.user == 'jalien'
        r = s.run('ls /nonexistent')
        assert r.exitcode == 2 and 'No such file' in r.err
        r = s.request('stat', ['-nomsg', s.grid_path('..')])
        assert r.results[0]['type'] == 'd'
    finally:
        s.close()


def test_token_given_as_pem_contents(cenv, tmp_path):
    assert run_cli(['pwd'], env=cenv).returncode == 0  # writes the token files
    env = dict(cenv, JALIEN_TOKEN_CERT=open(cenv['JALIEN_TOKEN_CERT']).read(),
               JALIEN_TOKEN_KEY=open(cenv['JALIEN_TOKEN_KEY']).read(),
               X509_USER_CERT='/nonexistent', X509_USER_KEY='/nonexistent', TMPDIR=str(tmp_path / 'tmp2'))
    os.mkdir(env['TMPDIR'])
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 0, p.stderr
    assert os.listdir(env['TMPDIR']) == []  # the temporary PEM files are gone


def test_endpoint_host_port_forms(cenv):
    port = cenv['ALIENPY_JCENTRAL_PORT']
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:%s' % port, ALIENPY_JCENTRAL_PORT='1')
    assert run_cli(['pwd'], env=env).returncode == 0
    env = dict(cenv, ALIENPY_JCENTRAL='localhost')
    assert run_cli(['pwd'], env=env).returncode == 0


def test_connection_refused_is_107(cenv):
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:1', ALIENPY_CONNECT_TRIES='2', ALIENPY_CONNECT_TRIES_INTERVAL='0')
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'refused' in p.stderr


def _other_ca_dir(grid_state, tmp_path):
    d = tmp_path / 'otherca'
    d.mkdir()
    shutil.copy(os.path.join(grid_state['workdir'], 'pki', 'other-ca', 'ca.pem'), str(d / 'ca.pem'))
    subprocess.run([tool('openssl'), 'rehash', str(d)], check=True)
    return str(d)


def test_tls_wrong_ca(cenv, grid_state, tmp_path):
    env = dict(cenv, X509_CERT_DIR=_other_ca_dir(grid_state, tmp_path))
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'verify' in p.stderr


@pytest.mark.parametrize('name,kwargs,code,words', [
    ('othercauser', {'ca': 'other'}, 107, ''),        # a client certificate from an unknown CA
    ('expireduser', {'expired': True}, 107, 'expired'),
    ('nobody', {'cn': 'nobody'}, 129, ''),            # trusted, but not mapped to a user
])
def test_tls_refused_client_certificates(cenv, grid_state, name, kwargs, code, words):
    from testgrid import grid
    cert, key = grid.make_user_cert(grid_state['workdir'], name, **kwargs)
    p = run_cli(['pwd'], env=dict(cenv, X509_USER_CERT=cert, X509_USER_KEY=key))
    assert p.returncode == code and one_line_error(p) and words in p.stderr, p


def test_tls_hostname_mismatch(cenv, grid_state):
    from testgrid import grid
    cert, key = grid.make_host_cert(grid_state['workdir'], 'wronghost', san=('DNS:wrong.example',))
    port = grid.start_service(grid_state['workdir'], host_cert=cert, host_key=key)
    env = dict(cenv, ALIENPY_JCENTRAL='127.0.0.1:%d' % port)
    p = run_cli(['pwd'], env=env)
    assert p.returncode == 107 and one_line_error(p) and 'host name' in p.stderr, p
    env['ALIENPY_NO_VERIFY_HOSTNAME'] = '1'  # the documented switch; the chain is still verified
    assert run_cli(['pwd'], env=env).returncode == 0


def test_group_readable_key_is_refused(cenv, tmp_path):
    key = tmp_path / 'key.pem'
    shutil.copy(cenv['X509_USER_KEY'], str(key))
    os.chmod(str(key), 0o640)
    p = run_cli(['pwd'], env=dict(cenv, X509_USER_KEY=str(key)))
    assert p.returncode == 107 and one_line_error(p) and 'chmod 600' in p.stderr


# ===== credentials lifecycle, debugging, connection options =====


def test_token_lifecycle_commands(cenv):
    p = run_cli(['token-init', '-v', '2'], env=cenv)
    assert p.returncode == 0, p.stderr
    assert 'DN >>> C=CH/O=JAliEn/OU=token/CN=jalien' in p.stdout and p.stdout.count('\n') == 4
    assert os.stat(cenv['JALIEN_TOKEN_KEY']).st_mode & 0o777 == 0o400
    p = run_cli(['token-info'], env=cenv)
    assert p.returncode == 0 and 'ISSUER >>> C=CH/O=JAliEn/CN=JAliEn test grid CA' in p.stdout
    p = run_cli(['cert-info'], env=cenv)
    assert p.returncode == 0 and 'DN >>> C=CH/O=JAliEn/CN=jalien' in p.stdout
    p = run_cli(['cert-info', '/no/such.pem'], env=cenv)
    assert p.returncode == 2 and one_line_error(p)
    p = run_cli(['token-destroy'], env=cenv)
    assert p.returncode == 0 and not os.path.exists(cenv['JALIEN_TOKEN_CERT'])
    assert run_cli(['token-info'], env=cenv).returncode == 2
    p = run_cli(['token-init', '-v', 'x'], env=cenv)   # the service refuses: its error, one line
    assert p.returncode != 0 and one_line_error(p), p


def test_expiring_token_is_replaced_by_the_user_certificate(grid_state):
    env = dict(grid_state['env'])
    cert = env['JALIEN_TOKEN_CERT']
    expiry = alien.cert_info(cert).not_after
    kind, _, _ = alien.choose_credentials(env, now=expiry - 3600)
    assert kind == 'token'
    kind, _, _ = alien.choose_credentials(env, now=expiry - 100)  # < 600 s left: renew through the user cert
    assert kind == 'user'


def test_encrypted_key_asks_for_the_pass_phrase_once(cenv, tmp_path):
    key = str(tmp_path / 'enc.pem')
    subprocess.run([tool('openssl'), 'rsa', '-in', cenv['X509_USER_KEY'], '-aes256', '-passout', 'pass:s3cret!',
                    '-out', key], check=True, capture_output=True)
    os.chmod(key, 0o600)
    env = dict(cenv, X509_USER_KEY=key)
    child = pexpect.spawn(sys.executable, [ALIEN, 'pwd'], env=env, encoding='utf-8', timeout=30)
    child.expect('pass phrase')
    child.sendline('s3cret!')
    child.expect(pexpect.EOF)
    output = child.before
    child.close()
    assert child.exitstatus == 0 and '/localhost/localdomain/user/j/jalien/' in output
    assert 's3cret!' not in output  # not echoed
    child = pexpect.spawn(sys.executable, [ALIEN, 'pwd'], env=dict(env, JALIEN_TOKEN_CERT='/none'),
                          encoding='utf-8', timeout=30)
    child.expect('pass phrase')
    child.sendline('wrong')
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 107 and 'Traceback' not in child.before


def test_debug_log_is_owner_only_and_redacted(cenv, tmp_path):
    logfile = tmp_path / 'debug.log'
    logfile.write_text('old\n')
    os.chmod(str(logfile), 0o644)
    env = dict(cenv, ALIENPY_DEBUG='1', ALIENPY_DEBUG_FILE=str(logfile))
    assert run_cli(['pwd'], env=env).returncode == 0  # user cert, then a token is fetched
    text = logfile.read_text()
    assert os.stat(str(logfile)).st_mode & 0o777 == 0o600
    assert 'old' not in text and 'request {"command": "pwd"' in text
    assert '<RSA PRIVATE KEY:' in text or '<PRIVATE KEY:' in text  # the token reply, redacted
    key_body = open(cenv['JALIEN_TOKEN_KEY']).read().splitlines()[1]
    assert key_body not in text
    env['ALIENPY_DEBUG_APPEND'] = '1'
    run_cli(['whoami'], env=env)
    assert logfile.read_text().startswith(text[:100])


def test_timeconnect_and_timing(cenv, tmp_path):
    p = run_cli(['pwd'], env=dict(cenv, ALIENPY_TIMECONNECT='1'))
    assert p.returncode == 0 and re.search(r'^connected in [0-9.]+ ms$', p.stderr, re.M)
    logfile = tmp_path / 'timing.log'
    run_cli(['pwd'], env=dict(cenv, ALIENPY_TIMING='1', ALIENPY_DEBUG_FILE=str(logfile)))
    assert re.search(r'timing pwd [0-9.]+ ms', logfile.read_text())


def test_network_stack_and_stagger_switches(cenv):
    env = dict(cenv, ALIENPY_JCENTRAL='localhost')  # resolves to ::1 and 127.0.0.1; the service is v4 only
    assert run_cli(['pwd'], env=env).returncode == 0
    assert run_cli(['pwd'], env=dict(env, ALIENPY_NO_STAGGER='1')).returncode == 0
    assert run_cli(['pwd'], env=dict(env, ALIENPY_NETWORKSTACK='ipv4')).returncode == 0
    # an IPv4 literal has no IPv6 address: deterministic, whatever the resolver says of localhost
    p = run_cli(['pwd'], env=dict(cenv, ALIENPY_NETWORKSTACK='ipv6', ALIENPY_CONNECT_TRIES='1'))
    assert p.returncode == 107 and one_line_error(p) and 'resolve' in p.stderr


def loopback_black_hole():
    """(listener, fillers, port): a loopback port whose accept queue is full, so a
    further connect hangs unanswered (the kernel drops its SYNs)."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(('127.0.0.1', port))
        fillers.append(s)
    time.sleep(0.1)
    return listener, fillers, port


def test_staggered_connect_prefers_the_first_that_answers(grid_state):
    # the first address never answers; the second attempt starts 250 ms later and wins,
    # long before the connect timeout (ALIENPY_NO_STAGGER would wait for the timeout)
    listener, fillers, hole = loopback_black_hole()
    port = grid_state['service']['port']
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('127.0.0.1', hole)),
             (socket.AF_INET, socket.SOCK_STREAM, 6, '', ('127.0.0.1', port))]
    old = alien.resolve
    alien.resolve = lambda host, p, environ: list(infos)
    try:
        t0 = time.monotonic()
        s = alien.connect_tcp('x', port, {})
        elapsed = time.monotonic() - t0
        assert s.getpeername() == ('127.0.0.1', port) and 0.2 < elapsed < 2, elapsed
        s.close()
        t0 = time.monotonic()
        s = alien.connect_tcp('x', port, {'ALIENPY_NO_STAGGER': '1'}, timeout=1.0)
        assert s.getpeername() == ('127.0.0.1', port)
        assert time.monotonic() - t0 >= 0.9  # sequential: the first had to time out
        s.close()
    finally:
        alien.resolve = old
        for f in fillers + [listener]:
            f.close()


def test_alien_site_is_set_at_session_start(cenv, grid_state):
    service_log = os.path.join(grid_state['workdir'], 'jcentral.log')
    before = os.path.getsize(service_log)
    p = run_cli(['pwd'], env=dict(cenv, ALIEN_SITE='JTESTSITE'))
    assert p.returncode == 0
    with open(service_log) as f:
        f.seek(before)
        wire = f.read()  # what the service received, in order
    assert wire.index('"command": "setSite", "options": ["-nomsg", "JTESTSITE"]') < wire.index('"command": "pwd"')


# ===== proxies and the websocket-client transport =====


def test_https_proxy_tunnel(cenv, grid_state):
    proxy = ConnectProxy()
    try:
        env = dict(cenv, https_proxy='http://user:p%%40ss@127.0.0.1:%d' % proxy.port)
        p = run_cli(['pwd'], env=env)
        assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\n'), p
        assert proxy.lines == ['CONNECT 127.0.0.1:%s HTTP/1.1' % cenv['ALIENPY_JCENTRAL_PORT']]
        assert proxy.auth == ['Proxy-Authorization: Basic %s' % base64.b64encode(b'user:p@ss').decode()]
        p = run_cli(['pwd'], env=dict(env, no_proxy='127.0.0.1'))  # exempt: straight to the service
        assert p.returncode == 0 and len(proxy.lines) == 1
    finally:
        proxy.close()
    refusing = ConnectProxy(refuse=True)
    try:
        p = run_cli(['pwd'], env=dict(cenv, HTTPS_PROXY='127.0.0.1:%d' % refusing.port))
        assert p.returncode == 107 and one_line_error(p) and '403' in p.stderr, p
    finally:
        refusing.close()


def test_websocket_client_transport_missing_is_one_line(cenv):
    code = ("import sys; sys.modules['websocket'] = None; sys.path.insert(0, %r); import alien; "
            "sys.exit(alien.main(['pwd']))" % REPO)
    p = subprocess.run([sys.executable, '-c', code], env=dict(cenv, ALIENPY_TRANSPORT='websocket-client'),
                       capture_output=True, text=True)
    assert p.returncode == 107 and one_line_error(p) and 'pip install websocket-client' in p.stderr


# Certificates for the pure tests are made with openssl in tmp_path; the commands
# run against the test grid (its CA, user and token certificates).
def _ossl(*args, cwd=None):
    p = subprocess.run([tool('openssl')] + [str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _make_ca(d, name, curve=None, subj=None):
    key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:%s' % curve] if curve else ['-newkey', 'rsa:1024']
    _ossl('req', '-x509', '-new', *key, '-nodes', '-keyout', d / (name + '.key'), '-out', d / (name + '.pem'),
          '-subj', subj or '/C=CH/O=Test/CN=%s' % name, '-days', '30',
          '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
    return d / (name + '.pem'), d / (name + '.key')


def _make_leaf(d, name, ca, curve=None, subj=None, digest='sha256'):
    key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:%s' % curve] if curve else ['-newkey', 'rsa:1024']
    _ossl('req', '-new', *key, '-nodes', '-keyout', d / (name + '.key'), '-out', d / (name + '.csr'),
          '-subj', subj or '/C=CH/O=Test/CN=%s' % name)
    _ossl('x509', '-req', '-in', d / (name + '.csr'), '-CA', ca[0], '-CAkey', ca[1], '-CAcreateserial',
          '-days', '5', '-%s' % digest, '-out', d / (name + '.pem'))
    return d / (name + '.pem'), d / (name + '.key')


# ===== the credential and CA tools =====


@pytest.mark.once
def test_cert_reader_names_dates_and_openssl_hash(tmp_path):
    subj = '/DC=ch/DC=cern/OU=Org  Units/CN=Mixed   Case Name/CN=a\\+b,c'
    ca = _make_ca(tmp_path, 'ca', subj='/C=CH/O=Test/CN=Test CA')
    cert, _key = _make_leaf(tmp_path, 'leaf', ca, subj=subj)
    c = alien.read_certs(str(cert))[0]
    # the reference client's form: RFC 4514 attributes in certificate order, '/'-joined
    assert alien.dn_text(c.subject) == r'DC=ch/DC=cern/OU=Org  Units/CN=Mixed   Case Name/CN=a\+b\,c'
    assert alien.dn_text(c.issuer) == 'C=CH/O=Test/CN=Test CA'
    for path in (cert, ca[0]):
        got = alien.name_hash(alien.read_certs(str(path))[0].subject)
        assert got == _ossl('x509', '-hash', '-noout', '-in', path).strip()
    end = _ossl('x509', '-enddate', '-noout', '-in', cert).strip().split('=', 1)[1]
    assert c.not_after == ssl.cert_time_to_seconds(end)
    assert alien.read_certs(str(ca[0]))[0].is_ca() and not c.is_ca()


@pytest.mark.once
@pytest.mark.parametrize('curve,digest', [(None, 'sha256'), (None, 'sha1'), (None, 'sha512'),
                                          ('P-256', 'sha256'), ('P-384', 'sha384')])
def test_verify_chain_rsa_and_ecdsa(tmp_path, curve, digest):
    ca = _make_ca(tmp_path, 'ca', curve)
    cert, _ = _make_leaf(tmp_path, 'leaf', ca, curve, digest=digest)
    cadir = tmp_path / 'cas'
    cadir.mkdir()
    shutil.copy(str(ca[0]), str(cadir / 'ca.pem'))
    assert alien.verify_chain(str(cert), 'capath', str(cadir)) is None
    assert alien.verify_chain(str(cert), 'cafile', str(ca[0])) is None
    other = _make_ca(tmp_path, 'other', curve, subj='/C=CH/O=Test/CN=ca')   # same name, another key
    assert 'does not verify' in alien.verify_chain(str(cert), 'cafile', str(other[0]))
    assert 'not among the CAs' in alien.verify_chain(str(cert), 'cafile', str(_make_ca(tmp_path, 'x', curve)[0]))
    # a flipped bit in the signed part
    pem = cert.read_text()
    der = bytearray(base64.b64decode(''.join(pem.strip().splitlines()[1:-1])))
    der[18] ^= 1      # inside the serial number
    bad = tmp_path / 'bad.pem'
    bad.write_text('-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n' % base64.b64encode(bytes(der)).decode())
    assert alien.verify_chain(str(bad), 'capath', str(cadir)) is not None
    # later than the end of validity
    assert 'expired' in alien.verify_chain(str(cert), 'capath', str(cadir), now=time.time() + 10 * 86400)


@pytest.mark.once
def test_verify_chain_leaf_signed_by_a_non_ca_is_refused(tmp_path):
    ca = _make_ca(tmp_path, 'ca')
    mid = _make_leaf(tmp_path, 'mid', ca)      # an end-entity certificate ...
    leaf, _ = _make_leaf(tmp_path, 'leaf', mid)  # ... that signs another one
    chain = tmp_path / 'chain.pem'
    chain.write_text(leaf.read_text() + mid[0].read_text())
    assert 'not a CA' in alien.verify_chain(str(chain), 'cafile', str(ca[0]))


def _cas_repo(tmp_path, ca_pem):
    """A local git repository laid out like alisw/alien-cas: a directory per CA source."""
    repo = tmp_path / 'alien-cas'
    (repo / 'CERN').mkdir(parents=True)
    (repo / 'other').mkdir()
    shutil.copy(ca_pem, str(repo / 'CERN' / 'CERN-GridCA.pem'))
    (repo / 'CERN' / 'CERN-GridCA.signing_policy').write_text('policy\n')
    (repo / 'other' / 'README.pem').write_text('not a certificate\n')
    (repo / 'top.pem').write_text('a top-level file is not copied\n')
    git = tool('git')
    for args in (['init', '-q'], ['add', '.'],
                 ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'CAs']):
        p = subprocess.run([git] + args, cwd=str(repo), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    return str(repo)


@pytest.mark.once
def test_getcacerts_and_local_cas(cenv, grid_state, tmp_path):
    repo = _cas_repo(tmp_path, os.path.join(grid_state['env']['X509_CERT_DIR'], 'ca.pem'))
    env = dict(cenv, ALIENPY_CAS_REPO=repo)
    p = run_cli(['getCAcerts'], env=env)
    assert p.returncode == 0, p.stderr
    certs = os.path.join(cenv['HOME'], '.globus', 'certificates')
    assert '1 CA certificates in %s' % certs in p.stdout
    names = sorted(os.listdir(certs))
    h = _ossl('x509', '-hash', '-noout', '-in', os.path.join(certs, 'CERN-GridCA.pem')).strip()
    assert names == sorted(['CERN-GridCA.pem', 'CERN-GridCA.signing_policy', 'README.pem', h + '.0'])
    assert os.readlink(os.path.join(certs, h + '.0')) == 'CERN-GridCA.pem'
    # the local CAs come first: a wrong X509_CERT_DIR does not matter any more
    wrong = dict(cenv, X509_CERT_DIR=str(tmp_path))
    assert run_cli(['pwd'], env=wrong).returncode == 107
    p = run_cli(['pwd'], env=dict(wrong, ALIENPY_USE_LOCAL_CAS='1'))
    assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\n'), p.stderr
    p = run_cli(['cert-verify'], env=dict(wrong, ALIENPY_USE_LOCAL_CAS='1'))
    assert p.returncode == 0 and certs in p.stdout
    # again, into a given directory: replaces the old content in one step
    dest = tmp_path / 'dest'
    dest.mkdir()
    (dest / 'certificates').mkdir()
    (dest / 'certificates' / 'stale.pem').write_text('old')
    p = run_cli(['getCAcerts', str(dest)], env=env)
    assert p.returncode == 0 and 'export X509_CERT_DIR=%s/certificates' % dest in p.stdout
    assert not (dest / 'certificates' / 'stale.pem').exists() and sorted(os.listdir(str(dest))) == ['certificates']
    # bad input: one line, non-zero, nothing replaced
    for args, extra, code, words in [
            (['getCAcerts', str(tmp_path / 'nodir')], {}, 1, 'not a writable directory'),
            (['getCAcerts', str(dest)], {'ALIENPY_CAS_REPO': str(tmp_path / 'norepo')}, 1, 'git clone'),
            (['getCAcerts', 'a', 'b'], {}, 64, 'usage'),
            (['getCAcerts', str(dest)], {'ALIENPY_CAS_REPO': _cas_repo(tmp_path / 'e', __file__)}, 1,
             'holds no CA certificate')]:
        p = run_cli(args, env=dict(env, **extra))
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)
    assert sorted(os.listdir(str(dest / 'certificates'))) == names
    assert not [n for n in os.listdir(str(dest)) if n != 'certificates']   # no temp directory left


def test_use_local_cas_without_download_says_so(cenv, grid_state, tmp_path):
    p = run_cli(['pwd'], env=dict(cenv, ALIENPY_USE_LOCAL_CAS='1'))   # falls back to X509_CERT_DIR
    assert p.returncode == 0 and 'getCAcerts' in p.stderr and p.stderr.count('\n') == 1


def test_credential_tools_on_the_grid(cenv, grid_state):
    env = grid_state['env']
    assert run_cli(['pwd'], env=cenv).returncode == 0        # makes the token
    for line, code, out in [
            ('cert-info', 0, 'DN >>> C=CH/O=JAliEn/CN=jalien\nISSUER >>> C=CH/O=JAliEn/CN=JAliEn test grid CA\n'),
            ('token-info', 0, 'DN >>> C=CH/O=JAliEn/OU=token/CN=jalien\n'),
            ('cert-verify', 0, env['X509_USER_CERT'] + ' verifies against the CAs in ' + env['X509_CERT_DIR']),
            ('token-verify', 0, cenv['JALIEN_TOKEN_CERT'] + ' verifies'),
            ('certkey-match', 0, 'certificate %s and key %s match' % (env['X509_USER_CERT'], env['X509_USER_KEY'])),
            ('tokenkey-match', 0, 'certificate %s and key ' % cenv['JALIEN_TOKEN_CERT'])]:
        p = run_cli([line], env=cenv)
        assert p.returncode == code and p.stdout.startswith(out) and p.stderr == '', (line, p)
    p = run_cli(['cert-info'], env=cenv)
    assert re.match(r'^DN >>> .*\nISSUER >>> .*\nBEGIN >>> \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n'
                    r'EXPIRE >>> \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$', p.stdout)


@pytest.mark.once
def test_credential_tools_bad_input(cenv, grid_state, tmp_path):
    from testgrid import grid
    env = grid_state['env']
    expired, expired_key = grid.make_user_cert(_TG_DIR, 'expired13', expired=True)
    other, _ = grid.make_user_cert(_TG_DIR, 'other13', ca='other')
    enc = tmp_path / 'enc.pem'
    _ossl('rsa', '-in', env['X509_USER_KEY'], '-aes256', '-passout', 'pass:right', '-out', enc)
    os.chmod(str(enc), 0o600)
    notcert = tmp_path / 'notcert.pem'
    notcert.write_text(open(env['X509_USER_KEY']).read())
    missing = str(tmp_path / 'missing.pem')
    cases = [
        (['cert-info', missing], {}, 2, 'cannot read'),
        (['cert-info', str(notcert)], {}, 5, 'holds no PEM certificate'),
        (['cert-verify', missing], {}, 2, 'cannot read'),
        (['cert-verify', str(notcert)], {}, 5, 'holds no PEM certificate'),
        (['cert-verify', expired], {}, 1, 'expired on 2020-01-02 00:00:00'),
        (['cert-verify', other], {}, 1, 'is not among the CAs'),
        (['cert-verify'], {'X509_USER_CERT': expired}, 1, 'expired'),
        (['token-verify'], {'JALIEN_TOKEN_CERT': missing}, 2, 'cannot read'),
        (['cert-verify'], {'X509_CERT_DIR': '', 'X509_CERT_FILE': missing}, 1, 'no CA certificates'),
        (['certkey-match', env['X509_USER_CERT'], expired_key], {}, 42, 'do not match'),
        (['certkey-match', env['X509_USER_CERT'], missing], {}, 2, 'cannot read'),
        (['certkey-match', missing, env['X509_USER_KEY']], {}, 2, 'cannot read'),
        (['certkey-match', str(notcert), env['X509_USER_KEY']], {}, 5, 'holds no PEM certificate'),
        (['certkey-match', env['X509_USER_CERT'], env['X509_USER_CERT']], {}, 5, 'cannot load key'),
        (['certkey-match', 'onlyone'], {}, 64, 'usage'),
        (['tokenkey-match'], {'JALIEN_TOKEN_CERT': env['JALIEN_TOKEN_CERT'], 'JALIEN_TOKEN_KEY': env['X509_USER_KEY']},
         42, 'do not match'),
    ]
    if os.getuid() != 0:  # root reads any file
        unreadable = tmp_path / 'unreadable.pem'
        shutil.copy(env['X509_USER_CERT'], str(unreadable))
        os.chmod(str(unreadable), 0)
        cases.append((['cert-info', str(unreadable)], {}, 2, 'Permission denied'))
    for args, extra, code, words in cases:
        p = run_cli(args, env=dict(cenv, **extra))
        assert p.returncode == code and one_line_error(p) and words in p.stderr, (args, p)
    # an encrypted key: the pass phrase is asked (here on stdin, no terminal)
    p = run_cli(['certkey-match', env['X509_USER_CERT'], str(enc)], env=cenv, input='wrong\n', no_tty=True)
    assert p.returncode == 5 and one_line_error(p) and 'wrong pass phrase' in p.stderr, p
    assert 'Warning' not in p.stderr
    p = run_cli(['certkey-match', env['X509_USER_CERT'], str(enc)], env=cenv, input='', no_tty=True)
    assert p.returncode == 107 and one_line_error(p) and 'no pass phrase' in p.stderr, p
    p = run_cli(['certkey-match', env['X509_USER_CERT'], str(enc)], env=cenv, input='right\n', no_tty=True)
    assert p.returncode == 0 and 'match' in p.stdout, p


# ===== the first request right behind the upgrade =====


def test_first_request_travels_right_behind_the_upgrade_request(grid_state, henv):
    """One round trip less for every cold command (the websocket-client package
    cannot do it: with it the request follows the 101)."""
    seen = []

    def script(server, conn, index):
        seen.append(server.buffered.get(conn, b''))   # read together with the upgrade request
        server.recv(conn)
        server.reply(conn, message='early')
        time.sleep(1)
    p, _, server = hostile_run(grid_state, henv, script)
    assert (p.returncode, p.stdout) == (0, 'early\n'), p.stderr
    if OWN_TRANSPORT:
        assert seen and decode_client_frame(seen[0])[2] == b'{"command": "pwd", "options": ["-nokeys"]}'


# ===== many processes at once: one token renewal =====


@pytest.mark.once  # session and cp logic: the same with either transport
def test_token_is_fetched_after_the_first_command(cenv, grid_state):
    log = _rc_service_log(grid_state)
    p = run_cli(['pwd'], env=cenv)
    assert p.returncode == 0 and p.stderr == '' and os.path.exists(cenv['JALIEN_TOKEN_CERT'])
    wire = log()
    assert wire.index('"command": "pwd"') < wire.index('"command": "token"')


@pytest.mark.once  # session and cp logic: the same with either transport
def test_32_processes_without_a_token_ask_for_exactly_one(cenv, grid_state):
    log = _rc_service_log(grid_state)
    procs = [subprocess.Popen([sys.executable, ALIEN, 'pwd'], env=cenv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(32)]
    outs = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(o == (grid_state['home'] + '\n', '', 0) for o in outs), [o for o in outs if o[2] or o[1]][:3]
    assert log().count('recv {"command": "token"') == 1
    assert alien.make_tls_context(cenv['JALIEN_TOKEN_CERT'], cenv['JALIEN_TOKEN_KEY'], cenv)  # a matching pair


@pytest.mark.once  # session and cp logic: the same with either transport
def test_a_mismatched_token_pair_heals_on_the_next_run(cenv, grid_state):
    pki = grid_state['pki']
    for src, dst in ((pki['token_cert'], 'JALIEN_TOKEN_CERT'), (pki['user_key'], 'JALIEN_TOKEN_KEY')):
        shutil.copy(src, cenv[dst])  # another process's key next to this certificate
        os.chmod(cenv[dst], 0o400)
    p = run_cli(['pwd'], env=cenv)
    assert (p.returncode, p.stdout) == (0, grid_state['home'] + '\n'), p.stderr
    assert p.stderr.count('\n') == 1 and 'token not usable' in p.stderr and 'renewing' in p.stderr, p.stderr
    p = run_cli(['whoami -json'], env=cenv)  # healed: the new token is used, silently
    assert p.returncode == 0 and p.stderr == '' and 'OU=token' in p.stdout, p
    # an expired or unreadable pair (without a user certificate) is an error naming the reason
    shutil.copy(pki['user_key'], cenv['JALIEN_TOKEN_KEY'] + '.x')
    p = run_cli(['pwd'], env=dict(cenv, X509_USER_CERT='/nonexistent', JALIEN_TOKEN_CERT='/nonexistent/c.pem'))
    assert p.returncode == 107 and one_line_error(p), p
