-- Shared fragments, prepended to every script by queue/src/scripts.rs.
--
-- Time is Redis server time, so leases and backoffs do not depend on the clocks of the
-- machines that run executors. Scripts are replicated by effects (the Redis 7 default), which
-- makes TIME and XADD '*' safe inside them.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Keys derived from an id carry the namespace's hash tag (it is part of `prefix`), so they
-- live in the same slot as the KEYS the script was called with.
local function task_key(prefix, id)
  return prefix .. 'task:' .. id
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

-- End a task: terminal state, finish time, kept for its TTL in the ended set of that state.
local function finish_as(tkey, id, ended_set, state, ttl_field, now)
  local h = redis.call('HMGET', tkey, 'queue', ttl_field)
  local ttl = tonumber(h[2])
  redis.call('HSET', tkey, 'state', state, 'finished_at', now)
  redis.call('HDEL', tkey, 'lease')
  redis.call('ZADD', ended_set, now + ttl, id)
  expire_task(tkey, ttl)
  return h[1]
end

-- Put a task back at its place in the ready set and wake one blocked consumer.
local function make_ready(tkey, id, ready, signal, seq, now)
  redis.call('HSET', tkey, 'state', 'queued', 'queued_at', now, 'seq', seq)
  redis.call('HDEL', tkey, 'lease', 'worker', 'started_at')
  redis.call('ZADD', ready, seq, id)
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
