-- reserve: check every rule on every level of a scope path, for both windows
-- and both units, and charge all counters or none. Fallback models are tried
-- in order in this same atomic step. Idempotent by request_id.
--
-- Cheap for Redis by design (it runs before every model call, and Lua's
-- allocations, tonumber and string.format cost more than the commands):
-- every string it stores or answers that can be built in advance arrives in
-- ARGV (field names, the record's hold, the answer's head), amounts are
-- charged with HINCRBY as given, only the counters a rule checks are read,
-- a rule is a small array, keys get their expiry only when this call created
-- them, and the record is five fields.
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
-- ARGV[10] seconds to keep a granted record: ttl_s + record retention
-- ARGV[11] seconds to keep a denied record
-- ARGV[12] report group prefix "sm|<team[/feature]>|"
-- ARGV[13] n paths (1..3), then the n paths (org, org/team, org/team/feature)
-- then 4n rule fields, per path: <p>|d|t <p>|d|c <p>|m|t <p>|m|c
-- then 4n counter fields, per path: u|<p>|t r|<p>|t u|<p>|c r|<p>|c
-- then the number of candidates, then per candidate: model, tokens, cost,
--   its report field "<prefix><model>|n", its hold (below), and its answer
--   head "a <model> <tokens> <cost> <expires_ms>"
--
-- The record: kind, state, fp (the fingerprint), resp (the answer) and
-- hold = "model tokens cost day_wid month_wid day_exp month_exp expires_ms
-- paths created_ms" (read by settle and expire; see read_hold in _lib.lua).
--
-- Returns {status, payload}: 'ok'|'dup'|'denied' with the answer, 'exists'
-- with the name of the field that differs, 'exists_fp' with the stored
-- fingerprint (the caller names the field), 'stale_tz' with the tz.
-- The answer, space-separated (a newline and the alerts' JSON may follow):
--   a <model> <tokens> <cost> <expires_ms> then per rule R
--   d <model> <tokens> <cost> <violated rule's field> then per rule R
--   R = <rule field> <rule value "limit|mode|thresholds"> <used> <reserved>
--   (before this charge)
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

local n = tonumber(ARGV[13])
local rule_at = 14 + n
local counter_at = rule_at + 4 * n
local cand_at = counter_at + 4 * n
local rvals = call('HMGET', KEYS[2], unpack(ARGV, rule_at, counter_at - 1))

-- A rule is an array (a hash part would cost 16 nodes): these are its slots.
local IDX, LIMIT, MODE, LOW, WIN, AT, COST, CONSUMED, USED, RESERVED = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10

-- Rule i (1-based) is path (i-1)//4 + 1, window d for i%4 in {1,2}, unit t
-- for odd i; its counters (used, reserved) are the ARGV fields at
-- counter_at + (path-1)*4 + {0,1} (t) or + {2,3} (c).
local rules, nrules = {}, 0
local want = {{}, {}}  -- counter fields to read, per window (1 day, 2 month)
for i = 1, 4 * n do
  local v = rvals[i]
  if v then
    -- "<limit>|<mode>|<thresholds ascending>": the lowest decides if any is reached.
    local limit, mode, low = string.match(v, '^(%d+)|(%a)|(%d*)')
    local j = (i - 1) % 4
    local win = (j < 2) and 1 or 2
    local f = counter_at + (i - 1 - j) + (j % 2) * 2
    local got = want[win]
    local at = #got + 1
    got[at] = ARGV[f]
    got[at + 1] = ARGV[f + 1]
    nrules = nrules + 1
    rules[nrules] = {i, tonumber(limit), mode, (low ~= '') and tonumber(low), win, at,
      j % 2 == 1, 0, '0', '0'}
  end
end
local day_vals = #want[1] > 0 and call('HMGET', KEYS[4], unpack(want[1]))
local month_vals = #want[2] > 0 and call('HMGET', KEYS[5], unpack(want[2]))
for k = 1, nrules do
  local r = rules[k]
  local got = (r[WIN] == 1) and day_vals or month_vals
  local used, reserved = got[r[AT]] or '0', got[r[AT] + 1] or '0'
  r[USED], r[RESERVED] = used, reserved
  r[CONSUMED] = tonumber(used) + tonumber(reserved)
end

-- The first candidate that no HARD rule denies is granted.
local ncand = tonumber(ARGV[cand_at])
local granted, g_t, g_c, violated = nil, 0, 0, nil
for ci = 1, ncand do
  local o = cand_at + (ci - 1) * 6
  local t, c = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local bad = nil
  for k = 1, nrules do
    local r = rules[k]
    if r[MODE] == 'h' and r[CONSUMED] + (r[COST] and c or t) > r[LIMIT] then
      bad = r
      break
    end
  end
  if not bad then
    granted, g_t, g_c = o, t, c
    break
  end
  if ci == 1 then violated = bad end
end

-- The answer: its head, then per rule "<rule field> <rule value> <used>
-- <reserved>" (before this charge), space-separated.
local function answer(head)
  local parts, m = {head}, 1
  for k = 1, nrules do
    local r = rules[k]
    parts[m + 1] = ARGV[rule_at + r[IDX] - 1]
    parts[m + 2] = rvals[r[IDX]]
    parts[m + 3] = r[USED]
    parts[m + 4] = r[RESERVED]
    m = m + 4
  end
  return table.concat(parts, ' ')
end

-- One report counter; its key's expiry is set when this created the field.
local function report(key, field, exp_s)
  if call('HINCRBY', key, field, 1) == 1 then call('EXPIREAT', key, exp_s) end
end

if granted == nil then
  local first = cand_at + 1
  local resp = answer(table.concat({'d', ARGV[first], ARGV[first + 1], ARGV[first + 2],
    ARGV[rule_at + violated[IDX] - 1]}, ' '))
  call('HSET', req, 'kind', 'reserve', 'state', 'denied', 'fp', ARGV[2], 'resp', resp)
  call('EXPIRE', req, ARGV[11])
  local field = ARGV[12] .. ARGV[first] .. '|d'
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
-- Rare: the table the alert helpers read is built only then.
local alerts, ctx = nil, nil
local function alerting(r)
  if not alerts then
    alerts, ctx = {}, {stream = KEYS[9], now_ms = ARGV[4], rid = ARGV[1]}
  end
  local i, day = r[IDX], r[WIN] == 1
  return {path = ARGV[13 + (i - 1 - (i - 1) % 4) / 4 + 1], u = r[COST] and 'c' or 't',
    w = day and 'd' or 'm', wid = day and ARGV[6] or ARGV[7], fired = day and KEYS[7] or KEYS[8],
    exp = day and ARGV[8] or ARGV[9], limit = r[LIMIT], mode = r[MODE],
    ths = string.match(rvals[i], '^%d+|%a|(.*)$')}
end
local would_deny = false
for k = 1, nrules do
  local r = rules[k]
  r[CONSUMED] = r[CONSUMED] + (r[COST] and g_c or g_t)
  if r[MODE] ~= 'h' and r[CONSUMED] > r[LIMIT] then
    if r[MODE] == 'w' then would_deny = true end
    local named = alerting(r)
    crossing_alert(ctx, named, r[CONSUMED], alerts)
  end
end
for k = 1, nrules do
  local r = rules[k]
  -- A float test with a margin: the exact one (rule_thresholds) runs only near or past it.
  if r[LOW] and r[CONSUMED] * 100 >= r[LIMIT] * r[LOW] * (1 - 1e-12) then
    local named = alerting(r)
    rule_thresholds(ctx, named, r[CONSUMED], alerts)
  end
end

report(KEYS[10], ARGV[granted + 4], ARGV[8])
report(KEYS[11], ARGV[granted + 4], ARGV[9])
if would_deny then
  local field = ARGV[12] .. ARGV[granted + 1] .. '|s'
  report(KEYS[10], field, ARGV[8])
  report(KEYS[11], field, ARGV[9])
end

local resp = answer(ARGV[granted + 6])
if alerts and #alerts > 0 then resp = resp .. '\n' .. cjson.encode(alerts) end
call('HSET', req, 'kind', 'reserve', 'state', 'held', 'fp', ARGV[2], 'hold', ARGV[granted + 5],
  'resp', resp)
call('EXPIRE', req, ARGV[10])
call('ZADD', KEYS[6], ARGV[5], ARGV[1])
return {'ok', resp}
