"""Jobs, computing elements and quotas of the test grid's JCentral stand-in.

The task queue lives in the catalogue's SQLite file (tables ``jobs`` and
``jobquota``), so the service and the Python API of grid.py (``run_job``,
``set_job_quota``) share it. Nothing runs a job here: ``submit`` leaves it
INSERTING like the captured services (no optimizer); ``run_job`` plays the
job agent of a site, moving the job through its states and writing the trace
lines a real agent leaves (``<unix time> [state     ]: ...``).

Server commands registered into jcentral.py's table by ``register()``: ``ps``,
``masterjob``, ``submit``, ``kill``, ``resubmit``, ``registerOutput``, ``top``,
``w``, ``uptime``, ``jquota``, ``fquota`` and, newer service only, ``listCEs``,
``listpartitions``, ``jobListMatch``. Their replies follow the session's dialect
(../shared/spec/jcentral-replies.md for 2021, jcentral-replies-2024.md) where the
captures show them; see testgrid/README.md for the choices where they do not.
"""

import re
import sqlite3
import time

FIRST_JOB_ID = 1888757065          # the id the captured service gave its first job

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    split INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    name TEXT NOT NULL,
    site TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    jdl TEXT NOT NULL,
    trace TEXT NOT NULL DEFAULT '',
    submitted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobquota (
    username TEXT PRIMARY KEY,
    fields TEXT NOT NULL
);
"""

# Computing elements (listCEs): the fields the reference client's getCE reads.
CES = [
    {'ceName': 'ALICE::JTestSite::FirstCE', 'host': 'firstce.jtestsite.localdomain',
     'status': 'open', 'type': 'HTCONDOR', 'maxRunning': 100, 'maxQueued': 10, 'TTL': 86400,
     'partitions': ',ALICE,'},
    {'ceName': 'ALICE::JTestSite::SecondCE', 'host': 'secondce.jtestsite.localdomain',
     'status': 'locked', 'type': 'SLURM', 'maxRunning': 50, 'maxQueued': 5, 'TTL': 43200,
     'partitions': ',ALICE,PDC08,'},
    {'ceName': 'ALICE::OtherSite::CE', 'host': 'ce.othersite.localdomain',
     'status': 'open', 'type': 'ARC', 'maxRunning': 20, 'maxQueued': 2, 'TTL': 3600,
     'partitions': ',ALICE,'},
]

ABBREV = {'KILLED': 'K', 'RUNNING': 'R', 'STARTED': 'ST', 'DONE': 'D', 'DONE_WARN': 'DW',
          'WAITING': 'W', 'OVER_WAITING': 'OW', 'INSERTING': 'I', 'SPLIT': 'S',
          'SPLITTING': 'SP', 'SAVING': 'SV', 'SAVED': 'SVD', 'ASSIGNED': 'ASG',
          'ERROR_E': 'EE', 'ERROR_IB': 'EIB', 'ERROR_V': 'EV', 'FAILED': 'FF', 'ZOMBIE': 'Z',
          'EXPIRED': 'XP'}
SHORT = {v: k for k, v in ABBREV.items()}
JQUOTA_FIELDS = ('username', 'nominalParallelJobs', 'running', 'waiting', 'totalCpuCostLast24h',
                 'totalRunningTimeLast24h', 'maxParallelJobs', 'maxUnfinishedJobs',
                 'maxTotalCpuCost', 'maxTotalRunningTime')
JQUOTA_DEFAULTS = {'nominalParallelJobs': '100', 'running': '0', 'waiting': '0',
                   'totalCpuCostLast24h': '0', 'totalRunningTimeLast24h': '0',
                   'maxParallelJobs': '200', 'maxUnfinishedJobs': '1000',
                   'maxTotalCpuCost': '7200000', 'maxTotalRunningTime': '3600000'}
FQUOTA_MAX_SIZE, FQUOTA_MAX_FILES = 100000000000, 1000000
ACTIVE = ('ASSIGNED', 'STARTED', 'RUNNING', 'SAVING', 'SAVED')      # w, uptime: "active"
FAILED = ('ERROR_E', 'ERROR_IB', 'ERROR_V', 'FAILED', 'EXPIRED', 'ZOMBIE', 'KILLED')
# The stored JDL: these attributes first, in this order (then the others as written, Type
# last), and the defaults the service adds (../shared/spec/jcentral-replies.md, ps -jdl).
JDL_ORDER = ('User', 'Executable', 'Arguments', 'Split', 'SplitArguments', 'JDLPath', 'JDLArguments', 'InputFile',
             'InputData', 'OutputFile', 'OutputArchive', 'OutputDir', 'Requirements', 'TTL', 'Price', 'MemorySize',
             'JDLVariables')


ENODATA, ENOKEY, EILSEQ = 61, 126, 84


def ensure(db):
    db.executescript(SCHEMA)


def _open(db_path):
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    ensure(db)
    return db


# -- the Python API used by grid.py (tests play the sites and the admins) ------------------

def trace_line(t, tag, text):
    return '%d [%-10s]: %s' % (t, tag, text)


def run_job(db_path, jobid, ce=CES[0]['ceName'], status='DONE', node='wn01.jtestsite.localdomain',
            start=None):
    """Play the job agent: move job `jobid` through the states up to `status` on CE `ce`,
    writing the trace a real agent leaves. Returns the trace text."""
    db = _open(db_path)
    try:
        row = db.execute('SELECT * FROM jobs WHERE id = ?', (int(jobid),)).fetchone()
        if row is None:
            raise KeyError('no job %s' % jobid)
        t = int(start if start is not None else time.time() - 600)
        lines = [row['trace']] if row['trace'] else []
        path = ['INSERTING', 'WAITING', 'ASSIGNED', 'STARTED', 'RUNNING', 'SAVING']
        final = [status] if status not in path else []
        states = path[:path.index(status) + 1] if status in path else path + final
        prev = row['status']
        for st in states[states.index(prev) + 1 if prev in states else 1:]:
            t += 5
            lines.append(trace_line(t, 'state', 'Job state transition from %s to %s' % (prev, st)))
            if st == 'ASSIGNED':
                lines.append(trace_line(t, 'trace', 'Running JAliEn JobAgent 1.9.9-testgrid on %s.' % node))
                lines.append(trace_line(t, 'trace', 'BatchId %s.%d' % (ce.split('::')[1], jobid % 100000)))
            if st == 'STARTED':
                lines.append(trace_line(t, 'trace', 'Created workdir: /tmp/alien-job-%s' % jobid))
                lines.append(trace_line(t, 'procfmt', 'time cpu% rss_kB virtual_kB'))
            if st == 'RUNNING':
                lines.append(trace_line(t, 'proc', '%d 98.5 204800 512000' % (t + 1)))
            prev = st
        trace = '\n'.join(lines)
        db.execute('UPDATE jobs SET status = ?, site = ?, node = ?, trace = ? WHERE id = ?',
                   (status, ce, node, trace, int(jobid)))
        return trace
    finally:
        db.close()


def set_job_quota(db_path, user, fields=None):
    """Give `user` a job quota (fields override JQUOTA_DEFAULTS); None removes it."""
    import json
    db = _open(db_path)
    try:
        if fields is None:
            db.execute('DELETE FROM jobquota WHERE username = ?', (user,))
        else:
            values = dict(JQUOTA_DEFAULTS, **{k: str(v) for k, v in fields.items()})
            db.execute('INSERT OR REPLACE INTO jobquota VALUES (?, ?)', (user, json.dumps(values)))
    finally:
        db.close()


# -- server commands --------------------------------------------------------------------------

def register(command, CmdError, human_size, strerror):
    """Add the job commands to jcentral.py's command table."""
    for code, text in ((ENODATA, 'No data available'), (ENOKEY, 'Required key not available'),
                       (EILSEQ, 'Invalid or incomplete multibyte or wide character'),
                       (121, 'Remote I/O error')):
        strerror.setdefault(code, text)

    def db_of(s):
        ensure(s.cat.db)
        return s.cat.db

    def job_row(j):
        status = j['status']
        prio = ('%3d' % j['priority']) if status in ('INSERTING', 'WAITING') else '___'
        return '%10s %10s  %s  %3s  %32s' % (j['owner'], j['id'], prio, ABBREV.get(status, status[:3]),
                                            j['name'])

    def known_users(s):
        return set(s.g.users.values())

    @command('listCEs')
    def c_listces(s, args):
        """listCEs [-s] [-p PARTITION] [CE name]...: the computing elements"""
        names, parts = [], []
        it = iter(args)
        for a in it:
            if a == '-p':
                parts.extend(next(it, '').split(','))
            elif a in ('-s', '-v'):
                pass
            elif a.startswith('-'):
                raise CmdError(22, '%s is not a recognized option' % a.lstrip('-'))
            else:
                names.append(a)
        ces = [ce for ce in CES if (not names or ce['ceName'] in names)
               and all(p in ce['partitions'].split(',') for p in parts if p)]
        width = max(len(ce['ceName']) for ce in CES)
        out = []
        for i, ce in enumerate(sorted(ces, key=lambda c: c['ceName'])):
            line = '%s\t%4s\t\t%3d\t\t%3d\t%3d\t%8s\t%8s' % (
                ce['ceName'].rjust(width), ce['status'], ce['maxRunning'], ce['maxQueued'],
                ce['TTL'], ce['type'], ce['host'])
            if i == 0:
                line = 'CE Listing \n%s\t%-4s\tMax running\t Max queued\t  TTL\t    Type\t\tHost\n%s' % (
                    'CE name'.rjust(width), 'Status', line)
            r = {k: str(v) for k, v in ce.items()}
            r['message'] = line
            out.append(r)
        return out

    def select_jobs(s, opts):
        db = db_of(s)
        rows = [dict(r) for r in db.execute('SELECT * FROM jobs ORDER BY id')]
        users = opts.get('u')
        if opts.get('a') or opts.get('j'):
            users = None
        elif users is None:
            users = {s.user}
        out = []
        for j in rows:
            if users is not None and j['owner'] not in users:
                continue
            if opts.get('s') is not None and j['site'] not in opts['s']:
                continue
            if opts.get('j') is not None and j['id'] not in opts['j']:
                continue
            if opts.get('m') is not None and j['split'] not in opts['m']:
                continue
            if opts.get('M') and j['split'] != 0:
                continue
            if opts.get('f') is not None and j['status'] not in opts['f']:
                continue
            out.append(j)
        if opts.get('l'):
            out = out[:opts['l']]
        return out

    def ids(value, what):
        out = set()
        for x in value.split(','):
            if x.strip().isdigit():
                out.add(int(x))
        return out

    def waiting(s):
        """Job states counted as waiting: the newer service counts those still being inserted."""
        return ('WAITING',) if s.dialect == '2021' else ('WAITING', 'INSERTING')

    @command('ps')
    def c_ps(s, args):
        """ps [-options]"""
        old = s.dialect == '2021'
        opts = {}
        trace_id = jdl_id = None
        flag_trace = flag_jdl = False
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            name = a[1:] if a.startswith('-') else None
            nxt = args[i] if i < len(args) else None
            if name in ('trace', 'jdl') and old:
                # 2021: -trace ID / -jdl ID, the next argument taken as the ID whatever it is
                # (so `ps -j ID -trace -jdl`, the newer form, is refused with 22)
                if nxt is None:
                    raise CmdError(22, 'Option %s requires an argument' % name)
                i += 1
                if not re.match(r'^[0-9]+$', nxt):
                    raise CmdError(22, "Cannot parse argument '%s' of option %s" % (nxt, name))
                if name == 'trace':
                    trace_id = int(nxt)
                else:
                    jdl_id = int(nxt)
            elif name in ('trace', 'jdl'):      # newer service: flags that add fields to the rows
                flag_trace = flag_trace or name == 'trace'
                flag_jdl = flag_jdl or name == 'jdl'
            elif name in ('u', 's', 'n', 'm', 'o', 'j', 'l', 'f', 'F') or (name == 't' and not old):
                if nxt is None:
                    raise CmdError(22, 'Option %s requires an argument' % name)
                i += 1
                if name in ('u', 's'):
                    opts[name] = set(nxt.split(','))
                elif name in ('j', 'm'):
                    opts[name] = opts.get(name, set()) | ids(nxt, name)
                elif name == 'l':
                    if not re.match(r'^-?[0-9]+$', nxt):
                        raise CmdError(22, "Cannot parse argument '%s' of option l" % nxt)
                    opts['l'] = max(0, int(nxt))
                elif name == 'f':
                    opts['f'] = {SHORT.get(x, x) for x in re.split(r'[,\s]+', nxt) if x}
            elif name in ('M', 'X', 'A', 'W', 'E', 'a', 'b', 'id', 'Fl', 'L') or (name == 'q' and not old):
                opts[name] = True
            elif name is None and not old and re.match(r'^[0-9]+(,[0-9]+)*$', a):   # newer: job IDs
                opts['j'] = opts.get('j', set()) | ids(a, 'j')
            else:
                raise CmdError(22, '%s is not a recognized option' % (name if name is not None else a))
        db = db_of(s)
        if jdl_id is not None:
            j = db.execute('SELECT jdl FROM jobs WHERE id = ?', (jdl_id,)).fetchone()
            if j is None:
                return []
            return [{'message': j['jdl'].rstrip('\n'), 'id': str(jdl_id), 'jdl': j['jdl']}]
        if trace_id is not None:
            j = db.execute('SELECT trace FROM jobs WHERE id = ?', (trace_id,)).fetchone()
            if j is None or not j['trace'].strip():
                raise CmdError(ENODATA, 'No trace information for %d' % trace_id)
            return [{'message': j['trace'], 'id': str(trace_id), 'trace': j['trace']}]
        out = []
        blank = ' ' if old else ''      # the 2021 service's keys carry a trailing blank
        for j in select_jobs(s, opts):
            r = {'owner' + blank: j['owner'], 'id' + blank: str(j['id']), 'split': str(j['split']),
                 'priority': str(j['priority']), 'status': j['status'], 'name': j['name']}
            msg = [] if flag_trace or flag_jdl else [str(j['id']) if opts.get('id') else job_row(j)]
            if flag_trace:
                if j['trace'].strip():
                    r['trace'] = j['trace']
                    msg.append(j['trace'])
                else:
                    s.pending_error = (ENODATA, 'No trace information for %d' % j['id'])
            if flag_jdl:
                r['jdl'] = j['jdl']
                msg.append(j['jdl'].rstrip('\n'))
            r['message'] = '\n'.join(msg)
            out.append(r)
        return out

    def job_of(s, text):
        j = db_of(s).execute('SELECT * FROM jobs WHERE id = ?', (int(text),)).fetchone() \
            if re.match(r'^[0-9]+$', text) else None
        return dict(j) if j is not None else None

    @command('masterjob')
    def c_masterjob(s, args):
        """masterjob <jobId> [-options]"""
        if not args or not re.match(r'^[0-9]+(,[0-9]+)*$', args[0]):
            raise CmdError(22, 'masterjob needs a job ID')
        out = []
        for jobid in args[0].split(',') if s.dialect != '2021' else [args[0]]:
            j = job_of(s, jobid)
            if j is None:
                if s.dialect != '2021':     # the newer service says so, with exit code 0
                    s.pending_error = (0, 'Could not load the details of %s\n' % jobid)
                continue
            subs = db_of(s).execute('SELECT id, status FROM jobs WHERE split = ?', (j['id'],)).fetchall()
            lines = ['Checking the masterjob %d' % j['id'], 'The job %d is in status: %s' % (j['id'], j['status']),
                     'It has the following subjobs:']
            by_status = {}
            for sub in subs:
                by_status.setdefault(sub['status'], []).append(sub['id'])
            for st in sorted(by_status):
                lines.append('\t\tSubjobs in %s: %d' % (st, len(by_status[st])))
                if '-printid' in args:
                    lines.append('\t\t ids: %s' % ','.join(str(x) for x in by_status[st]))
            lines += ['', 'In total, there are %d subjobs' % len(subs)]
            out.append({'message': '\n'.join(lines)})
        return out

    @command('top')
    def c_top(s, args):
        """top: not implemented by the services"""
        raise CmdError(38, 'not implemented yet')

    def job_ids(args):
        return [int(x) for a in args for x in a.split(',') if x.strip().isdigit()]

    @command('kill')
    def c_kill(s, args):
        """kill <jobId>[,<jobId>]...: kill your jobs (unknown IDs are ignored, as by the services)"""
        db = db_of(s)
        for jobid in job_ids(args):
            db.execute("UPDATE jobs SET status = 'KILLED' WHERE id = ? AND owner = ? AND status NOT IN (%s)"
                       % ','.join('?' * len(FAILED + ('DONE',))), (jobid, s.user) + FAILED + ('DONE',))
        return []

    @command('resubmit')
    def c_resubmit(s, args):
        """resubmit <jobId>...: put failed jobs of yours back into the queue"""
        out = []
        for jobid in (args or ['']):
            j = job_of(s, jobid)
            if j is None or j['owner'] != s.user or j['status'] not in FAILED:
                raise CmdError(121, 'Problem with the resubmit request' + (jobid if s.dialect == '2021'
                                                                            else ' of job ID %s' % jobid))
            db_of(s).execute("UPDATE jobs SET status = 'WAITING' WHERE id = ?", (j['id'],))
            out.append({'message': 'Resubmitting %d' % j['id']})
        return out

    @command('registerOutput')
    def c_registeroutput(s, args):
        """registerOutput <jobId>: register the output of a failed job (nothing to register here)"""
        j = job_of(s, args[0]) if args else None
        if j is None:
            raise CmdError(3, 'Job ID %s was not found in the task queue' % (args[0] if args else ''))
        if re.search(r'(?m)^Split\s*=', j['jdl']):
            raise CmdError(22, 'Job ID %d is a masterjob, you can only register the output of a failed (sub)job'
                           % j['id'])
        if j['status'] not in FAILED:
            raise CmdError(22, 'Job ID %d is in state %s, you can only register the output of a failed (sub)job'
                           % (j['id'], j['status']))
        return []

    def counts(s):
        """{owner: [active, waiting]} of the queue."""
        out = {}
        for j in db_of(s).execute('SELECT owner, status FROM jobs'):
            c = out.setdefault(j['owner'], [0, 0])
            c[0] += j['status'] in ACTIVE
            c[1] += j['status'] in waiting(s)
        return {u: c for u, c in out.items() if any(c)}

    @command('w')
    def c_w(s, args):
        """w [-a] [-w] [-r]: active and waiting jobs per account (the options: newer service)"""
        for a in args:      # accepted, and the same table here
            if s.dialect == '2021' or a not in ('-a', '-w', '-r'):
                raise CmdError(22, '%s is not a recognized option' % a.lstrip('-'))
        sep = '-' * 26 + '+' + '-' * 14 + '+' + '-' * 14
        lines = ['     Account name         |  Active jobs | Waiting jobs', sep]
        by_user = counts(s)
        lines += ['%3d. %-21s|%13d |%13d' % (n, u, a, w) for n, (u, (a, w)) in enumerate(sorted(by_user.items()), 1)]
        lines += [sep, '     %-21s|%13d |%13d' % ('TOTAL', sum(c[0] for c in by_user.values()),
                                                   sum(c[1] for c in by_user.values()))]
        text = '\n'.join(lines)
        return [{'value': text + '\n', 'message': text}]

    @command('uptime')
    def c_uptime(s, args):
        """uptime: running and waiting jobs, active users"""
        by_user = counts(s)
        run, wait = sum(c[0] for c in by_user.values()), sum(c[1] for c in by_user.values())
        return [{'running jobs': ' %d' % run, 'waiting jobs': ' %d' % wait, 'active users': ' %d' % len(by_user),
                 'message': '%d running jobs, %d waiting jobs, %d active users' % (run, wait, len(by_user))}]

    @command('listpartitions')
    def c_listpartitions(s, args):
        """listpartitions [partition]...: the partitions and their CEs (newer service)"""
        parts = {}
        for ce in CES:
            for p in ce['partitions'].strip(',').split(','):
                parts.setdefault(p, []).append(ce['ceName'])
        return [{'message': '%s\t%s' % (p, ', '.join(ces)), 'partitionName': p, 'CEs': ','.join(ces)}
                for p, ces in sorted(parts.items()) if not args or p in args]

    @command('jobListMatch')
    def c_joblistmatch(s, args):
        """jobListMatch <jobId>: the CEs that could run a waiting job (newer service)"""
        j = job_of(s, args[0]) if args else None
        if j is None:
            raise CmdError(2, 'No such job: %s' % (args[0] if args else ''))
        ces = [ce['ceName'] for ce in CES if ce['status'] == 'open']
        return [{'message': 'The job %d can run on: %s' % (j['id'], ', '.join(ces)), 'CEs': ','.join(ces)}]

    def jdl_attributes(text):
        """[(name, value text)] of a JDL ('Name = value;' statements, values kept verbatim)."""
        text = re.sub(r'(?m)^\s*#.*$', '', text)
        out = []
        for stmt in re.split(r';\s*(?=[A-Za-z_][A-Za-z0-9_]*\s*=|$)', text):
            stmt = stmt.strip()
            if not stmt:
                continue
            name, eq, value = stmt.partition('=')
            if not eq or not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', name.strip()):
                raise ValueError('cannot parse the JDL near %r' % stmt[:40])
            out.append((name.strip(), value.strip()))
        return out

    def read_lfn(s, lfn):
        e = s.cat.get(lfn)
        return s.read_text(e) if e is not None and e['type'] == 'f' else None

    def stored_jdl(s, attrs, exe, lfn):
        """The JDL as the task queue keeps it: User, the absolute Executable, JDLPath, the
        service's defaults (Requirements from TTL and Price, Price 1.0, MemorySize 8GB,
        CPUCores 1 and its JDLVariables entry), in the service's order, Type last."""
        values = [(k, v) for k, v in attrs if k.lower() not in ('user', 'executable', 'jdlpath')]
        values += [('User', '"%s"' % s.user), ('Executable', '"%s"' % exe), ('JDLPath', '"%s"' % lfn)]
        have = dict((k.lower(), v) for k, v in values)
        price = have.get('price', '1.0')
        req = ['( %s )' % have['requirements']] if 'requirements' in have else []
        if 'ttl' in have:
            req.append('( other.TTL > %s )' % have['ttl'])
        req.append('( other.Price <= %s )' % re.sub(r'\.0+$', '', price))
        values = [(k, v) for k, v in values if k.lower() not in ('requirements', 'jdlvariables')]
        variables = re.findall(r'"([^"]*)"', have.get('jdlvariables', ''))
        variables += ['CPUCores'] if 'CPUCores' not in variables else []
        values += [('Requirements', ' && '.join(req)), ('JDLVariables', '{\n%s\n}' % ',\n'.join(
            '"%s"' % x for x in variables))]
        for k, v in (('Price', '1.0'), ('MemorySize', '"8GB"'), ('CPUCores', '"1"'), ('Type', '"Job"')):
            if k.lower() not in have:
                values.append((k, v))
        order = [x.lower() for x in JDL_ORDER]

        def rank(item):
            name = item[0].lower()
            return (2, 0) if name == 'type' else (0, order.index(name)) if name in order else (1, 0)
        return ''.join('%s = %s;\n' % kv for kv in sorted(values, key=rank))

    @command('submit')
    def c_submit(s, args):
        """submit <URL>"""
        if not args:
            raise CmdError(22, 'submit needs a JDL')
        lfn = s.resolve(args[0])
        text = read_lfn(s, lfn)
        if text is None:
            raise CmdError(2, 'Could not read the JDL %s' % lfn,
                           [{'message': 'Submitting %s' % lfn}])
        for k, v in enumerate(args[1:], 1):
            text = text.replace('$%d' % k, v)
        try:
            attrs = jdl_attributes(text)
        except ValueError as e:
            raise CmdError(121, 'Task queue rejected %s due to:\n  %s' % (lfn, e),
                           [{'message': 'Submitting %s' % lfn}])
        exe = dict((k.lower(), v) for k, v in attrs).get('executable', '').strip('"')
        if exe.startswith('~'):
            exe = s.home.rstrip('/') + exe[1:]
        elif exe and not exe.startswith('/'):
            exe = s.home + 'bin/' + exe
        e = s.cat.get(exe) if exe else None
        if e is None or e['type'] != 'f':
            raise CmdError(121, 'Task queue rejected %s due to:\n  The Executable name you indicated '
                                '(%s) cannot be located in any standard PATH'
                           % (lfn, dict((k.lower(), v) for k, v in attrs).get('executable', '').strip('"')),
                           [{'message': 'Submitting %s' % lfn}])
        jdl = stored_jdl(s, attrs, exe, lfn)
        db = db_of(s)
        last = db.execute('SELECT MAX(id) FROM jobs').fetchone()[0]
        jobid = max(FIRST_JOB_ID, (last or 0) + 1)
        db.execute('INSERT INTO jobs(id, owner, status, name, jdl, submitted) VALUES (?,?,?,?,?,?)',
                   (jobid, s.user, 'INSERTING', exe.rsplit('/', 1)[-1], jdl, int(time.time())))
        return [{'message': 'Submitting %s\nYour new job ID is %s' % (lfn, s.colour('34', str(jobid))),
                 'jobId': str(jobid)}]

    def quota_users(s, args, what):
        if not args or args[0] not in ('list', 'set'):
            raise CmdError(22, 'Wrong command passed: %s' % (args[0] if args else ''))
        if args[0] == 'set':
            raise CmdError(1, 'Only administrators can set %s quotas' % what)
        if what == 'job' and s.dialect == '2021' and len(args) > 2:   # several users: newer service
            raise CmdError(22, 'Only one user name is accepted')
        users = []
        for u in args[1:]:
            if u not in known_users(s):
                raise CmdError(ENOKEY, 'No such account name: %s' % u)
            users.append(u)
        return users or [s.user]

    @command('jquota')
    def c_jquota(s, args):
        """jquota list [username]*"""
        import json
        out = []
        for u in quota_users(s, args, 'job'):
            row = db_of(s).execute('SELECT fields FROM jobquota WHERE username = ?', (u,)).fetchone()
            if row is None:
                s.pending_error = (ENODATA, 'No jobs quota found for user %s' % u)
                continue
            q = json.loads(row['fields'])
            r = {'username': u}
            r.update((k, q[k]) for k in JQUOTA_FIELDS[1:])
            r['message'] = ('JQuota: user: %s\nunfinished jobs\t: %s + %s / %s\nCPU cost (24h)\t: %s / %s s\n'
                            'running time (24h)\t: %s / %s s\nparallel jobs\t: %s / %s'
                            % (u, q['running'], q['waiting'], q['maxUnfinishedJobs'], q['totalCpuCostLast24h'],
                               q['maxTotalCpuCost'], q['totalRunningTimeLast24h'], q['maxTotalRunningTime'],
                               q['nominalParallelJobs'], q['maxParallelJobs']))
            out.append(r)
        return out

    @command('fquota')
    def c_fquota(s, args):
        """fquota list [username]*"""
        out = []
        for u in quota_users(s, args, 'file'):
            size, count = s.cat.db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM entries WHERE owner = ? AND type = 'f'",
                (u,)).fetchone()
            out.append({'username': u, 'totalSize': str(size), 'maxTotalSize': str(FQUOTA_MAX_SIZE),
                        'nbFiles': str(count), 'maxNbFiles': str(FQUOTA_MAX_FILES),
                        'message': 'FQuota: user: %s\ntotalSize\t: %s\nmaxTotalSize\t: %s\n'
                                   'tmpIncreasedTotalSize\t: 0 B\nnbFiles\t: %d\nmaxNbFiles\t: %d\n'
                                   'tmpIncreasedNbFiles\t: 0'
                                   % (u, human_size(size), human_size(FQUOTA_MAX_SIZE), count,
                                      FQUOTA_MAX_FILES)})
        return out
