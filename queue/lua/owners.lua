-- owners: each owner's queued and started tasks in one partition, in one consistent snapshot.
-- Read-only.
--
-- KEYS[1] owners hash {prefix}owners
-- ARGV[1] prefix
-- Returns a flat array of {owner, queued, started, maxInFlight (0: none)}, one per owner with
-- tasks or a `maxInFlight` here.
local prefix = ARGV[1]
local owners = {}
local order = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local what, owner = string.match(fields[i], '^(%a+):(.*)$')
  if what == 'tasks' or what == 'max' then
    local o = owners[owner]
    if not o then
      o = {tasks = 0, max = 0}
      owners[owner] = o
      order[#order + 1] = owner
    end
    o[what] = tonumber(fields[i + 1]) or 0
  end
end
local reply = {}
for _, owner in ipairs(order) do
  local o = owners[owner]
  local queued = owner_queued(prefix, owner)
  reply[#reply + 1] = owner
  reply[#reply + 1] = queued
  reply[#reply + 1] = math.max(o.tasks - queued, 0)
  reply[#reply + 1] = o.max
end
return reply
