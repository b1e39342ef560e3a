-- Shared fragments, prepended to every script by queue/src/scripts.rs.
--
-- Time is Redis server time, so leases and backoffs do not depend on the clocks of the
-- machines that run executors. Scripts are replicated by effects (the Redis 7 default), which
-- makes TIME and XADD '*' safe inside them.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Keys derived from an id carry the key prefix's hash tag (it is part of `prefix`), so they
-- live in the same slot as the KEYS the script was called with.
local function task_key(prefix, id)
  return prefix .. 'task:' .. id
end

-- A task's payload lives apart from its hash (see keys.rs), in the same partition.
local function payload_key(prefix, id)
  return prefix .. 'payload:' .. id
end

-- Queued payload bytes (the backlog limits and the stats): `sign` 1 when a task becomes
-- `queued`, -1 when it stops being queued. `acct` is the partition's queued-bytes hash.
-- A task enqueued before its size was recorded counts 0 both ways.
local function count_queued(acct, tkey, sign)
  local h = redis.call('HMGET', tkey, 'input_bytes', 'queue', 'owner')
  local n = tonumber(h[1]) or 0
  if n == 0 then return end
  local fields = {'all', 'queue:' .. h[2]}
  if h[3] then fields[3] = 'owner:' .. h[3] end
  for _, f in ipairs(fields) do
    if redis.call('HINCRBY', acct, f, sign * n) <= 0 then redis.call('HDEL', acct, f) end
  end
end

-- Append a state change to the events stream (bounded, approximately 10k entries).
local function emit(events, id, queue, state, extra)
  local args = {'XADD', events, 'MAXLEN', '~', '10000', '*', 'id', id, 'queue', queue, 'state', state}
  if extra then
    for i = 1, #extra do args[#args + 1] = extra[i] end
  end
  redis.call(unpack(args))
end

-- Keep the most recent 1000 duration samples of a queue.
local function sample(list, value)
  redis.call('LPUSH', list, value)
  redis.call('LTRIM', list, 0, 999)
end

-- Give an ended task (and its idempotency key) its time to live.
local function expire_task(tkey, ttl_ms)
  redis.call('PEXPIRE', tkey, ttl_ms)
  local idem = redis.call('HGET', tkey, 'idem')
  if idem then redis.call('PEXPIRE', idem, ttl_ms) end
end

-- What an ended task keeps of its input. A failed task keeps its payload as long as it can
-- be retried by hand (its failure TTL); a finished or canceled one drops it now, or after
-- its `keep_payload_ms` (at most its own TTL) when inputs are kept for inspection. A task
-- stored before payloads had their own key holds it in the hash field `payload`.
local function end_payload(tkey, pkey, state, ttl)
  if state == 'failed' then
    redis.call('PEXPIRE', pkey, ttl)
    return
  end
  local keep = tonumber(redis.call('HGET', tkey, 'keep_payload_ms')) or 0
  if keep > 0 then
    redis.call('PEXPIRE', pkey, math.min(keep, ttl))
  else
    redis.call('DEL', pkey)
    redis.call('HDEL', tkey, 'payload')
  end
end

-- True while a task's payload is still stored (in its own key, or in the hash for a task
-- stored before payloads had one): the condition for running it again.
local function input_kept(tkey, pkey)
  return redis.call('EXISTS', pkey) == 1 or redis.call('HEXISTS', tkey, 'payload') == 1
end

-- End a task: terminal state, finish time, kept for its TTL in the ended set of that state;
-- its payload (key `pkey`) as `end_payload` says.
local function finish_as(tkey, pkey, id, ended_set, state, ttl_field, now)
  local h = redis.call('HMGET', tkey, 'queue', ttl_field)
  local ttl = tonumber(h[2])
  redis.call('HSET', tkey, 'state', state, 'finished_at', now)
  redis.call('HDEL', tkey, 'lease')
  redis.call('ZADD', ended_set, now + ttl, id)
  expire_task(tkey, ttl)
  end_payload(tkey, pkey, state, ttl)
  return h[1]
end

-- Sequence numbers order a partition's ready set: the server time in microseconds when a task
-- is queued, or one more than the last number given when that is later (a burst of more than
-- one per microsecond, or a clock stepping back). They increase within a partition and, being
-- times, also compare across partitions: executors claim the oldest head first, and a
-- position counts the tasks ahead in every partition. `key` holds the last number given.
-- Returns the first of `n` numbers, as a string (Lua would print a number this large in
-- exponent form and lose its last digits).
local function next_seq(key, n)
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local first = math.max((tonumber(redis.call('GET', key)) or 0) + 1, us)
  redis.call('SET', key, string.format('%d', first + n - 1))
  return string.format('%d', first)
end

-- Fair share between owners (API key names; '' for tasks without one). Besides the queue's
-- ready set, each owner's queued tasks of a queue are in a ready set of their own, and the
-- queue's owners that have queued tasks and may be claimed from are in its turns set, scored
-- by virtual time (start-time fair queueing): a claim takes the oldest task of the owner with
-- the lowest virtual time, whose time then moves on by 1 / its weight. An owner that joins
-- (again) starts at the virtual time of the last claim, or at the time its last claim ended,
-- if later, so an owner gains nothing by leaving and coming back. Per queue, under
-- `base` = '{prefix}q:<queue>:':
--   base .. 'by:' .. owner  ZSET id -> sequence number: the owner's queued tasks
--   base .. 'turns'         ZSET owner -> virtual time of its next claim
--   base .. 'fair'          HASH 'v' the virtual time of the last claim, 'w:<owner>' and
--                           'm:<owner>' an owner's weight and `maxInFlight` (0: none),
--                           'f:<owner>' where an owner that left stopped, 'since' the first
--                           sequence number queued with owners' sets, 'clean' once nothing
--                           queued before it is left
-- Per partition, '{prefix}owners' (HASH 'tasks:<owner>' its tasks queued or started, and
-- 'max:<owner>', its `maxInFlight`) and '{prefix}held:<owner>' (SET of the bases whose turns
-- an owner at its `maxInFlight` was taken out of). An owner's queued tasks are its entries in
-- the queues' 'by:<owner>' sets, and its started tasks the rest of its tasks: a claim, which
-- moves a task from one to the other, writes no count.

-- The queue's key base, from its ready set's key.
local function queue_base(ready)
  return string.sub(ready, 1, -6)
end

-- The partition's key prefix, from a task's key.
local function prefix_of(tkey, id)
  return string.sub(tkey, 1, #tkey - #id - 5)
end

-- The queued tasks of `owner` in the partition at `prefix`: its ready-set entries in every
-- queue the partition has seen.
local function owner_queued(prefix, owner)
  local n = 0
  for _, q in ipairs(redis.call('SMEMBERS', prefix .. 'queues')) do
    n = n + redis.call('ZCARD', prefix .. 'q:' .. q .. ':by:' .. owner)
  end
  return n
end

-- True while `owner` holds as many started tasks as its `maxInFlight` allows. Its started
-- tasks are its tasks (queued or started) less its queued ones, so only an owner with a
-- `maxInFlight` costs more than one read here.
local function at_limit(prefix, owner)
  local h = redis.call('HMGET', prefix .. 'owners', 'max:' .. owner, 'tasks:' .. owner)
  local max = tonumber(h[1]) or 0
  if max == 0 then return false end
  return (tonumber(h[2]) or 0) - owner_queued(prefix, owner) >= max
end

-- Gives `owner` a turn in the queue at `base` (it has queued tasks there), unless it has one,
-- or is at its `maxInFlight`: then it waits in its held set for a started task to end.
local function join_turns(prefix, base, owner)
  local turns = base .. 'turns'
  if redis.call('ZSCORE', turns, owner) then return end
  if owner ~= '' and at_limit(prefix, owner) then
    redis.call('SADD', prefix .. 'held:' .. owner, base)
    return
  end
  local h = redis.call('HMGET', base .. 'fair', 'v', 'f:' .. owner)
  redis.call('ZADD', turns, math.max(tonumber(h[1]) or 0, tonumber(h[2]) or 0), owner)
  if h[2] then redis.call('HDEL', base .. 'fair', 'f:' .. owner) end
end

-- Takes `owner` out of the turns at `base`, remembering where its virtual time stood.
local function leave_turns(base, owner, vt)
  redis.call('ZREM', base .. 'turns', owner)
  redis.call('HSET', base .. 'fair', 'f:' .. owner, vt)
end

-- Puts task `id` (sequence number `seq`) into its owner's ready set of the queue at `base`.
local function fair_add(prefix, base, owner, id, seq)
  redis.call('ZADD', base .. 'by:' .. owner, seq, id)
  redis.call('HSETNX', base .. 'fair', 'since', seq)
  join_turns(prefix, base, owner)
end

-- One of `owner`'s started tasks stopped being started: an owner held at its `maxInFlight`
-- that drops below it gets its turns back.
local function release_held(prefix, owner)
  local held = prefix .. 'held:' .. owner
  if redis.call('EXISTS', held) == 0 or at_limit(prefix, owner) then return end
  for _, base in ipairs(redis.call('SMEMBERS', held)) do
    if redis.call('ZCARD', base .. 'by:' .. owner) > 0 then
      join_turns(prefix, base, owner)
      redis.call('LPUSH', base .. 'signal', '1')
    end
  end
  redis.call('DEL', held)
end

-- Counts a task of `owner` as queued or started (`sign` 1: it was enqueued or comes back
-- from delayed, failed or canceled) or as neither any more (-1).
local function count_owned(prefix, owner, sign)
  if not owner then return end
  local owners = prefix .. 'owners'
  if redis.call('HINCRBY', owners, 'tasks:' .. owner, sign) <= 0 then
    redis.call('HDEL', owners, 'tasks:' .. owner)
  end
end

-- A started task of `tkey` ended, or waits for a retry as `delayed`: it is no longer one of
-- its owner's tasks (see `count_owned`), and the owner may have room again (`release_held`).
-- A task that goes back to the queue stays one: `make_ready` with `back`.
local function left_started(tkey, id)
  local owner = redis.call('HGET', tkey, 'owner')
  if not owner then return end
  local prefix = prefix_of(tkey, id)
  count_owned(prefix, owner, -1)
  release_held(prefix, owner)
end

-- Put a task back at its place in the ready set and wake one blocked consumer; its payload
-- counts as queued again (`acct`, see `count_queued`). `back` when it comes from `started`
-- (a release, an expired lease): still one of its owner's tasks (see `count_owned`), now a
-- queued one, so the owner may have room again (`release_held`).
local function make_ready(tkey, id, ready, signal, seq, now, acct, back)
  count_queued(acct, tkey, 1)
  local prefix, owner = prefix_of(tkey, id), redis.call('HGET', tkey, 'owner')
  if owner and not back then count_owned(prefix, owner, 1) end
  redis.call('HSET', tkey, 'state', 'queued', 'queued_at', now, 'seq', seq)
  redis.call('HDEL', tkey, 'lease', 'worker', 'started_at')
  redis.call('ZADD', ready, seq, id)
  fair_add(prefix, queue_base(ready), owner or '', id, seq)
  if owner and back then release_held(prefix, owner) end
  redis.call('LPUSH', signal, '1')
end

-- The holder check shared by every transition a worker makes on its own task.
-- Returns nil when the caller holds the lease, or an error code for the reply.
local function check_lease(tkey, lease)
  local h = redis.call('HMGET', tkey, 'state', 'lease')
  if not h[1] then return 'not_found' end
  if h[1] ~= 'started' or h[2] ~= lease then return 'lease_lost' end
  return nil
end

-- The outage clock {prefix}:clock (a hash): `seen` is the last time an executor's periodic script
-- (a maintenance pass or a registry beat) ran, `hold_until` the time before which no lease may
-- be reaped. A gap longer than `gap_ms` since `seen` means nobody could reach Redis (it was
-- down, restarted, or every executor was cut off): lease time did not run for anyone, so
-- reaping waits `hold_ms` (a lease) from now, long enough for every live executor to reconnect
-- and heartbeat. A later caller with a longer lease stretches the hold to its own lease, as
-- measured from the same return. Periodic only: no task transition writes here.
-- Returns the hold deadline in ms (0 when there never was one).
local function observe_clock(clock, now, gap_ms, hold_ms)
  local h = redis.call('HMGET', clock, 'seen', 'hold_until', 'back_at')
  local seen, hold, back = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3])
  if seen and now - seen > gap_ms then
    hold = math.max(hold, now + hold_ms)
    redis.call('HSET', clock, 'seen', now, 'hold_until', hold, 'back_at', now, 'gap_ms', now - seen)
  elseif back and now < hold and back + hold_ms > hold then
    hold = back + hold_ms
    redis.call('HSET', clock, 'seen', now, 'hold_until', hold)
  else
    redis.call('HSET', clock, 'seen', now)
  end
  return hold
end

-- A worker repeats a report whose replication was not confirmed (durability `replicated`).
-- The report its lease already made is answered again, marked {'repeat', <first reply>…}, and
-- nothing is applied twice; the WAIT that follows the repeat confirms the original. (Under
-- `local` the caller reads the mark as lease_lost, as before.) Returns nil when this lease
-- made no report.
local function repeated(tkey, lease)
  local done = redis.call('HGET', tkey, 'reported')
  local mark = lease .. ' '
  if done and string.sub(done, 1, #mark) == mark then
    local reply = {'repeat'}
    for part in string.gmatch(string.sub(done, #mark + 1), '%S+') do
      reply[#reply + 1] = part
    end
    return reply
  end
  return nil
end

-- Records a worker's report for `repeated` and returns it as the script's reply.
local function reported(tkey, lease, reply)
  redis.call('HSET', tkey, 'reported', lease .. ' ' .. table.concat(reply, ' '))
  return reply
end
