#!/usr/bin/env bash
# The README's main command: install what is missing, then run a local
# cluster in the foreground: a private redis-server and NODES gateway nodes
# (default 3) on 127.0.0.1, 127.0.0.2, ... all on PORT (default 445), serving
# ./demo-share to user test/test. It prints how to connect; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p demo-share
[ -f demo-users ] || printf '# user:password\ntest:test\n' > demo-users
exec .venv/bin/smbgw cluster up --nodes "${NODES:-3}" --port "${PORT:-445}" \
  --share share=demo-share --users demo-users "$@"
