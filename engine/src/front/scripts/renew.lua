-- Extends a rebuild's lease while the rebuild runs, if it still holds it:
-- a rebuild slower than one lease (a loaded ledger) is not taken over
-- while it is alive, and a crashed one's lease still expires.
-- KEYS: 1 rebuild marker
-- ARGV: 1 rebuild token, 2 lease (ms)
-- Returns 1 extended | 0 not held (expired, or taken by another rebuild)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
