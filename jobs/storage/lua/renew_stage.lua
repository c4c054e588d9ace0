-- Renew a staged batch's lease (see jobs/storage/batch_write.py): while its
-- record says staging and its entry in expiring:batches still has the deadline
-- this writer set (no sweeper claimed it), move that deadline to ARGV[3].
-- KEYS[1] the batch   KEYS[2] expiring:batches
-- ARGV[1] batch id   ARGV[2] the deadline it has (ms)   ARGV[3] the new one (ms)
-- Returns 1 when renewed, 0 when the batch is no longer staged by this writer.
if redis.call('HGET', KEYS[1], 'staging') ~= '1' then return 0 end
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
