-- reserve: check every rule on every level of a scope path, for both windows
-- and both units, and charge all counters or none. Fallback models are tried
-- in order in this same atomic step. Idempotent by request_id.
--
-- Cheap for Redis by design (it runs before every model call, and each
-- command, Lua allocation and number conversion costs): the caller passes
-- the scope's rules already parsed, from its cache, with the rules
-- generation and time zone it read them under (both checked here:
-- 'stale_cfg' if either moved); every string stored or answered that can be
-- built in advance arrives in ARGV (field names, the record's hold, the
-- answer's head); a rule's window, unit, mode and counters are one
-- character of a layout string; each window's counters are read with one
-- HMGET and charged with one HSET, the granted model's request count with
-- them; keys get their expiry only when this call may have created them (the
-- request count was missing); the record is five fields, given its expiry as
-- an absolute PEXPIREAT (an EXPIRE is propagated rewritten as one: ~0.5 µs).
--
-- KEYS[1] request record   bd:{org}:q:<request_id>
-- KEYS[2] rules hash       bd:{org}:rules ('#c': rules generation and zone)
-- KEYS[3] day counters     bd:{org}:w:d<YYYYMMDD>
-- KEYS[4] month counters   bd:{org}:w:m<YYYYMM>
-- KEYS[5] expiry index     bd:{org}:exp
-- KEYS[6] day fired alerts   bd:{org}:fired:d<YYYYMMDD>
-- KEYS[7] month fired alerts bd:{org}:fired:m<YYYYMM>
-- KEYS[8] alert stream       bd:{org}:alerts
-- (the usage report counters are fields of the day and month counters)
--
-- ARGV: the org's and the day's, then the scope's (ARGV[7] on, which the
-- caller keeps encoded as it sends them: orgcache.py), then the request's own.
-- ARGV[1]  the rules hash's '#c' as the caller read it ('' if none): the
--          rules generation and the org's zone (orgcache.py), checked in one
--          read
-- ARGV[2]  day window id                  ARGV[3]  month window id
-- ARGV[4]  day keys expire-at (unix s)    ARGV[5]  month keys expire-at (unix s)
-- ARGV[6]  when a denied record expires (unix ms)
-- ARGV[7]  report group prefix "sm|<team[/feature]>|"
-- ARGV[8]  n, the number of paths (1..3: org, org/team, org/team/feature)
-- ARGV[9]  the number of rules (in the order a denial names the first one
--          violated: org, team, feature; day, month; tokens, cost)
-- ARGV[10] the number of day rules     ARGV[11] the number of month rules
-- ARGV[12] the rules' layout: one character per rule, byte 48 + ri
--          + 8 (month rule) + 16 (SOFT) or 32 (SHADOW), where ri (1..2n) is
--          the rule's reserved counter below (odd: tokens, even: cost)
-- then the day rules' used counters u|<p>|<unit>, in rule order,
-- then the 2n reserved counters r|<p>|t r|<p>|c, per path (in both windows),
-- then the month rules' used counters, in rule order,
-- then per rule: "<rule field> <rule value>" (as stored: an empty thresholds
--   csv is the defaults, see DEFAULT_THRESHOLDS), limit, and the amount at which
--   its lowest alert threshold is reached ('' if none), these two with their
--   trailing zeros as an exponent ('1e15': read faster, to the same number)
-- then the request's own: request_id; its fingerprint "scope model estimate
--   ttl_s fallbacks batch", what a retry must repeat (space-separated; none of
--   them holds a space); now_ms; expires_at_ms; when a granted record expires
--   (unix ms: expires_at_ms + record retention); the number of candidates, then per
--   candidate: model, tokens, cost, its report field "<prefix><model>|n", its
--   hold (below), and its answer head "a <model> <tokens> <cost> <expires_ms>"
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
local KEYS, ARGV, call = KEYS, ARGV, redis.call

-- Numbers from strings by arithmetic ('12' + 0): Lua converts them as
-- tonumber does, without the cost of a function call.
local n2 = 2 * ARGV[8]
local nrules, nday, nmonth = ARGV[9] + 0, ARGV[10] + 0, ARGV[11] + 0
local layout = ARGV[12]
local res_at = 13 + nday            -- the reserved counters
local month_at = res_at + n2        -- the month rules' used counters
local rule_at = month_at + nmonth   -- per rule: description, limit, lowest threshold
local dyn_at = rule_at + 3 * nrules -- this request's own arguments
local rid, my_fp = ARGV[dyn_at], ARGV[dyn_at + 1]
local cand_at = dyn_at + 5

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
  if fp ~= my_fp then return {'exists_fp', fp} end
  return {'dup', existing[3]}
end

if (call('HGET', KEYS[2], '#c') or '') ~= ARGV[1] then return {'stale_cfg'} end

-- Every counter this call reads or charges, in one HMGET per window: the first
-- candidate's request count, then the day's used counters then the reserved
-- ones, the month's reserved then its used.
local nf1 = ARGV[cand_at + 4]
local dv = call('HMGET', KEYS[3], nf1, unpack(ARGV, 13, month_at - 1))
local mv = call('HMGET', KEYS[4], nf1, unpack(ARGV, res_at, rule_at - 1))
-- Tables are sized by their constructors: growing one rehashes it, which
-- costs more than all the arithmetic here. A scope has at most 12 rules.
local F = false
local dres, mres = {0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0}
-- A counter past 2^52 (only where no HARD rule caps it) is charged with
-- HINCRBY below: its sum with an amount (<= 2^40) could leave the doubles'
-- exact range, and Redis adds 64-bit integers exactly.
local big = false
for i = 1, n2 do
  local d, m = (dv[1 + nday + i] or 0) + 0, (mv[1 + i] or 0) + 0
  dres[i], mres[i] = d, m
  if d > 4.5e15 or m > 4.5e15 then big = true end
end

-- Per rule, its consumption (used + reserved) goes to C, and its
-- description, used and reserved (as read) to the answer's parts (parts[1]
-- is the answer's head: the answer is its head, then per rule "<rule field>
-- <rule value> <used> <reserved>", before this charge, space-separated). Per unit,
-- the loop keeps the least headroom (limit - consumption) over the HARD
-- rules, which a grant may not pass, over the SOFT/SHADOW rules, past which a
-- grant alerts, and to the lowest alert thresholds: the candidates and the
-- alerts then cost a comparison each, and the rules themselves are looked at
-- again only when one is reached (rare; reached() below).
local C = {F, F, F, F, F, F, F, F, F, F, F, F}
local parts = {F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F,
  F, F, F, F, F, F, F, F, F, F, F, F}
local byte, HUGE = string.byte, math.huge
local hard_t, hard_c, soft_t, soft_c, low_t, low_c = HUGE, HUGE, HUGE, HUGE, HUGE, HUGE
local di, mi = 0, n2
for k = 1, nrules do
  local b = byte(layout, k) - 48
  local hard = b < 16
  b = b % 16  -- ri + 8 (month rule)
  local used, res_s, res
  if b > 8 then
    b, mi = b - 8, mi + 1
    used, res_s, res = mv[1 + mi] or '0', mv[1 + b] or '0', mres[b]
  else
    di = di + 1
    used, res_s, res = dv[1 + di] or '0', dv[1 + nday + b] or '0', dres[b]
  end
  local consumed, a = used + res, rule_at + 3 * k - 3
  C[k] = consumed
  local head, low = ARGV[a + 1] - consumed, ARGV[a + 2]
  if low == '' then low = HUGE else low = low - consumed end
  if b % 2 == 0 then
    if not hard then
      if head < soft_c then soft_c = head end
    elseif head < hard_c then hard_c = head end
    if low < low_c then low_c = low end
  else
    if not hard then
      if head < soft_t then soft_t = head end
    elseif head < hard_t then hard_t = head end
    if low < low_t then low_t = low end
  end
  local p = 3 * k - 1
  parts[p], parts[p + 1], parts[p + 2] = ARGV[a], used, res_s
end

-- The first candidate that no HARD rule denies is granted.
local ncand = ARGV[cand_at] + 0
local granted, g_t, g_c = nil, 0, 0
for ci = 1, ncand do
  local o = cand_at + (ci - 1) * 6
  local t, c = ARGV[o + 2] + 0, ARGV[o + 3] + 0
  if t <= hard_t and c <= hard_c then
    granted, g_t, g_c = o, t, c
    break
  end
end

-- Made only when a denial or an alert needs them, as are the _lib.lua helpers:
-- a closure costs on every call that makes it, most for the locals it
-- captures (made on every call, these cost ~4 % of a 12-rule call's Redis
-- CPU; bench/redis_cpu.py).
local reached, alerting, report, alert, alerts, ctx
local rare = granted == nil or g_t > soft_t or g_c > soft_c or g_t >= low_t or g_c >= low_c
if rare then
  -- @helpers (scripts.py puts the _lib.lua helpers this script uses here)
  -- The rules that tokens t or cost c added to their consumption would take
  -- past their limit (at = 1; hard: HARD rules, else SOFT/SHADOW ones) or to
  -- their lowest alert threshold (at = 2), in rule order: {k, consumption
  -- after, SHADOW} each.
  reached = function(t, c, at, hard)
    local out = {}
    for k = 1, nrules do
      local b, v = byte(layout, k) - 48, ARGV[rule_at + 3 * k - 3 + at]
      if v ~= '' and (at == 2 or (b < 16) == hard) then
        local consumed, bound = C[k] + (b % 2 == 0 and c or t), v + 0
        if consumed > bound or (at == 2 and consumed == bound) then
          out[#out + 1] = {k, consumed, b >= 32}
        end
      end
    end
    return out
  end
  -- One report counter; its key's expiry is set when this created the field.
  report = function(key, field, exp_s)
    if call('HINCRBY', key, field, 1) == 1 then call('EXPIREAT', key, exp_s) end
  end
  -- A rule's fields for the alert helpers, and the alerts' context (both
  -- built only when an alert fires).
  alerting = function(k)
    if not alerts then
      alerts, ctx = {}, {stream = KEYS[8], now_ms = ARGV[dyn_at + 2], rid = rid}
    end
    local path, w, u, limit, mode, ths = string.match(ARGV[rule_at + 3 * k - 3],
      '^(%S+)|(%a)|(%a) (%d+)|(%a)|(.*)$')
    local day = w == 'd'
    if ths == '' then ths = DEFAULT_THRESHOLDS end
    return {path = path, u = u, w = w, wid = day and ARGV[2] or ARGV[3],
      fired = day and KEYS[6] or KEYS[7], exp = day and ARGV[4] or ARGV[5],
      limit = limit + 0, mode = mode, ths = ths}
  end
  -- A grant's alerts: SOFT/SHADOW rules crossed, then thresholds reached
  -- after the charge (called after it).
  alert = function()
    local would_deny = false
    if g_t > soft_t or g_c > soft_c then
      for _, hit in ipairs(reached(g_t, g_c, 1, false)) do
        if hit[3] then would_deny = true end
        local named = alerting(hit[1])  -- sets ctx: before the call reads it
        crossing_alert(ctx, named, hit[2], alerts)
      end
    end
    if g_t >= low_t or g_c >= low_c then
      for _, hit in ipairs(reached(g_t, g_c, 2)) do
        local named = alerting(hit[1])
        rule_thresholds(ctx, named, hit[2], alerts)
      end
    end
    if would_deny then
      local field = ARGV[7] .. ARGV[granted + 1] .. '|s'
      report(KEYS[3], field, ARGV[4])
      report(KEYS[4], field, ARGV[5])
    end
  end
end

if granted == nil then
  local first = cand_at + 1
  -- The first rule the first candidate would pass names the denial.
  local violated = reached(ARGV[first + 1] + 0, ARGV[first + 2] + 0, 1, true)[1][1]
  local vfield = string.match(ARGV[rule_at + 3 * violated - 3], '^%S+')
  parts[1] = table.concat({'d', ARGV[first], ARGV[first + 1], ARGV[first + 2], vfield}, ' ')
  local resp = table.concat(parts, ' ', 1, 1 + 3 * nrules)
  call('HSET', req, 'kind', 'reserve', 'state', 'denied', 'fp', my_fp, 'resp', resp)
  call('PEXPIREAT', req, ARGV[6])
  local field = ARGV[7] .. ARGV[first] .. '|d'
  report(KEYS[3], field, ARGV[4])
  report(KEYS[4], field, ARGV[5])
  return {'denied', resp}
end

-- Charge: reserved += the grant on every level of both windows, and the
-- granted model's request count += 1, all of a window's fields in one HSET
-- (they were read above, in this same atomic step): one command instead of
-- one HINCRBY per counter. '%d' prints an integral double below 2^53
-- exactly, and faster than '%.0f'.
local fmt = string.format
local nf = ARGV[granted + 4]
-- Day then month; a loop, not a function called twice: see `rare` above.
for w = 1, 2 do
  local key, res, exp_s, nv = KEYS[3], dres, ARGV[4], dv[1]
  if w == 2 then key, res, exp_s, nv = KEYS[4], mres, ARGV[5], mv[1] end
  local f, n = res_at, nil
  if big or granted ~= cand_at then
    -- Rare (a counter past 2^52, or a fallback model granted, whose request
    -- count was not read): one HINCRBY per field.
    for at = f, f + n2 - 1, 2 do
      call('HINCRBY', key, ARGV[at], ARGV[granted + 2])
      call('HINCRBY', key, ARGV[at + 1], ARGV[granted + 3])
    end
    n = call('HINCRBY', key, nf, 1)
  else
    n = (nv or 0) + 1
    local ns = fmt('%d', n)
    if n2 == 6 then
      -- One spelled-out HSET per path count (3, 2, 1): building the arguments
      -- in a table and unpacking it cost ~1.5 µs more per call (bench/redis_cpu.py).
      call('HSET', key, ARGV[f], fmt('%d', res[1] + g_t), ARGV[f + 1],
        fmt('%d', res[2] + g_c), ARGV[f + 2], fmt('%d', res[3] + g_t), ARGV[f + 3],
        fmt('%d', res[4] + g_c), ARGV[f + 4], fmt('%d', res[5] + g_t), ARGV[f + 5],
        fmt('%d', res[6] + g_c), nf, ns)
    elseif n2 == 4 then
      call('HSET', key, ARGV[f], fmt('%d', res[1] + g_t), ARGV[f + 1],
        fmt('%d', res[2] + g_c), ARGV[f + 2], fmt('%d', res[3] + g_t), ARGV[f + 3],
        fmt('%d', res[4] + g_c), nf, ns)
    else
      call('HSET', key, ARGV[f], fmt('%d', res[1] + g_t), ARGV[f + 1],
        fmt('%d', res[2] + g_c), nf, ns)
    end
  end
  -- Every writer gives a window key its expiry when it creates a request
  -- count, so a key that had this one has its expiry already.
  if n == 1 then call('EXPIREAT', key, exp_s) end
end

if alert then alert() end

parts[1] = ARGV[granted + 6]
local resp = table.concat(parts, ' ', 1, 1 + 3 * nrules)
if alerts and #alerts > 0 then resp = resp .. '\n' .. cjson.encode(alerts) end
call('HSET', req, 'kind', 'reserve', 'state', 'held', 'fp', my_fp, 'hold', ARGV[granted + 5],
  'resp', resp)
call('PEXPIREAT', req, ARGV[dyn_at + 4])
call('ZADD', KEYS[5], ARGV[dyn_at + 3], rid)
return {'ok', resp}
