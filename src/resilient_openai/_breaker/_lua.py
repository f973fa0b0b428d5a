"""The one Lua script that changes a shared breaker's Redis hash (the decisions made in Redis).

Every change to a breaker's shared state runs here, on one key, atomically: Redis Cluster safe,
and no two workers can interleave half a transition. Time is the Redis server's ``TIME``, so
workers with skewed clocks agree on when a break ends and when a probe's lease runs out.

The hash (``<namespace>:breaker:<name>``) holds::

    state       closed | open | half-open | isolated   (missing: closed)
    gen         bumped on every state change and reset; outcomes of older generations are dropped
    failures    failures in a row while closed (all workers together)
    successes   probe successes in the current half-open period
    reopens     reopenings since the circuit last closed: the k in the growing break
    w:<n>, x:<n>, s:<n>  calls, failures and slow successes in the n-th tenth of ``window``
                (server time); kept in ratio mode, and in either mode with slow-call tripping
    opened_at   server time (seconds, microsecond precision) it last opened or was isolated
    open_until  server time the current break ends
    by, reason  the worker (``pid@host``) and the reason of the last transition
    lease:<id>  one per probe out in half-open: its lease's expiry (server time)
    version     server microseconds of the last op that wrote, kept strictly increasing: orders
                replies that reach a worker by different threads (see ``version`` below)

``KEYS[1]`` is the hash; ``ARGV`` is ``op, channel, who, name, fail_max, probes, close_after,
lease, break_duration, break_multiplier, break_max, mode, failure_ratio, window, min_calls,
slow_call_ratio, slow_call_threshold, arg1, arg2, arg3`` (``slow_call_threshold`` empty: no
slow-call tripping). Ops:

* ``read``: nothing changes, unless ``arg1`` (the version the reading worker last saw) is above
  the stored one: the hash went back (restored from a snapshot, a failover lost writes, Redis
  restarted empty, a server clock stepped back), and its version moves past both, so every
  worker takes the state as it is now;
* ``report``: ``arg1`` the generation the calls were admitted in, ``arg2`` their outcomes in
  order (``S`` success, ``W`` slow success, ``F`` failure), ``arg3`` the longest Retry-After
  (seconds, already capped at ``break_max``) their failures carried; counted only while closed
  and in that generation: in a row (consecutive mode trips at ``fail_max``) and in the window's
  tenths (ratio mode trips at ``failure_ratio``, slow-call tripping at ``slow_call_ratio``);
* ``admit``: ``arg1`` a probe id; moves open to half-open once the break is over, then takes a
  probe slot (a lease) if one is free;
* ``settle``: ``arg1`` the probe id, ``arg2`` its generation and outcome (``5:S``), ``arg3`` a
  failed probe's Retry-After (as for ``report``); frees the slot and, in that generation, closes
  the circuit after ``close_after`` successes or reopens it;
* ``isolate`` / ``close`` / ``reset``: the operator's actions;
* ``set``: ``arg1`` a state name (pybreaker's storage setter).

A trip opens for the grown break, or for the server's Retry-After when that is longer (the
caller caps it at ``break_max``), as the in-process breaker does.

Each op replies ``{state, gen, wait_ms, failures, reopens, opened_at, admitted, by, reason,
version}`` (``by`` and ``reason`` of the last transition): ``wait_ms``
is how long until a call could be admitted (open: the rest of the break; half-open with every slot
taken: until the soonest lease expires; isolated: -1), ``admitted`` 1 when ``admit`` took a slot,
``version`` (a decimal string) the hash's version after the op: a worker keeps the reply with the
highest (see ``read`` for a hash whose version went back).
A transition (and a settled probe, which frees a slot) is published on ``channel``: the reply's
fields, then the breaker's name, joined by newlines.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BREAKER_SCRIPT"]

BREAKER_SCRIPT: Final = """
local key = KEYS[1]
local op, channel, who, name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fail_max, probes, close_after = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease, duration = tonumber(ARGV[8]), tonumber(ARGV[9])
local multiplier, cap = tonumber(ARGV[10]), tonumber(ARGV[11])
local mode, ratio, window, min_calls = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local slow_ratio, slow_after = tonumber(ARGV[16]), ARGV[17]
local arg1, arg2, arg3 = ARGV[18], ARGV[19], ARGV[20]
local after = tonumber(arg3) or 0
-- The window is kept where something decides from it: ratio mode, or slow-call tripping.
local windowed = mode == 'ratio' or slow_after ~= ''

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = {}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local version = tonumber(h['version'] or '0')
local seen = op == 'read' and tonumber(arg1) or 0
if op ~= 'read' or seen > version then
  version = math.max(version + 1, seen + 1, now_us)
  redis.call('HSET', key, 'version', string.format('%.0f', version))
end
local state = h['state'] or 'closed'
local old = state
local gen = tonumber(h['gen'] or '0')
local failures = tonumber(h['failures'] or '0')
local reopens = tonumber(h['reopens'] or '0')
local open_until = tonumber(h['open_until'] or '0')
local by = h['by'] or ''
local reason = nil
local admitted = 0
local announce = false

local function drop_leases()
  for field, _ in pairs(h) do
    if string.sub(field, 1, 6) == 'lease:' then
      redis.call('HDEL', key, field)
      h[field] = nil
    end
  end
end

local function live_leases()
  local live, soonest = 0, nil
  for field, value in pairs(h) do
    if string.sub(field, 1, 6) == 'lease:' then
      local expiry = tonumber(value)
      if expiry <= now then
        redis.call('HDEL', key, field)
        h[field] = nil
      else
        live = live + 1
        if soonest == nil or expiry < soonest then soonest = expiry end
      end
    end
  end
  return live, soonest
end

local function move(new, why)
  drop_leases()
  state = new
  gen = gen + 1
  by = who
  reason = why
  redis.call('HSET', key, 'state', new, 'gen', gen, 'by', who, 'reason', why, 'successes', 0)
end

local function open(why, grow)
  if grow then reopens = reopens + 1 end
  local length = math.max(math.min(duration * multiplier ^ reopens, cap), after)
  move('open', why)
  open_until = now + length
  redis.call('HSET', key, 'reopens', reopens, 'opened_at', string.format('%.6f', now),
    'open_until', string.format('%.6f', open_until))
end

local function forget_window()
  for field, _ in pairs(h) do
    local kind = string.sub(field, 1, 2)
    if kind == 'w:' or kind == 'x:' or kind == 's:' then
      redis.call('HDEL', key, field)
      h[field] = nil
    end
  end
end

-- Count `calls`, `fails` and `slows` in the live tenth of the window, drop the tenths that left
-- it, and return the totals over the window.
local function count_window(calls, fails, slows)
  local slice = math.floor(now / (window / 10))
  local counted = {['w:'] = calls, ['x:'] = fails, ['s:'] = slows}
  for kind, n in pairs(counted) do
    if n > 0 then h[kind .. slice] = redis.call('HINCRBY', key, kind .. slice, n) end
  end
  local totals = {['w:'] = 0, ['x:'] = 0, ['s:'] = 0}
  for field, value in pairs(h) do
    local kind = string.sub(field, 1, 2)
    if totals[kind] ~= nil then
      if tonumber(string.sub(field, 3)) <= slice - 10 then
        redis.call('HDEL', key, field)
        h[field] = nil
      else
        totals[kind] = totals[kind] + tonumber(value)
      end
    end
  end
  return totals['w:'], totals['x:'], totals['s:']
end

local function close(why)
  forget_window()
  move('closed', why)
  failures = 0
  reopens = 0
  redis.call('HSET', key, 'failures', 0, 'reopens', 0)
  redis.call('HDEL', key, 'opened_at', 'open_until')
end

if op == 'report' then
  if state == 'closed' and tonumber(arg1) == gen then
    local fails, slows = 0, 0
    for i = 1, #arg2 do
      local outcome = string.sub(arg2, i, i)
      if outcome == 'F' then
        fails = fails + 1
        failures = failures + 1
        if mode == 'consecutive' and failures >= fail_max then
          redis.call('HSET', key, 'failures', failures)
          open(failures .. ' consecutive failures', false)
          break
        end
      else
        if outcome == 'W' then slows = slows + 1 end
        failures = 0
      end
    end
    if state == 'closed' then
      redis.call('HSET', key, 'failures', failures)
      if windowed then
        local calls, failed, slow = count_window(#arg2, fails, slows)
        if mode == 'ratio' and fails > 0 and calls >= min_calls and failed / calls >= ratio then
          open(failed .. ' of ' .. calls .. ' calls failed in ' .. window .. 's', false)
        elseif slows > 0 and calls >= min_calls and slow / calls >= slow_ratio then
          after = 0  -- a slow success asks for no particular break
          open(slow .. ' of ' .. calls .. ' calls slower than ' .. slow_after .. 's', false)
        end
      end
    end
  end
elseif op == 'admit' then
  if state == 'open' and now >= open_until then move('half-open', 'break elapsed') end
  if state == 'half-open' then
    local live = live_leases()
    if live < probes then
      h['lease:' .. arg1] = string.format('%.6f', now + lease)
      redis.call('HSET', key, 'lease:' .. arg1, h['lease:' .. arg1])
      admitted = 1
    end
  elseif state == 'closed' then
    admitted = 1
  end
elseif op == 'settle' then
  local sep = string.find(arg2, ':', 1, true)
  local probe_gen, outcome = tonumber(string.sub(arg2, 1, sep - 1)), string.sub(arg2, sep + 1)
  redis.call('HDEL', key, 'lease:' .. arg1)
  h['lease:' .. arg1] = nil
  announce = true
  if state == 'half-open' and probe_gen == gen then
    if outcome == 'S' then
      local successes = redis.call('HINCRBY', key, 'successes', 1)
      if successes >= close_after then close(successes .. ' probe(s) succeeded') end
    elseif outcome == 'F' then
      open('probe failed', true)
    end
  end
elseif op == 'isolate' then
  if state ~= 'isolated' then
    move('isolated', 'manual isolate')
    redis.call('HSET', key, 'opened_at', string.format('%.6f', now))
  end
elseif op == 'close' then
  if state ~= 'closed' then close('manual close') end
elseif op == 'reset' then
  close('manual reset')
elseif op == 'set' then
  if arg1 ~= state then
    if arg1 == 'closed' then close('storage') else move(arg1, 'storage') end
    if arg1 == 'open' then
      open_until = now + duration
      redis.call('HSET', key, 'open_until', string.format('%.6f', open_until))
    end
  end
end

local wait = 0
if state == 'open' then
  wait = math.max(math.ceil((open_until - now) * 1000), 0)
elseif state == 'isolated' then
  wait = -1
elseif state == 'half-open' then
  local live, soonest = live_leases()
  if live >= probes and soonest ~= nil then wait = math.ceil((soonest - now) * 1000) end
end
local opened_at = redis.call('HGET', key, 'opened_at') or ''
local reply = {state, gen, wait, failures, reopens, opened_at, admitted, by, reason or h['reason'] or '',
  string.format('%.0f', version)}
if reason ~= nil or announce then
  redis.call('PUBLISH', channel, table.concat(reply, '\\n') .. '\\n' .. name)
end
return reply
"""
