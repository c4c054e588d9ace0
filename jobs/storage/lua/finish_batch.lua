-- A batch ends, once (compare-and-set on status in_progress): its final fields
-- (status, finished_at, token totals) and its batch.completed event (the
-- outbox), due for delivery at once.
-- KEYS[1] the batch   KEYS[2] its events list   KEYS[3] the new event   KEYS[4] deliveries
-- KEYS[5] the batch's changes stream
-- ARGV[1] event id   ARGV[2] the event's delivery due time (ms), '' when it has
-- nowhere to go   ARGV[3] the batch id   ARGV[4] its final status
-- ARGV[5] the changes channel   ARGV[6] how long the changes stream is kept now (ms)
-- ARGV[7] n   ARGV[8 .. 7+2n] batch field, value, ...   then event field, value, ...
-- The change of status is added to the changes stream and published (watchers);
-- the stream then expires.
-- Returns {1, previous status}, or {0, current status} ('' when there is no batch).
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if cur ~= 'in_progress' then return {0, cur} end
local last = 7 + 2 * tonumber(ARGV[7])
redis.call('HSET', KEYS[1], unpack(ARGV, 8, last))
redis.call('HSET', KEYS[3], unpack(ARGV, last + 1))
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1]) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', 200, '*', 'status', ARGV[4], 'from', cur)
redis.call('PEXPIRE', KEYS[5], ARGV[6])
redis.call('PUBLISH', ARGV[5], 'batch:' .. ARGV[3])
return {1, cur}
