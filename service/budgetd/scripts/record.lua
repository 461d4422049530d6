-- record: charge actual usage that had no reservation (imports, callers
-- that cannot reserve). Idempotent by request_id.
--
-- KEYS[1] request record   bd:{org}:q:<request_id>
-- KEYS[2] day counters     bd:{org}:w:d<YYYYMMDD>
-- KEYS[3] month counters   bd:{org}:w:m<YYYYMM>
-- KEYS[4] rules hash       bd:{org}:rules ('#c': "<generation>[ <zone>]")
-- KEYS[5] day fired alerts, KEYS[6] month fired alerts
-- KEYS[7] alert stream     bd:{org}:alerts
-- (the usage report counters are fields of the day and month counters)
--
-- ARGV[1] request_id        ARGV[2] scope path        ARGV[3] model
-- ARGV[4] usage (canonical) ARGV[5] time zone assumed ARGV[6] now_ms
-- ARGV[7] day window id     ARGV[8] month window id
-- ARGV[9] day keys expire-at (unix s)   ARGV[10] month keys expire-at (unix s)
-- ARGV[11] record retention (s)
-- ARGV[12] tokens           ARGV[13] cost micros
-- ARGV[14] n paths, then the n paths, then input, output, cache-write and
--   cache-read tokens (reports)
--
-- Returns {status, payload}: 'ok'|'dup' with JSON, 'exists' with the
-- differing field, 'stale_tz' with the org's time zone.

local req = KEYS[1]
local existing = redis.call('HMGET', req, 'kind', 'scope', 'model', 'usage', 'resp')
if existing[1] then
  if existing[1] ~= 'record' then return {'exists', 'request_id'} end
  if existing[2] ~= ARGV[2] then return {'exists', 'scope'} end
  if existing[3] ~= ARGV[3] then return {'exists', 'model'} end
  if existing[4] ~= ARGV[4] then return {'exists', 'usage'} end
  return {'dup', existing[5]}
end
local check = redis.call('HGET', KEYS[4], '#c')
local tz = check and string.match(check, '^%d+ (.+)$') or 'UTC'
if tz ~= ARGV[5] then return {'stale_tz', tz} end

local npaths = tonumber(ARGV[14])
local paths = {}
for i = 1, npaths do paths[i] = ARGV[14 + i] end
local t, c = tonumber(ARGV[12]), tonumber(ARGV[13])
adjust(KEYS[2], paths, 'u', t, c)
adjust(KEYS[3], paths, 'u', t, c)
local o = 15 + npaths
local used = {'n', 1, 'i', tonumber(ARGV[o]), 'o', tonumber(ARGV[o + 1]),
  'cw', tonumber(ARGV[o + 2]), 'cr', tonumber(ARGV[o + 3]), 'c', c}
report_add(KEYS[2], paths, ARGV[3], used)
report_add(KEYS[3], paths, ARGV[3], used)
local alerts = {}
local rules = load_rules(KEYS[4], paths, {{'d', KEYS[2], ARGV[7], KEYS[5]},
  {'m', KEYS[3], ARGV[8], KEYS[6]}})
threshold_alerts({stream = KEYS[7], now_ms = ARGV[6], rid = ARGV[1]}, rules, alerts)
for _, k in ipairs({KEYS[2], KEYS[5]}) do redis.call('EXPIREAT', k, tonumber(ARGV[9])) end
for _, k in ipairs({KEYS[3], KEYS[6]}) do redis.call('EXPIREAT', k, tonumber(ARGV[10])) end
local resp = cjson.encode({tokens = ARGV[12], cost = ARGV[13], alerts = alerts})
redis.call('HSET', req, 'kind', 'record', 'scope', ARGV[2], 'model', ARGV[3], 'usage', ARGV[4],
  'created_ms', ARGV[6], 'dwid', ARGV[7], 'mwid', ARGV[8], 'resp', resp)
redis.call('EXPIRE', req, tonumber(ARGV[11]))
return {'ok', resp}
