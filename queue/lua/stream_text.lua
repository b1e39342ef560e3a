-- stream_text: the answer text the task's current run has streamed so far.
--
-- KEYS[1] task hash, KEYS[2] the task's text so far
-- Returns {attempt, seq, text, run} while the task runs and its current run has streamed,
-- else {} (queued, ended, or nothing streamed yet in this run).
local h = redis.call('HMGET', KEYS[1], 'state', 'lease', 'stream_lease', 'stream_attempt',
  'stream_seq', 'stream_run')
if h[1] ~= 'started' or not h[2] or h[2] ~= h[3] then return {} end
local text = redis.call('GET', KEYS[2])
if not text then return {} end
return {h[4], h[5], text, h[6]}
