-- Takes a sale's stock out of the front for a rebuild, under a lease: only
-- one rebuild of a sale runs at a time, cluster-wide, and only the holder
-- of the lease's token may put the stock back. A crashed rebuild's lease
-- expires. Answers the counts it took the stock away at, so the rebuild
-- measures drift at one instant (nothing sells or comes back meanwhile).
-- KEYS: 1 stock, 2 rebuild marker, 3 pending units
-- ARGV: 1 rebuild token, 2 lease (ms)
-- Returns {0} another rebuild holds the lease | {1} suspended, stock was
--         not loaded | {1, remaining, pending} suspended
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
local stock = redis.call('GET', KEYS[1])
if not stock then return {1} end
local pending = redis.call('GET', KEYS[3]) or '0'
redis.call('DEL', KEYS[1])
return {1, tonumber(stock), tonumber(pending)}
