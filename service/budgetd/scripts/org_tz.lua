-- org_tz: copy the org's time zone from its settings hash, where it is set
-- (and where versions before 0.2 read and write it), into the rules hash's
-- '#c' ("<generation>[ <zone>]", the zone when not UTC), which the reserve
-- script compares with one HGET. Run after every zone change, and by a
-- replica loading an org whose two copies differ (an org configured before
-- 0.2, or a zone changed by an older replica during a rolling upgrade).
--
-- KEYS[1] rules hash      bd:{org}:rules
-- KEYS[2] org settings    bd:{org}:cfg
--
-- Returns the rules hash after the copy, as HGETALL does.

local tz = redis.call('HGET', KEYS[2], 'tz')
local c = redis.call('HGET', KEYS[1], '#c')
local gen = string.match(c or '0', '^%d+')
local want = gen
if tz and tz ~= 'UTC' then want = gen .. ' ' .. tz end
if want ~= (c or '0') then redis.call('HSET', KEYS[1], '#c', want) end
return redis.call('HGETALL', KEYS[1])
