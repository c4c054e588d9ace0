-- Write back a delivery attempt: the event's fields, then its next due time,
-- or out of the index when it is settled (delivered, gone, dead).
-- KEYS[1]  the event record   KEYS[2]  the delivery index   KEYS[3]  the tenant's dead letters
-- ARGV[1]  event id   ARGV[2]  next due (ms), or '' when settled
-- ARGV[3]  dead-letter time (s), or '' when not dead   ARGV[4..]  field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
end
return 1
