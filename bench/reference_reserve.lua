-- The yardstick of bench/redis_cpu.py: a plain hierarchical reserve over 11
-- keys, as issue 5 describes the script it measured when it set the Redis CPU
-- target ("Redis alone runs an 11-key hierarchical reserve script at ~55k/s
-- pipelined, ~17 µs of Redis CPU per call"). Its CPU per call here, against
-- those 17 µs, tells how much slower or faster this host is than that one.
-- Kept as written: changing it moves every adjusted figure.
--
-- KEYS[1]     request record (string)
-- KEYS[2..4]  limits of the org, team and feature (hash: d, m)
-- KEYS[5..10] counters of each level's day and month (hash: used, reserved)
-- KEYS[11]    expiry index (zset)
-- ARGV[1] request id  ARGV[2] amount  ARGV[3] expires_at_ms  ARGV[4] ttl_s
if redis.call('EXISTS', KEYS[1]) == 1 then return 'dup' end
local amount = tonumber(ARGV[2])
for level = 1, 3 do
  local limits = redis.call('HMGET', KEYS[1 + level], 'd', 'm')
  for w = 1, 2 do
    local c = redis.call('HMGET', KEYS[2 + 2 * level + w], 'used', 'reserved')
    local limit = tonumber(limits[w])
    if limit and (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + amount > limit then
      return 'denied'
    end
  end
end
for i = 5, 10 do redis.call('HINCRBY', KEYS[i], 'reserved', amount) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('ZADD', KEYS[11], ARGV[3], ARGV[1])
return 'ok'
