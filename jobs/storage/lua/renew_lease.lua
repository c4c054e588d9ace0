-- Take or keep a lease (the dispatcher's): extend it when ARGV[1] holds it,
-- take it when nobody does.
-- KEYS[1] the lease   ARGV[1] the holder's id   ARGV[2] lease (ms)
-- Returns 1 when ARGV[1] holds the lease now, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
