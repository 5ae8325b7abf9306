"""Long fuzz run of alien.py's parsers of untrusted input. Every input must end
in data or in the documented error (AlienError; GfalJobError for gfal jobs),
never in another exception (RecursionError, TypeError, UnicodeError, ...).

    python3 fuzz/fuzz_parsers.py --count 1000000 [--seed N] [--target NAME ...]

Targets (each gets --count inputs):
  reply     parse_reply + reply_to_result + what the front end does with a reply:
            session state, printed text, terminal sanitising, -json output
            (nesting, huge numbers, unicode, odd metadata/results, every type)
  gfal      the gfal job parser (JSON text -> validated job) and its error line
  cp_args   parse_cp_args and the option values it leads to (-name, -select,
            -glob, times), direction and -dst targets of the positionals
  cp_input  parse_input_lines (cp -input FILE) and the pairs' specifiers
  specs     split_specs: LFN@disk:N,SE,!SE
  splitter  the command-line splitter: split_chain, split_pipe, tokenize, and
            completion's current_word
  aliases   parse_settings (~/.alienpy_aliases) + expand_aliases of a line
Inputs are generated from a grammar of each format and mutated (bit flips,
insertions of quotes, escapes, brackets, control characters, surrogates,
non-ASCII digits; truncation, duplication, splicing)."""
import argparse
import io
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import alien  # noqa: E402

SPICE = ['"', "'", '\\', ';', '|', '!', '@', ',', ':', '::', '!', '=', '#', '//', '[', ']', '{', '}',
         '\n', '\r', '\t', '\x00', '\x1b', '\x1b[31m', '\x7f', '\x9b', '\u2028', '\ud800', '\udcff',
         '¹', '٣', '½', 'é', '☃', ' ', '  ', '-', '--', '*', '?', '..', '.', '/', '~', '%ALIEN', '$', '`',
         '0', '-1', '1e999', '99999999999999999999999999', 'NaN', 'null', 'true', '\\u0000', '\\ud800', '\\"']


class TTY(io.StringIO):
    def isatty(self):
        return True


TTY_STREAM, PIPE_STREAM = TTY(), io.StringIO()


def mutate(rng, text, rounds=None):
    s = list(text)
    for _ in range(rounds or rng.randint(1, 4)):
        r = rng.random()
        i = rng.randint(0, len(s))
        if r < 0.4 or not s:
            s[i:i] = list(rng.choice(SPICE))
        elif r < 0.55:
            del s[i:i + rng.randint(1, 8)]
        elif r < 0.65:
            s[i:i] = s[max(0, i - 16):i] * rng.randint(1, 4)
        elif r < 0.75:
            del s[i:]
        elif r < 0.9 and s:
            j = rng.randrange(len(s))
            s[j] = chr(ord(s[j]) ^ (1 << rng.randrange(7)))
        else:
            s[i:i] = [chr(rng.randint(0, 0x2fff))]
    return ''.join(s)


def word(rng):
    r = rng.random()
    if r < 0.5:
        return ''.join(rng.choice('abcXYZ019_.-/') for _ in range(rng.randint(0, 8)))
    if r < 0.8:
        return rng.choice(SPICE)
    return mutate(rng, rng.choice(['file.root', '/alice/data/x', 'a b', 'disk:2']))


# ---- reply -------------------------------------------------------------------

_POOL_RNG = random.Random(0)
SCALARS = [None, True, False, 0, -1, 1.5, -0.0, 1e308, '', 'x' * 50] + \
    [10 ** _POOL_RNG.randint(0, 400) for _ in range(20)] + [str(_POOL_RNG.randint(-300, 300)) for _ in range(20)] + \
    [word(_POOL_RNG) for _ in range(400)]


def pick(rng, seq):
    """rng.choice at a third of its cost (the reply generator is the hot loop)."""
    return seq[int(rng.random() * len(seq))]


KEYS = SCALARS[-400:]


def any_value(rng, depth=0):
    r = rng.random()
    if depth < 4 and r < 0.15:
        return [any_value(rng, depth + 1) for _ in range(int(r * 20))]
    if depth < 4 and r < 0.3:
        return {pick(rng, KEYS): any_value(rng, depth + 1) for _ in range(int(r * 10))}
    return pick(rng, SCALARS)


def gen_reply(rng):
    r = rng.random()
    if r < 0.02:   # deep nesting, somewhere
        n = rng.choice([63, 64, 65, 100, 1000, 100000])
        inner = rng.choice(['[' * n + ']' * n, '{"a":' * n + '1' + '}' * n, '[' * n])
        return rng.choice(['{"metadata": {}, "results": [%s]}', '{"metadata": %s, "results": []}', '%s']) % inner
    meta = {}
    for key in ('exitcode', 'error', 'user', 'currentdir'):
        if rng.random() < 0.7:
            meta[key] = any_value(rng) if rng.random() < 0.3 else rng.choice(
                {'exitcode': ['0', '2', '-1', '121', '¹', '99999999999999999999', ''],
                 'error': ['', 'No such file', 'red \x1b[31m', '\x1b]0;t\x07'],
                 'user': ['jalien', '', 'x\ny'], 'currentdir': ['/a/b/', '', 'rel', '/']}[key])
    results = []
    for _ in range(int(rng.random() * 6)):
        r = rng.random()
        results.append({'message': pick(rng, KEYS)} if r < 0.3 else {'message': any_value(rng)} if r < 0.5 else
                       any_value(rng) if r < 0.7 else
                       {pick(rng, KEYS): any_value(rng) for _ in range(int(rng.random() * 5))})
    doc = {}
    if rng.random() < 0.9:
        doc['metadata'] = meta if rng.random() < 0.9 else any_value(rng)
    if rng.random() < 0.9:
        doc['results'] = results if rng.random() < 0.9 else any_value(rng)
    for _ in range(rng.randint(0, 1)):
        doc[word(rng)] = any_value(rng)
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.3:
        text = text.replace('/', '\\/')
    return mutate(rng, text) if rng.random() < 0.4 else text


SESSION = alien.Session(environ={'HOME': '/nonexistent'})


def check_reply(text, rng):
    SESSION.user = SESSION.cwd = SESSION.home = SESSION.prevdir = ''
    compact = rng.random() < 0.5
    metadata, results = alien.parse_reply(text, compact)
    SESSION._update_state(metadata)
    result = alien.reply_to_result(metadata, results)
    out = result.out
    alien.term_text(out, TTY_STREAM, colour=compact)
    alien.term_text(out, PIPE_STREAM, colour=True)
    alien.term_text(result.err, TTY_STREAM)
    json.dumps({'metadata': result.metadata, 'results': result.results}, sort_keys=False, indent=2)
    alien.expand_grid_path('x/../y', SESSION.cwd, SESSION.home)
    alien.prompt_text(SESSION)
    return 'data'


# ---- gfal jobs ---------------------------------------------------------------

def gen_gfal_valid(rng, jobtype):
    def url():
        return rng.choice(['file:///tmp/a', 'root://h//d/f', 'mock://x/y', 'rel/p' if rng.random() < 0.5 else 'x'])
    pdm = rng.random() < 0.5
    doc = {'base': 'root://h//base/'} if rng.random() < 0.5 else {}
    if jobtype in ('copy', 'rename'):
        doc['files'] = [(['%d.%d' % (1, i)] if pdm else []) + [url(), url()] for i in range(rng.randint(1, 3))]
    elif jobtype == 'list':
        doc[rng.choice(['files', 'dirs'])] = [['1.0', url()] if pdm else url()]
    elif jobtype == 'mkdir':
        doc['dirs'] = [['1.%d' % i, url()] if pdm else url() for i in range(rng.randint(1, 3))]
    else:
        doc['files'] = [['1.%d' % i, url()] if pdm else url() for i in range(rng.randint(0, 2))]
        doc['dirs'] = [url() for _ in range(rng.randint(1, 2))]
    opts = {'list': {'depth': rng.choice([-1, 0, 2]), 'checksum': rng.choice(['adler32', 'md5'])},
            'copy': {'parallel': rng.choice([1, 16, 64]), 'checksum': rng.choice([True, 'md5:abc', 'adler32']),
                     'make_dirs': True, 'overwrite': rng.choice([True, False]), 'nbstreams': 2}}.get(jobtype, {})
    if opts or rng.random() < 0.5:
        doc['options'] = dict(opts, timeout=rng.randint(1, 100))
    return json.dumps(doc)


def gen_gfal(rng):
    jobtype = rng.choice(alien.GFAL_JOB_TYPES)
    if rng.random() < 0.5:
        text = gen_gfal_valid(rng, jobtype)
        return jobtype, mutate(rng, text, 1) if rng.random() < 0.3 else text
    base = rng.choice(['file:///tmp/', 'root://h//d/', 'rel', '', None, 5, 'mock://x'])
    def entry():
        r = rng.random()
        if r < 0.3:
            return rng.choice([word(rng), 'file:///x', 'a/b'])
        if r < 0.6:
            return [str(rng.randint(0, 9)) + '.1', rng.choice(['file:///x', word(rng)])]
        if r < 0.85:
            return [rng.choice(['1.1', 7, None, True]), 'file:///a', rng.choice(['file:///b', word(rng)])]
        return any_value(rng)
    doc = {}
    for key in ('files', 'dirs'):
        if rng.random() < 0.7:
            doc[key] = [entry() for _ in range(rng.randint(0, 3))] if rng.random() < 0.9 else any_value(rng)
    if base is not None and rng.random() < 0.5:
        doc['base'] = base
    if rng.random() < 0.5:
        opts = {}
        for _ in range(rng.randint(0, 3)):
            key = rng.choice(['depth', 'checksum', 'timeout', 'make_dirs', 'parent', 'encrypt',
                              'preserve_timestamp', 'overwrite', 'nbstreams', 'parallel', word(rng)])
            opts[key] = rng.choice([True, False, -1, 0, 1, 65, 10 ** 30, 'adler32', 'md5:ABC', 'x:zz',
                                    any_value(rng)])
        doc['options'] = opts if rng.random() < 0.9 else any_value(rng)
    if rng.random() < 0.05:
        doc = any_value(rng)
    text = json.dumps(doc)
    if rng.random() < 0.02:
        return jobtype, '[' * rng.choice([65, 1000, 100000])
    return (rng.choice((jobtype, jobtype.upper(), word(rng))),
            mutate(rng, text) if rng.random() < 0.3 else text)


def check_gfal(item, rng):
    jobtype, text = item
    try:
        alien.gfal_parse_job(alien.gfal_job_type(jobtype), alien.gfal_load_json(text))
    except alien.GfalJobError as e:
        line = json.dumps(alien.gfal_result(False, str(e), ''))   # the job-error line
        if json.loads(line)['id'] != '':
            raise AssertionError('job-error line without id ""')
        return 'error'
    return 'data'


# ---- cp arguments, -input, specifiers ------------------------------------------

CP_WORDS = sorted(alien.CP_OPTIONS.kinds) + ['-h', '--', '-json', '-x', '-1', '-0.5']
VALUES = ['0', '1', '-1', '15', '16', '99999999999999999999', '¹', '٣', 'x', '', '2024-01-31', '1700000000',
          '1700000000000', 'begin_a_contain_b_ends_c_ext_d', 'begin_', 'contain_x_contain_y', '*.root',
          '[a-', '(', '.*\\.root$', 'a**b?', '/alice/*/x*.root']


def gen_cp_args(rng):
    args = []
    for _ in range(rng.randint(0, 8)):
        r = rng.random()
        if r < 0.4:
            args.append(rng.choice(CP_WORDS))
        elif r < 0.7:
            args.append(rng.choice(VALUES) if rng.random() < 0.8 else mutate(rng, rng.choice(VALUES)))
        else:
            args.append(rng.choice(['file:/tmp/x', 'file:', 'alien:', '/alice/x@disk:2', 'x,disk:1',
                                    'alien://a/b/', word(rng)]))
    return args


def check_cp_args(args, rng):
    opts, pos = alien.parse_cp_args(args)
    alien.cp_filter(opts, opts['glob'])
    alien.cp_meta_filter(opts)
    if len(pos) >= 2:
        alien.cp_direction(pos[0], pos[1], lambda p: len(p) % 2 == 0)
    if opts['dst'] and pos:
        alien.dst_dir_targets(['/' + p.lstrip('/') for p in pos], opts['dst'])
    for p in pos:
        alien.cp_name_problem(p, 'grid')
        alien.split_glob(p)
    return 'data'


def parts(rng, count, branches):
    """count pieces, each made by the first branch (limit, make) with random() < limit."""
    out = []
    for _ in range(count):
        r = rng.random()
        out.append(next(make for limit, make in branches if r < limit)())
    return out


def gen_cp_input(rng):
    lines = parts(rng, rng.randint(0, 6), [
        (0.6, lambda: '%s %s' % (rng.choice(['file:/a', '"a b"', "'x y'", '/alice/f@disk:1', word(rng)]),
                                 rng.choice(['/alice/d/', 'file:/tmp/', word(rng)]))),
        (1.0, lambda: rng.choice(['# c', '; c', '// c', '', ' '.join(word(rng) for _ in range(3))]))])
    return mutate(rng, '\n'.join(lines)) if rng.random() < 0.5 else '\n'.join(lines)


def check_cp_input(text, rng):
    pairs, notices = alien.parse_input_lines(text)
    for src, dst in pairs:
        alien.split_specs(src)
        alien.split_specs(dst)
    return 'data'


def gen_specs(rng):
    path = rng.choice(['/alice/f.root', 'file:/x', 'alien:/a/b', 'f,g', 'a@b', ''])
    toks = [rng.choice(['disk:2', 'disk:0', 'disk=3', 'tape:1', 'ALICE::CERN::EOS', '!ALICE::CERN::EOS',
                        'A::B', '!', 'disk:', 'disk:¹', '::::', word(rng)]) for _ in range(rng.randint(0, 4))]
    text = path + rng.choice(['@', ',', '@@', '']) + ','.join(toks)
    return mutate(rng, text) if rng.random() < 0.5 else text


def check_specs(text, rng):
    path, specs = alien.split_specs(text)
    alien._with_default_specs(specs)
    return 'data'


# ---- command lines and aliases -----------------------------------------------------

def gen_line(rng):
    line = ' '.join(parts(rng, rng.randint(0, 6), [
        (0.5, lambda: word(rng)),
        (0.7, lambda: rng.choice(['"a b"', "'c;d'", '"e\\"f"', 'g\\ h', '!ls', '| grep x', ';', '\n'])),
        (1.0, lambda: rng.choice(['ls', 'cd', 'cp', '-l', '-json', '$?', '&&']))]))
    return mutate(rng, line) if rng.random() < 0.5 else line


def check_splitter(line, rng):
    alien.current_word(line)
    for element in alien.split_chain(line):
        grid, shell = alien.split_pipe(element)
        alien.tokenize(grid)
    return 'data'


def gen_aliases(rng):
    lines = ['%s = %s' % (rng.choice(['ll', 'x', 'bomb', word(rng)]), gen_line(rng)) for _ in range(rng.randint(0, 5))]
    if rng.random() < 0.01:
        lines.append('big = ' + ';'.join(['pwd'] * rng.choice([100, 20000])))
    text = '\n'.join(lines)
    return (mutate(rng, text) if rng.random() < 0.3 else text), gen_line(rng)


def check_aliases(item, rng):
    text, line = item
    aliases = dict(alien.parse_settings(text))
    for element in alien.expand_aliases(alien.split_chain(line) * rng.randint(1, 3), aliases):
        alien.tokenize(alien.split_pipe(element)[0])
    return 'data'


TARGETS = {
    'reply': (gen_reply, check_reply), 'gfal': (gen_gfal, check_gfal), 'cp_args': (gen_cp_args, check_cp_args),
    'cp_input': (gen_cp_input, check_cp_input), 'specs': (gen_specs, check_specs),
    'splitter': (gen_line, check_splitter), 'aliases': (gen_aliases, check_aliases),
}


def run_target(name, count, seed, out=sys.stdout, progress=100000):
    """count inputs of one target -> True (0 crashes), False (a crash, reported), or
    None when stopped by SIGINT/SIGTERM (the counts so far are reported)."""
    gen, check = TARGETS[name]
    rng = random.Random('%s-%d' % (name, seed))
    counts = {'data': 0, 'error': 0}
    t0 = time.time()
    done = 0
    try:
        for i in range(count):
            item = gen(rng)
            try:
                counts[check(item, rng)] += 1
            except alien.AlienError:
                counts['error'] += 1
            except Exception as e:  # a crash: report the reproducer
                out.write('CRASH in %s on input %d (seed %d): %r -> %s: %s\n'
                          % (name, i, seed, str(item)[:300], type(e).__name__, str(e)[:300]))
                out.flush()
                return False
            done = i + 1
            if progress and done % progress == 0 and done < count:
                sys.stderr.write('%s: %d inputs, %d s\n' % (name, done, time.time() - t0))
                sys.stderr.flush()
    except KeyboardInterrupt:
        out.write('%-9s STOPPED after %d of %d inputs in %.0f s (seed %d): %d ended in data, '
                  '%d in the documented error, 0 crashes\n'
                  % (name, done, count, time.time() - t0, seed, counts['data'], counts['error']))
        out.flush()
        return None
    out.write('%-9s %d inputs in %.0f s (seed %d): %d ended in data, %d in the documented error, 0 crashes\n'
              % (name, count, time.time() - t0, seed, counts['data'], counts['error']))
    out.flush()
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--count', type=int, default=1000000, help='inputs per target')
    ap.add_argument('--seed', type=int, default=int(time.time()))
    ap.add_argument('--target', action='append', choices=sorted(TARGETS), help='default: all')
    args = ap.parse_args()
    sys.setrecursionlimit(1000)   # the interpreter's default, whatever the caller set
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    ok = True
    for name in args.target or list(TARGETS):
        status = run_target(name, args.count, args.seed)
        if status is None:
            return 3
        ok = status and ok
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
