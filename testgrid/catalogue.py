"""SQLite file catalogue of the test grid (shared by the service and grid.populate).

One row per LFN in ``entries``; directory LFNs end with ``/``. ``lfn`` is
UNIQUE, so its index serves exact look-ups and subtree range scans
(everything below ``/a/b/`` lies in ``['/a/b/', '/a/b0')`` because ``0``
follows ``/``); ``(parent, name)`` serves directory listings. Replicas are
rows of ``replicas`` keyed by the file GUID; upload bookings made by
``access write-once`` wait in ``bookings`` until ``commit`` turns them into
an entry plus a replica.

A member of a zip archive (the grid keeps many small job outputs inside
``root_archive.zip``) is an entry of its own (size and md5 of the member) whose
only replica is a link to the archive: SE ``ArchiveMember``, pfn
``guid:///<archive guid>?ZIP=<member>``. ``resolve_links`` turns such a link into
the archive's own replicas.
"""

import hashlib
import posixpath
import re
import sqlite3
import time
import uuid

HOME_BASE = '/localhost/localdomain/user/'
ADMIN = 'admin'
EMPTY_MD5 = 'd41d8cd98f00b204e9800998ecf8427e'
ARCHIVE_SE = 'ArchiveMember'
_ARCHIVE_LINK = re.compile(r'^guid:///([^?]+)\?ZIP=(.+)$')

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    lfn TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    owner TEXT NOT NULL,
    gowner TEXT NOT NULL,
    perm TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    md5 TEXT NOT NULL DEFAULT '',
    ctime INTEGER NOT NULL,
    guid TEXT NOT NULL DEFAULT '',
    jobid TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS entries_parent ON entries(parent, name);
CREATE INDEX IF NOT EXISTS entries_guid ON entries(guid);
CREATE TABLE IF NOT EXISTS replicas (
    guid TEXT NOT NULL,
    se TEXT NOT NULL,
    pfn TEXT NOT NULL,
    PRIMARY KEY (guid, se)
);
CREATE TABLE IF NOT EXISTS bookings (
    envelope TEXT PRIMARY KEY,
    lfn TEXT NOT NULL,
    guid TEXT NOT NULL,
    se TEXT NOT NULL,
    pfn TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    ctime INTEGER NOT NULL
);
"""

COLUMNS = ('id', 'parent', 'name', 'lfn', 'type', 'owner', 'gowner', 'perm', 'size', 'md5',
           'ctime', 'guid', 'jobid')


def now_ms():
    return int(time.time() * 1000)


def home_of(user):
    return '%s%s/%s/' % (HOME_BASE, user[0], user)


def subtree_bounds(dir_lfn):
    """(low, high) so that low <= lfn < high selects dir_lfn and everything below."""
    assert dir_lfn.endswith('/')
    return dir_lfn, dir_lfn[:-1] + '0'


class Catalogue:
    def __init__(self, path):
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                  isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute('PRAGMA journal_mode=WAL')
        self.db.execute('PRAGMA synchronous=NORMAL')
        self.db.executescript(SCHEMA)

    def close(self):
        self.db.close()

    # -- setup ----------------------------------------------------------------
    def init_tree(self, users=('jalien',)):
        """Root, /localhost/localdomain/user/<x>/ (admin) and each user's home."""
        with self.tx():
            if self.get('/') is None:
                self.db.execute(
                    "INSERT INTO entries(id, parent, name, lfn, type, owner, gowner, perm, ctime)"
                    " VALUES (1, 0, '', '/', 'd', ?, ?, '755', ?)", (ADMIN, ADMIN, now_ms()))
            for user in users:
                home = home_of(user)
                self.mkdirs(posixpath.dirname(home.rstrip('/')) + '/', ADMIN)
                self.mkdirs(home, user)

    def tx(self):
        return _Tx(self.db)

    # -- look-ups ---------------------------------------------------------------
    def get(self, path):
        """Entry dict for path (with or without trailing '/'), or None."""
        if path == '/':
            keys = ('/',)
        else:
            p = path.rstrip('/')
            keys = (p, p + '/')
        row = self.db.execute('SELECT * FROM entries WHERE lfn IN (?, ?) ORDER BY lfn LIMIT 1',
                              (keys[0], keys[-1])).fetchone()
        return dict(row) if row else None

    def children(self, entry, as_dict=False):
        cur = self.db.cursor()
        if as_dict:
            cur.row_factory = _dict_row
        cur.execute('SELECT * FROM entries WHERE parent = ? ORDER BY name', (entry['id'],))
        return cur

    def has_children(self, entry):
        return self.db.execute('SELECT 1 FROM entries WHERE parent = ? LIMIT 1',
                               (entry['id'],)).fetchone() is not None

    def subtree(self, dir_lfn, order=True):
        lo, hi = subtree_bounds(dir_lfn)
        sql = 'SELECT * FROM entries WHERE lfn > ? AND lfn < ?'
        if order:
            sql += ' ORDER BY lfn'
        cur = self.db.cursor()
        cur.row_factory = None        # plain tuples in COLUMNS order: fastest for big scans
        return cur.execute(sql, (lo, hi))

    def replicas(self, guid):
        if not guid:
            return []
        return [dict(r) for r in self.db.execute(
            'SELECT * FROM replicas WHERE guid = ? ORDER BY rowid', (guid,))]

    def resolve_links(self, reps):
        """Replicas with every archive link replaced by the archive's replicas;
        each row gets 'member' (the member's name inside the archive, or '')."""
        out = []
        for r in reps:
            m = _ARCHIVE_LINK.match(r['pfn'])
            if m is None:
                out.append(dict(r, member=''))
            else:
                out.extend(dict(a, member=m.group(2)) for a in self.replicas(m.group(1)))
        return out

    # -- changes (callers wrap them in tx()) -------------------------------------
    def add_archive_members(self, archive, members, owner):
        """Register members [(name, size, md5)] of the archive entry as files next
        to it (a name with '/' below it), each with a fresh GUID and one replica:
        the link to the archive. Returns their LFNs."""
        base = posixpath.dirname(archive['lfn']) + '/'
        lfns = []
        for name, size, md5 in members:
            lfn = base + name
            if self.get(lfn) is not None:
                raise ValueError('%s exists already' % lfn)
            parent = self.mkdirs(posixpath.dirname(lfn) + '/', owner)
            guid = str(uuid.uuid1())
            self.insert(parent, lfn, 'f', owner, size=size, md5=md5, guid=guid)
            self.db.execute('INSERT INTO replicas VALUES (?,?,?)',
                            (guid, ARCHIVE_SE, 'guid:///%s?ZIP=%s' % (archive['guid'], name)))
            lfns.append(lfn)
        return lfns

    def insert(self, parent, lfn, type_, owner, perm='755', size=0, md5='', guid='',
               ctime=None, jobid=''):
        name = posixpath.basename(lfn.rstrip('/'))
        self.db.execute(
            'INSERT INTO entries(parent, name, lfn, type, owner, gowner, perm, size, md5, ctime,'
            ' guid, jobid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)',
            (parent['id'], name, lfn, type_, owner, owner, perm, size, md5,
             ctime if ctime is not None else now_ms(), guid, jobid))
        return self.get(lfn)

    def mkdirs(self, dir_lfn, owner):
        """Create dir_lfn and missing parents (owned by owner); return the entry."""
        parts = [p for p in dir_lfn.strip('/').split('/') if p]
        cur = self.get('/')
        path = '/'
        for part in parts:
            path += part + '/'
            nxt = self.get(path)
            if nxt is None:
                nxt = self.insert(cur, path, 'd', owner)
            cur = nxt
        return cur

    def delete_subtree(self, entry):
        """Delete entry (and everything below a directory); return GUIDs removed."""
        guids = []
        if entry['type'] == 'd':
            lo, hi = subtree_bounds(entry['lfn'])
            guids = [r[0] for r in self.db.execute(
                "SELECT guid FROM entries WHERE lfn > ? AND lfn < ? AND guid != ''", (lo, hi))]
            self.db.execute('DELETE FROM entries WHERE lfn > ? AND lfn < ?', (lo, hi))
        elif entry['guid']:
            guids.append(entry['guid'])
        self.db.execute('DELETE FROM entries WHERE id = ?', (entry['id'],))
        orphan = []
        for g in guids:
            if self.db.execute('SELECT 1 FROM entries WHERE guid = ? LIMIT 1', (g,)).fetchone():
                continue
            orphan.extend(self.replicas(g))
            self.db.execute('DELETE FROM replicas WHERE guid = ?', (g,))
        return orphan

    def move(self, entry, new_parent, new_lfn):
        name = posixpath.basename(new_lfn.rstrip('/'))
        if entry['type'] == 'd':
            old = entry['lfn']
            lo, hi = subtree_bounds(old)
            self.db.execute('UPDATE entries SET lfn = ? || substr(lfn, ?)'
                            ' WHERE lfn > ? AND lfn < ?', (new_lfn, len(old) + 1, lo, hi))
        self.db.execute('UPDATE entries SET lfn = ?, name = ?, parent = ? WHERE id = ?',
                        (new_lfn, name, new_parent['id'], entry['id']))


def _dict_row(cursor, row):
    return dict(zip(COLUMNS, row))


class _Tx:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute('BEGIN IMMEDIATE')
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute('COMMIT' if exc_type is None else 'ROLLBACK')
        return False


def populate(db_path, dir_lfn, n, owner='jalien', size=1024, prefix='file_', ext='.dat'):
    """Insert n file entries <dir>/<prefix><i><ext> directly (no replicas); return the dir."""
    cat = Catalogue(db_path)
    try:
        if not dir_lfn.endswith('/'):
            dir_lfn += '/'
        t = now_ms()
        with cat.tx():
            d = cat.mkdirs(dir_lfn, owner)
            width = max(6, len(str(n)))
            rows = []
            for i in range(n):
                name = '%s%0*d%s' % (prefix, width, i, ext)
                guid = str(uuid.uuid1())
                md5 = hashlib.md5(name.encode()).hexdigest()
                rows.append((d['id'], name, dir_lfn + name, 'f', owner, owner, '755', size, md5,
                             t, guid, ''))
            cat.db.executemany(
                'INSERT OR IGNORE INTO entries(parent, name, lfn, type, owner, gowner, perm, size,'
                ' md5, ctime, guid, jobid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)', rows)
        return dir_lfn
    finally:
        cat.close()
