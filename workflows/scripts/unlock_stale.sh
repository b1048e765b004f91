#!/usr/bin/env bash
# `make run` after a killed one: a SIGKILLed Snakemake (or a lost node, a closed laptop) leaves its
# lock in .snakemake/locks, and the next run refuses to start ("Directory cannot be locked").
# Remove the lock only when no Snakemake process is running in this directory (checked through
# /proc: on a system without it the lock stays, and Snakemake's own message says what to do).
set -euo pipefail
here=$(pwd -P)
locks=.snakemake/locks
[ -d "$locks" ] && [ -n "$(ls -A "$locks" 2>/dev/null)" ] || exit 0
[ -d /proc/self ] || exit 0
for pid in $(pgrep -f snakemake || true); do
    [ "$pid" = "$$" ] && continue
    if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$here" ]; then
        exit 0  # a live run holds the lock
    fi
done
echo "make run: removing the lock a killed Snakemake run left in $locks (no Snakemake is running here)"
rm -f "$locks"/*
