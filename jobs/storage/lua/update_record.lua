-- A plain write to a record that still exists: a step still running when its
-- job was purged must not bring a stray piece of it back.
-- KEYS[1] the record (a job or an event)
-- ARGV[1] n   ARGV[2 .. 1+2n] field, increment, ... (HINCRBY)
-- then field, value, ... to set
-- Returns 1 when written, 0 when the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = 1 + 2 * tonumber(ARGV[1])
if #ARGV > last then redis.call('HSET', KEYS[1], unpack(ARGV, last + 1)) end
for i = 2, last, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
