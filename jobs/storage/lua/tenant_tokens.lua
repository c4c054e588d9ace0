-- A hop's usage counted toward its tenant's Pacific day: tokens and estimated
-- cost added to the day's hash; once the day's tokens reach the tenant's
-- tokens_per_day, the tenant is held until the day's turn (unless a hold, or
-- an operator's lift, is already there for today).
-- KEYS[1] t:<tenant>:day:<day>   KEYS[2] t:<tenant>:tokens_hold   KEYS[3] tenant_holds
-- ARGV[1] tokens   ARGV[2] cost (nano-USD)   ARGV[3] tokens_per_day ('' when none)
-- ARGV[4] the day's end (epoch ms)   ARGV[5] the day hash's expiry (epoch ms)
-- ARGV[6] the tenant (the member of tenant_holds)
-- Returns {the day's tokens, 1 when this call held the tenant else 0}.
local tokens = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
if tonumber(ARGV[2]) ~= 0 then redis.call('HINCRBY', KEYS[1], 'cost_nano_usd', ARGV[2]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
local held = 0
if ARGV[3] ~= '' and tokens >= tonumber(ARGV[3]) then
  if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PXAT', ARGV[4]) then
    redis.call('SADD', KEYS[3], ARGV[6])
    held = 1
  end
end
return {tokens, held}
