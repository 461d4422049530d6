-- reserve: check every rule on every level of a scope path, for both windows
-- and both units, and charge all counters or none. Fallback models are tried
-- in order in this same atomic step. Idempotent by request_id.
--
-- Cheap for Redis by design (it runs before every model call): field names
-- and amounts arrive as strings in ARGV (Lua builds no strings and formats
-- no numbers: tonumber and string.format dominate a script's CPU), only the
-- counters a rule checks are read, keys get their expiry only when this call
-- created them, the record is five fields, and the answer a flat string.
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
-- ARGV[1]  request_id
-- ARGV[2]  fingerprint: "scope model estimate ttl_s fallbacks batch", what a
--          retry must repeat (space-separated; none of them holds a space)
-- ARGV[3]  time zone the server assumed   ARGV[4]  now_ms
-- ARGV[5]  expires_at_ms
-- ARGV[6]  day window id                  ARGV[7]  month window id
-- ARGV[8]  day keys expire-at (unix s)    ARGV[9]  month keys expire-at (unix s)
-- ARGV[10] record retention after expiry (s)
-- ARGV[11] denied record retention (s)
-- ARGV[12] batch (0|1)
-- ARGV[13] the paths comma-joined (stored for settle and expire)
-- ARGV[14] report group prefix "sm|<team[/feature]>|"
-- ARGV[15] seconds to keep the record: ttl_s + record retention
-- ARGV[16] n paths (1..3), then the n paths (org, org/team, org/team/feature)
-- then 4n rule fields, per path: <p>|d|t <p>|d|c <p>|m|t <p>|m|c
-- then 4n counter fields, per path: u|<p>|t r|<p>|t u|<p>|c r|<p>|c
-- then the number of candidates, then per candidate: model, tokens, cost
--
-- The record: kind, state, fp (the fingerprint), resp (the answer) and
-- hold = "model tokens cost day_wid month_wid day_exp month_exp expires_ms
-- paths created_ms" (read by settle and expire; see read_hold).
--
-- Returns {status, payload}: 'ok'|'dup'|'denied' with the answer, 'exists'
-- with the name of the field that differs, 'exists_fp' with the stored
-- fingerprint (the caller names the field), 'stale_tz' with the tz.
-- The answer, space-separated (a newline and the alerts' JSON may follow):
--   a <model> <tokens> <cost> <expires_ms> then per rule R
--   d <model> <tokens> <cost> <violated rule's field> then per rule R
--   R = <rule field> <mode> <limit> <used> <reserved>  (before this charge)
-- Every check happens before the first write: Redis does not roll back.

-- Globals are table lookups on every use; locals are registers.
local KEYS, ARGV, call, tonumber = KEYS, ARGV, redis.call, tonumber

local req = KEYS[1]
if call('EXISTS', req) == 1 then
  local existing = call('HMGET', req, 'kind', 'fp', 'resp')
  if existing[1] ~= 'reserve' then return {'exists', 'request_id'} end
  local fp = existing[2]
  if not fp then
    -- Written before fingerprints: rebuild one from the separate fields.
    local f = call('HMGET', req, 'scope', 'model', 'estimate', 'ttl', 'fallbacks', 'batch')
    for i = 1, 6 do f[i] = f[i] or '' end
    fp = table.concat(f, ' ')
  end
  if fp ~= ARGV[2] then return {'exists_fp', fp} end
  return {'dup', existing[3]}
end

local tz = call('HGET', KEYS[3], 'tz') or 'UTC'
if tz ~= ARGV[3] then return {'stale_tz', tz} end

local n = tonumber(ARGV[16])
local rule_at = 17 + n
local counter_at = rule_at + 4 * n
local cand_at = counter_at + 4 * n
local rvals = call('HMGET', KEYS[2], unpack(ARGV, rule_at, counter_at - 1))

-- Rule i (1-based) is path (i-1)//4 + 1, window d for i%4 in {1,2}, unit t
-- for odd i; its counters (used, reserved) are the ARGV fields at
-- counter_at + (path-1)*4 + {0,1} (t) or + {2,3} (c).
local rules = {}
local nrules = 0
local want = {{}, {}}  -- counter fields to read, per window (1 day, 2 month)
for i = 1, 4 * n do
  local v = rvals[i]
  if v then
    -- "<limit>|<mode>|<thresholds ascending>": the lowest decides if any is reached.
    local limit, mode, ths, low = string.match(v, '^(%d+)|(%a)|((%d*).*)$')
    local j = (i - 1) % 4
    local win = (j < 2) and 1 or 2
    local f = counter_at + (i - 1 - j) + (j % 2) * 2
    local got = want[win]
    local at = #got + 1
    got[at] = ARGV[f]
    got[at + 1] = ARGV[f + 1]
    nrules = nrules + 1
    rules[nrules] = {i = i, field = ARGV[rule_at + i - 1], limit_s = limit,
      limit = tonumber(limit), mode = mode, ths = ths, low = (low ~= '') and tonumber(low),
      win = win, at = at, cost = j % 2 == 1, consumed = 0, s = false}
  end
end
local vals = {false, false}
for win = 1, 2 do
  if #want[win] > 0 then vals[win] = call('HMGET', KEYS[3 + win], unpack(want[win])) end
end
for k = 1, nrules do
  local r = rules[k]
  local got = vals[r.win]
  local used, reserved = got[r.at] or '0', got[r.at + 1] or '0'
  r.consumed = tonumber(used) + tonumber(reserved)
  r.s = r.field .. ' ' .. r.mode .. ' ' .. r.limit_s .. ' ' .. used .. ' ' .. reserved
end

-- The first candidate that no HARD rule denies is granted.
local ncand = tonumber(ARGV[cand_at])
local granted, g_t, g_c, violated = nil, 0, 0, nil
for ci = 1, ncand do
  local o = cand_at + (ci - 1) * 3
  local t, c = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local bad = nil
  for k = 1, nrules do
    local r = rules[k]
    if r.mode == 'h' and r.consumed + (r.cost and c or t) > r.limit then
      bad = r
      break
    end
  end
  if not bad then
    granted, g_t, g_c = o, t, c
    break
  end
  if ci == 1 then violated = bad.field end
end

local function answer(head)
  local parts = {head}
  for k = 1, nrules do parts[k + 1] = rules[k].s end
  return table.concat(parts, ' ')
end

-- One report counter; its key's expiry is set when this created the field.
local function report(key, field, exp_s)
  if call('HINCRBY', key, field, 1) == 1 then call('EXPIREAT', key, exp_s) end
end

if granted == nil then
  local first = cand_at + 1
  local resp = answer(table.concat({'d', ARGV[first], ARGV[first + 1], ARGV[first + 2],
    violated}, ' '))
  call('HSET', req, 'kind', 'reserve', 'state', 'denied', 'fp', ARGV[2], 'resp', resp)
  call('EXPIRE', req, ARGV[11])
  local field = ARGV[14] .. ARGV[first] .. '|d'
  report(KEYS[10], field, ARGV[8])
  report(KEYS[11], field, ARGV[9])
  return {'denied', resp}
end

-- Charge: reserved += the grant on every level of both windows. HINCRBY
-- with the amounts as given: Redis adds integers faster than Lua converts.
local tokens_s, cost_s = ARGV[granted + 2], ARGV[granted + 3]
local last = counter_at + 4 * n - 1
local function charge(key, exp_s)
  local fresh = false
  for at = counter_at + 1, last, 4 do
    if g_t ~= 0 and call('HINCRBY', key, ARGV[at], tokens_s) == g_t then fresh = true end
    if g_c ~= 0 and call('HINCRBY', key, ARGV[at + 2], cost_s) == g_c then fresh = true end
  end
  -- A field that starts at the grant may be in a new key: give it its expiry.
  if fresh then call('EXPIREAT', key, exp_s) end
end
charge(KEYS[4], ARGV[8])
charge(KEYS[5], ARGV[9])

-- Alerts: SOFT/SHADOW rules crossed, then thresholds reached after the charge.
-- Rare, so a rule's names for the alert are filled in only then.
local function named(r)
  r.path = ARGV[16 + (r.i - 1 - (r.i - 1) % 4) / 4 + 1]
  r.u = r.cost and 'c' or 't'
  if r.win == 1 then
    r.w, r.wid, r.fired, r.exp = 'd', ARGV[6], KEYS[7], ARGV[8]
  else
    r.w, r.wid, r.fired, r.exp = 'm', ARGV[7], KEYS[8], ARGV[9]
  end
  return r
end
local alerts = {}
local ctx = {stream = KEYS[9], now_ms = ARGV[4], rid = ARGV[1]}
local would_deny = false
for k = 1, nrules do
  local r = rules[k]
  r.consumed = r.consumed + (r.cost and g_c or g_t)
  if r.mode ~= 'h' and r.consumed > r.limit then
    if r.mode == 'w' then would_deny = true end
    crossing_alert(ctx, named(r), r.consumed, alerts)
  end
end
for k = 1, nrules do
  local r = rules[k]
  -- A float test with a margin: exact (rule_thresholds) only near or past it.
  if r.low and r.consumed * 100 >= r.limit * r.low * (1 - 1e-12) then
    rule_thresholds(ctx, named(r), r.consumed, alerts)
  end
end

local model = ARGV[granted + 1]
local group = ARGV[14] .. model
report(KEYS[10], group .. '|n', ARGV[8])
report(KEYS[11], group .. '|n', ARGV[9])
if would_deny then
  report(KEYS[10], group .. '|s', ARGV[8])
  report(KEYS[11], group .. '|s', ARGV[9])
end

local resp = answer(table.concat({'a', model, tokens_s, cost_s, ARGV[5]}, ' '))
if #alerts > 0 then resp = resp .. '\n' .. cjson.encode(alerts) end
local hold = table.concat({model, tokens_s, cost_s, ARGV[6], ARGV[7], ARGV[8], ARGV[9],
  ARGV[5], ARGV[13], ARGV[4]}, ' ')
call('HSET', req, 'kind', 'reserve', 'state', 'held', 'fp', ARGV[2], 'hold', hold, 'resp', resp)
call('EXPIRE', req, ARGV[15])
call('ZADD', KEYS[6], ARGV[5], ARGV[1])
return {'ok', resp}
