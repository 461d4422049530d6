-- reserve: check every rule on every level of a scope path, for both windows
-- and both units, and charge all counters or none. Fallback models are tried
-- in order in this same atomic step. Idempotent by request_id.
--
-- Cheap for Redis by design (it runs before every model call, and Lua's
-- allocations, tonumber and string.format cost more than the commands): the
-- caller passes the scope's rules already parsed, from its cache, with the
-- rules generation and time zone it read them under (both checked here:
-- 'stale_cfg' if either moved); every string stored or answered that can be
-- built in advance arrives in ARGV (field names, the record's hold, the
-- answer's head); amounts are charged with HINCRBY as given; only the
-- counters a rule checks are read; keys get their expiry only when this call
-- created them; the record is five fields.
--
-- KEYS[1] request record   bd:{org}:q:<request_id>
-- KEYS[2] rules hash       bd:{org}:rules
-- KEYS[3] org settings     bd:{org}:cfg (tz, rgen)
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
-- ARGV[3]  the org's time zone as the caller read it
-- ARGV[4]  the org's rules generation as the caller read it ('' if none)
-- ARGV[5]  now_ms                         ARGV[6]  expires_at_ms
-- ARGV[7]  day window id                  ARGV[8]  month window id
-- ARGV[9]  day keys expire-at (unix s)    ARGV[10] month keys expire-at (unix s)
-- ARGV[11] seconds to keep a granted record: ttl_s + record retention
-- ARGV[12] seconds to keep a denied record
-- ARGV[13] report group prefix "sm|<team[/feature]>|"
-- ARGV[14] n paths (1..3), then the n paths (org, org/team, org/team/feature)
-- then 2n reserved counters to charge, per path: r|<p>|t r|<p>|c
-- then the number of rules (in the order a denial names the first one
--   violated: org, team, feature; day, month; tokens, cost), the number of
--   day and of month counter fields, those fields (u|<p>|<unit> r|<p>|<unit>
--   per rule), then per rule: "<rule field> <rule value>", limit, mode
--   (h|s|w), the amount at which its lowest alert threshold is reached (''
--   if none), and the index of its used counter among the day fields (> 0)
--   or the month fields (< 0)
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
-- fingerprint (the caller names the field), 'stale_cfg' (reload, retry).
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

local cfg = call('HMGET', KEYS[3], 'tz', 'rgen')
if (cfg[1] or 'UTC') ~= ARGV[3] or (cfg[2] or '') ~= ARGV[4] then return {'stale_cfg'} end

local n = tonumber(ARGV[14])
local charge_at = 15 + n           -- the 2n reserved counters to charge
local nrules = tonumber(ARGV[charge_at + 2 * n])
local nday = tonumber(ARGV[charge_at + 2 * n + 1])
local nmonth = tonumber(ARGV[charge_at + 2 * n + 2])
local day_at = charge_at + 2 * n + 3
local month_at = day_at + nday
local rule_at = month_at + nmonth
local cand_at = rule_at + 5 * nrules

-- Rule k: description, limit, mode, lowest threshold and counter slot at
-- rule_at + 5(k-1). Its unit is the last letter of its counter field.
local day_vals = nday > 0 and call('HMGET', KEYS[4], unpack(ARGV, day_at, month_at - 1))
local month_vals = nmonth > 0 and call('HMGET', KEYS[5], unpack(ARGV, month_at, rule_at - 1))
-- Tables are sized by their constructors: growing one rehashes it, which
-- costs more than all the arithmetic here. A scope has at most 12 rules.
local F = false
local rules = {F, F, F, F, F, F, F, F, F, F, F, F}
-- A rule's slots:
local LIMIT, CONSUMED, COST, USED, RESERVED, LOW, MODE, DESC = 1, 2, 3, 4, 5, 6, 7, 8
for k = 1, nrules do
  local r = rule_at + 5 * (k - 1)
  local slot = tonumber(ARGV[r + 4])
  local got, field_at = day_vals, day_at + slot - 1
  if slot < 0 then got, slot, field_at = month_vals, -slot, month_at - slot - 1 end
  local used, reserved = got[slot] or '0', got[slot + 1] or '0'
  local low = ARGV[r + 3]
  rules[k] = {tonumber(ARGV[r + 1]), tonumber(used) + tonumber(reserved),
    string.byte(ARGV[field_at], -1) == 99, used, reserved, low ~= '' and tonumber(low),
    ARGV[r + 2], ARGV[r]}
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
    if r[CONSUMED] + (r[COST] and c or t) > r[LIMIT] and r[MODE] == 'h' then
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
  local parts = {head, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F,
    F, F, F, F, F, F, F, F, F, F, F, F}
  for k = 1, nrules do
    local r, m = rules[k], 3 * k - 1
    parts[m], parts[m + 1], parts[m + 2] = r[DESC], r[USED], r[RESERVED]
  end
  return table.concat(parts, ' ', 1, 1 + 3 * nrules)
end

-- One report counter; its key's expiry is set when this created the field.
local function report(key, field, exp_s)
  if call('HINCRBY', key, field, 1) == 1 then call('EXPIREAT', key, exp_s) end
end

if granted == nil then
  local first = cand_at + 1
  local vfield = string.match(violated[DESC], '^%S+')
  local resp = answer(table.concat({'d', ARGV[first], ARGV[first + 1], ARGV[first + 2],
    vfield}, ' '))
  call('HSET', req, 'kind', 'reserve', 'state', 'denied', 'fp', ARGV[2], 'resp', resp)
  call('EXPIRE', req, ARGV[12])
  local field = ARGV[13] .. ARGV[first] .. '|d'
  report(KEYS[10], field, ARGV[9])
  report(KEYS[11], field, ARGV[10])
  return {'denied', resp}
end

-- Charge: reserved += the grant on every level of both windows. HINCRBY
-- with the amounts as given: Redis adds integers faster than Lua converts.
local tokens_s, cost_s = ARGV[granted + 2], ARGV[granted + 3]
local function charge(key, exp_s)
  local fresh = false
  for at = charge_at, charge_at + 2 * n - 1, 2 do
    if g_t ~= 0 and call('HINCRBY', key, ARGV[at], tokens_s) == g_t then fresh = true end
    if g_c ~= 0 and call('HINCRBY', key, ARGV[at + 1], cost_s) == g_c then fresh = true end
  end
  -- A field that starts at the grant may be in a new key: give it its expiry.
  if fresh then call('EXPIREAT', key, exp_s) end
end
charge(KEYS[4], ARGV[9])
charge(KEYS[5], ARGV[10])

-- Alerts: SOFT/SHADOW rules crossed, then thresholds reached after the charge.
-- Rare: the tables the alert helpers read are built only then.
local alerts, ctx = nil, nil
local function alerting(r)
  if not alerts then
    alerts, ctx = {}, {stream = KEYS[9], now_ms = ARGV[5], rid = ARGV[1]}
  end
  local path, w, u, ths = string.match(r[DESC], '^(%S+)|(%a)|(%a) %d+|%a|(.*)$')
  local day = w == 'd'
  return {path = path, u = u, w = w, wid = day and ARGV[7] or ARGV[8],
    fired = day and KEYS[7] or KEYS[8], exp = day and ARGV[9] or ARGV[10],
    limit = r[LIMIT], mode = r[MODE], ths = ths}
end
local would_deny = false
for k = 1, nrules do
  local r = rules[k]
  r[CONSUMED] = r[CONSUMED] + (r[COST] and g_c or g_t)
  if r[CONSUMED] > r[LIMIT] and r[MODE] ~= 'h' then
    if r[MODE] == 'w' then would_deny = true end
    local named = alerting(r)
    crossing_alert(ctx, named, r[CONSUMED], alerts)
  end
end
for k = 1, nrules do
  local r = rules[k]
  if r[LOW] and r[CONSUMED] >= r[LOW] then
    local named = alerting(r)
    rule_thresholds(ctx, named, r[CONSUMED], alerts)
  end
end

report(KEYS[10], ARGV[granted + 4], ARGV[9])
report(KEYS[11], ARGV[granted + 4], ARGV[10])
if would_deny then
  local field = ARGV[13] .. ARGV[granted + 1] .. '|s'
  report(KEYS[10], field, ARGV[9])
  report(KEYS[11], field, ARGV[10])
end

local resp = answer(ARGV[granted + 6])
if alerts and #alerts > 0 then resp = resp .. '\n' .. cjson.encode(alerts) end
call('HSET', req, 'kind', 'reserve', 'state', 'held', 'fp', ARGV[2], 'hold', ARGV[granted + 5],
  'resp', resp)
call('EXPIRE', req, ARGV[11])
call('ZADD', KEYS[6], ARGV[6], ARGV[1])
return {'ok', resp}
