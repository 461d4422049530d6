-- org_tz: copy the org's time zone from its settings hash, where it is set
-- (and where versions before 0.2 read and write it), to the rules hash
-- ('#tz'), where the reserve script checks it with the rules generation in
-- one HMGET. Run after every zone change, and by a replica loading an org
-- whose two copies differ (an org configured before 0.2, or a zone changed
-- by an older replica during a rolling upgrade).
--
-- KEYS[1] rules hash      bd:{org}:rules
-- KEYS[2] org settings    bd:{org}:cfg
--
-- Returns the rules hash after the copy, as HGETALL does.

local tz = redis.call('HGET', KEYS[2], 'tz')
if not tz or tz == 'UTC' then
  redis.call('HDEL', KEYS[1], '#tz')
elseif redis.call('HGET', KEYS[1], '#tz') ~= tz then
  redis.call('HSET', KEYS[1], '#tz', tz)
end
return redis.call('HGETALL', KEYS[1])
