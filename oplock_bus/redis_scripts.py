"""The Lua scripts of the Redis bus, run by SHA with a fallback to EVAL.

Every script touches keys of one hash slot only (one file's key and its
slot's generation key, see :mod:`oplock_bus.redis_slots`, or the
``{nodes}`` keys), so each runs unchanged on Redis Cluster; ``SLOT_GENS``
alone touches many slots, those of the one master it is sent to.
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
# Generation (bus recovery, oplock_bus/recovery.py): given a third key, the
# bus generation (on Redis Cluster its copy in the record's slot), the write
# happens only if it is ARGV[5], the caller's, and no recovery runs; with
# ARGV[6] = '1' (a node re-asserting what it holds) only while the recovery
# of ARGV[5] runs. Otherwise -2, or -3 if the key is missing (on a cluster
# a slot not used yet has no copy, redis_slots.claim): nothing is granted
# on a Redis that lost its state (or changed master) before the nodes have
# rebuilt it.
#
# Once written: ARGV[7] is a count n, ARGV[8..7+n] are channels to publish
# to, the key's own channel (a file's channel is named as its key) getting
# the new value ('-' once deleted) so a subscriber's next CAS needs no read;
# NEWS in their place sends the key's channel the new value behind '=', news
# that wakes nobody (redis_pubsub: a node that opens the file next tries its
# CAS on the current value); the rest are (channel, message) pairs, each
# message sent with the new value appended (break notices, see
# redis_messages.message_prefix). The notices go out first and news last: a
# node that reads several at once sends its client the break first.
CAS = """
if KEYS[3] then
  local want = ARGV[5]
  if ARGV[6] == '1' then want = want .. ' r' end
  local g = redis.call('GET', KEYS[3])
  if not g then return -3 end
  if g ~= want then return -2 end
end
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
local n = tonumber(ARGV[7])
for i = 8 + n, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1] .. ARGV[2])
end
local news = false
for i = 8, 7 + n do
  if ARGV[i] == KEYS[1] then
    if ARGV[2] == '' then
      redis.call('PUBLISH', ARGV[i], '-')
    else
      redis.call('PUBLISH', ARGV[i], ARGV[2])
    end
  elseif ARGV[i] == '=' then
    news = true
  else
    redis.call('PUBLISH', ARGV[i], '')
  end
end
if news then
  if ARGV[2] == '' then
    redis.call('PUBLISH', KEYS[1], '=-')
  else
    redis.call('PUBLISH', KEYS[1], '=' .. ARGV[2])
  end
end
return 1
"""

# KEYS: epoch counter, members hash, this node's heartbeat key, its probes
# hash, the bus generation. ARGV: node id, member record prefix (JSON
# without the closing epoch), TTL in ms, the process's instance marker (as
# the record spells it), the lowest epoch to hand out (after Redis lost its
# state a node's epochs keep rising), a generation to set if there is none
# ('' for none), then the probes' (name, value) pairs. Returns {new epoch,
# previous member record or false, the generation or false}; {0, the
# holder's record or false} when another process holds the id: its
# heartbeat is alive and the record is not this process's (a registration
# of ours whose reply was lost passes).
REGISTER = """
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  if not previous or not string.find(previous, ARGV[4], 1, true) then
    return {0, previous}
  end
end
local g = redis.call('GET', KEYS[5])
if not g and ARGV[6] ~= '' then
  redis.call('SET', KEYS[5], ARGV[6])
  g = ARGV[6]
end
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[5]) then
  redis.call('SET', KEYS[1], ARGV[5])
end
local epoch = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local record = ARGV[2] .. ',"epoch":' .. epoch .. ',"registered":' .. now .. '}'
redis.call('HSET', KEYS[2], ARGV[1], record)
redis.call('SET', KEYS[3], epoch .. ' ' .. now, 'PX', ARGV[3])
redis.call('DEL', KEYS[4])
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
return {epoch, previous, g}
"""

# KEYS: heartbeat key, bus generation. ARGV: epoch, TTL in ms, generation.
# {1} if renewed; {0} if the key is gone or belongs to another epoch: this
# registration has lapsed; {2, generation or false} if the generation is
# neither ARGV[3] nor its recovery: Redis lost its state, or another node
# began a recovery.
RENEW = """
local g = redis.call('GET', KEYS[2])
if g ~= ARGV[3] and g ~= ARGV[3] .. ' r' then
  return {2, g}
end
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return {0}
end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. string.format('%d.%06d', t[1], t[2]), 'PX', ARGV[2])
return {1}
"""

# KEYS: generation, recovery record, nodes expected, nodes that re-asserted,
# the generation the last recovery ended with. ARGV: new generation, this
# node's id, TTL in ms, the generation this node knows, then the ids of the
# nodes it knew alive. Begins a recovery under ARGV[1] unless one runs
# already; either way this node is expected. Returns the generation key, or
# 'late' if a recovery ended without this node: what it holds may have been
# given to others since, so it must fence itself.
BEGIN_RECOVERY = """
local g = redis.call('GET', KEYS[1])
if g and g ~= ARGV[4] and redis.call('GET', KEYS[5]) == g then
  return 'late'
end
if not g or string.sub(g, -2) ~= ' r' then
  g = ARGV[1] .. ' r'
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], g)
  redis.call('SET', KEYS[2], t[1] .. '.' .. string.format('%06d', t[2]) .. ' ' .. ARGV[3])
  redis.call('DEL', KEYS[3], KEYS[4])
  for i = 5, #ARGV do
    redis.call('SADD', KEYS[3], ARGV[i])
  end
end
redis.call('SADD', KEYS[3], ARGV[2])
return g
"""

# KEYS: as BEGIN_RECOVERY. ARGV: the recovery's generation, this node's id
# ('' when it only looks), '1' to stop short of ending it. Records that the
# node has re-asserted, and ends the recovery once every expected node has,
# or the TTL since its start has gone by (the missing ones are dead: what
# they held was never re-asserted, and is nobody's). Returns the generation
# key; with ARGV[3] = '1', '<generation> ready' instead of ending it (on
# Redis Cluster the slots' copies open first, redis_slots.py).
FINISH_RECOVERY = """
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] .. ' r' then
  return g
end
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[2])
end
local since, ttl = string.match(redis.call('GET', KEYS[2]) or '0 0', '([^ ]+) ([^ ]+)')
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if #redis.call('SDIFF', KEYS[3], KEYS[4]) > 0 and now < tonumber(since) + tonumber(ttl) / 1000 then
  return g
end
if ARGV[3] == '1' then
  return ARGV[1] .. ' ready'
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[2])
return ARGV[1]
"""

# No KEYS: run on one cluster master, ARGV[4..] are the generation keys of
# the slots in use it serves (redis_slots.py; one call per master, not one
# per slot). ARGV[1] the value to set; ARGV[2] where: '=<value>' only where
# it holds that value, '' anywhere; ARGV[3] a value it must not hold (''
# none). Returns how many hold ARGV[1] afterwards.
SLOT_GENS = """#!lua flags=allow-cross-slot-keys
local n = 0
local only = ARGV[2]
for i = 4, #ARGV do
  local cur = redis.call('GET', ARGV[i])
  local ok = cur ~= ARGV[3]
  if only ~= '' then
    ok = ok and cur == string.sub(only, 2)
  end
  if ok then
    redis.call('SET', ARGV[i], ARGV[1])
    n = n + 1
  elseif cur == ARGV[1] then
    n = n + 1
  end
end
return n
"""

# KEYS: the bus generation, the bitmap of slots in use (redis_slots.py).
# ARGV: the generation key's value the caller works under, a slot. Marks
# the slot in use and returns whether it was (0 or 1); -1, marking nothing,
# if the generation key holds another value.
CLAIM_SLOT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
return redis.call('SETBIT', KEYS[2], ARGV[2], 1)
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

# KEYS: members hash, heartbeat key, probes hash. ARGV: node id, epoch. A
# clean stop; what another process registered under the id since stays.
DEREGISTER = """
local cur = redis.call('GET', KEYS[2])
if cur and string.sub(cur, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
  redis.call('DEL', KEYS[2])
end
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if rec and string.find(rec, '"epoch":' .. ARGV[2] .. ',', 1, true) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return 1
"""


# In a CAS's wake-up list: the key's own channel gets the value as news.
NEWS = "="


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
begin_recovery = Script(BEGIN_RECOVERY)
finish_recovery = Script(FINISH_RECOVERY)
slot_gens = Script(SLOT_GENS)
claim_slot = Script(CLAIM_SLOT)
