-- heads: the next tasks of some queues in the order this partition's claims would take them
-- (read only; a claim across partitions is planned from every partition's answer). The order
-- is that of `claim`: first a task queued before owners had ready sets of their own (the
-- ready set's head, older than 'since', in no owner's set), then turns between owners by
-- virtual time (see common.lua). Owners held at their `maxInFlight` are not in the turns.
--
-- KEYS[i] the ready set {prefix}:q:<queue>:ready of each queue
-- ARGV[1] prefix, ARGV[2] k, the most tasks to look ahead per queue
-- Returns per queue (in KEYS order) a flat array of up to k triples {sequence number, owner,
-- weight}, next first.
local prefix, k = ARGV[1], tonumber(ARGV[2])
local out = {}
for q = 1, #KEYS do
  local ready = KEYS[q]
  local base = queue_base(ready)
  local fair = base .. 'fair'
  local list = {}
  local since = redis.call('HGET', fair, 'since')
  local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #head > 0 and (not since or tonumber(head[2]) < tonumber(since)) then
    local owner = redis.call('HGET', task_key(prefix, head[1]), 'owner') or ''
    if not redis.call('ZSCORE', base .. 'by:' .. owner, head[1]) then
      list = {head[2], owner, '1'}
    end
  end
  if #list == 0 then
    local turns = redis.call('ZRANGE', base .. 'turns', 0, k - 1, 'WITHSCORES')
    -- Each owner in turn: {name, virtual time, weight, tasks looked at}.
    local owners = {}
    for i = 1, #turns, 2 do
      local w = tonumber(redis.call('HGET', fair, 'w:' .. turns[i])) or 1
      owners[#owners + 1] = {turns[i], tonumber(turns[i + 1]), w, 0}
    end
    while #list < 3 * k and #owners > 0 do
      local best = 1
      for i = 2, #owners do
        if owners[i][2] < owners[best][2] then best = i end
      end
      local o = owners[best]
      local next = redis.call('ZRANGE', base .. 'by:' .. o[1], o[4], o[4], 'WITHSCORES')
      if #next == 0 then
        table.remove(owners, best)
      else
        list[#list + 1] = next[2]; list[#list + 1] = o[1]; list[#list + 1] = tostring(o[3])
        o[2] = o[2] + 1 / o[3]
        o[4] = o[4] + 1
      end
    end
  end
  out[q] = list
end
return out
