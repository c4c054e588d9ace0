-- Commit a staged batch (see jobs/storage/batch_write.py): while it is still
-- staged by this writer (its record says staging and its entry in
-- expiring:batches still has the staging deadline, so no sweeper claimed it)
-- and its job list holds every job, the record loses its staging mark (the
-- dispatcher then serves its lane and the API shows it) and takes its total,
-- its counts take the queued jobs and its cleanup entry goes. Otherwise
-- nothing is written.
-- KEYS[1] the batch   KEYS[2] its counts   KEYS[3] its job list   KEYS[4] expiring:batches
-- ARGV[1] batch id   ARGV[2] its number of jobs   ARGV[3] the staging deadline (ms)
-- Returns 1 when committed, 0 when the batch is no longer staged as written.
if redis.call('HGET', KEYS[1], 'staging') ~= '1' then return 0 end
local due = redis.call('ZSCORE', KEYS[4], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[3]) then return 0 end
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], 'staging')
redis.call('HSET', KEYS[1], 'total', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'queued', ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
