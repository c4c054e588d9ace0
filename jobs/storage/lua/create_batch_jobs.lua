-- A frame of a batch's new jobs (see jobs/storage/batch_write.py), each written
-- as create_job.lua writes a batch's job: its record, its entries in the
-- tenant's indexes and the counts, the batch's lane and job list, in input
-- order. One call per frame of a few hundred jobs: the shared keys take every
-- job of the frame in one command each.
-- KEYS[1] seq   KEYS[2] counts   KEYS[3] the tenant's jobs
-- KEYS[4] the tenant's index of the jobs' status   KEYS[5] the batch's lane
-- KEYS[6] lanes   KEYS[7] the batch's job list   KEYS[7 + i] the i-th job
-- ARGV[1] the jobs' status   ARGV[2] the lane (the member of lanes)
-- ARGV[3] n, the number of jobs   ARGV[3 + i] the i-th job's id
-- ARGV[3 + n + i] its record: one JSON object, field -> value (strings)
-- Returns the last seq given.
local n = tonumber(ARGV[3])
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n
local scored, ids = {}, {}
for i = 1, n do
  local id = ARGV[3 + i]
  local seq = first + i
  local flat = {'seq', seq}
  for f, v in pairs(cjson.decode(ARGV[3 + n + i])) do
    flat[#flat + 1] = f
    flat[#flat + 1] = v
  end
  redis.call('HSET', KEYS[7 + i], unpack(flat))
  scored[2 * i - 1] = seq
  scored[2 * i] = id
  ids[i] = id
end
redis.call('ZADD', KEYS[3], unpack(scored))
redis.call('ZADD', KEYS[4], unpack(scored))
redis.call('HINCRBY', KEYS[2], ARGV[1], n)
redis.call('RPUSH', KEYS[5], unpack(ids))
redis.call('SADD', KEYS[6], ARGV[2])
redis.call('RPUSH', KEYS[7], unpack(ids))
return last
