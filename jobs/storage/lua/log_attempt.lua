-- Append a delivery attempt to an event's log, keeping the last ARGV[2], only
-- while the event exists (see update_record.lua).
-- KEYS[1] the event   KEYS[2] its attempt log
-- ARGV[1] the attempt (JSON)   ARGV[2] how many entries are kept
-- Returns 1 when written, 0 when the event is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return 1
