-- Shared helpers, prepended to every script by budgetd/scripts.py.
--
-- Amounts reach the scripts already bounded (<= 2^53) by the server, so Lua's
-- doubles hold them exactly. Counters live in one hash per org and window:
--   u|<path>|<unit>  settled (used)       r|<path>|<unit>  in flight (reserved)
-- where unit is t (tokens) or c (cost micros).

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

-- Adjusts reserved/used of every path level in one window hash.
local function adjust(key, paths, field, tokens, cost)
  if tokens == 0 and cost == 0 then return end
  for _, p in ipairs(paths) do
    if tokens ~= 0 then redis.call('HINCRBY', key, field .. '|' .. p .. '|t', tokens) end
    if cost ~= 0 then redis.call('HINCRBY', key, field .. '|' .. p .. '|c', cost) end
  end
end
