-- reserve: check every rule on every level of a scope path, for both windows
-- and both units, and charge all counters or none. Fallback models are tried
-- in order in this same atomic step. Idempotent by request_id.
--
-- KEYS[1] request record   bd:{org}:q:<request_id>
-- KEYS[2] rules hash       bd:{org}:rules
-- KEYS[3] org settings     bd:{org}:cfg
-- KEYS[4] day counters     bd:{org}:w:d<YYYYMMDD>
-- KEYS[5] month counters   bd:{org}:w:m<YYYYMM>
-- KEYS[6] expiry index     bd:{org}:exp
-- KEYS[7] day fired alerts   bd:{org}:fired:d<YYYYMMDD>
-- KEYS[8] month fired alerts bd:{org}:fired:m<YYYYMM>
-- KEYS[9] alert stream       bd:{org}:alerts
-- KEYS[10] day report        bd:{org}:rep:d<YYYYMMDD>
-- KEYS[11] month report      bd:{org}:rep:m<YYYYMM>
--
-- ARGV[1]  request_id          ARGV[2]  scope path ("o/t/f")
-- ARGV[3]  model (requested)   ARGV[4]  estimate (canonical string)
-- ARGV[5]  ttl_s               ARGV[6]  fallback models (comma-joined)
-- ARGV[7]  batch (0|1)         ARGV[8]  time zone the server assumed
-- ARGV[9]  now_ms              ARGV[10] expires_at_ms
-- ARGV[11] day window id       ARGV[12] month window id
-- ARGV[13] day keys expire-at (unix s)   ARGV[14] month keys expire-at (unix s)
-- ARGV[15] record retention after expiry (s)
-- ARGV[16] denied record retention (s)
-- ARGV[17] n paths (1..3), then the n paths (org, org/team, org/team/feature)
-- then: n candidates, then per candidate: model, tokens, cost_micros
--
-- Returns {status, payload}: 'ok'|'dup'|'denied' with the answer as JSON,
-- 'exists' with the name of the field that differs, 'stale_tz' with the tz.
-- Every check happens before the first write: Redis does not roll back.

local req = KEYS[1]
local existing = redis.call('HMGET', req, 'kind', 'scope', 'model', 'estimate', 'ttl',
  'fallbacks', 'batch', 'resp')
if existing[1] then
  if existing[1] ~= 'reserve' then return {'exists', 'request_id'} end
  local names = {'scope', 'model', 'estimate', 'ttl_seconds', 'fallback_models', 'batch'}
  for i = 1, 6 do
    if existing[i + 1] ~= ARGV[i + 1] then return {'exists', names[i]} end
  end
  return {'dup', existing[8]}
end

local tz = redis.call('HGET', KEYS[3], 'tz')
if not tz then tz = 'UTC' end
if tz ~= ARGV[8] then return {'stale_tz', tz} end

local now_ms = tonumber(ARGV[9])
local npaths = tonumber(ARGV[17])
local paths = {}
for i = 1, npaths do paths[i] = ARGV[17 + i] end
local base = 18 + npaths
local ncand = tonumber(ARGV[base])
local cands = {}
for i = 1, ncand do
  local o = base + (i - 1) * 3
  cands[i] = {model = ARGV[o + 1], t = tonumber(ARGV[o + 2]), c = tonumber(ARGV[o + 3])}
end

-- Rules of every level, window and unit, and the counters they check.
local wins = {{'d', KEYS[4], ARGV[11], KEYS[7]}, {'m', KEYS[5], ARGV[12], KEYS[8]}}
local units = {'t', 'c'}
local rfields = {}
for _, p in ipairs(paths) do
  for _, w in ipairs(wins) do
    for _, u in ipairs(units) do rfields[#rfields + 1] = p .. '|' .. w[1] .. '|' .. u end
  end
end
local rvals = redis.call('HMGET', KEYS[2], unpack(rfields))
local rules = {}
local i = 0
for pi, p in ipairs(paths) do
  for _, w in ipairs(wins) do
    for _, u in ipairs(units) do
      i = i + 1
      if rvals[i] then
        local parts = split(rvals[i], '|')
        local cf = {'u|' .. p .. '|' .. u, 'r|' .. p .. '|' .. u}
        local cv = redis.call('HMGET', w[2], cf[1], cf[2])
        rules[#rules + 1] = {level = pi, path = p, w = w[1], u = u, limit = tonumber(parts[1]),
          mode = parts[2], used = num(cv[1]), reserved = num(cv[2]), key = w[2], wid = w[3],
          fired = w[4], ths = parts[3] or ''}
      end
    end
  end
end

local function check(cand)
  local violation = nil
  local crossings = {}
  for _, r in ipairs(rules) do
    local asked = cand.c
    if r.u == 't' then asked = cand.t end
    if r.used + r.reserved + asked > r.limit then
      local info = {path = r.path, w = r.w, u = r.u, mode = r.mode, limit = istr(r.limit),
        used = istr(r.used), reserved = istr(r.reserved), requested = istr(asked)}
      if r.mode == 'h' then
        if violation == nil then violation = info end
      else
        crossings[#crossings + 1] = info
      end
    end
  end
  return violation, crossings
end

local granted = nil
local first_violation = nil
local crossings = {}
for _, cand in ipairs(cands) do
  local v, cr = check(cand)
  if v == nil then
    granted = cand
    crossings = cr
    break
  end
  if first_violation == nil then
    first_violation = v
    first_violation.model = cand.model
  end
end

local function remaining(cand)
  local out = {}
  for _, r in ipairs(rules) do
    local spent = r.used + r.reserved
    if cand then
      if r.u == 't' then spent = spent + cand.t else spent = spent + cand.c end
    end
    out[#out + 1] = {path = r.path, w = r.w, u = r.u, mode = r.mode, limit = istr(r.limit),
      remaining = istr(r.limit - spent)}
  end
  return out
end

local fields = {'kind', 'reserve', 'scope', ARGV[2], 'model', ARGV[3], 'estimate', ARGV[4],
  'ttl', ARGV[5], 'fallbacks', ARGV[6], 'batch', ARGV[7], 'created_ms', ARGV[9]}

if granted == nil then
  local resp = cjson.encode({decision = 'denied', denial = first_violation,
    remaining = remaining(nil)})
  fields[#fields + 1] = 'state'; fields[#fields + 1] = 'denied'
  fields[#fields + 1] = 'resp'; fields[#fields + 1] = resp
  redis.call('HSET', req, unpack(fields))
  redis.call('EXPIRE', req, tonumber(ARGV[16]))
  report_add(KEYS[10], paths, ARGV[3], {'d', 1})
  report_add(KEYS[11], paths, ARGV[3], {'d', 1})
  redis.call('EXPIREAT', KEYS[10], tonumber(ARGV[13]))
  redis.call('EXPIREAT', KEYS[11], tonumber(ARGV[14]))
  return {'denied', resp}
end

local day, month = KEYS[4], KEYS[5]
adjust(day, paths, 'r', granted.t, granted.c)
adjust(month, paths, 'r', granted.t, granted.c)
redis.call('EXPIREAT', day, tonumber(ARGV[13]))
redis.call('EXPIREAT', month, tonumber(ARGV[14]))

-- Alerts: SOFT/SHADOW rules crossed, then thresholds reached after the charge.
local alerts = {}
local ctx = {stream = KEYS[9], now_ms = ARGV[9], rid = ARGV[1]}
local would_deny = 0
for _, r in ipairs(rules) do
  local asked = granted.c
  if r.u == 't' then asked = granted.t end
  local consumed = r.used + r.reserved + asked
  if r.mode ~= 'h' and consumed > r.limit then
    if r.mode == 'w' then would_deny = 1 end
    crossing_alert(ctx, r, consumed, alerts)
  end
end
threshold_alerts(ctx, rules, alerts)
report_add(KEYS[10], paths, granted.model, {'n', 1, 's', would_deny})
report_add(KEYS[11], paths, granted.model, {'n', 1, 's', would_deny})
-- EXPIREAT of a key that does not exist (no alert fired yet) is a no-op.
for _, k in ipairs({KEYS[7], KEYS[10]}) do redis.call('EXPIREAT', k, tonumber(ARGV[13])) end
for _, k in ipairs({KEYS[8], KEYS[11]}) do redis.call('EXPIREAT', k, tonumber(ARGV[14])) end

local resp = cjson.encode({decision = 'allowed', model = granted.model, tokens = istr(granted.t),
  cost = istr(granted.c), expires_ms = ARGV[10], remaining = remaining(granted),
  crossings = crossings, alerts = alerts})
local more = {'state', 'held', 'granted', granted.model, 'tokens', istr(granted.t),
  'cost', istr(granted.c), 'dwid', ARGV[11], 'mwid', ARGV[12], 'dexp', ARGV[13],
  'mexp', ARGV[14], 'paths', table.concat(paths, ','), 'expires_ms', ARGV[10], 'resp', resp}
for _, v in ipairs(more) do fields[#fields + 1] = v end
redis.call('HSET', req, unpack(fields))
local keep_s = math.ceil((tonumber(ARGV[10]) - now_ms) / 1000) + tonumber(ARGV[15])
redis.call('EXPIRE', req, keep_s)
redis.call('ZADD', KEYS[6], ARGV[10], ARGV[1])
return {'ok', resp}
