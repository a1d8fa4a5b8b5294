-- Returns a released reservation's units to its sale, once per reservation.
-- KEYS: 1 stock, 2 buyers, 3 returned (set of reservation ids)
-- ARGV: 1 reservation id, 2 user, 3 quantity
-- Returns 0 returned | 1 already returned | 2 stock not loaded
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 1 end
redis.call('INCRBY', KEYS[1], ARGV[3])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') - tonumber(ARGV[3])
if held > 0 then
  redis.call('HSET', KEYS[2], ARGV[2], held)
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return 0
