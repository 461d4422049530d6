-- drift_alert: append a drift alert (budgetctl drift's check, run by the
-- server on a schedule) once per (day, scope, model, provider).
--
-- KEYS[1] fired alerts of the day   bd:{org}:fired:d<YYYYMMDD>
-- KEYS[2] alert stream              bd:{org}:alerts
--
-- ARGV[1] marker field  <path>|d|drift:<provider>:<model>
-- ARGV[2] fired key expire-at (unix s)
-- ARGV[3..] the alert's stream fields, name value pairs
--
-- Returns the stream id, or false when this drift already fired.

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local at = '0'
for i = 1, #fields, 2 do if fields[i] == 'at' then at = fields[i + 1] end end
redis.call('HSET', KEYS[1], ARGV[1], at)
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[2]))
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ALERT_STREAM_MAXLEN, '*', unpack(fields))
