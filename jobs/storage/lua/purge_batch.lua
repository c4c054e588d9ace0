-- Delete a batch's own keys once its jobs are gone (see jobs/retention.py): the
-- record, its counts, its job list, its events and their attempt logs, its
-- dispatch lane, its batch_done step and its entry in expiring:batches. The
-- caller read the record first to name every key; if it changed since, or the
-- batch still has jobs, nothing is written and the result is -1: purge its
-- jobs, read again and retry.
-- KEYS, in this order (a part in [] only when ARGV[1] says so):
--   the batch, its counts, its job list, its events list, expiring:batches,
--   deliveries, arq's queue, its changes stream, [its dispatch lane and lanes, when ARGV[1].tenant ~= ''],
--   per event: the event, its attempt log, [its tenant's dead letters, when
--   ARGV[1].ev_tenants[i] ~= ''],
--   per arq step id in ARGV[1].steps: its arq job key, its arq retry key
-- ARGV[1] JSON, as read: {id, tenant, lane, events, ev_tenants, ev_redeliveries, steps}
-- Returns 1 if the batch existed, 0 if not, -1 to retry.
local spec = cjson.decode(ARGV[1])
local bk, events_list = KEYS[1], KEYS[4]
local k = 8
local function take() k = k + 1; return KEYS[k] end

if redis.call('LLEN', KEYS[3]) > 0 then return -1 end
if (redis.call('HGET', bk, 'tenant') or '') ~= spec.tenant then return -1 end
local evs = redis.call('LRANGE', events_list, 0, -1)
if #evs ~= #spec.events then return -1 end

local lane, lanes
if spec.tenant ~= '' then lane = take(); lanes = take() end
local ev_keys = {}
for i, eid in ipairs(evs) do
  if eid ~= spec.events[i] then return -1 end
  local e = {key = take(), log = take()}
  if spec.ev_tenants[i] ~= '' then e.dead = take() end
  local ev = redis.call('HMGET', e.key, 'tenant', 'redeliveries')
  if (ev[1] or '') ~= spec.ev_tenants[i] or (ev[2] or '') ~= spec.ev_redeliveries[i] then
    return -1
  end
  ev_keys[i] = e
end
local steps = {}
for i = 1, #spec.steps do steps[i] = {job = take(), retry = take()} end
if k ~= #KEYS then return redis.error_reply('purge_batch: KEYS do not match ARGV') end

if lane then
  redis.call('UNLINK', lane)
  redis.call('SREM', lanes, spec.lane)
end
for i, eid in ipairs(evs) do
  local e = ev_keys[i]
  if e.dead then redis.call('ZREM', e.dead, eid) end
  redis.call('ZREM', KEYS[6], eid)
  redis.call('DEL', e.key, e.log)
end
redis.call('DEL', events_list)
for i, step in ipairs(spec.steps) do
  redis.call('DEL', steps[i].job, steps[i].retry)
  redis.call('ZREM', KEYS[7], step)
end
redis.call('DEL', bk, KEYS[2], KEYS[8])
redis.call('ZREM', KEYS[5], spec.id)
if spec.tenant ~= '' then return 1 end
return 0
