-- Correct the token buckets and quotas of a request once its real usage is known.
-- KEYS: the token bucket hashes, then the quota counters.
-- ARGV: now (0: use TIME), #buckets, #quotas, delta (tokens: > 0 charges more, debt allowed; < 0 refunds),
--       then per bucket: per-second rate, capacity, then per quota: ttl seconds.
local now = tonumber(ARGV[1])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local nb, nq, delta = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local i = 5
for b = 1, nb do
  local rate, cap = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local level = cap
  local stored = redis.call('HMGET', KEYS[b], 't', 'at')
  if stored[1] then
    level = math.min(cap, tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * rate)
  end
  local after = math.min(cap, level - delta)
  redis.call('HSET', KEYS[b], 't', tostring(after), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[b], math.ceil(((cap - after) / rate + 60) * 1000))
end
for q = 1, nq do
  local ttl = tonumber(ARGV[i])
  i = i + 1
  local used = redis.call('INCRBY', KEYS[nb + q], delta)
  if used < 0 then redis.call('SET', KEYS[nb + q], 0) end
  redis.call('EXPIRE', KEYS[nb + q], ttl)
end
return 1
