-- Takes a sale's stock out of the front for a rebuild, and names the
-- rebuild: only the rebuild holding the newest token may put it back.
-- KEYS: 1 stock, 2 rebuild marker
-- ARGV: 1 rebuild token
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
