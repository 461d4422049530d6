-- walker: take or keep the lease on the walk over every org, so that one
-- process of all replicas walks (each walk costs Redis a command per org).
-- The holder renews it every expiry interval; when the holder dies, its
-- lease lapses and another process takes the walk over.
--
-- KEYS[1] the lease        bd:walker (a string: the holder's id)
--
-- ARGV[1] this process's id   ARGV[2] lease length (ms)
--
-- Returns 1 if this process holds the lease now, 0 if another does.

local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
