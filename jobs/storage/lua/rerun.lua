-- A job that ended (failed, expired, cancelled, incomplete) runs again, at most
-- once per attempt: compare-and-set on its status (ARGV[2]) and its attempt
-- number (ARGV[3]). In one step: its record replaced by the fresh one (which
-- keeps the earlier attempts), its status indexes and the counts, back in its
-- dispatch lane, out of the expiry index; in a batch, the batch's counts and
-- done count, and a batch that had ended is in progress again (out of the
-- batch expiry index, its finished_at and final cost cleared). With an Idempotency-Key
-- (ARGV[6] not ''), a key already used returns its value and changes nothing.
-- KEYS[1] the job   KEYS[2] counts   KEYS[3] the tenant's index of ARGV[2]
-- KEYS[4] the tenant's index of queued   KEYS[5] its dispatch lane   KEYS[6] lanes
-- KEYS[7] expiring:jobs   KEYS[8] the Idempotency-Key ('' key name when none)
-- in a batch: KEYS[9] the batch   KEYS[10] its counts   KEYS[11] expiring:batches
-- ARGV[1] job id   ARGV[2] the status it must have   ARGV[3] its attempt number
-- ARGV[4] its lane (the member of lanes)   ARGV[5] batch id ('' when none)
-- ARGV[6] the Idempotency-Key's value ('' without one)   ARGV[7] its ttl (s)
-- ARGV[8..] field, value, ... of the fresh record
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
redis.call('HSET', jk, 'seq', seq, unpack(ARGV, 8))
redis.call('ZREM', KEYS[3], id)
redis.call('ZADD', KEYS[4], seq, id)
redis.call('HINCRBY', KEYS[2], cur, -1)
redis.call('HINCRBY', KEYS[2], 'queued', 1)
redis.call('RPUSH', KEYS[5], id)
redis.call('SADD', KEYS[6], ARGV[4])
redis.call('ZREM', KEYS[7], id)
if ARGV[5] ~= '' then
  redis.call('HINCRBY', KEYS[10], cur, -1)
  redis.call('HINCRBY', KEYS[10], 'queued', 1)
  redis.call('HINCRBY', KEYS[9], 'done', -1)
  redis.call('HINCRBY', KEYS[9], 'reruns', 1)
  if redis.call('HGET', KEYS[9], 'status') ~= 'in_progress' then
    redis.call('HSET', KEYS[9], 'status', 'in_progress')
    redis.call('HDEL', KEYS[9], 'finished_at', 'cost_final_nano_usd')
  end
  redis.call('ZREM', KEYS[11], ARGV[5])
end
return {1, ''}
