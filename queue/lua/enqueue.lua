-- enqueue: create tasks in state `queued`, in the order given, or return the live task that
-- already holds a task's idempotency key. One call carries one task (`Broker::enqueue`) or a
-- batch (`Broker::enqueue_many`). Per task it writes the task hash, its payload key, its
-- ready entry and its event; the clock, the sequence counter, the counters, the wake-up
-- tokens and the ready-set insert are one command per call (per queue), however many tasks
-- it carries.
--
-- The payload goes to a key of its own and the hash keeps a summary of it (sizes, image
-- type, digest): reading a task's state never carries its input. A small payload is an
-- argument; a large one was written beforehand to its staging key, in pieces, and is renamed
-- into place here, so no command carries it whole. A staging key left over (a replay, a
-- refusal) is deleted; one whose enqueue never comes expires. The new tasks' payload
-- bytes must fit under this partition's share of the backlog limits (all queued tasks, and
-- the queued tasks of each owner); when they do not, nothing is written.
--
-- KEYS[1] events stream      {prefix}:events
-- KEYS[2] sequence counter   {prefix}:seq
-- KEYS[3] known queues set   {prefix}:queues
-- KEYS[4] queued-bytes hash  {prefix}:queued_bytes
-- then for each queue j of the call (m = ARGV[2]), at KEYS[5 + 3(j-1)]:
--   ready set {prefix}:q:<queue>:ready, counters hash {prefix}:q:<queue>:counters,
--   wake-up list {prefix}:q:<queue>:signal
-- then for each task i, at KEYS[5 + 3m + 4(i-1)]:
--   task hash {prefix}:task:<id>, idempotency key {prefix}:idem:<key> (the sequence key when none),
--   payload {prefix}:payload:<id>, staging key {prefix}:staging:<id>
-- ARGV[1] prefix, ARGV[2] m, ARGV[3] limit on all queued payload bytes (0: none),
-- ARGV[4] limit on one owner's queued payload bytes (0: none), ARGV[5] o, the number of owners
--   with settings
-- then for each such owner, 4 values from ARGV[6 + 4(o-1)]: name, weight, maxQueued (0: none),
--   maxInFlight (0: none)
-- then for each queue j, 8 values from ARGV[6 + 4o + 8(j-1)]: name, max attempts, timeout ms,
--   result TTL ms, failure TTL ms, backoff base ms, backoff max ms, keep-payload ms
-- then for each task i, 13 values from ARGV[6 + 4o + 8m + 13(i-1)]: id, queue number j, kind,
--   payload JSON ('' when it is in the staging key), idempotency key ('' for none), owner
--   ('' for none), payload bytes, image
--   bytes ('' for none), image type ('' for none), payload SHA-256 (hex), brief JSON (the
--   payload without its image), W3C traceparent and tracestate ('' for none)
-- Returns, per task in order, {created 1|0, id, queue}: a task whose key names a live task
-- (made earlier, or by an earlier task of this call) gets that task's id and queue. Or, when
-- the new payloads do not fit, {'over_limit', 'all'|'owner', limit, bytes queued now, bytes
-- asked for}, or when an owner's new tasks do not fit under its maxQueued, {'over_limit',
-- 'owner_tasks', maxQueued, tasks queued now, tasks asked for}; then nothing is written; or
-- {'staging_lost', id} when a staged payload is not whole in its staging key (it expired
-- before this call) and nothing is written.
local prefix, m, o = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local limit_all, limit_owner = tonumber(ARGV[3]), tonumber(ARGV[4])
local obase = 6
local qbase = obase + 4 * o
local tbase = qbase + 8 * m
local n = (#ARGV - tbase + 1) / 13
local acct = KEYS[4]

-- The staging key of task i when its payload was staged, else nil.
local function staged(i)
  if ARGV[tbase + 13 * i + 3] ~= '' then return nil end
  return KEYS[8 + 3 * m + 4 * i]
end

-- Deletes the staging keys of the tasks `list` (indexes) that have one.
local function drop_staged(list)
  for _, i in ipairs(list) do
    local skey = staged(i)
    if skey then redis.call('DEL', skey) end
  end
end

local reply = {}
local create = {}
-- Idempotency keys taken by this call: key name -> {id, queue} (made on first use: most calls
-- carry no key, and every table costs a single enqueue time).
local taken

for i = 0, n - 1 do
  local a = tbase + 13 * i
  local id, j, idem = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 4]
  local queue = ARGV[qbase + 8 * (j - 1)]
  local ikey = KEYS[6 + 3 * m + 4 * i]
  local found
  if idem ~= '' then
    found = taken and taken[ikey]
    if not found then
      local existing = redis.call('GET', ikey)
      if existing then
        local q = redis.call('HGET', task_key(prefix, existing), 'queue')
        if q then found = {existing, q} end
      end
    end
  end
  if found then
    drop_staged({i})
    reply[#reply + 1] = 0; reply[#reply + 1] = found[1]; reply[#reply + 1] = found[2]
  else
    if idem ~= '' then
      taken = taken or {}
      taken[ikey] = {id, queue}
    end
    create[#create + 1] = i
    reply[#reply + 1] = 1; reply[#reply + 1] = id; reply[#reply + 1] = queue
  end
end

if #create == 0 then return reply end

for _, i in ipairs(create) do
  local skey = staged(i)
  if skey and redis.call('STRLEN', skey) ~= tonumber(ARGV[tbase + 13 * i + 6]) then
    drop_staged(create)
    return {'staging_lost', ARGV[tbase + 13 * i]}
  end
end

-- The backlog limits: refuse before writing anything. Replays above take no room.
local owners = prefix .. 'owners'
if o > 0 then
  local asked = {}
  for _, i in ipairs(create) do
    local owner = ARGV[tbase + 13 * i + 5]
    asked[owner] = (asked[owner] or 0) + 1
  end
  for x = 0, o - 1 do
    local name, max = ARGV[obase + 4 * x], tonumber(ARGV[obase + 4 * x + 2])
    if max > 0 and asked[name] then
      local held = owner_queued(prefix, name)
      if held + asked[name] > max then
        drop_staged(create)
        return {'over_limit', 'owner_tasks', max, held, asked[name]}
      end
    end
  end
end
if limit_all > 0 or limit_owner > 0 then
  local asked, by_owner = 0, {}
  for _, i in ipairs(create) do
    local a = tbase + 13 * i
    local bytes, owner = tonumber(ARGV[a + 6]), ARGV[a + 5]
    asked = asked + bytes
    if owner ~= '' then by_owner[owner] = (by_owner[owner] or 0) + bytes end
  end
  if limit_all > 0 then
    local held = tonumber(redis.call('HGET', acct, 'all')) or 0
    if held + asked > limit_all then
      drop_staged(create)
      return {'over_limit', 'all', limit_all, held, asked}
    end
  end
  if limit_owner > 0 then
    for owner, bytes in pairs(by_owner) do
      local held = tonumber(redis.call('HGET', acct, 'owner:' .. owner)) or 0
      if held + bytes > limit_owner then
        drop_staged(create)
        return {'over_limit', 'owner', limit_owner, held, bytes}
      end
    end
  end
end

-- Owners' settings travel with their tasks: claims read them.
for x = 0, o - 1 do
  local at = obase + 4 * x
  local name, max_in_flight = ARGV[at], tonumber(ARGV[at + 3])
  for j = 0, m - 1 do
    redis.call('HSET', prefix .. 'q:' .. ARGV[qbase + 8 * j] .. ':fair', 'w:' .. name, ARGV[at + 1],
      'm:' .. name, max_in_flight)
  end
  if max_in_flight > 0 then
    redis.call('HSET', owners, 'max:' .. name, max_in_flight)
    -- Its started tasks are counted from its queued ones in every known queue (`at_limit`):
    -- the queues of this call are known before their tasks join.
    for j = 0, m - 1 do redis.call('SADD', KEYS[3], ARGV[qbase + 8 * j]) end
  else
    redis.call('HDEL', owners, 'max:' .. name)
  end
end

local now = now_ms()
local seq = tonumber(next_seq(KEYS[2], #create)) - 1
-- Per queue: ready-set members (score, id, ...), two per task created.
local ready = {}

for _, i in ipairs(create) do
  local a = tbase + 13 * i
  local id, j, idem, owner = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 4], ARGV[a + 5]
  local q = qbase + 8 * (j - 1)
  local queue = ARGV[q]
  local k = 5 + 3 * m + 4 * i
  local tkey, ikey, pkey = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  seq = seq + 1
  local sseq = string.format('%d', seq)
  local fields = {
    'id', id, 'kind', ARGV[a + 2], 'queue', queue, 'state', 'queued',
    'attempts', 0, 'max_attempts', ARGV[q + 1], 'timeout_ms', ARGV[q + 2],
    'result_ttl_ms', ARGV[q + 3], 'failure_ttl_ms', ARGV[q + 4],
    'backoff_base_ms', ARGV[q + 5], 'backoff_max_ms', ARGV[q + 6],
    'keep_payload_ms', ARGV[q + 7],
    'enqueued_at', now, 'queued_at', now, 'seq', sseq, 'progress', 0, 'cancel', 0,
    'input_bytes', ARGV[a + 6], 'input_sha256', ARGV[a + 9], 'input_brief', ARGV[a + 10],
  }
  if ARGV[a + 7] ~= '' then
    fields[#fields + 1] = 'image_bytes'; fields[#fields + 1] = ARGV[a + 7]
  end
  if ARGV[a + 8] ~= '' then
    fields[#fields + 1] = 'image_type'; fields[#fields + 1] = ARGV[a + 8]
  end
  if idem ~= '' then
    fields[#fields + 1] = 'idem_key'; fields[#fields + 1] = idem
    fields[#fields + 1] = 'idem'; fields[#fields + 1] = ikey
    -- No TTL while the task lives; it gets the task's TTL when the task ends.
    redis.call('SET', ikey, id)
  end
  if owner ~= '' then
    fields[#fields + 1] = 'owner'; fields[#fields + 1] = owner
  end
  -- Only traced submissions carry a trace context; a task without one has neither field.
  if ARGV[a + 11] ~= '' then
    fields[#fields + 1] = 'traceparent'; fields[#fields + 1] = ARGV[a + 11]
    if ARGV[a + 12] ~= '' then
      fields[#fields + 1] = 'tracestate'; fields[#fields + 1] = ARGV[a + 12]
    end
  end
  redis.call('HSET', tkey, unpack(fields))
  local skey = staged(i)
  if skey then
    redis.call('RENAME', skey, pkey)
    redis.call('PERSIST', pkey)
  else
    redis.call('SET', pkey, ARGV[a + 3])
  end
  count_queued(acct, tkey, 1)
  if owner ~= '' then count_owned(prefix, owner, 1) end
  fair_add(prefix, prefix .. 'q:' .. queue .. ':', owner, id, sseq)
  local members = ready[j]
  if not members then
    members = {}
    ready[j] = members
  end
  members[#members + 1] = sseq; members[#members + 1] = id
  emit(KEYS[1], id, queue, 'queued')
end

for j, members in pairs(ready) do
  local k = 5 + 3 * (j - 1)
  local c = #members / 2
  redis.call('ZADD', KEYS[k], unpack(members))
  -- One wake-up token per new task, as if each had been enqueued alone.
  if c == 1 then
    redis.call('LPUSH', KEYS[k + 2], '1')
  else
    local tokens = {}
    for t = 1, c do tokens[t] = '1' end
    redis.call('LPUSH', KEYS[k + 2], unpack(tokens))
  end
  -- The known-queues set changes only on a queue's first task: the running total starts
  -- there, so it tells when, without a write per task.
  if redis.call('HINCRBY', KEYS[k + 1], 'enqueued', c) == c then
    redis.call('SADD', KEYS[3], ARGV[qbase + 8 * (j - 1)])
  end
end
return reply
