"""Certificates of the local test grid, made with the ``openssl`` command.

Layout under ``<workdir>/pki``::

    openssl.cnf            extension profiles used for every signature
    ca/ca.pem ca/ca.key    the grid CA (trusted by the service)
    other-ca/...           a second CA nobody trusts (for TLS negative tests)
    certificates/          X509_CERT_DIR: ca.pem + hashed links (openssl rehash)
    host/hostcert.pem      service certificate, SAN DNS:localhost, IP:127.0.0.1
    user/usercert.pem      user ``jalien``: /C=CH/O=JAliEn/CN=jalien (key 0400)
    token/tokencert.pem    a token certificate issued at start (1 day)
    keypool/token<i>.pem   pre-generated RSA keys reused for token certificates,
                           so ``token`` answers in a few milliseconds
    keypool/extra*.pem     one spare key for the on-demand test certificates
    extra/                 certificates made on demand by make_user_cert()

User keys are traditional RSA PEM (``-----BEGIN RSA PRIVATE KEY-----``): the
reference client recognises keys by that header.
"""

import os
import random
import subprocess
import tempfile
import threading
import time

from testgrid import tools

USER_SUBJECT = '/C=CH/O=JAliEn/CN=jalien'
HOST_SUBJECT = '/C=CH/O=JAliEn/CN=localhost'      # the service's own certificate (DNS:localhost)
# Token certificates: CN carries the user name, OU marks them as tokens; the
# service maps every such DN issued by the grid CA back to the user.
TOKEN_SUBJECT = '/C=CH/O=JAliEn/OU=token/CN={user}'
CA_SUBJECT = '/C=CH/O=JAliEn/CN=JAliEn test grid CA'
OTHER_CA_SUBJECT = '/C=CH/O=Elsewhere/CN=Unknown test CA'
KEYPOOL_SIZE = 3

OPENSSL_CNF = """\
# extension profiles of the test grid (testgrid/pki.py)
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_user]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_host]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = ${ENV::TESTGRID_SAN}
# used by "openssl ca" for certificates with explicit start/end dates
[ca]
default_ca = tgca
[tgca]
dir = ${ENV::TESTGRID_CADB}
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = optional
"""


class PKIError(RuntimeError):
    pass


def _openssl(*args, env_extra=None, input_text=None):
    env = dict(os.environ)
    env.setdefault('TESTGRID_SAN', 'DNS:localhost')
    env.setdefault('TESTGRID_CADB', '/nonexistent')
    if env_extra:
        env.update(env_extra)
    try:
        proc = subprocess.run([tools.tool('openssl')] + list(args), input=input_text, capture_output=True,
                              text=True, env=env)
    except tools.MissingTool as e:
        raise PKIError(str(e)) from None
    if proc.returncode != 0:
        raise PKIError('openssl %s failed: %s' % (args[0], proc.stderr.strip()[-800:]))
    return proc.stdout


def _serial():
    # random 63-bit serials: unique enough, no serial file needed
    return '0x%x' % random.getrandbits(63)


def genkey(path):
    """Write a new 2048-bit RSA key (traditional PEM) to path with mode 0600."""
    return genkeys([path])[0]


def genkeys(paths):
    """Generate several RSA keys at once (in parallel: key generation dominates a cold start)."""
    procs = []
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.tmp'
        try:
            procs.append((path, tmp, subprocess.Popen(
                ['openssl', 'genrsa', '-traditional', '-out', tmp, '2048'],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        except FileNotFoundError:
            raise PKIError('openssl command not found: install the openssl package') from None
    errors = []
    for path, tmp, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.decode(errors='replace').strip())
            continue
        os.chmod(tmp, 0o600)
        if os.path.exists(path):
            os.chmod(path, 0o600)
        os.replace(tmp, path)
    if errors:
        raise PKIError('openssl genrsa failed: %s' % errors[0][-800:])
    return list(paths)


class PKI:
    """Paths of one grid's certificates, with the operations that make them."""

    def __init__(self, workdir, ca_subject=CA_SUBJECT, user_subject=USER_SUBJECT):
        """ca_subject, user_subject: the names of another site's CA and user (the
        gfal tests' WebDAV sites, testgrid/davs.py, each have their own)."""
        self.ca_subject, self.user_subject = ca_subject, user_subject
        self.root = os.path.join(os.path.abspath(workdir), 'pki')
        self.cnf = os.path.join(self.root, 'openssl.cnf')
        self.ca_dir = os.path.join(self.root, 'ca')
        self.ca_cert = os.path.join(self.ca_dir, 'ca.pem')
        self.ca_key = os.path.join(self.ca_dir, 'ca.key')
        self.other_ca_dir = os.path.join(self.root, 'other-ca')
        self.other_ca_cert = os.path.join(self.other_ca_dir, 'ca.pem')
        self.other_ca_key = os.path.join(self.other_ca_dir, 'ca.key')
        self.certdir = os.path.join(self.root, 'certificates')
        self.host_cert = os.path.join(self.root, 'host', 'hostcert.pem')
        self.host_key = os.path.join(self.root, 'host', 'hostkey.pem')
        self.user_cert = os.path.join(self.root, 'user', 'usercert.pem')
        self.user_key = os.path.join(self.root, 'user', 'userkey.pem')
        self.token_cert = os.path.join(self.root, 'token', 'tokencert.pem')
        self.token_key = os.path.join(self.root, 'token', 'tokenkey.pem')
        self.keypool_dir = os.path.join(self.root, 'keypool')
        self.extra_dir = os.path.join(self.root, 'extra')
        self._lock = threading.Lock()

    # -- creation -------------------------------------------------------------
    def ensure(self):
        """Create whatever is missing; existing certificates are reused (fast start)."""
        for d in (self.root, self.ca_dir, self.other_ca_dir, self.certdir, self.keypool_dir,
                  self.extra_dir, os.path.dirname(self.host_cert),
                  os.path.dirname(self.user_cert), os.path.dirname(self.token_cert)):
            os.makedirs(d, exist_ok=True)
        if not os.path.exists(self.cnf):
            with open(self.cnf, 'w') as f:
                f.write(OPENSSL_CNF)
        # all missing keys first, generated in parallel
        new_ca = not (os.path.exists(self.ca_cert) and os.path.exists(self.ca_key))
        new_other = not (os.path.exists(self.other_ca_cert) and os.path.exists(self.other_ca_key))
        want = [p for p in self.pool_paths() if not os.path.exists(p)]
        want += [k for k in (self.user_key, self.host_key) if not os.path.exists(k)]
        if new_ca:
            want.append(self.ca_key)
        if new_other:
            want.append(self.other_ca_key)
        genkeys(want)
        if new_ca:
            self._make_ca(self.ca_cert, self.ca_key, self.ca_subject)
            # everything signed by an old CA is now worthless
            for p in (self.host_cert, self.user_cert, self.token_cert):
                if os.path.exists(p):
                    os.chmod(p, 0o600)
                    os.unlink(p)
        if new_other:
            self._make_ca(self.other_ca_cert, self.other_ca_key, OTHER_CA_SUBJECT)
        self._refresh_certdir()
        if not self._valid_for(self.host_cert, 3600):
            self.make_host_cert(self.host_cert, self.host_key, ['DNS:localhost', 'IP:127.0.0.1'])
        if not self._valid_for(self.user_cert, 3600):
            self._issue(self.user_cert, self.user_key, self.user_subject, days=365)
        if not self._valid_for(self.token_cert, 3 * 3600):
            self._issue(self.token_cert, self.token_key, TOKEN_SUBJECT.format(user='jalien'),
                        days=1, key_src=self.keypool()[0])
        return self

    def _make_ca(self, cert, key, subject):
        _openssl('req', '-x509', '-new', '-key', key, '-subj', subject, '-days', '3650',
                 '-sha256', '-config', self.cnf, '-extensions', 'v3_ca', '-set_serial', _serial(),
                 '-out', cert)

    def _refresh_certdir(self):
        target = os.path.join(self.certdir, 'ca.pem')
        with open(self.ca_cert, 'rb') as f:
            want = f.read()
        have = None
        if os.path.exists(target):
            with open(target, 'rb') as f:
                have = f.read()
        links = [n for n in os.listdir(self.certdir) if n.endswith('.0')]
        if have == want and links:
            return
        for n in os.listdir(self.certdir):
            os.unlink(os.path.join(self.certdir, n))
        with open(target, 'wb') as f:
            f.write(want)
        try:
            _openssl('rehash', self.certdir)
        except PKIError:
            # an openssl without `rehash`: the hash link made by hand
            h = _openssl('x509', '-hash', '-noout', '-in', target).strip()
            os.symlink('ca.pem', os.path.join(self.certdir, h + '.0'))

    def pool_paths(self):
        return [os.path.join(self.keypool_dir, 'token%d.pem' % i) for i in range(KEYPOOL_SIZE)] \
            + [os.path.join(self.keypool_dir, 'extra.pem'),
               os.path.join(self.keypool_dir, 'extrahost.pem')]

    def keypool(self):
        """Pre-generated RSA keys for token certificates (created on first use)."""
        paths = self.pool_paths()
        genkeys([p for p in paths if not os.path.exists(p)])
        return paths[:KEYPOOL_SIZE]

    def extra_key(self, host=False):
        """The key shared by on-demand test certificates (user or host ones)."""
        p = self.pool_paths()[KEYPOOL_SIZE + (1 if host else 0)]
        if not os.path.exists(p):
            genkey(p)
        return p

    @staticmethod
    def _valid_for(cert, seconds):
        """True if cert exists and is still valid `seconds` from now."""
        if not os.path.exists(cert):
            return False
        try:
            subprocess.run([tools.tool('openssl'), 'x509', '-checkend', str(int(seconds)), '-noout',
                            '-in', cert], capture_output=True, check=True)
            return True
        except (subprocess.CalledProcessError, FileNotFoundError):
            return False

    def _install_key(self, src_key, key_path):
        with open(src_key) as f:
            text = f.read()
        _write_private(key_path, text, 0o400)

    def _issue(self, cert, key, subject, days, key_src=None, ca='main', extensions='v3_user',
               san=None):
        """Sign a certificate for `subject` valid `days` into cert. The key is `key` itself
        when key_src is None, else a copy of key_src is installed as `key` (mode 0400)."""
        ca_cert, ca_key = self._ca_pair(ca)
        os.makedirs(os.path.dirname(cert), exist_ok=True)
        env = {'TESTGRID_SAN': ','.join(san)} if san else None
        tmpcert = cert + '.new'
        _openssl('req', '-x509', '-new', '-key', key_src or key, '-subj', subject,
                 '-CA', ca_cert, '-CAkey', ca_key, '-days', str(days), '-sha256',
                 '-config', self.cnf, '-extensions', extensions, '-set_serial', _serial(),
                 '-out', tmpcert, env_extra=env)
        if os.path.exists(cert):
            os.chmod(cert, 0o600)
        os.replace(tmpcert, cert)
        os.chmod(cert, 0o644)
        if key_src is None:
            os.chmod(key, 0o400)
        else:
            self._install_key(key_src, key)
        return cert, key

    def _ca_pair(self, ca):
        if ca == 'main':
            return self.ca_cert, self.ca_key
        if ca == 'other':
            return self.other_ca_cert, self.other_ca_key
        raise ValueError("ca must be 'main' or 'other', not %r" % (ca,))

    # -- on demand -------------------------------------------------------------
    def make_host_cert(self, cert, key, san):
        """Host certificate (CN = first DNS name) with the given subjectAltName list.

        The grid's own host key is used in place; other host certificates share one
        spare key."""
        names = [s.split(':', 1)[1] for s in san if s.startswith('DNS:')]
        cn = names[0] if names else 'localhost'
        src = None if key == self.host_key else self.extra_key(host=True)
        return self._issue(cert, key, '/C=CH/O=JAliEn/CN=%s' % cn, days=365,
                           key_src=src, extensions='v3_host', san=san)

    def make_user_cert(self, name, expired=False, ca='main', cn='jalien'):
        """A user certificate (subject /C=CH/O=JAliEn/CN=<cn>) into extra/<name>*.pem.

        expired=True: validity Jan 1-2 2020 (signed with ``openssl ca``, which
        accepts explicit dates). ca='other' signs with the untrusted second CA.
        """
        cert = os.path.join(self.extra_dir, name + 'cert.pem')
        key = os.path.join(self.extra_dir, name + 'key.pem')
        subject = '/C=CH/O=JAliEn/CN=%s' % cn
        if not expired:
            return self._issue(cert, key, subject, days=30, ca=ca, key_src=self.extra_key())
        ca_cert, ca_key = self._ca_pair(ca)
        with tempfile.TemporaryDirectory(dir=self.extra_dir) as db:
            open(os.path.join(db, 'index.txt'), 'w').close()
            with open(os.path.join(db, 'serial'), 'w') as f:
                f.write('%016X\n' % random.getrandbits(63))
            csr = os.path.join(db, 'req.csr')
            self._install_key(self.extra_key(), key)
            _openssl('req', '-new', '-key', key, '-subj', subject, '-config', self.cnf,
                     '-out', csr)
            _openssl('ca', '-batch', '-config', self.cnf, '-notext', '-cert', ca_cert,
                     '-keyfile', ca_key, '-startdate', '20200101000000Z',
                     '-enddate', '20200102000000Z', '-extfile', self.cnf, '-extensions',
                     'v3_user', '-in', csr, '-out', cert, env_extra={'TESTGRID_CADB': db})
        os.chmod(cert, 0o644)
        return cert, key

    def issue_token(self, user, days=1):
        """(cert_pem, key_pem, subject, notAfter) of a fresh token certificate."""
        with self._lock:
            with tempfile.TemporaryDirectory(dir=self.extra_dir) as d:
                cert, key = os.path.join(d, 'c.pem'), os.path.join(d, 'k.pem')
                subject = TOKEN_SUBJECT.format(user=user)
                self._issue(cert, key, subject, days=days, key_src=random.choice(self.keypool()))
                with open(cert) as f:
                    cert_pem = f.read()
                with open(key) as f:
                    key_pem = f.read()
                end = _openssl('x509', '-noout', '-enddate', '-in', cert).strip()
        return cert_pem, key_pem, subject, end.split('=', 1)[1]


def _write_private(path, text, mode):
    if os.path.exists(path):
        os.chmod(path, 0o600)
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.chmod(path, mode)


if __name__ == '__main__':
    import sys
    t = time.time()
    p = PKI(sys.argv[1] if len(sys.argv) > 1 else '.testgrid').ensure()
    print('pki ready in %.2f s' % (time.time() - t), p.root)
