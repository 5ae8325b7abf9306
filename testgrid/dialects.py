"""What the two code bases the test service speaks do differently (jcentral.py asks here).

``2021``: the JAliEn central service of ../shared/spec/jcentral-replies.md;
``2024``: JAliEn 1.8.6, ../shared/spec/jcentral-replies-2024.md (its head lists the
differences). A connection speaks the dialect of ``<workdir>/service.json`` at the time it
opens (``grid.set_service(workdir, {'dialect': '2021'})``; default 2024).

Here: the commands only the newer service has, the reply metadata of the requests a
service refuses before any command runs (bad JSON, ``cp``), time stamps in seconds or
milliseconds, ANSI colours (2021 only), and the help texts (``CMD -h``) as the captures
show them. The command handlers in jcentral.py and jobs.py shape their rows with these.
"""

DIALECTS = ('2021', '2024')
DEFAULT = '2024'

# absent from the 2021 service ("Command [x] not found!")
NEWER_ONLY = frozenset(('listCEs', 'guidinfo', 'archiveList', 'jobListMatch', 'listpartitions',
                        'setCEstatus', 'resyncLDAP', 'optimiserLogs', 'echo'))

# version: tag, git hash, build time (ms) of each code base (the 2021 build carried no tag)
BUILD = {'2021': ('', 'd0c5a1e0f2b3a4c5d6e7f8091a2b3c4d5e6f7a8b', 1796121000000),
         '2024': ('1.8.6', '5e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b', 1796186400000)}
INVALID_JSON = {'2021': 'Incoming JSON not ok', '2024': 'Incoming JSON is not ok'}
CP_REFUSED = "'cp' grid command is not implemented. Please use native client's Cp() method"


def has_command(dialect, name):
    return dialect != '2021' or name not in NEWER_ONLY


def refusal_metadata(dialect, error, cwd, user):
    """Metadata of a request refused before it reaches a command (not JSON, cp): the 2021
    service says -1 and nothing else, the newer one exit 22 with who and where."""
    if dialect == '2021':
        return {'exitcode': '-1', 'error': error}
    return {'exitcode': '22', 'error': error, 'user': user, 'currentdir': cwd}


def ctime(dialect, ms):
    """A catalogue time stamp (kept in ms, with the seconds precision of the real
    catalogue) as ls -l, stat and find -f give it: seconds in 2021, ms in 2024."""
    return str(ms // 1000) if dialect == '2021' else str(ms // 1000 * 1000)


def envelope_tail(dialect, write):
    """What the newer service appends to an access envelope: its packet-marking flow
    (scitag) and the EOS application of the transfer."""
    if dialect == '2021':
        return ''
    return '&scitag.flow=335&eos.app=cliUpload' if write else '&scitag.flow=330&eos.app=dataAccess'


def colour(dialect, code, text):
    """text in an ANSI colour (code like '32' or '31;40') where the 2021 service colours
    its messages; the newer service writes plain text."""
    return text if dialect != '2021' else '\x1b[%sm%s\x1b[0m' % (code, text)


def usage(command, syntax, options=(), head='', tail=''):
    """A help text laid out like the Java service's: the usage line, then one line per
    option (the name padded to 21, two blanks, a colon, the description if any)."""
    lines = [head + '\nusage: %s   %s' % (command, syntax)]
    if options:
        lines.append('\noptions:')
        lines += [' ' * 20 + ('%-21s  :  %s' % (o, d) if d else '%-21s' % o) for o, d in options]
    return '\n'.join(lines) + tail


_FIND_2021 = [('-a', 'show hidden .* files'), ('-s', 'no sorting'),
              ('-x <target LFN>', 'create the indicated XML collection with the results of the find operation'),
              ('-d', 'return also the directories'), ('-w[h]', 'long format, optionally human readable file sizes'),
              ('-j <queueid>', 'filter files created by a certain job ID'),
              ('-l <count>', 'limit the number of returned entries to at most the indicated value'),
              ('-o <offset>', 'skip over the first /offset/ results'), ('-r', 'pattern is a regular expression'),
              ('-f', 'return all LFN data as JSON fields (API flag only)'),
              ('-y', '(FOR THE OCDB) return only the biggest version of each file')]
_FIND_2024 = (_FIND_2021[:2] + [('-c', 'print the number of matching files'),
                                ('-x <target LFN>', _FIND_2021[2][1] + ". Use '-' for screen output of the XML content.")]
              + _FIND_2021[3:] + [('-S <site name>', 'Sort the returned list by the distance to the given site'),
                                  ('-e <pattern>', 'Exclude pattern')])
_PS = [('-F l | -Fl | -L', 'long output format'),
       ('-f <flags|status>', "any number of (long or short) upper case job states, or 'a' for all, 'r' for running "
                             "states, 'f' for failed, 'd' for done, 's' for queued"),
       ('-u <userlist>', ''), ('-s <sitelist>', ''), ('-n <nodelist>', ''), ('-m <masterjoblist>', ''),
       ('-o <sortkey>', ''), ('-j <jobidlist>', ''), ('-l <query-limit>', '')]
_PS_FLAGS = [('-M', 'show only masterjobs'), ('-X', 'active jobs in extended format'),
             ('-A', 'select all owned jobs of you'), ('-W', 'select all jobs which are waiting for execution of you'),
             ('-E', 'select all jobs which are in error state of you'), ('-a', 'select jobs of all users'),
             ('-b', 'do only black-white output'), ('-jdl <jobid>', 'display the job jdl')]
_PS_ID = ('-id', 'only list the matching job IDs, for batch processing (implies -b)')
_MASTERJOB = [('-status <status>', 'display only the subjobs with that status'),
              ('-id <id>', 'display only the subjobs with that id'), ('-site <id>', 'display only the subjobs on that site'),
              ('-printid', 'print also the id of all the subjobs'),
              ('-printsite', 'split the number of jobs according to the execution site')]
_MASTERJOB_ACTIONS = [('merge', 'collect the output of all the subjobs that have already finished'),
                      ('kill', 'kill all the subjobs'), ('resubmit', 'resubmit all the subjobs selected'),
                      ('expunge', 'delete completely the subjobs')]
_MIRROR = {
    '2021': ('\nmirror Copies a file into another SE\n Usage:\n\tmirror [-g] [-try <number>] [-S [se[,se2[,!se3[,qos:count]]]]]'
             ' <lfn> [<SE>]\n                 -g:      Use the lfn as a guid\n                 -S:     specifies the '
             'destination SEs to be used\n                 -try <NumOfAttempts>     Specifies the number of attempts to '
             'try and mirror the file'),
    '2024': ('\nmirror Copies/moves a file to one or more other SEs\n Usage:\n\tmirror [-g] [-try <number>] [-r SE] '
             '[-S [se[,se2[,!se3[,qos:count]]]]] <lfn> [<SE>]\n                 -g:     Use the lfn as a guid\n'
             '                 -S:     specifies the destination SEs/tags to be used\n                 -r:     remove '
             'this source replica after a successful transfer (a `move` operation)\n                 -try <attempts>'
             '     Specifies the number of attempts to try and mirror the file (default 5)')}


def _ps_help(dialect):
    if dialect == '2021':
        opts = _PS + [('', '')] + _PS_FLAGS + [('-trace <jobid> <tag>*', 'display the job trace information'), _PS_ID]
    else:
        opts = (_PS + [('-t <time-limit-start, time-limit-end>', "modified time between time-limit-start and "
                        "time-limit-end in 'hours'. eg: -t 12,6 will output the jobs that were modified between last "
                        "12h to last 6h"), ('', '')] + _PS_FLAGS
                + [('-trace <jobid>', 'display the job trace information'), _PS_ID,
                   ('-q', 'quiet, no user printable output, API function only')])
    return usage('ps', '[-options]', opts).replace('\n' + ' ' * 41 + '\n', '\n\n')


def _masterjob_help(dialect):
    if dialect != '2021':
        return usage('masterjob', '<jobIDs> [-options]', _MASTERJOB)
    return usage('masterjob', '<jobId> [-options] [merge|kill|resubmit|expunge]', _MASTERJOB + [('', '')]
                 + _MASTERJOB_ACTIONS, tail='\n\n' + ' ' * 20 + "You can combine kill and resubmit with '-status "
                 "<status>' and '-id <id>'.\n" + ' ' * 20 + "For instance, if you do something like 'masterjob "
                 "<jobId> -status ERROR_IB resubmit',\n" + ' ' * 21 + 'all the subjobs with status ERROR_IB will be '
                 'resubmitted').replace('\n' + ' ' * 41 + '\n', '\n\n')


# CMD -h as the captures show it: a text, or {dialect: text} where the two differ
HELP = {
    'token': usage('token', '[-options]', [('-u <username>', 'switch to another role of yours'),
                                           ('-v <validity (days)>', 'default depends on token type'),
                                           ('-t <tokentype>', 'can be one of: job, jobagent, host, user (default)'),
                                           ('-jobid <job DN extension>', 'expected to be present in a job token'),
                                           ('-hostname <FQDN>', 'required for a host certificate')]),
    'ls': usage('ls', '[-options] [<directory>]', [('-l', 'long format'), ('-a', 'show hidden .* files'),
                                                    ('-F', 'add trailing / to directory names'),
                                                    ('-b', 'print in guid format'), ('-c', 'print canonical paths'),
                                                    ('-H', "human readable file sizes (1024-based); implies '-l'")]),
    'find': {d: usage('find', '[flags] <path> <pattern>\n', opts) for d, opts in (('2021', _FIND_2021),
                                                                                  ('2024', _FIND_2024))},
    'whereis': usage('whereis', '[-options] [<filename>]', [
        ('-g', 'use the lfn as guid'), ('-r', 'resolve links (do not give back pointers to zip archives)'),
        ('-l', 'lookup the LFN of the ZIP archive (slow and expensive IO operation, only use it sparingly!)')]),
    'access': usage('access', '[options] <read|write> <lfn> [<specs>]', [
        ('-s', 'for write requests, size of the file to be uploaded, when known'),
        ('-m', 'for write requests, MD5 checksum of the file to be uploaded, when known'),
        ('-j', 'for write requests, the job ID that created these files, when applicable'),
        ('-f', 'for read requests, filter the SEs based on the given specs list'),
        ('-u', 'for read requests, print http(s) URLs where available, and the envelopes in urlencoded format')
    ]).replace('\n\noptions:', ''),
    'du': usage('du', '[-ncs] <path>', [('-n', 'Print raw numbers in machine readable format'),
                                        ('-c', 'Include collections in the summary information'),
                                        ('-s', 'Print a summary of all parameters')],
                head='Gives the disk space usage of one or more directories'),
    'mirror': _MIRROR,
    'toXml': usage('toXml', '[-i] [-x xml_file_name] [-a] [-l list_from] [lfns]', [
        ('-i', 'ignore missing entries, continue even if some paths are not/no longer available'),
        ('-x', 'write the XML content directly in this target AliEn file'),
        ('-a', '(requires -x) append to the respective collection'),
        ('-l', 'read the list of LFNs from this file, one path per line')]),
    'stat': usage('stat', '[-v] <filename1> [<or uuid>] ...') + '\n' + ' ' * 20 + '%-21s  :  %s' % (
        '-v', 'More details on the status.'),
    'ps': {d: _ps_help(d) for d in DIALECTS},
    'masterjob': {d: _masterjob_help(d) for d in DIALECTS},
    'submit': usage('submit', '<URL>') + '\n\n' + ' ' * 20 + '<URL> => <LFN>\n' + ' ' * 20 + '<URL> => file:///<local path>',
    'uuid': usage('uuid', '<uuid|filename> [<uuid|filename> ...]') + '\n\n' + ' ' * 20 + (
        'Decode v1 UUIDs and display the interesting bits'),
    'lfnexpiretime': usage('lfnexpiretime', '[-options] [<file>]', [
        ('-r', 'removes the expire time set for an LFN'), ('-a', 'add a new expire time for the given LFN'),
        ('-e', 'extends the current expire time for the given LFN'),
        ('-d <number>', 'specifies the number of days in the expire time'),
        ('-w <number>', 'specifies the number of weeks in the expire time'),
        ('-m <number>', 'specifies the number of months in the expire time'),
        ('-y <number>', 'specifies the number of years in the expire time')]),
}


def help_text(command, dialect):
    """The service's text for `command -h` in this dialect, or None when the captures
    do not show it."""
    text = HELP.get(command)
    return text.get(dialect, text.get(DEFAULT)) if isinstance(text, dict) else text
