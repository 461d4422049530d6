-- expire: settle reservations whose ttl passed, per the org's policy
-- ('keep': the estimate stays spent, the default; 'release': given back).
-- The server runs this periodically with a bounded batch, so expiry happens
-- with no further traffic. The caller reads each due record's windows first
-- and passes those keys; a record whose state or windows differ is skipped.
--
-- KEYS[1] expiry index     bd:{org}:exp
-- KEYS[2] org settings     bd:{org}:cfg
-- KEYS[3k] .. KEYS[3k+2] for k = 1..n: request record, its day counters,
--   its month counters (which hold the usage report counters too)
--
-- ARGV[1] now_ms   ARGV[2] record retention after expiry (s)
-- ARGV[2+k]: request_id of the k-th record
--
-- Returns the number of reservations expired.

local now_ms = tonumber(ARGV[1])
local policy = redis.call('HGET', KEYS[2], 'expiry')
if not policy then policy = 'keep' end
local n = (#KEYS - 2) / 3
local expired = 0
for k = 1, n do
  local req, day, month = KEYS[3 * k], KEYS[3 * k + 1], KEYS[3 * k + 2]
  local id = ARGV[2 + k]
  local rec = redis.call('HMGET', req, 'state', 'hold')
  -- hold: model tokens cost dwid mwid dexp mexp expires_ms paths created_ms
  local h = rec[1] == 'held' and read_hold(req, rec[2])
  if not h then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(h[8]) <= now_ms
      and string.sub(day, -#h[4] - 1) == ':' .. h[4]
      and string.sub(month, -#h[5] - 1) == ':' .. h[5] then
    local paths = split(h[9], ',')
    local t, c = tonumber(h[2]), tonumber(h[3])
    adjust(day, paths, 'r', -t, -c)
    adjust(month, paths, 'r', -t, -c)
    if policy == 'keep' then
      adjust(day, paths, 'u', t, c)
      adjust(month, paths, 'u', t, c)
      -- Kept as spent: the estimate counts as cost in reports until settled.
      report_add(day, paths, h[1], {'c', c})
      report_add(month, paths, h[1], {'c', c})
    end
    redis.call('HSET', req, 'state', 'expired', 'expired_policy', policy)
    redis.call('EXPIRE', req, tonumber(ARGV[2]))
    redis.call('ZREM', KEYS[1], id)
    expired = expired + 1
  end
end
return expired
