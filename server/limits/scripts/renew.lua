-- sluice_renew_v1: extend one principal's leases of requests still running.
-- A lease missing from the set — Redis restarted, or the renewer was held up
-- past its expiry — is put back, unless it was released (its tombstone).
--
-- KEYS  1 leases  2 released
-- ARGV  1 lease ms  2.. lease ids

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
return #ARGV - 1
