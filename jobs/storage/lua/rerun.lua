-- A job that ended (failed, expired, cancelled, incomplete) runs again, at most
-- once per attempt: compare-and-set on its status (ARGV[2]) and its attempt
-- number (ARGV[3]). In one step: its record replaced by the fresh one (which
-- keeps the earlier attempts), its status indexes and the counts, back in its
-- dispatch lane, out of the expiry index; in a batch, the batch's counts and
-- done count, and a batch that had ended is in progress again (out of the
-- batch expiry index, its finished_at and final cost cleared). With an Idempotency-Key
-- (ARGV[6] not ''), a key already used returns its value and changes nothing.
-- As every transition does, the change of status goes to the job's changes
-- stream (kept again while the job runs) and is published; a batch that had
-- ended gets its own change too (watchers, jobs/http/sse.py).
-- KEYS[1] the job   KEYS[2] counts   KEYS[3] the tenant's index of ARGV[2]
-- KEYS[4] the tenant's index of queued   KEYS[5] its dispatch lane   KEYS[6] lanes
-- KEYS[7] expiring:jobs   KEYS[8] the Idempotency-Key ('' key name when none)
-- KEYS[9] the job's changes stream
-- in a batch: KEYS[10] the batch   KEYS[11] its counts   KEYS[12] expiring:batches
--             KEYS[13] the batch's changes stream
-- ARGV[1] job id   ARGV[2] the status it must have   ARGV[3] its attempt number
-- ARGV[4] its lane (the member of lanes)   ARGV[5] batch id ('' when none)
-- ARGV[6] the Idempotency-Key's value ('' without one)   ARGV[7] its ttl (s)
-- ARGV[8] the changes channel   ARGV[9..] field, value, ... of the fresh record
-- Returns {1, ''}, {0, current status} when it changed meanwhile, or
-- {2, the key's value} when the Idempotency-Key was used.
local jk, id = KEYS[1], ARGV[1]
if ARGV[6] ~= '' then
  local existing = redis.call('GET', KEYS[8])
  if existing then return {2, existing} end
end
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if cur ~= ARGV[2] or (redis.call('HGET', jk, 'attempt') or '1') ~= ARGV[3] then
  return {0, cur}
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[8], ARGV[6], 'EX', ARGV[7]) end
local seq = redis.call('HGET', jk, 'seq')
redis.call('DEL', jk)
redis.call('HSET', jk, 'seq', seq, unpack(ARGV, 9))
redis.call('ZREM', KEYS[3], id)
redis.call('ZADD', KEYS[4], seq, id)
redis.call('HINCRBY', KEYS[2], cur, -1)
redis.call('HINCRBY', KEYS[2], 'queued', 1)
redis.call('RPUSH', KEYS[5], id)
redis.call('SADD', KEYS[6], ARGV[4])
redis.call('ZREM', KEYS[7], id)
redis.call('XADD', KEYS[9], 'MAXLEN', '~', 200, '*', 'status', 'queued', 'from', cur)
redis.call('PERSIST', KEYS[9])
redis.call('PUBLISH', ARGV[8], 'job:' .. id)
if ARGV[5] ~= '' then
  redis.call('HINCRBY', KEYS[11], cur, -1)
  redis.call('HINCRBY', KEYS[11], 'queued', 1)
  redis.call('HINCRBY', KEYS[10], 'done', -1)
  redis.call('HINCRBY', KEYS[10], 'reruns', 1)
  local was = redis.call('HGET', KEYS[10], 'status')
  if was ~= 'in_progress' then
    redis.call('HSET', KEYS[10], 'status', 'in_progress')
    redis.call('HDEL', KEYS[10], 'finished_at', 'cost_final_nano_usd')
    redis.call('XADD', KEYS[13], 'MAXLEN', '~', 200, '*', 'status', 'in_progress', 'from', was)
    redis.call('PERSIST', KEYS[13])
  end
  redis.call('ZREM', KEYS[12], ARGV[5])
  redis.call('PUBLISH', ARGV[8], 'batch:' .. ARGV[5])
end
return {1, ''}
