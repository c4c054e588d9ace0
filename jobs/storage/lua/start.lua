-- A create was answered: the job runs that interaction (status running) and
-- is due for its first poll. Compare-and-set: only while the job's status is
-- ARGV[2] (queued, or running for a follow-up create) and its interaction id
-- is ARGV[3].
-- KEYS[1] the job   KEYS[2] polls   KEYS[3] counts
-- KEYS[4] the tenant's index of ARGV[2]   KEYS[5] the tenant's index of running
-- KEYS[6] the job's changes stream   KEYS[7] the batch's counts (in a batch)
-- ARGV[1] job id   ARGV[2] the status it must have   ARGV[3] the interaction id
-- it must have   ARGV[4] the first poll's due time (ms)   ARGV[5] the batch id, ''
-- when none   ARGV[6] the changes channel   ARGV[7..] field, value, ... to set
-- A change of status is added to the changes stream and published (watchers).
-- Returns {1, previous status}, or {0, current status} ('' when there is no job).
local jk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if cur ~= ARGV[2] or (redis.call('HGET', jk, 'interaction_id') or '') ~= ARGV[3] then
  return {0, cur}
end
redis.call('HSET', jk, unpack(ARGV, 7))
if cur ~= 'running' then
  redis.call('ZREM', KEYS[4], id)
  redis.call('HINCRBY', KEYS[3], cur, -1)
  redis.call('HINCRBY', KEYS[3], 'running', 1)
  redis.call('ZADD', KEYS[5], redis.call('HGET', jk, 'seq'), id)
  redis.call('HSET', jk, 'status', 'running')
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', 200, '*', 'status', 'running', 'from', cur)
  redis.call('PUBLISH', ARGV[6], 'job:' .. id)
  if ARGV[5] ~= '' then
    redis.call('HINCRBY', KEYS[7], cur, -1)
    redis.call('HINCRBY', KEYS[7], 'running', 1)
    redis.call('PUBLISH', ARGV[6], 'batch:' .. ARGV[5])
  end
end
redis.call('ZADD', KEYS[2], ARGV[4], id)
return {1, cur}
