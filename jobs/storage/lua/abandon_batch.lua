-- Give up a staged batch (see jobs/storage/batch_write.py) before it is purged:
-- a record still staging is marked abandoned, so that no commit can follow
-- (commit_batch wants staging = '1'; the dispatcher still leaves its lane
-- alone). A committed batch (a record without the mark) is left as it is.
-- KEYS[1] the batch
-- Returns 1 when the batch is not committed (marked now, or no record), 0 when it is.
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if not redis.call('HGET', KEYS[1], 'staging') then return 0 end
redis.call('HSET', KEYS[1], 'staging', 'abandoned')
return 1
