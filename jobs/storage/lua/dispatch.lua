-- Move the head of a dispatch lane to arq's queue: each job, in lane order,
-- leaves the lane; one still queued gets its submit step and counts in flight
-- (and, under a rate limit, as waiting for its window token). A job is thus in
-- exactly one place: its lane or arq. Stops at the first id that is no longer
-- the lane's head (another dispatcher moved it).
-- KEYS[1] the lane   KEYS[2] lanes   KEYS[3] inflight:<model>   KEYS[4] models
-- KEYS[5] outstanding:<model>   KEYS[6] arq's queue   KEYS[7] t:<tenant>:dispatched
-- then per job i: KEYS[6 + 2i] the job, KEYS[7 + 2i] its submit step's arq job key
-- ARGV[1] the lane (the member of lanes)   ARGV[2] model   ARGV[3] now (ms)
-- ARGV[4] '1' when the model's rate is limited
-- ARGV[5] '1' when the tenant has an in-flight cap (its dispatched jobs are tracked)
-- then per job i: ARGV[5i + 1], ..: job id, step id ('' to drop it), payload, score, px
-- Returns how many jobs got a submit step.
local lane, moved = KEYS[1], 0
local n = (#ARGV - 5) / 5
for i = 1, n do
  local a = 5 * i + 1
  local id, step = ARGV[a], ARGV[a + 1]
  if redis.call('LINDEX', lane, 0) ~= id then break end
  redis.call('LPOP', lane)
  if step ~= '' and redis.call('HGET', KEYS[6 + 2 * i], 'status') == 'queued' then
    redis.call('ZADD', KEYS[3], ARGV[3], id)
    redis.call('SADD', KEYS[4], ARGV[2])
    if ARGV[4] == '1' then redis.call('ZADD', KEYS[5], ARGV[3], id) end
    if ARGV[5] == '1' then redis.call('ZADD', KEYS[7], ARGV[3], id) end
    local ak = KEYS[7 + 2 * i]
    if redis.call('EXISTS', ak) == 0 then
      redis.call('SET', ak, ARGV[a + 2], 'PX', ARGV[a + 4])
      redis.call('ZADD', KEYS[6], ARGV[a + 3], step)
    end
    moved = moved + 1
  end
end
if redis.call('LLEN', lane) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return moved
