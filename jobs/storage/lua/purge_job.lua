-- Delete one job and everything of its own (see jobs/retention.py): the record,
-- its events and their attempt logs, its entries in the tenant's indexes, the
-- counts, inflight:<model>, polls, deliveries, the dead letters and
-- expiring:jobs, its Idempotency-Key (while that still names this job), the iid
-- mappings of its interactions, and its arq steps. The caller read the record
-- first to name every key; if it changed since (ARGV[1] holds what was read),
-- nothing is written and the result is -1: read again and retry.
-- KEYS, in this order (a part in [] only when ARGV[1] says so):
--   the job, its events list, polls, expiring:jobs, deliveries, arq's queue,
--   its changes stream,
--   [the batch's job list, when ARGV[1].list],
--   [when ARGV[1].status ~= '': counts, the tenant's jobs, the tenant's index of
--    that status, inflight:<model>, models, [the Idempotency-Key, when
--    ARGV[1].idem_key ~= ''], then the iid key of each interaction id],
--   per event: the event, its attempt log, [its tenant's dead letters, when
--   ARGV[1].ev_tenants[i] ~= ''],
--   per arq step id in ARGV[1].steps: its arq job key, its arq retry key
-- ARGV[1] JSON, as read: {id, status, tenant, model, idem_key, iids (the raw
--   interaction_ids field), events, ev_tenants, ev_redeliveries, steps, list}
-- Returns 1 if the job existed, 0 if not, -1 if the record changed meanwhile.
local spec = cjson.decode(ARGV[1])
local id = spec.id
local jk, events_list = KEYS[1], KEYS[2]
local k = 7
local function take() k = k + 1; return KEYS[k] end

local j = redis.call('HMGET', jk, 'status', 'tenant', 'model', 'idem_key', 'interaction_ids')
if (j[1] or '') ~= spec.status or (j[2] or '') ~= spec.tenant or (j[3] or '') ~= spec.model
    or (j[4] or '') ~= spec.idem_key or (j[5] or '') ~= spec.iids then
  return -1
end
local evs = redis.call('LRANGE', events_list, 0, -1)
if #evs ~= #spec.events then return -1 end

-- name every key (and check the events) before writing anything
local list = spec.list and take() or nil
local counts, tjobs, tstatus, inflight, models, idem
local iids, iid_keys = {}, {}
if spec.status ~= '' then
  counts = take(); tjobs = take(); tstatus = take(); inflight = take(); models = take()
  if spec.idem_key ~= '' then idem = take() end
  if spec.iids ~= '' then iids = cjson.decode(spec.iids) end
  for n = 1, #iids do iid_keys[n] = take() end
end
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
if k ~= #KEYS then return redis.error_reply('purge_job: KEYS do not match ARGV') end

if list and redis.call('LINDEX', list, 0) == id then redis.call('LPOP', list) end
if spec.status ~= '' then
  redis.call('ZREM', tjobs, id)
  redis.call('ZREM', tstatus, id)
  redis.call('HINCRBY', counts, spec.status, -1)
  if redis.call('ZREM', inflight, id) == 1 and redis.call('EXISTS', inflight) == 0 then
    redis.call('SREM', models, spec.model)
  end
  if idem then
    local v = redis.call('GET', idem)
    if v and string.sub(v, 1, #id + 1) == id .. '|' then redis.call('DEL', idem) end
  end
  for _, ik in ipairs(iid_keys) do
    if redis.call('GET', ik) == id then redis.call('DEL', ik) end
  end
end
for i, eid in ipairs(evs) do
  local e = ev_keys[i]
  if e.dead then redis.call('ZREM', e.dead, eid) end
  redis.call('ZREM', KEYS[5], eid)
  redis.call('DEL', e.key, e.log)
end
redis.call('DEL', events_list)
for i, step in ipairs(spec.steps) do
  redis.call('DEL', steps[i].job, steps[i].retry)
  redis.call('ZREM', KEYS[6], step)
end
redis.call('DEL', jk, KEYS[7])
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
if spec.status ~= '' then return 1 end
return 0
