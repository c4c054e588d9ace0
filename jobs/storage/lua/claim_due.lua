-- Claim due entries of a due-time index under a lease.
-- KEYS[1]  the index (zset member -> due time, ms)
-- ARGV[1]  now (ms)   ARGV[2]  lease (ms)   ARGV[3]  at most this many
-- Each claimed entry's due time moves to now + lease: if the claimer dies, the
-- entry is due again when the lease runs out. Returns member, original due, ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], until_ms, due[i])
end
return due
