-- The job sends a follow-up create (a continue after requires_action, a
-- continuation token, or a create sent again after an answer with another
-- job's label): status running, the body to send on the record, its submit
-- step queued, out of the poll index. Coming from requires_action it counts in
-- flight again until it ends or pauses. Compare-and-set: only while its status
-- is ARGV[2] and its interaction id is ARGV[3].
-- KEYS[1] the job   KEYS[2] polls   KEYS[3] counts
-- KEYS[4] the tenant's index of ARGV[2]   KEYS[5] the tenant's index of running
-- KEYS[6] inflight:<model>   KEYS[7] models   KEYS[8] arq's queue
-- KEYS[9] the submit step's arq job key
-- KEYS[10] the job's changes stream   KEYS[11] the batch's counts (in a batch)
-- ARGV[1] job id   ARGV[2] the status it must have (requires_action or running)
-- ARGV[3] the interaction id it must have   ARGV[4] now (ms)   ARGV[5] model
-- ARGV[6] the batch id, '' when none   ARGV[7..10] the submit step: id, payload,
-- score, px   ARGV[11] the changes channel   ARGV[12..] field, value, ... to set
-- A change of status is added to the changes stream and published (watchers).
-- Returns {1, previous status}, or {0, current status} ('' when there is no job).
local jk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if cur ~= ARGV[2] or (redis.call('HGET', jk, 'interaction_id') or '') ~= ARGV[3] then
  return {0, cur}
end
redis.call('HSET', jk, unpack(ARGV, 12))
if cur ~= 'running' then
  redis.call('ZREM', KEYS[4], id)
  redis.call('HINCRBY', KEYS[3], cur, -1)
  redis.call('HINCRBY', KEYS[3], 'running', 1)
  redis.call('ZADD', KEYS[5], redis.call('HGET', jk, 'seq'), id)
  redis.call('HSET', jk, 'status', 'running')
  if cur == 'requires_action' then
    redis.call('ZADD', KEYS[6], ARGV[4], id)
    redis.call('SADD', KEYS[7], ARGV[5])
  end
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', 200, '*', 'status', 'running', 'from', cur)
  redis.call('PUBLISH', ARGV[11], 'job:' .. id)
  if ARGV[6] ~= '' then
    redis.call('HINCRBY', KEYS[11], cur, -1)
    redis.call('HINCRBY', KEYS[11], 'running', 1)
    redis.call('PUBLISH', ARGV[11], 'batch:' .. ARGV[6])
  end
end
redis.call('ZREM', KEYS[2], id)
if redis.call('EXISTS', KEYS[9]) == 0 then
  redis.call('SET', KEYS[9], ARGV[8], 'PX', ARGV[10])
  redis.call('ZADD', KEYS[8], ARGV[9], ARGV[7])
end
return {1, cur}
