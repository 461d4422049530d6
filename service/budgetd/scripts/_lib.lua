-- Shared helpers, prepended to every script by budgetd/scripts.py.
--
-- Amounts reach the scripts already bounded (<= 2^53) by the server, so Lua's
-- doubles hold them exactly. Counters live in one hash per org and window:
--   u|<path>|<unit>  settled (used)       r|<path>|<unit>  in flight (reserved)
-- where unit is t (tokens) or c (cost micros), beside the window's usage
-- report counters (sm|..., see report_add). A missing counter is 0.

local function num(v)
  if v == false or v == nil then return 0 end
  return tonumber(v)
end

-- '%.0f' prints an integral double exactly; tostring() would round to 14 digits.
local function istr(n)
  return string.format('%.0f', n)
end

local function split(s, sep)
  local out = {}
  if s == nil or s == false or s == '' then return out end
  for part in string.gmatch(s, '([^' .. sep .. ']+)') do
    out[#out + 1] = part
  end
  return out
end

-- A held reservation's facts, {model, tokens, cost, day_wid, month_wid,
-- day_exp, month_exp, expires_ms, paths, created_ms}: packed in the record's
-- 'hold' field, or (records written before it) in fields of those names.
local HOLD_FIELDS = {'granted', 'tokens', 'cost', 'dwid', 'mwid', 'dexp', 'mexp', 'expires_ms',
  'paths', 'created_ms'}
local function read_hold(key, packed)
  if packed then
    local h = {}
    for part in string.gmatch(packed, '%S+') do h[#h + 1] = part end
    return h
  end
  return redis.call('HMGET', key, unpack(HOLD_FIELDS))
end

-- Adjusts reserved/used of every path level in one window hash. A reserved
-- counter that settles back to 0 is deleted: most scopes hold nothing most of
-- the time, and a missing counter reads as 0 everywhere (memory per scope).
local function bump(key, f, n, drop)
  if n ~= 0 and redis.call('HINCRBY', key, f, n) == 0 and drop then
    redis.call('HDEL', key, f)
  end
end
local function adjust(key, paths, field, tokens, cost)
  if tokens == 0 and cost == 0 then return end
  local drop = field == 'r'
  for _, p in ipairs(paths) do
    bump(key, field .. '|' .. p .. '|t', tokens, drop)
    bump(key, field .. '|' .. p .. '|c', cost, drop)
  end
end

-- Alerts. Each (rule, window, threshold or kind) fires once per window: a
-- marker field in the window's fired hash (bd:{org}:fired:<window_id>) is set
-- in the same atomic script that appends the alert to the org's capped
-- stream, so no race can fire it twice or skip it.
local ALERT_STREAM_MAXLEN = 10000

-- A rule stored with an empty thresholds csv has the default thresholds
-- (admin.py; limits.DEFAULT_ALERT_THRESHOLDS, checked equal by a test).
local DEFAULT_THRESHOLDS = '50,75,90,100'

-- The rules on every level of a path for the given windows, both units.
-- wins: list of {window code, counters key, window id, fired key}.
local function load_rules(rules_key, paths, wins)
  local fields, meta = {}, {}
  for _, p in ipairs(paths) do
    for _, w in ipairs(wins) do
      for _, u in ipairs({'t', 'c'}) do
        fields[#fields + 1] = p .. '|' .. w[1] .. '|' .. u
        meta[#meta + 1] = {p, w, u}
      end
    end
  end
  local vals = redis.call('HMGET', rules_key, unpack(fields))
  local out = {}
  for i, m in ipairs(meta) do
    if vals[i] then
      local parts = split(vals[i], '|')
      out[#out + 1] = {path = m[1], w = m[2][1], key = m[2][2], wid = m[2][3], fired = m[2][4],
        u = m[3], limit = tonumber(parts[1]), mode = parts[2],
        ths = parts[3] or DEFAULT_THRESHOLDS}
    end
  end
  return out
end

-- ceil(limit * pct / 100) without forming limit * pct, which can pass 2^53.
local function threshold_amount(limit, pct)
  local q = math.floor(limit / 100)
  return q * pct + math.ceil((limit - q * 100) * pct / 100)
end

-- Appends one alert (the caller checked its marker is unset) and sets the marker.
-- ctx: {stream = key, now_ms = string, rid = request id}
local function fire(ctx, out, r, tag, kind, th, consumed)
  redis.call('HSET', r.fired, r.path .. '|' .. r.w .. '|' .. r.u .. '|' .. tag, ctx.now_ms)
  -- Rules that know their window's end (reserve's) set the marker's expiry
  -- here; the other scripts set it after the charge.
  if r.exp then redis.call('EXPIREAT', r.fired, r.exp) end
  local a = {kind = kind, path = r.path, w = r.w, u = r.u, mode = r.mode, th = th,
    limit = istr(r.limit), consumed = istr(consumed), wid = r.wid, at = ctx.now_ms,
    rid = ctx.rid}
  a.id = redis.call('XADD', ctx.stream, 'MAXLEN', '~', ALERT_STREAM_MAXLEN, '*',
    'kind', a.kind, 'path', a.path, 'w', a.w, 'u', a.u, 'mode', a.mode, 'th', a.th,
    'limit', a.limit, 'consumed', a.consumed, 'wid', a.wid, 'at', a.at, 'rid', a.rid)
  out[#out + 1] = a
end

local function fired_already(r, tags)
  local fields = {}
  for i, t in ipairs(tags) do fields[i] = r.path .. '|' .. r.w .. '|' .. r.u .. '|' .. t end
  return redis.call('HMGET', r.fired, unpack(fields))
end

-- Threshold alerts of one rule whose consumption (used + reserved, after
-- the charge) is `consumed`. Every threshold reached and not yet fired
-- fires, so a jump from 40% to 95% fires 50, 75 and 90.
local function rule_thresholds(ctx, r, consumed, out)
  if r.ths == '' then return end
  local reached = {}
  for _, t in ipairs(split(r.ths, ',')) do
    if consumed >= threshold_amount(r.limit, tonumber(t)) then reached[#reached + 1] = t end
  end
  if #reached > 0 then
    local got = fired_already(r, reached)
    for i, t in ipairs(reached) do
      if not got[i] then fire(ctx, out, r, t, 'threshold', t, consumed) end
    end
  end
end

-- Threshold alerts of every rule after a charge, reading the counters back.
local function threshold_alerts(ctx, rules, out)
  for _, r in ipairs(rules) do
    if r.ths ~= '' then
      local cv = redis.call('HMGET', r.key, 'u|' .. r.path .. '|' .. r.u,
        'r|' .. r.path .. '|' .. r.u)
      rule_thresholds(ctx, r, num(cv[1]) + num(cv[2]), out)
    end
  end
end

-- A SOFT or SHADOW rule crossed by a granted request: once per window.
local function crossing_alert(ctx, r, consumed, out)
  local tag, kind = 'soft', 'soft_over_limit'
  if r.mode == 'w' then tag, kind = 'shadow', 'shadow_would_deny' end
  if not fired_already(r, {tag})[1] then fire(ctx, out, r, tag, kind, '100', consumed) end
end

-- Usage report counters, in the window's counter hash (bd:{org}:w:<window_id>,
-- same expiry; before, a hash of their own, bd:{org}:rep:<window_id>, still
-- read for old windows), one group per scope and model:
--   sm|<team>[/<feature>]|<model>|u  "<i> <o> <cw> <cr> <c>": tokens by kind
--                                    (input, output, cache write, cache read)
--                                    and cost micros, in one field
--   sm|<team>[/<feature>]|<model>|n  requests (reserve charges it itself)
--   ...|d  denials    ...|s  allowed, but a SHADOW rule would have denied
-- Reports by team, feature or model add these up when read (reports.py), so a
-- charge costs one field per scope and model, not one per grouping; the five
-- usage metrics share a field because they change together (settle, record,
-- expiry), and every field name costs Redis memory in every window. Versions
-- before 0.2 kept one field per usage metric (...|i, |o, |cw, |cr, |c), which
-- reports still add.
-- metrics: pairs of (name, amount); names i o cw cr c n.
local USAGE_AT = {i = 1, o = 2, cw = 3, cr = 4, c = 5}
local function report_add(key, paths, model, metrics)
  local org = paths[1]
  local tf = ''
  if paths[3] then tf = string.sub(paths[3], #org + 2)
  elseif paths[2] then tf = string.sub(paths[2], #org + 2) end
  local g = 'sm|' .. tf .. '|' .. model .. '|'
  local add, any = {0, 0, 0, 0, 0}, false
  for i = 1, #metrics, 2 do
    local m, v = metrics[i], metrics[i + 1]
    if v ~= 0 then
      if m == 'n' then
        redis.call('HINCRBY', key, g .. 'n', v)
      else
        add[USAGE_AT[m]], any = v, true
      end
    end
  end
  if not any then return end
  local cur = redis.call('HGET', key, g .. 'u')
  if cur then
    local k = 0
    for x in string.gmatch(cur, '%S+') do
      k = k + 1
      add[k] = add[k] + tonumber(x)
    end
  end
  redis.call('HSET', key, g .. 'u', istr(add[1]) .. ' ' .. istr(add[2]) .. ' ' .. istr(add[3])
    .. ' ' .. istr(add[4]) .. ' ' .. istr(add[5]))
end
