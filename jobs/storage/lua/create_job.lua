-- A new job: its record, its entries in the tenant's indexes and the counts,
-- its dispatch lane, the batch's job list (in a batch) and its Idempotency-Key
-- (with one), all at once.
-- KEYS[1] the job   KEYS[2] seq   KEYS[3] counts   KEYS[4] the tenant's jobs
-- KEYS[5] the tenant's index of the job's status   KEYS[6] its dispatch lane
-- KEYS[7] lanes   then, in this order, only when ARGV says so:
-- the Idempotency-Key (ARGV[4] not ''), the batch's job list (ARGV[6] = '1')
-- ARGV[1] job id   ARGV[2] its status   ARGV[3] its lane (the member of lanes)
-- ARGV[4] the Idempotency-Key's value ('' without one)   ARGV[5] its ttl (s)
-- ARGV[6] '1' when the job is in a batch
-- ARGV[7] the record: one JSON object, field -> value (strings), as cheaper to
-- send than a flat field, value, ... list (one argument to encode, not ~80)
-- Returns {1, seq}, or {0, the key's value} when the Idempotency-Key was used.
local k = 7
local idem, batch_jobs
if ARGV[4] ~= '' then k = k + 1; idem = KEYS[k] end
if ARGV[6] == '1' then k = k + 1; batch_jobs = KEYS[k] end
if idem then
  local existing = redis.call('GET', idem)
  if existing then return {0, existing} end
  redis.call('SET', idem, ARGV[4], 'EX', ARGV[5])
end
local id = ARGV[1]
local seq = redis.call('INCR', KEYS[2])
local flat = {'seq', seq}
for f, v in pairs(cjson.decode(ARGV[7])) do
  flat[#flat + 1] = f
  flat[#flat + 1] = v
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('ZADD', KEYS[4], seq, id)
redis.call('ZADD', KEYS[5], seq, id)
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('RPUSH', KEYS[6], id)
redis.call('SADD', KEYS[7], ARGV[3])
if batch_jobs then redis.call('RPUSH', batch_jobs, id) end
return {1, tostring(seq)}
