#!/usr/bin/env bash
# Newcomer's first command: install what is needed (Debian, as root), start the
# local test grid and use alien.py on it. Leaves the grid running; stop it with
#   .venv/bin/python testgrid/grid.py stop
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
eval "$(.venv/bin/python testgrid/grid.py start)"
run() { echo "\$ alien.py $*"; .venv/bin/python alien.py "$@" || echo "(exit code $?)"; echo; }
run whoami
run pwd
run 'mkdir -p demo/run1; cd demo; ls -l'
echo "hello grid" > /tmp/alienpy-demo.txt
run cp -f file:/tmp/alienpy-demo.txt demo/hello.txt
run 'ls -l demo; whereis demo/hello.txt'
run cat demo/hello.txt
run stat /no/such/file
cat <<'MSG'
The grid keeps running. To use it from your shell:
  eval "$(.venv/bin/python testgrid/grid.py env)"; .venv/bin/python alien.py        # interactive shell
  .venv/bin/python testgrid/grid.py stop
MSG
