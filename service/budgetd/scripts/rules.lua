-- rules: set or delete one budget rule and bump the org's rules generation
-- in the same atomic step. Replicas cache an org's rules with the
-- generation they read; the reserve script compares it with the stored one,
-- so a cached copy is never used after a change.
--
-- KEYS[1] rules hash      bd:{org}:rules: the rule fields, and '#c' =
--                         "<generation>[ <zone>]" (the zone when not UTC, a
--                         copy of the settings hash's: org_tz.lua), which the
--                         reserve script compares with one HGET
-- KEYS[2] org settings    bd:{org}:cfg: its 'rgen' is the generation replicas
--                         of versions before 0.2 check, bumped where it exists
--
-- ARGV[1] op: 'set' | 'del'   ARGV[2] rule field   ARGV[3] value ('set')
-- ARGV[4] the most rules an org may have ('set')
--
-- Returns 1 if the rule changed, 0 if not, -1 if the org has too many rules.

local old = redis.call('HGET', KEYS[1], ARGV[2])
local c = redis.call('HGET', KEYS[1], '#c')
if ARGV[1] == 'set' then
  if old == ARGV[3] then return 0 end
  if not old and redis.call('HLEN', KEYS[1]) - (c and 1 or 0) >= tonumber(ARGV[4]) then
    return -1
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  if not old then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[2])
end
local gen, zone = string.match(c or '0', '^(%d+)(.*)$')
redis.call('HSET', KEYS[1], '#c', (gen + 1) .. zone)
-- An org configured by an earlier version has a settings hash, which its
-- replicas check during a rolling upgrade; a new org needs none (memory).
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'rgen', 1) end
return 1
