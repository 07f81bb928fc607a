-- sluice_admit_v1: one request's admission for one principal.
-- Every limit is checked before any is taken, so a refused request costs
-- nothing. Time is Redis's own (TIME, in ms): gateway clocks need not agree.
-- The arithmetic is server/limits/quota.py's, step for step.
--
-- KEYS  1 record  2 tat  3 bucket  4 leases  5 daily_tokens  6 monthly_tokens  7 monthly_spend
-- ARGV  1 check_record (1/0)  2 rpm  3 burst  4 tpm  5 tokens reserved  6 max_streams
--       7 lease id  8 lease ms  9 daily_tokens  10 monthly_tokens  11 monthly_spend
--       12 spend reserved                        (a limit of 0 is no limit)
-- Returns {allowed, reason, retry_ms, req_remaining, req_reset_ms, tok_remaining, tok_reset_ms}
-- with -1 for the remaining count of a limit that is not set.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rpm, burst, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, max_streams, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local req_remaining, req_reset, tok_remaining, tok_reset = -1, 0, -1, 0

local function answer(allowed, reason, retry)
  return {allowed, reason, math.ceil(retry), req_remaining, math.ceil(req_reset),
          tok_remaining, math.ceil(tok_reset)}
end

if ARGV[1] == '1' and redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  return answer(0, 'revoked', 0)
end

-- Requests: GCRA over the theoretical arrival time.
local new_tat
if rpm > 0 then
  local interval = 60000 / rpm
  local tat = tonumber(redis.call('GET', KEYS[2]))
  if tat == nil or tat < now then tat = now end
  new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now < allow_at then
    req_remaining, req_reset = 0, tat - now
    return answer(0, 'requests', allow_at - now)
  end
  req_remaining = math.floor((now - allow_at) / interval)
  req_reset = new_tat - now
end

-- Tokens: a bucket that may go into debt; a reservation needs min(cost, capacity).
local level
if tpm > 0 then
  local rate = tpm / 60000
  local bucket = redis.call('HMGET', KEYS[3], 'level', 'at')
  level = tonumber(bucket[1])
  if level == nil then
    level = tpm
  else
    level = math.min(tpm, level + math.max(0, now - tonumber(bucket[2])) * rate)
  end
  local need = math.min(cost, tpm)
  local after = level
  if level >= need then after = level - cost end
  tok_remaining = math.max(0, math.floor(after))
  tok_reset = math.max(0, (tpm - after) / rate)
  if level < need then return answer(0, 'tokens', (need - level) / rate) end
end

-- Streams: leases that expire unless renewed.
if max_streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= max_streams then return answer(0, 'streams', 1000) end
end

-- Budgets of the current day and month.
local budgets = {{KEYS[5], tonumber(ARGV[9]), 'daily_tokens'},
                 {KEYS[6], tonumber(ARGV[10]), 'monthly_tokens'},
                 {KEYS[7], tonumber(ARGV[11]), 'monthly_spend'}}
for _, budget in ipairs(budgets) do
  if budget[2] > 0 and (tonumber(redis.call('GET', budget[1])) or 0) >= budget[2] then
    return answer(0, budget[3], 0)
  end
end

-- Every limit allows it: take them all.
if rpm > 0 then
  redis.call('SET', KEYS[2], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
if tpm > 0 then
  local left = level - cost
  redis.call('HSET', KEYS[3], 'level', tostring(left), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[3], math.ceil((tpm - left) / (tpm / 60000)) + 60000)
end
if max_streams > 0 then
  redis.call('ZADD', KEYS[4], now + lease_ms, ARGV[7])
  redis.call('PEXPIRE', KEYS[4], lease_ms + 1000)
end
if budgets[1][2] > 0 then
  redis.call('INCRBY', KEYS[5], cost)
  redis.call('EXPIRE', KEYS[5], 2 * 86400)
end
if budgets[2][2] > 0 then
  redis.call('INCRBY', KEYS[6], cost)
  redis.call('EXPIRE', KEYS[6], 32 * 86400)
end
if budgets[3][2] > 0 then
  redis.call('INCRBYFLOAT', KEYS[7], ARGV[12])
  redis.call('EXPIRE', KEYS[7], 32 * 86400)
end
return answer(1, '', 0)
