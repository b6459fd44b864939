-- Take one request's charge from every bucket and quota, or from none: one round trip, one clock (Redis TIME).
-- KEYS: the bucket hashes, then the quota counters.
-- ARGV: now (0: use TIME), #buckets, #quotas, requests, tokens, prompt tokens (what a quota must have room for),
--       then per bucket: per-second rate, capacity, kind ("r" or "t"), then per quota: limit, ttl seconds.
-- Returns: {allowed 0/1, refusing bucket index, refusing quota index, wait seconds, now, level after per bucket...}
-- (numbers as strings: Redis would truncate Lua floats to integers).
local now = tonumber(ARGV[1])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local nb, nq = tonumber(ARGV[2]), tonumber(ARGV[3])
-- Never a negative charge, whoever calls: it would lower a counter that a concurrent settlement then clamps at 0.
local requests = math.max(0, tonumber(ARGV[4]))
local tokens, prompt = math.max(0, tonumber(ARGV[5])), math.max(0, tonumber(ARGV[6]))
local levels, rates, caps, costs = {}, {}, {}, {}
local refused, wait = 0, 0
local i = 7
for b = 1, nb do
  local rate, cap = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local cost = tokens
  if ARGV[i + 2] == 'r' then cost = requests end
  i = i + 3
  local level = cap
  local stored = redis.call('HMGET', KEYS[b], 't', 'at')
  if stored[1] then
    level = math.min(cap, tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * rate)
  end
  levels[b], rates[b], caps[b], costs[b] = level, rate, cap, cost
  local need = math.min(cost, cap)
  if level < need then
    local w = (need - level) / rate
    if refused == 0 or w > wait then refused, wait = b, w end
  end
end
local quota_refused = 0
local limits, ttls = {}, {}
for q = 1, nq do
  limits[q], ttls[q] = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local used = tonumber(redis.call('GET', KEYS[nb + q]) or '0')
  if quota_refused == 0 and (used >= limits[q] or used + prompt > limits[q]) then quota_refused = q end
end
local allowed = refused == 0 and quota_refused == 0
local out = {allowed and 1 or 0, refused, quota_refused, tostring(wait), tostring(now)}
for b = 1, nb do
  local after = levels[b]
  if allowed then
    after = after - costs[b]
    redis.call('HSET', KEYS[b], 't', tostring(after), 'at', tostring(now))
    -- Kept until it would be full again anyway (plus a minute): an absent bucket reads as full.
    redis.call('PEXPIRE', KEYS[b], math.ceil(((caps[b] - after) / rates[b] + 60) * 1000))
  end
  out[#out + 1] = tostring(after)
end
if allowed then
  for q = 1, nq do
    redis.call('INCRBY', KEYS[nb + q], tokens)
    redis.call('EXPIRE', KEYS[nb + q], ttls[q])
  end
end
return out
