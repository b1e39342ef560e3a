-- backend_state: what a limit key looks like now, for status and metrics.
--
-- KEYS[1] permits ZSET, KEYS[2] state HASH
-- Returns {permits in use (leases not expired), adaptive limit or '' , paused ms left, base_ms or '',
-- '1' while an adaptive limit is in slow start (never cut, latency not yet rising) else ''}.
local now = now_ms()
local in_use = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local h = redis.call('HMGET', KEYS[2], 'limit', 'paused_until', 'base_ms', 'cut_after', 'steady')
local paused = math.max(0, (tonumber(h[2]) or 0) - now)
return {in_use, h[1] or '', paused, h[3] or '', (h[4] or h[5]) and '' or '1'}
