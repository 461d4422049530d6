-- settle: reconcile a reservation with its actual usage, or release it.
-- Both are idempotent. Counters are adjusted in the windows that reserve
-- charged (stored in the record), even after a day or month boundary.
-- A reservation past its expiry is expired here first (per the org's
-- policy), so a late reconcile still records the actual spend.
--
-- KEYS[1] request record   bd:{org}:q:<request_id>
-- KEYS[2] day counters     (the reservation's day window)
-- KEYS[3] month counters   (the reservation's month window)
-- KEYS[4] expiry index     bd:{org}:exp
-- KEYS[5] org settings     bd:{org}:cfg
-- KEYS[6] rules hash       bd:{org}:rules
-- KEYS[7] day fired alerts, KEYS[8] month fired alerts (the reservation's windows)
-- KEYS[9] alert stream     bd:{org}:alerts
-- (the usage report counters are fields of the day and month counters)
--
-- ARGV[1] op: 'reconcile' | 'release'     ARGV[2] request_id
-- ARGV[3] day window id expected          ARGV[4] month window id expected
-- ARGV[5] actual tokens                   ARGV[6] actual cost micros
-- ARGV[7] actual model                    ARGV[8] usage (canonical string)
-- ARGV[9] now_ms                          ARGV[10] record retention (s)
-- ARGV[11..14] actual input, output, cache-write, cache-read tokens (reports)
--
-- Returns {status, payload}: 'ok'|'dup' with the answer as JSON,
-- 'not_found', 'exists' with the differing field, 'precondition' with a
-- message, 'stale' when the windows differ from what the caller read.

local req = KEYS[1]
local rec = redis.call('HMGET', req, 'kind', 'state', 'hold', 'settle_model', 'settle_usage',
  'settle_resp', 'expired_policy', 'release_resp')
if not rec[1] or rec[1] ~= 'reserve' then return {'not_found'} end
local state = rec[2]
if state == 'denied' then return {'precondition', 'the reservation was denied'} end
-- hold: model tokens cost dwid mwid dexp mexp expires_ms paths created_ms
local h = read_hold(req, rec[3])
if h[4] ~= ARGV[3] or h[5] ~= ARGV[4] then return {'stale'} end

local op = ARGV[1]
local now_ms = tonumber(ARGV[9])
local paths = split(h[9], ',')
local est_t, est_c = tonumber(h[2]), tonumber(h[3])
local day, month = KEYS[2], KEYS[3]
local granted = h[1]

-- Answers that need no write come first.
if op == 'reconcile' and state == 'reconciled' then
  if rec[4] ~= ARGV[7] then return {'exists', 'model'} end
  if rec[5] ~= ARGV[8] then return {'exists', 'usage'} end
  return {'dup', rec[6]}
end
if op == 'release' then
  if state == 'reconciled' then
    return {'precondition', 'the reservation was already reconciled'}
  end
  if state == 'released' then return {'dup', rec[8]} end
end

local expired_policy = rec[7]
local late = false
if state == 'held' and tonumber(h[8]) <= now_ms then
  -- Past its expiry but not yet swept: expire it now, as the sweeper would.
  local policy = redis.call('HGET', KEYS[5], 'expiry')
  if not policy then policy = 'keep' end
  adjust(day, paths, 'r', -est_t, -est_c)
  adjust(month, paths, 'r', -est_t, -est_c)
  if policy == 'keep' then
    adjust(day, paths, 'u', est_t, est_c)
    adjust(month, paths, 'u', est_t, est_c)
    -- Kept as spent: the estimate counts as cost in reports until settled.
    report_add(day, paths, granted, {'c', est_c})
    report_add(month, paths, granted, {'c', est_c})
  end
  redis.call('ZREM', KEYS[4], ARGV[2])
  state = 'expired'
  expired_policy = policy
  redis.call('HSET', req, 'state', 'expired', 'expired_policy', policy)
end
if state == 'expired' then late = true end

local resp
if op == 'reconcile' then
  local act_t, act_c = tonumber(ARGV[5]), tonumber(ARGV[6])
  local dt, dc = act_t, act_c
  if state == 'held' then
    adjust(day, paths, 'r', -est_t, -est_c)
    adjust(month, paths, 'r', -est_t, -est_c)
  elseif state == 'expired' and expired_policy == 'keep' then
    -- The estimate was kept as spent at expiry: replace it by the actual.
    dt, dc = act_t - est_t, act_c - est_c
    report_add(day, paths, granted, {'c', -est_c})
    report_add(month, paths, granted, {'c', -est_c})
  end
  adjust(day, paths, 'u', dt, dc)
  adjust(month, paths, 'u', dt, dc)
  local used = {'i', tonumber(ARGV[11]), 'o', tonumber(ARGV[12]), 'cw', tonumber(ARGV[13]),
    'cr', tonumber(ARGV[14]), 'c', act_c}
  report_add(day, paths, ARGV[7], used)
  report_add(month, paths, ARGV[7], used)
  -- Actual usage above the estimate can reach thresholds.
  local alerts = {}
  local rules = load_rules(KEYS[6], paths, {{'d', day, ARGV[3], KEYS[7]},
    {'m', month, ARGV[4], KEYS[8]}})
  threshold_alerts({stream = KEYS[9], now_ms = ARGV[9], rid = ARGV[2]}, rules, alerts)
  -- The window keys have their expiry since reserve created them.
  redis.call('EXPIREAT', KEYS[7], tonumber(h[6]))
  redis.call('EXPIREAT', KEYS[8], tonumber(h[7]))
  resp = cjson.encode({state = 'reconciled', late = late, tokens = h[2], cost = h[3],
    actual_tokens = ARGV[5], actual_cost = ARGV[6], alerts = alerts})
  redis.call('HSET', req, 'state', 'reconciled', 'settle_model', ARGV[7], 'settle_usage', ARGV[8],
    'settle_resp', resp, 'late', late and '1' or '0')
else
  local back_t, back_c = est_t, est_c
  if state == 'held' then
    adjust(day, paths, 'r', -est_t, -est_c)
    adjust(month, paths, 'r', -est_t, -est_c)
  elseif state == 'expired' and expired_policy == 'keep' then
    -- The call never happened: give back what expiry kept as spent.
    adjust(day, paths, 'u', -est_t, -est_c)
    adjust(month, paths, 'u', -est_t, -est_c)
    report_add(day, paths, granted, {'c', -est_c})
    report_add(month, paths, granted, {'c', -est_c})
  else
    back_t, back_c = 0, 0
  end
  resp = cjson.encode({state = 'released', late = late, tokens = istr(back_t),
    cost = istr(back_c)})
  redis.call('HSET', req, 'state', 'released', 'release_resp', resp)
end
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('EXPIRE', req, tonumber(ARGV[10]))
return {'ok', resp}
