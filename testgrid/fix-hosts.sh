#!/bin/sh
# Map every address of this host to its name in /etc/hosts.
#
# Why: the Debian XRootD library reverse-resolves the machine's own addresses
# when it loads (xrootd server, xrdcp, XRootD python module, gfal2 root://).
# Some of those DNS queries get dropped here and the process stalls for 5 s.
# With every address listed in /etc/hosts no DNS query is made at all.
#
# Idempotent: an address already present in /etc/hosts is left alone.
# Needs write access to /etc/hosts (run as root); prints what it added.
set -eu
HOSTS=${HOSTS_FILE:-/etc/hosts}
name=$(hostname)
addrs=$(hostname -I 2>/dev/null || true)
extra=""
for a in $addrs; do
    case "$a" in
        *:*) ;;                       # IPv6: as is
        *) extra="$extra ::ffff:$a" ;;  # IPv4: also its IPv4-mapped IPv6 form
    esac
done
for a in $addrs $extra; do
    # exact match of the first field, so 10.0.0.1 does not match 10.0.0.10
    if awk -v a="$a" '$1 == a { found = 1 } END { exit !found }' "$HOSTS"; then
        continue
    fi
    printf '%s\t%s\n' "$a" "$name" >> "$HOSTS"
    echo "fix-hosts: added $a $name"
done
