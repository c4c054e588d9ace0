-- A job ends (completed, failed, cancelled, incomplete, expired), at most once.
-- Compare-and-set: only while its status is ARGV[3] and its interaction id is
-- ARGV[4]. In one step: its fields, its status indexes and the counts, its
-- in-flight slot given back, out of the poll index, its event (the outbox) in
-- the delivery index, and its expiry; in a batch, the batch's counts instead of
-- an expiry of its own, and when it is the batch's last job, the batch's expiry
-- and its batch_done step.
-- KEYS[1] the job   KEYS[2] its events list   KEYS[3] the new event
-- KEYS[4] deliveries   KEYS[5] polls   KEYS[6] counts
-- KEYS[7] the tenant's index of ARGV[3]   KEYS[8] the tenant's index of ARGV[2]
-- KEYS[9] inflight:<model>   KEYS[10] models   KEYS[11] the job's changes stream
-- without a batch: KEYS[12] expiring:jobs
-- in a batch: KEYS[12] the batch   KEYS[13] its counts   KEYS[14] expiring:batches
--             KEYS[15] arq's queue   KEYS[16] the batch_done step's arq job key
-- ARGV[1] job id   ARGV[2] the status it ends in   ARGV[3] the status it must have
-- ARGV[4] the interaction id it must have   ARGV[5] model   ARGV[6] event id
-- ARGV[7] the event's delivery due time (ms), '' when it has nowhere to go
-- ARGV[8] when it is purged (ms)   ARGV[9] batch id, '' when none
-- ARGV[10..13] the batch_done step: id, payload, score, px ('' without a batch)
-- ARGV[14] the changes channel   ARGV[15] how long the changes stream is kept now (ms)
-- ARGV[16] n   ARGV[17 .. 16+2n] job field, value, ...   then event field, value, ...
-- The change of status is added to the changes stream and published (watchers;
-- in a batch the batch's id too: its counts changed); the stream then expires.
-- Returns {1, previous status}, or {0, current status} ('' when there is no job).
local jk, id, new = KEYS[1], ARGV[1], ARGV[2]
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if cur ~= ARGV[3] or (redis.call('HGET', jk, 'interaction_id') or '') ~= ARGV[4] then
  return {0, cur}
end
local last = 16 + 2 * tonumber(ARGV[16])
redis.call('HSET', jk, unpack(ARGV, 17, last))
if new ~= cur then
  redis.call('ZREM', KEYS[7], id)
  redis.call('HINCRBY', KEYS[6], cur, -1)
  redis.call('HINCRBY', KEYS[6], new, 1)
  redis.call('ZADD', KEYS[8], redis.call('HGET', jk, 'seq'), id)
  redis.call('HSET', jk, 'status', new)
  redis.call('ZREM', KEYS[9], id)
  if redis.call('EXISTS', KEYS[9]) == 0 then redis.call('SREM', KEYS[10], ARGV[5]) end
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', 200, '*', 'status', new, 'from', cur)
  redis.call('PEXPIRE', KEYS[11], ARGV[15])
  redis.call('PUBLISH', ARGV[14], 'job:' .. id)
  local batch = ARGV[9]
  if batch ~= '' then
    redis.call('HINCRBY', KEYS[13], cur, -1)
    redis.call('HINCRBY', KEYS[13], new, 1)
    local done = redis.call('HINCRBY', KEYS[12], 'done', 1)
    if tostring(done) == redis.call('HGET', KEYS[12], 'total') then
      redis.call('SET', KEYS[16], ARGV[11], 'PX', ARGV[13])
      redis.call('ZADD', KEYS[15], ARGV[12], ARGV[10])
      redis.call('ZADD', KEYS[14], ARGV[8], batch)
    end
    redis.call('PUBLISH', ARGV[14], 'batch:' .. batch)
  else
    redis.call('ZADD', KEYS[12], ARGV[8], id)
  end
end
redis.call('HSET', KEYS[3], unpack(ARGV, last + 1))
redis.call('RPUSH', KEYS[2], ARGV[6])
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6]) end
redis.call('ZREM', KEYS[5], id)
return {1, cur}
