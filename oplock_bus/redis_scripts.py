"""The Lua scripts of the Redis bus, run by SHA with a fallback to EVAL.

Every script touches keys of one hash slot only (one file's key, or the
``{nodes}`` keys), so each runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import NoScriptError

# A stored document is "<token> <json>". Write (ARGV[2]) or delete (ARGV[2]
# empty) only if the stored token is ARGV[1] (empty: the key must be absent).
# On a mismatch the current value comes back (0 when absent), so a retry
# needs no second GET.
#
# Fairness: a writer that keeps losing to another node (whose every commit
# starts on the value it just wrote) asks for the next turn: ARGV[3] names
# the writer, and ARGV[4] = '1' makes a failed attempt claim the key
# (KEYS[2], 20 ms). While another writer's claim stands, the script writes
# nothing and returns -1 (the caller waits a moment); the claimant's own
# write clears it.
#
# Once written: ARGV[5] is a count n, ARGV[6..5+n] are channels to publish
# to, the key's own channel (a file's channel is named as its key) getting
# the new value ('-' once deleted) so a subscriber's next CAS needs no read;
# the rest are (channel, message) pairs, each message sent with the new
# value appended (break notices, see redis_messages.message_prefix).
CAS = """
local claim = redis.call('GET', KEYS[2])
if claim and claim ~= ARGV[3] then
  return -1
end
local cur = redis.call('GET', KEYS[1])
local expected = ARGV[1]
local ok
if cur then
  ok = expected ~= '' and string.sub(cur, 1, #expected + 1) == expected .. ' '
else
  ok = expected == ''
end
if not ok then
  if ARGV[4] == '1' and ARGV[3] ~= '' then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', 20)
  end
  if cur then return cur end
  return 0
end
if claim then
  redis.call('DEL', KEYS[2])
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
local n = tonumber(ARGV[5])
for i = 6, 5 + n do
  if ARGV[i] == KEYS[1] then
    if ARGV[2] == '' then
      redis.call('PUBLISH', ARGV[i], '-')
    else
      redis.call('PUBLISH', ARGV[i], ARGV[2])
    end
  else
    redis.call('PUBLISH', ARGV[i], '')
  end
end
for i = 6 + n, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1] .. ARGV[2])
end
return 1
"""

# KEYS: epoch counter, members hash, this node's heartbeat key.
# ARGV: node id, member record prefix (JSON without the closing epoch),
# TTL in ms. Returns {new epoch, previous member record or false}.
REGISTER = """
local epoch = redis.call('INCR', KEYS[1])
local previous = redis.call('HGET', KEYS[2], ARGV[1])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local record = ARGV[2] .. ',"epoch":' .. epoch .. ',"registered":' .. now .. '}'
redis.call('HSET', KEYS[2], ARGV[1], record)
redis.call('SET', KEYS[3], epoch .. ' ' .. now, 'PX', ARGV[3])
return {epoch, previous}
"""

# KEYS: heartbeat key. ARGV: epoch, TTL in ms. 1 if renewed; 0 if the key
# is gone or belongs to another epoch: this registration has lapsed.
RENEW = """
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return 0
end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. string.format('%d.%06d', t[1], t[2]), 'PX', ARGV[2])
return 1
"""

# KEYS: members hash, then one heartbeat key per ARGV node id. Returns the
# ids and member records of members whose heartbeat has expired.
EXPIRED = """
local out = {}
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    local rec = redis.call('HGET', KEYS[1], ARGV[i])
    if rec then
      table.insert(out, ARGV[i])
      table.insert(out, rec)
    end
  end
end
return out
"""

# KEYS: members hash, heartbeat key. ARGV: node id, the member record the
# cleanup was for. Forget the member only if it did not re-register since.
FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('EXISTS', KEYS[2]) == 0 then return 1 end
end
return 0
"""

# KEYS: members hash, heartbeat key. ARGV: node id, epoch. A clean stop.
DEREGISTER = """
local cur = redis.call('GET', KEYS[2])
if cur and string.sub(cur, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
  redis.call('DEL', KEYS[2])
end
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if rec and string.find(rec, '"epoch":' .. ARGV[2] .. ',', 1, true) then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""


class Script:
    """EVALSHA first (the script body is not resent), EVAL when the server
    does not know it yet (a restart, a failover, a new cluster node)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    async def run(
        self, call: Callable[..., Awaitable[Any]], keys: list[str], args: list[Any]
    ) -> Any:
        """The same through ``call(*command)`` (the store's pipelined connection)."""
        try:
            return await call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await call("EVAL", self.source, len(keys), *keys, *args)


cas = Script(CAS)
register = Script(REGISTER)
renew = Script(RENEW)
expired = Script(EXPIRED)
forget = Script(FORGET)
deregister = Script(DEREGISTER)
