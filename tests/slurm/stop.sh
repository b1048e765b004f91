#!/usr/bin/env bash
# Stop the daemons start.sh started, by their PIDs (never by name: other Slurms may exist).
STATE=${1:?usage: stop.sh STATE_DIR}
[ -f "$STATE/pids" ] || exit 0
tac "$STATE/pids" | while read -r pid; do kill "$pid" 2>/dev/null; done
sleep 1
tac "$STATE/pids" | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
rm -f "$STATE/pids"
exit 0
