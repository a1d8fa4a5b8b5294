-- Takes a sale's stock out of the front for a rebuild, under a lease: only
-- one rebuild of a sale runs at a time, cluster-wide, and only the holder
-- of the lease's token may put the stock back. A crashed rebuild's lease
-- expires.
-- KEYS: 1 stock, 2 rebuild marker
-- ARGV: 1 rebuild token, 2 lease (ms)
-- Returns 1 suspended | 0 another rebuild holds the lease
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
