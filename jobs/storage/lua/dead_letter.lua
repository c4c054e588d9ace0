-- Write an event's fields and put it in its tenant's dead letters, only while
-- the event exists (see update_record.lua).
-- KEYS[1] the event   KEYS[2] the tenant's dead letters
-- ARGV[1] event id   ARGV[2] when (s, the score)   ARGV[3..] field, value, ...
-- Returns 1 when written, 0 when the event is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
