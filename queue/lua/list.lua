-- list: one page of a per-state index, highest score first (newest for the ready set and
-- the ended sets), with a small summary of each task read in the same atomic step. Read-only.
--
-- KEYS[1] the state's ZSET (ready, active, delayed, finished, failed or canceled)
-- ARGV[1] prefix, ARGV[2] page size, ARGV[3] cursor id ('' for the first page),
-- ARGV[4] cursor score, ARGV[5] '1' when the set holds ended tasks (scores are expiry times)
-- Returns {total, next id or '', next score or '', row, row, ...}; a row is
-- {id, state, kind, queue, enqueued_at, started_at, finished_at, attempts, max_attempts,
--  error_kind, error_msg (first 200 bytes), progress, retry_at, worker, index score}; fields the hash lacks
-- are nil. An index entry whose hash has expired is skipped.
local key, prefix, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local entries
if ARGV[3] == '' then
  entries = redis.call('ZRANGE', key, 0, limit - 1, 'REV', 'WITHSCORES')
else
  -- The cursor is the last entry of the previous page. While it is still in the set its
  -- rank is exact (ties included); once it has left, continue below its score.
  local rank = redis.call('ZREVRANK', key, ARGV[3])
  if rank then
    entries = redis.call('ZRANGE', key, rank + 1, rank + limit, 'REV', 'WITHSCORES')
  else
    -- The order is (score, id) descending, as ZREVRANK counts. Entries at the cursor's score
    -- come after it when their id sorts before the cursor's (the cursor may be from another
    -- partition's set, where it has equals here).
    local score = tonumber(ARGV[4])
    local ties = math.min(redis.call('ZCOUNT', key, ARGV[4], ARGV[4]), 1000)
    local got = redis.call('ZRANGE', key, ARGV[4], '-inf', 'BYSCORE', 'REV',
      'LIMIT', 0, limit + ties, 'WITHSCORES')
    entries = {}
    for i = 1, #got, 2 do
      if #entries / 2 == limit then break end
      if not (tonumber(got[i + 1]) == score and got[i] >= ARGV[3]) then
        entries[#entries + 1] = got[i]
        entries[#entries + 1] = got[i + 1]
      end
    end
  end
end

local total
if ARGV[5] == '1' then
  total = redis.call('ZCOUNT', key, '(' .. now_ms(), '+inf')
else
  total = redis.call('ZCARD', key)
end

local out = {total, '', ''}
if #entries / 2 == limit then
  out[2] = entries[#entries - 1]
  out[3] = entries[#entries]
end
for i = 1, #entries, 2 do
  local id = entries[i]
  local h = redis.call('HMGET', task_key(prefix, id), 'state', 'kind', 'queue', 'enqueued_at',
    'started_at', 'finished_at', 'attempts', 'max_attempts', 'error_kind', 'error_msg',
    'progress', 'retry_at', 'worker')
  if h[1] then
    if h[10] then h[10] = string.sub(h[10], 1, 200) end
    out[#out + 1] = {id, h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11],
      h[12], h[13], entries[i + 1]}
  end
end
return out
