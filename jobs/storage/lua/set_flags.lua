-- Compare-and-set of a job's fields with no change of status (flags such as
-- create_inflight or cancel_requested, counters): only while its status is
-- ARGV[1] and, when ARGV[2] = '1', its interaction id is ARGV[3].
-- KEYS[1] the job
-- ARGV[1] the status it must have   ARGV[2] '1' to compare the interaction id
-- ARGV[3] the interaction id it must have   ARGV[4] n
-- ARGV[5 .. 4+2n] field, increment, ... (HINCRBY)   then field, value, ... to set
-- Returns {1, status}, or {0, current status} ('' when there is no job).
local jk = KEYS[1]
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if cur ~= ARGV[1] then return {0, cur} end
if ARGV[2] == '1' and (redis.call('HGET', jk, 'interaction_id') or '') ~= ARGV[3] then
  return {0, cur}
end
local last = 4 + 2 * tonumber(ARGV[4])
if #ARGV > last then redis.call('HSET', jk, unpack(ARGV, last + 1)) end
for i = 5, last, 2 do redis.call('HINCRBY', jk, ARGV[i], ARGV[i + 1]) end
return {1, cur}
