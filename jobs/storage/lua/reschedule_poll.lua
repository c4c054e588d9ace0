-- Write back a pending poll: its next due time and the fields it learnt.
-- KEYS[1]  the job record   KEYS[2]  the poll index
-- ARGV[1]  job id   ARGV[2]  the interaction the poll was for
-- ARGV[3]  next due (ms), or '' to drop a stale entry   ARGV[4..]  field, value, ...
-- A job that ended (or is gone) leaves the index; a job that moved on to another
-- interaction is left to the transition that moved it.
local st = redis.call('HGET', KEYS[1], 'status')
if not st or (st ~= 'running' and st ~= 'requires_action') then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[3] == '' or redis.call('HGET', KEYS[1], 'interaction_id') ~= ARGV[2] then
  return 0
end
if #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
