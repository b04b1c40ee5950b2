#!/usr/bin/env bash
# The README's main command: install what is missing, then run a gateway node
# serving ./demo-share to user test/test on 127.0.0.1:4445, ready for smbclient.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p demo-share
[ -f demo-users ] || printf '# user:password\ntest:test\n' > demo-users
PORT=${PORT:-4445}
cat <<MSG
==> connect with:
      smbclient //127.0.0.1/share -p $PORT -U test%test -m SMB3_11
    stop with Ctrl-C
MSG
exec .venv/bin/smbgw serve --listen "127.0.0.1:$PORT" --share share=demo-share --users demo-users "$@"
