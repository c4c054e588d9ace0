-- The interaction needs function results (requires_action): the job pauses,
-- gives its in-flight slot back, fires job.requires_action (the outbox) and
-- waits in the poll index until its deadline, where the poll engine expires it
-- if it is still paused. Compare-and-set: only while the job is running with
-- interaction id ARGV[2].
-- KEYS[1] the job   KEYS[2] its events list   KEYS[3] the new event
-- KEYS[4] deliveries   KEYS[5] polls   KEYS[6] counts
-- KEYS[7] the tenant's index of running   KEYS[8] ... of requires_action
-- KEYS[9] inflight:<model>   KEYS[10] models
-- KEYS[11] the job's changes stream   KEYS[12] the batch's counts (in a batch)
-- ARGV[1] job id   ARGV[2] the interaction id it must have   ARGV[3] event id
-- ARGV[4] the event's delivery due time (ms), '' when it has nowhere to go
-- ARGV[5] the deadline (ms)   ARGV[6] the job's model   ARGV[7] the batch id, ''
-- when none   ARGV[8] the changes channel
-- ARGV[9] n   ARGV[10 .. 9+2n] job field, value, ...   then event field, value, ...
-- The change of status is added to the changes stream and published (watchers).
-- Returns {1, previous status}, or {0, current status} ('' when there is no job).
local jk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if cur ~= 'running' or (redis.call('HGET', jk, 'interaction_id') or '') ~= ARGV[2] then
  return {0, cur}
end
local last = 9 + 2 * tonumber(ARGV[9])
redis.call('HSET', jk, unpack(ARGV, 10, last))
redis.call('ZREM', KEYS[7], id)
redis.call('HINCRBY', KEYS[6], 'running', -1)
redis.call('HINCRBY', KEYS[6], 'requires_action', 1)
redis.call('ZADD', KEYS[8], redis.call('HGET', jk, 'seq'), id)
redis.call('HSET', jk, 'status', 'requires_action')
redis.call('ZREM', KEYS[9], id)
if redis.call('EXISTS', KEYS[9]) == 0 then redis.call('SREM', KEYS[10], ARGV[6]) end
redis.call('XADD', KEYS[11], 'MAXLEN', '~', 200, '*', 'status', 'requires_action', 'from', cur)
redis.call('PUBLISH', ARGV[8], 'job:' .. id)
if ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[12], 'running', -1)
  redis.call('HINCRBY', KEYS[12], 'requires_action', 1)
  redis.call('PUBLISH', ARGV[8], 'batch:' .. ARGV[7])
end
redis.call('HSET', KEYS[3], unpack(ARGV, last + 1))
redis.call('RPUSH', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3]) end
redis.call('ZADD', KEYS[5], ARGV[5], id)
return {1, cur}
