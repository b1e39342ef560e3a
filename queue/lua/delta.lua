-- delta: the lease holder appends a piece of generated answer text to the task's text so far
-- and announces it as a `started` event carrying the piece. Each run of a task (each lease)
-- streams afresh: its first piece replaces what an earlier run streamed, numbered 1, and the
-- run gets the next run number (attempt numbers repeat after a retry by hand; runs do not).
--
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] the task's text so far
-- ARGV[1] id, ARGV[2] lease token, ARGV[3] the piece of text
-- Returns {'ok', attempt, seq, cancel_requested 0|1, run} or {'not_found'} / {'lease_lost'}.
local tkey, id, lease = KEYS[1], ARGV[1], ARGV[2]
local refused = check_lease(tkey, lease)
if refused then return {refused} end

local h = redis.call('HMGET', tkey, 'attempts', 'stream_lease', 'stream_seq', 'queue',
  'timeout_ms', 'cancel', 'stream_run')
local attempt = tonumber(h[1]) or 0
local run = tonumber(h[7]) or 0
local seq = 1
if h[2] == lease then
  seq = (tonumber(h[3]) or 0) + 1
  redis.call('APPEND', KEYS[3], ARGV[3])
else
  run = run + 1
  redis.call('SET', KEYS[3], ARGV[3])
end
-- Kept while it can be useful: a task that streams nothing for its timeout has ended.
redis.call('PEXPIRE', KEYS[3], math.max(tonumber(h[5]) or 0, 60000))
redis.call('HSET', tkey, 'stream_lease', lease, 'stream_attempt', attempt, 'stream_seq', seq,
  'stream_run', run)
emit(KEYS[2], id, h[4], 'started',
  {'delta', ARGV[3], 'attempt', attempt, 'seq', seq, 'run', run})
return {'ok', attempt, seq, tonumber(h[6]) or 0, run}
