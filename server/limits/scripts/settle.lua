-- sluice_settle_v1: a request ended; turn its reservation into real usage.
-- Releases its lease (leaving a tombstone, so a renewal sent before the
-- release cannot bring it back), refunds or charges the token bucket and the
-- budgets by the difference, and adds the usage to the day and the month.
--
-- KEYS  1 bucket  2 leases  3 released  4 daily_tokens  5 monthly_tokens  6 monthly_spend
--       7 usage of the day  8 usage of the month
-- ARGV  1 lease id  2 lease ms (0: no lease was taken)  3 tpm  4 extra tokens (real - reserved)
--       5 daily budget reserved (1/0)  6 monthly budget reserved (1/0)
--       7 spend budget reserved (1/0)  8 extra spend  9 model  10 prompt tokens
--       11 completion tokens  12 cut (1/0)  13 spend

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease_ms, tpm, extra = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

if lease_ms > 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], now + lease_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], lease_ms + 1000)
end

if tpm > 0 then
  local rate = tpm / 60000
  local bucket = redis.call('HMGET', KEYS[1], 'level', 'at')
  local level = tonumber(bucket[1])
  if level == nil then
    level = tpm
  else
    level = math.min(tpm, level + math.max(0, now - tonumber(bucket[2])) * rate)
  end
  level = math.min(tpm, level - extra)
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((tpm - level) / rate) + 60000)
end

if ARGV[5] == '1' then
  redis.call('INCRBY', KEYS[4], extra)
  redis.call('EXPIRE', KEYS[4], 2 * 86400)
end
if ARGV[6] == '1' then
  redis.call('INCRBY', KEYS[5], extra)
  redis.call('EXPIRE', KEYS[5], 32 * 86400)
end
if ARGV[7] == '1' then
  redis.call('INCRBYFLOAT', KEYS[6], ARGV[8])
  redis.call('EXPIRE', KEYS[6], 32 * 86400)
end

local model = ARGV[9]
for i, key in ipairs({KEYS[7], KEYS[8]}) do
  redis.call('HINCRBY', key, 'requests:' .. model, 1)
  redis.call('HINCRBY', key, 'prompt_tokens:' .. model, ARGV[10])
  redis.call('HINCRBY', key, 'completion_tokens:' .. model, ARGV[11])
  redis.call('HINCRBY', key, 'streams_cut:' .. model, ARGV[12])
  if tonumber(ARGV[13]) ~= 0 then
    redis.call('HINCRBYFLOAT', key, 'spend:' .. model, ARGV[13])
  end
  redis.call('EXPIRE', key, ({100, 400})[i] * 86400)
end
return 1
